//! One test per rule, driving `decide` step by step through a tiny deterministic backend.

use std::collections::BTreeSet;

use infrakit_spi::flavor::Health;
use infrakit_spi::instance::DestroyReason;

use super::policy::{CountOrPercent, FailureAction, Policy};
use super::*;

const S: u64 = 1000;

/// A backend where nothing happens unless the test says so.
struct World {
    desired: Desired,
    observed: Observed,
    memory: Memory,
    now: u64,
    next: u64,
    last: Option<Decision>,
}

fn cattle(n: u64, hash: &str) -> Desired {
    Desired {
        group: "g".into(),
        allocation: Allocation::Size(n),
        config_hash: hash.into(),
        policy: Policy::default(),
    }
}

fn pets(ids: &[&str], hash: &str) -> Desired {
    Desired {
        group: "p".into(),
        allocation: Allocation::Pets(ids.iter().map(|s| s.to_string()).collect()),
        config_hash: hash.into(),
        policy: Policy::default(),
    }
}

fn inst(id: &str, lid: Option<&str>, hash: &str, health: Health) -> ObservedInstance {
    ObservedInstance {
        id: id.into(),
        logical_id: lid.map(str::to_string),
        config_hash: Some(hash.into()),
        health,
        leads: false,
    }
}

impl World {
    fn new(desired: Desired) -> World {
        World {
            desired,
            observed: Observed::default(),
            memory: Memory::default(),
            now: 1_000_000,
            next: 0,
            last: None,
        }
    }

    fn with(mut self, instances: Vec<ObservedInstance>) -> World {
        self.observed.instances = instances;
        self
    }

    /// Decides and records the actions as in flight, like an executor.
    fn step(&mut self) -> Vec<(Action, Cause)> {
        let d = decide(&self.desired, &self.observed, &self.memory, self.now);
        self.memory = d.memory.clone();
        for a in &d.actions {
            match a {
                Action::Provision {
                    logical_id,
                    config_hash,
                } => {
                    self.next += 1;
                    self.observed.pending.push(PendingProvision {
                        token: self.next,
                        logical_id: logical_id.clone(),
                        config_hash: config_hash.clone(),
                        started_ms: self.now,
                    });
                }
                Action::Destroy { id, .. } => {
                    assert!(
                        self.observed.destroying.insert(id.clone()),
                        "{id} destroyed twice"
                    );
                }
            }
        }
        let out = d
            .actions
            .iter()
            .cloned()
            .zip(d.causes.iter().copied())
            .collect();
        self.last = Some(d);
        out
    }

    fn status(&self) -> &Status {
        &self.last.as_ref().expect("decided").status
    }

    /// Every pending provision finishes with `health`; every destroy finishes.
    fn finish(&mut self, health: Health) {
        for p in std::mem::take(&mut self.observed.pending) {
            self.observed.instances.push(ObservedInstance {
                id: format!("n{}", p.token),
                logical_id: p.logical_id,
                config_hash: Some(p.config_hash),
                health,
                leads: false,
            });
        }
        let gone = std::mem::take(&mut self.observed.destroying);
        self.observed.instances.retain(|i| !gone.contains(&i.id));
    }

    fn fail_provisions(&mut self) {
        self.observed.pending.clear();
    }

    fn set_health(&mut self, health: Health) {
        for i in &mut self.observed.instances {
            i.health = health;
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Instances plus pending provisions (being destroyed included: they still exist).
    fn physical(&self) -> usize {
        self.observed.instances.len() + self.observed.pending.len()
    }

    fn available(&self) -> usize {
        self.observed
            .instances
            .iter()
            .filter(|i| i.health == Health::Healthy && !self.observed.destroying.contains(&i.id))
            .count()
    }

    fn hashes(&self) -> Vec<String> {
        self.observed
            .instances
            .iter()
            .filter_map(|i| i.config_hash.clone())
            .collect()
    }
}

fn healthy(n: usize, hash: &str) -> Vec<ObservedInstance> {
    (0..n)
        .map(|i| inst(&format!("i{i}"), None, hash, Health::Healthy))
        .collect()
}

fn count(actions: &[(Action, Cause)], cause: Cause) -> usize {
    actions.iter().filter(|(_, c)| *c == cause).count()
}

#[test]
fn cattle_grows_to_target_and_pending_counts() {
    let mut w = World::new(cattle(3, "v1"));
    let a = w.step();
    assert_eq!(count(&a, Cause::Fill), 3);
    // A slow backend: the provisions stay pending; nothing more is asked for.
    for _ in 0..5 {
        w.tick(10 * S);
        assert!(
            w.step().is_empty(),
            "pending provisions must count toward the target"
        );
    }
    w.finish(Health::Healthy);
    assert!(w.step().is_empty());
    assert!(w.status().converged, "{:?}", w.status());
    assert!(w.status().update.is_none());
}

#[test]
fn cattle_shrinks_outdated_then_unhealthy_then_newest() {
    let mut w = World::new(cattle(2, "v1")).with(vec![
        inst("old", None, "v0", Health::Healthy),
        inst("sick", None, "v1", Health::Unhealthy),
        inst("a", None, "v1", Health::Healthy),
        inst("b", None, "v1", Health::Healthy),
    ]);
    // First seen in this order, one second apart: "b" is the newest.
    for (i, id) in ["old", "sick", "a", "b"].iter().enumerate() {
        let m = InstanceMemory {
            first_seen_ms: i as u64 * S,
            ..InstanceMemory::default()
        };
        w.memory.instances.insert(id.to_string(), m);
    }
    let a = w.step();
    let destroyed: Vec<(&str, Cause)> = a
        .iter()
        .filter_map(|(a, c)| match a {
            Action::Destroy { id, .. } => Some((id.as_str(), *c)),
            _ => None,
        })
        .collect();
    // The outdated one is the update's to replace; the extra current one is the unhealthy one.
    assert_eq!(
        destroyed,
        [("sick", Cause::Shrink), ("old", Cause::Rollout)]
    );
    w.finish(Health::Healthy);
    w.desired.allocation = Allocation::Size(1);
    let a = w.step();
    assert!(
        matches!(&a[0].0, Action::Destroy { id, .. } if id == "b"),
        "newest first: {a:?}"
    );
}

#[test]
fn pets_duplicates_strays_and_missing() {
    let mut w = World::new(pets(&["a", "b", "c"], "v1")).with(vec![
        inst("a1", Some("a"), "v1", Health::Healthy),
        inst("a2", Some("a"), "v1", Health::Unknown),
        inst("x", Some("x"), "v1", Health::Healthy),
        inst("none", None, "v1", Health::Healthy),
        inst("b1", Some("b"), "v1", Health::Healthy),
    ]);
    let a = w.step();
    let destroyed: BTreeSet<String> = a
        .iter()
        .filter_map(|(a, _)| match a {
            Action::Destroy { id, reason } => {
                assert_eq!(*reason, DestroyReason::Terminate);
                Some(id.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        destroyed,
        ["a2", "x", "none"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(count(&a, Cause::Duplicate), 1);
    assert_eq!(count(&a, Cause::Stray), 2);
    // Never above the target: "c" waits until the extras are gone.
    assert_eq!(a.len(), 3, "{a:?}");
    w.finish(Health::Healthy);
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: Some("c".into()),
                config_hash: "v1".into()
            },
            Cause::Fill
        )]
    );
    w.finish(Health::Healthy);
    assert!(w.step().is_empty());
    assert!(w.status().converged);
    // Changing the list adds and removes members.
    w.desired.allocation = Allocation::Pets(vec!["a".into(), "c".into(), "d".into()]);
    let a = w.step();
    assert!(a
        .iter()
        .any(|(a, c)| matches!(a, Action::Destroy { id, .. } if id == "b1") && *c == Cause::Stray));
    w.finish(Health::Healthy);
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: Some("d".into()),
                config_hash: "v1".into()
            },
            Cause::Fill
        )]
    );
}

#[test]
fn a_pet_is_never_recreated_while_its_old_instance_is_being_destroyed() {
    let mut w =
        World::new(pets(&["a"], "v2")).with(vec![inst("a1", Some("a"), "v1", Health::Healthy)]);
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Destroy {
                id: "a1".into(),
                reason: DestroyReason::RollingUpdate
            },
            Cause::Rollout
        )]
    );
    for _ in 0..3 {
        assert!(w.step().is_empty(), "logical ID a is still held by a1");
    }
    w.finish(Health::Healthy);
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: Some("a".into()),
                config_hash: "v2".into()
            },
            Cause::Rollout
        )]
    );
}

#[test]
fn one_at_a_time_rolling_update_step_by_step() {
    let mut w = World::new(cattle(3, "v2")).with(healthy(3, "v1"));
    w.memory.stable_hash = Some("v1".into());
    for round in 0..3u64 {
        // Destroy one outdated instance; its replacement waits for the destroy (never above 3).
        let a = w.step();
        assert_eq!(a.len(), 1, "round {round}: {a:?}");
        assert!(matches!(
            &a[0].0,
            Action::Destroy {
                reason: DestroyReason::RollingUpdate,
                ..
            }
        ));
        assert!(w.physical() <= 3 && w.available() >= 2);
        assert!(w.step().is_empty(), "nothing until the destroy finishes");
        w.finish(Health::Healthy);
        let a = w.step();
        assert_eq!(
            a,
            vec![(
                Action::Provision {
                    logical_id: None,
                    config_hash: "v2".into()
                },
                Cause::Rollout
            )]
        );
        w.finish(Health::Unknown);
        // Unknown waits.
        w.tick(30 * S);
        assert!(
            w.step().is_empty(),
            "round {round}: the replacement is not healthy yet"
        );
        let u = w.status().update.clone().expect("update");
        assert_eq!(u.state, UpdateState::Updating);
        assert_eq!(u.done, round + 1);
        w.set_health(Health::Healthy);
        assert!(w.physical() <= 3 && w.available() >= 2);
    }
    assert!(w.step().is_empty());
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.state, UpdateState::Completed);
    assert_eq!((u.total, u.done, u.failures), (3, 3, 0));
    assert!(w.status().converged);
    assert!(w.hashes().iter().all(|h| h == "v2"));
    assert_eq!(w.memory.stable_hash.as_deref(), Some("v2"));
}

#[test]
fn surge_two_unavailable_zero_never_drops_below_target() {
    let mut d = cattle(10, "v2");
    d.policy.update.max_surge = CountOrPercent::Count(2);
    d.policy.update.max_unavailable = CountOrPercent::Count(0);
    let mut w = World::new(d).with(healthy(10, "v1"));
    for _ in 0..40 {
        let a = w.step();
        assert!(w.physical() <= 12, "above target + surge");
        // Destroys only ever take instances that leave 10 healthy ones.
        assert!(w.available() >= 10, "below target - 0: {a:?}");
        if w.status().converged {
            break;
        }
        w.finish(Health::Unknown);
        w.step();
        w.set_health(Health::Healthy);
    }
    assert!(w.status().converged, "{:?}", w.status());
    assert_eq!(w.observed.instances.len(), 10);
    assert!(w.hashes().iter().all(|h| h == "v2"));
}

#[test]
fn surge_provisions_first() {
    let mut d = cattle(4, "v2");
    d.policy.update.max_surge = CountOrPercent::Count(2);
    d.policy.update.max_unavailable = CountOrPercent::Count(0);
    let mut w = World::new(d).with(healthy(4, "v1"));
    let a = w.step();
    assert_eq!(count(&a, Cause::Rollout), 2);
    assert!(a.iter().all(|(a, _)| matches!(a, Action::Provision { .. })));
}

fn stuck_update(action: FailureAction) -> World {
    let mut d = cattle(3, "v2");
    d.policy.update.healthy_deadline_seconds = 60;
    d.policy.update.failure_action = action;
    let mut w = World::new(d).with(healthy(3, "v1"));
    w.memory.stable_hash = Some("v1".into());
    w.step(); // destroy one
    w.finish(Health::Healthy);
    w.step(); // provision its replacement
    w.finish(Health::Unknown);
    w.tick(10 * S);
    assert!(w.step().is_empty());
    let wake = w
        .last
        .as_ref()
        .and_then(|d| d.wake_at_ms)
        .expect("a deadline to wake for");
    assert_eq!(
        wake,
        w.now - 10 * S + 60 * S,
        "wake exactly at the healthy deadline"
    );
    w.now = wake;
    w
}

#[test]
fn healthy_deadline_pauses_and_says_why() {
    let mut w = stuck_update(FailureAction::Pause);
    let a = w.step();
    assert!(a.is_empty(), "a paused update does nothing further: {a:?}");
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.state, UpdateState::Paused);
    assert!(
        u.message.contains("not available within 60s"),
        "{}",
        u.message
    );
    assert!(!w.status().converged);
    // The old instances still serve; a paused group still heals, with the committed spec.
    w.observed.instances.retain(|i| i.id != "i1");
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: None,
                config_hash: "v2".into()
            },
            Cause::Fill
        )]
    );
    // Resume gives the leftovers a fresh deadline.
    w.memory = command(&w.memory, Command::Resume, &w.desired, w.now).expect("resume");
    w.finish(Health::Healthy);
    w.step();
    assert_eq!(
        w.status().update.as_ref().map(|u| u.state),
        Some(UpdateState::Updating)
    );
}

#[test]
fn failed_update_rolls_back_to_the_previous_configuration() {
    let mut w = stuck_update(FailureAction::Rollback);
    let a = w.step();
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.state, UpdateState::RollingBack, "{u:?}");
    assert_eq!(w.status().applied_hash, "v1");
    // The failed v2 instance is outdated now and not serving: it goes first.
    assert!(
        a.iter().any(
            |(a, c)| matches!(a, Action::Destroy { id, .. } if id.starts_with('n'))
                && *c == Cause::Rollout
        ),
        "{a:?}"
    );
    for _ in 0..10 {
        w.finish(Health::Healthy);
        w.step();
    }
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.state, UpdateState::RolledBack);
    assert!(w.status().converged, "{:?}", w.status());
    assert!(w.hashes().iter().all(|h| h == "v1"), "{:?}", w.hashes());
    // Rolled back stays rolled back: healing uses v1 until a new commit.
    w.observed.instances.pop();
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: None,
                config_hash: "v1".into()
            },
            Cause::Fill
        )]
    );
}

/// A surge update whose two replacements both fail rolls back at once: the failures put the group
/// in backoff, which holds back provisions, but removing the failed replacements needs none (the
/// old instances make the target), so it is not held back.
#[test]
fn rollback_removes_failed_surge_replacements_despite_the_backoff() {
    let mut d = cattle(10, "v2");
    d.policy.update.max_surge = CountOrPercent::Count(2);
    d.policy.update.max_unavailable = CountOrPercent::Count(0);
    d.policy.update.healthy_deadline_seconds = 30; // before remediation (UnhealthySeconds 60)
    d.policy.update.failure_action = FailureAction::Rollback;
    let mut w = World::new(d).with(healthy(10, "v1"));
    w.memory.stable_hash = Some("v1".into());
    let a = w.step();
    assert_eq!(count(&a, Cause::Rollout), 2, "{a:?}");
    w.finish(Health::Unhealthy); // exited at once
    assert!(w.step().is_empty());
    w.tick(30 * S);
    let a = w.step();
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.state, UpdateState::RollingBack, "{u:?}");
    assert_eq!(
        w.memory.backoff.get("group").map(|b| b.failures),
        Some(2),
        "two failures: provisions are in backoff"
    );
    let gone: Vec<&str> = a
        .iter()
        .filter_map(|(a, _)| match a {
            Action::Destroy { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(gone, ["n1", "n2"], "{a:?}");
    w.finish(Health::Healthy);
    w.tick(S);
    assert!(w.step().is_empty());
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.state, UpdateState::RolledBack, "{u:?}");
    assert!(w.status().converged, "{:?}", w.status());
    assert_eq!(w.hashes(), vec!["v1"; 10]);
    assert_eq!(w.available(), 10);
}

#[test]
fn continue_retries_failed_replacements() {
    let mut w = stuck_update(FailureAction::Continue);
    let a = w.step();
    assert_eq!(
        w.status().update.as_ref().map(|u| u.state),
        Some(UpdateState::Updating)
    );
    assert_eq!(count(&a, Cause::FailedReplacement), 1, "{a:?}");
}

#[test]
fn a_new_commit_supersedes_the_running_update() {
    let mut w = World::new(cattle(3, "v2")).with(healthy(3, "v1"));
    w.memory.stable_hash = Some("v1".into());
    w.step();
    w.finish(Health::Healthy);
    w.step();
    w.finish(Health::Healthy); // one v2 now
    w.desired.config_hash = "v3".into();
    let a = w.step();
    let u = w.status().update.clone().expect("update");
    assert_eq!(u.target_hash, "v3");
    assert_eq!(
        u.previous_hash.as_deref(),
        Some("v1"),
        "rollback goes to the last complete configuration"
    );
    assert_eq!(u.state, UpdateState::Updating);
    assert_eq!(u.total, 3, "v1 and v2 instances are all outdated now");
    assert_eq!(a.len(), 1);
    for _ in 0..12 {
        w.finish(Health::Healthy);
        w.step();
    }
    assert!(w.status().converged, "{:?}", w.status());
    assert!(w.hashes().iter().all(|h| h == "v3"));
}

#[test]
fn rolling_update_then_growth_preview() {
    let w = World::new(cattle(10, "v2")).with(healthy(5, "v1"));
    let (text, plan) = preview(&w.desired, &w.observed, &w.memory);
    assert_eq!(
        text,
        "Performing a rolling update on 5 instances, then adding 5 instances to reach 10"
    );
    assert_eq!(plan.create, 5);
    assert_eq!(plan.replace.len(), 5);
    assert!(plan.destroy.is_empty());
    assert_eq!((plan.keep, plan.target), (0, 10));
    assert_eq!(plan.version.len(), 16);
    // The plan changes with the observed state, not with health.
    let mut w2 = World::new(cattle(10, "v2")).with(healthy(5, "v1"));
    w2.set_health(Health::Unhealthy);
    assert_eq!(
        preview(&w2.desired, &w2.observed, &w2.memory).1.version,
        plan.version
    );
    w2.observed.instances.pop();
    assert_ne!(
        preview(&w2.desired, &w2.observed, &w2.memory).1.version,
        plan.version
    );
    // Shrink first, then roll.
    let w3 = World::new(cattle(2, "v2")).with(healthy(5, "v1"));
    let (text, plan) = preview(&w3.desired, &w3.observed, &w3.memory);
    assert_eq!(
        text,
        "Removing 3 instances to reach 2, then performing a rolling update on 2 instances"
    );
    assert_eq!(
        (plan.destroy.len(), plan.replace.len(), plan.create),
        (3, 2, 0)
    );
    let w4 = World::new(cattle(5, "v1")).with(healthy(5, "v1"));
    assert_eq!(
        preview(&w4.desired, &w4.observed, &w4.memory).0,
        "No changes: 5 instances present and current"
    );
    let w5 = World::new(pets(&["a", "b"], "v1")).with(vec![inst(
        "a1",
        Some("a"),
        "v1",
        Health::Healthy,
    )]);
    let (text, plan) = preview(&w5.desired, &w5.observed, &w5.memory);
    assert_eq!(text, "Adding 1 instance for logical IDs b");
    assert_eq!(plan.create_logical_ids, vec!["b".to_string()]);
}

#[test]
fn remediation_replaces_one_at_a_time_and_stops_in_a_meltdown() {
    let mut w = World::new(cattle(4, "v1")).with(healthy(4, "v1"));
    w.step();
    w.observed.instances[0].health = Health::Unhealthy;
    w.observed.instances[1].health = Health::Unhealthy;
    assert!(w.step().is_empty());
    assert_eq!(
        w.last.as_ref().and_then(|d| d.wake_at_ms),
        Some(w.now + 60 * S)
    );
    w.tick(60 * S);
    let a = w.step();
    assert_eq!(count(&a, Cause::Remediation), 1, "MaxInFlight 1: {a:?}");
    w.tick(S);
    assert_eq!(count(&w.step(), Cause::Remediation), 0, "one in flight");
    w.finish(Health::Unknown); // destroyed, and nothing pending yet
    let a = w.step();
    assert_eq!(count(&a, Cause::Fill), 1);
    assert_eq!(
        count(&a, Cause::Remediation),
        0,
        "the replacement is not available yet"
    );
    w.finish(Health::Healthy);
    let a = w.step();
    assert_eq!(
        count(&a, Cause::Remediation),
        1,
        "replacement available: next one: {a:?}"
    );

    // Three of four unhealthy is above 50%: nothing is destroyed, and the status says why.
    let mut w = World::new(cattle(4, "v1")).with(healthy(4, "v1"));
    w.step();
    for i in 0..3 {
        w.observed.instances[i].health = Health::Unhealthy;
    }
    w.step();
    w.tick(120 * S);
    assert!(w.step().is_empty());
    let why = w.status().remediation_stopped.clone().expect("a reason");
    assert!(why.contains("3 of 4 instances are unhealthy"), "{why}");
    assert!(w.status().message.contains("remediation stopped"));
}

/// A commit of a new configuration is acted on at once: the backoff the old one built up (an
/// image that is not there) is not the new one's to serve.
#[test]
fn a_new_commit_is_not_held_back_by_the_old_configurations_backoff() {
    let mut w = World::new(pets(&["a"], "v1"));
    for _ in 0..4 {
        let mut a = w.step();
        while a.is_empty() {
            w.now = w.last.as_ref().and_then(|d| d.wake_at_ms).expect("wake");
            a = w.step();
        }
        w.fail_provisions();
    }
    assert!(w.step().is_empty(), "in backoff");
    assert!(!w.memory.backoff.is_empty());
    w.desired = pets(&["a"], "v2");
    let a = w.step();
    assert_eq!(count(&a, Cause::Fill), 1, "provisioned at once: {a:?}");
    assert!(matches!(&a[0].0, Action::Provision { config_hash, .. } if config_hash == "v2"));
}

#[test]
fn concurrent_failures_of_one_outage_count_once() {
    let mut w = World::new(cattle(300, "v1"));
    assert_eq!(count(&w.step(), Cause::Fill), 300);
    // The instance plugin goes away: every provision in flight fails, noticed over three passes,
    // each of which retries at once what failed (one failure waits no time).
    for _ in 0..3 {
        w.tick(S);
        w.observed.pending.drain(0..100);
        assert_eq!(count(&w.step(), Cause::Fill), 100, "retried at once");
    }
    assert_eq!(
        w.memory.backoff["group"].failures, 1,
        "one outage, one failure"
    );
    // A round of retries that fails counts again: the backoff grows per round.
    w.tick(S);
    w.fail_provisions();
    w.step();
    assert_eq!(w.memory.backoff["group"].failures, 2);
}

#[test]
fn a_plugin_that_answers_again_resumes_the_work_at_once() {
    let mut w = World::new(cattle(10, "v1"));
    for _ in 0..5 {
        let mut a = w.step();
        while a.is_empty() {
            w.now = w.last.as_ref().and_then(|d| d.wake_at_ms).expect("wake");
            a = w.step();
        }
        w.tick(S);
        w.fail_provisions();
    }
    assert!(w.step().is_empty(), "backing off");
    assert!(w.memory.backoff["group"].failures >= 4);
    // The plugin answers again: what failed until then was the outage.
    w.tick(S);
    w.observed.recovered_ms = Some(w.now);
    w.tick(1);
    assert_eq!(count(&w.step(), Cause::Fill), 10, "provisioned at once");
    assert!(w.memory.backoff.is_empty(), "{:?}", w.memory.backoff);
    // Provisions started before the plugin came back and failed later are not failures either.
    w.observed.recovered_ms = Some(w.now + 1);
    w.tick(2);
    w.fail_provisions();
    assert_eq!(count(&w.step(), Cause::Fill), 10);
    assert!(w.memory.backoff.is_empty(), "{:?}", w.memory.backoff);
}

#[test]
fn failing_slot_backs_off_exponentially() {
    let mut w = World::new(pets(&["a"], "v1"));
    let mut waits = Vec::new();
    for _ in 0..5 {
        // Provision, fail, and see how long the next one waits.
        let mut a = w.step();
        let mut waited = 0;
        while a.is_empty() {
            let wake = w
                .last
                .as_ref()
                .and_then(|d| d.wake_at_ms)
                .expect("wake for the backoff");
            waited += wake - w.now;
            w.now = wake;
            a = w.step();
        }
        waits.push(waited / S);
        w.fail_provisions();
    }
    assert_eq!(waits, vec![0, 0, 10, 20, 40]);
    // Success resets.
    w.step();
    let _ = w
        .last
        .as_ref()
        .and_then(|d| d.wake_at_ms)
        .map(|t| w.now = t);
    w.step();
    w.finish(Health::Healthy);
    w.step();
    assert!(w.memory.backoff.is_empty(), "{:?}", w.memory.backoff);
}

#[test]
fn restart_resumes_mid_update_from_persisted_memory() {
    let mut w = World::new(cattle(3, "v2")).with(healthy(3, "v1"));
    w.memory.stable_hash = Some("v1".into());
    w.step(); // destroy in flight
              // Crash: the executor loses pending and destroying; memory comes back from the store.
    let text = serde_json::to_string(&w.memory).expect("serialize");
    w.memory = serde_json::from_str(&text).expect("deserialize");
    w.memory.after_restart();
    w.observed.destroying.clear();
    let a = w.step();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1, Cause::Retry, "the decided destroy stands: {a:?}");
    for _ in 0..12 {
        w.finish(Health::Healthy);
        w.step();
        assert!(w.physical() <= 3 && w.available() >= 2);
    }
    assert!(w.status().converged);
}

#[test]
fn in_flight_destroys_are_not_repeated_and_not_counted() {
    let mut w = World::new(cattle(2, "v1")).with(healthy(3, "v1"));
    let a = w.step();
    assert_eq!(count(&a, Cause::Shrink), 1);
    for _ in 0..3 {
        assert!(w.step().is_empty(), "destroy in flight: nothing more");
    }
    assert_eq!(w.status().present, 2);
    assert_eq!(w.status().destroying, 1);
    assert!(
        !w.status().converged,
        "nothing being destroyed when converged"
    );
}

#[test]
fn soak_delays_availability_and_wakes_at_its_end() {
    let mut d = cattle(2, "v2");
    d.policy.update.min_ready_seconds = 30;
    let mut w = World::new(d).with(healthy(2, "v1"));
    w.step();
    w.finish(Health::Healthy);
    w.step();
    w.finish(Health::Healthy);
    let a = w.step();
    assert!(a.is_empty(), "replacement healthy but not soaked: {a:?}");
    assert_eq!(
        w.last.as_ref().and_then(|d| d.wake_at_ms),
        Some(w.now + 30 * S)
    );
    w.tick(30 * S);
    assert_eq!(count(&w.step(), Cause::Rollout), 1);
}

#[test]
fn commands_move_the_update_and_refuse_what_does_not_apply() {
    let mut w = World::new(cattle(2, "v2")).with(healthy(2, "v1"));
    let err = command(&w.memory, Command::Pause, &w.desired, w.now).expect_err("no update yet");
    assert!(err.contains("never been updated"), "{err}");
    w.memory.stable_hash = Some("v1".into());
    w.step();
    w.memory = command(&w.memory, Command::Pause, &w.desired, w.now).expect("pause");
    assert!(command(&w.memory, Command::Pause, &w.desired, w.now).is_err());
    w.finish(Health::Healthy);
    let a = w.step();
    assert_eq!(count(&a, Cause::Fill), 1, "paused still heals: {a:?}");
    w.finish(Health::Healthy);
    assert!(w.step().is_empty(), "paused: no further replacement");
    w.memory = command(&w.memory, Command::Rollback, &w.desired, w.now).expect("rollback");
    let a = w.step();
    assert_eq!(w.status().applied_hash, "v1");
    assert_eq!(count(&a, Cause::Rollout), 1, "{a:?}");
    assert!(command(&w.memory, Command::Rollback, &w.desired, w.now).is_err());
    // A new commit the controller has not seen yet: commands wait for it.
    let mut d = w.desired.clone();
    d.config_hash = "v3".into();
    assert!(command(&w.memory, Command::Pause, &d, w.now).is_err());
    let adopted = Memory {
        update: Some(UpdateProgress::start("v2", None, 0, String::new())),
        ..Memory::default()
    };
    let err = command(&adopted, Command::Rollback, &w.desired, w.now).expect_err("no previous");
    assert!(err.contains("no previous configuration"), "{err}");
}

#[test]
fn adopted_instances_without_a_hash_are_outdated() {
    let mut w = World::new(cattle(1, "v1")).with(vec![ObservedInstance {
        id: "old".into(),
        logical_id: None,
        config_hash: None,
        health: Health::Healthy,
        leads: false,
    }]);
    let a = w.step();
    assert_eq!(count(&a, Cause::Rollout), 1);
    assert_eq!(
        w.status().update.as_ref().map(|u| u.state),
        Some(UpdateState::Updating)
    );
}

#[test]
fn memory_round_trips_through_json() {
    let mut w = World::new(cattle(3, "v2")).with(healthy(3, "v1"));
    w.step();
    let text = serde_json::to_string(&w.memory).expect("serialize");
    let back: Memory = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(back, w.memory);
    let empty: Memory = serde_json::from_str("{}").expect("an empty record is a fresh memory");
    assert_eq!(empty, Memory::default());
}

#[test]
fn a_provision_in_flight_at_a_restart_is_waited_for_not_repeated() {
    let mut d = pets(&["a", "b"], "v1");
    d.policy.update.healthy_deadline_seconds = 60;
    let mut w = World::new(d).with(vec![inst("a1", Some("a"), "v1", Health::Healthy)]);
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: Some("b".into()),
                config_hash: "v1".into()
            },
            Cause::Fill
        )]
    );
    w.step(); // the provision is observed pending
              // Crash: the new executor has no pending list; the old provision may still finish.
    let lost = std::mem::take(&mut w.observed.pending);
    w.memory.after_restart();
    w.tick(10 * S);
    assert!(
        w.step().is_empty(),
        "logical ID b is still taken by the pre-restart provision"
    );
    assert_eq!(w.status().pending, 1);
    // It finishes: adopted, nothing more to do.
    w.observed.pending = lost;
    w.finish(Health::Healthy);
    w.observed.pending.clear();
    assert!(w.step().is_empty());
    assert!(w.status().converged, "{:?}", w.status());

    // Had it died with the process, b is provisioned again once the wait is over.
    let mut d = pets(&["b"], "v1");
    d.policy.update.healthy_deadline_seconds = 60;
    let mut w = World::new(d);
    let started = w.now;
    w.step();
    w.step();
    w.observed.pending.clear();
    w.memory.after_restart();
    w.tick(S);
    assert!(w.step().is_empty());
    // Waited for at most 30 s (the healthy deadline, capped).
    assert_eq!(
        w.last.as_ref().and_then(|d| d.wake_at_ms),
        Some(started + 30 * S)
    );
    w.now = started + 30 * S;
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: Some("b".into()),
                config_hash: "v1".into()
            },
            Cause::Fill
        )]
    );
    assert!(
        w.memory.backoff.is_empty(),
        "an expired ghost is not a failure"
    );
}

#[test]
fn a_fast_failing_provision_is_noticed_even_if_never_seen_pending() {
    let mut w = World::new(cattle(1, "v1"));
    w.step();
    w.fail_provisions(); // failed before the next decision
    w.step();
    assert_eq!(w.memory.backoff.get("group").map(|b| b.failures), Some(1));
}

#[test]
fn an_executor_whose_plugins_died_with_it_waits_for_no_ghost() {
    let mut w = World::new(pets(&["b"], "v1"));
    w.step();
    w.step();
    w.observed.pending.clear();
    w.memory.after_restart_within(w.now, 0);
    let a = w.step();
    assert_eq!(
        a,
        vec![(
            Action::Provision {
                logical_id: Some("b".into()),
                config_hash: "v1".into()
            },
            Cause::Fill
        )]
    );
    // And one that knows its plugins answer within 5 s waits exactly that.
    let mut w = World::new(pets(&["b"], "v1"));
    w.step();
    w.step();
    w.observed.pending.clear();
    w.memory.after_restart_within(w.now, 5 * S);
    assert!(w.step().is_empty());
    assert_eq!(
        w.last.as_ref().and_then(|d| d.wake_at_ms),
        Some(w.now + 5 * S)
    );
}

#[test]
fn a_rolling_update_replaces_the_leading_member_last() {
    // "a1" would go first by ID; the flavor says it leads, so it goes after b1 and c1.
    let mut members = vec![
        inst("a1", Some("a"), "v1", Health::Healthy),
        inst("b1", Some("b"), "v1", Health::Healthy),
        inst("c1", Some("c"), "v1", Health::Healthy),
    ];
    members[0].leads = true;
    let mut w = World::new(pets(&["a", "b", "c"], "v2")).with(members);
    w.memory.stable_hash = Some("v1".into());
    let mut order = Vec::new();
    for _ in 0..20 {
        for (a, _) in w.step() {
            if let Action::Destroy { id, .. } = a {
                order.push(id);
            }
        }
        w.finish(Health::Healthy);
        w.tick(S);
        if w.hashes().iter().all(|h| h == "v2") && w.observed.instances.len() == 3 {
            break;
        }
    }
    assert_eq!(order.last().map(String::as_str), Some("a1"), "{order:?}");
    assert_eq!(order.len(), 3, "{order:?}");
}
