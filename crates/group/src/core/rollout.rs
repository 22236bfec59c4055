//! Rolling updates: the update's state machine (start, supersede, fail, roll back, complete) and the
//! choice of which outdated instances to replace now.

use std::collections::{BTreeMap, BTreeSet};

use super::memory::{pending_key, Memory, UpdateProgress};
use super::observe::Events;
use super::policy::{FailureAction, Policy};
use super::types::{Desired, Observed, UpdateState};
use super::view::{pick_removals, Inst, View};

/// The configuration the group applies now: the committed one, or the previous one while an update
/// rolls back (or stays rolled back).
pub(crate) fn applied_hash(mem: &Memory, desired: &Desired) -> String {
    match &mem.update {
        Some(u) if u.target_hash == desired.config_hash => u.applied_hash().to_string(),
        _ => desired.config_hash.clone(),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A commit with a new configuration supersedes whatever update was running: the new update starts
/// from the instances as they are; those of the abandoned configuration are now simply outdated.
pub(crate) fn follow_commit(mem: &mut Memory, desired: &Desired, observed: &Observed, now: u64) {
    let Some(u) = &mem.update else { return };
    if u.target_hash == desired.config_hash {
        return;
    }
    let message = format!(
        "updating to {} (superseded the update to {})",
        short(&desired.config_hash),
        short(&u.target_hash)
    );
    let previous = previous_for(mem, desired, observed);
    mem.update = Some(UpdateProgress::start(
        &desired.config_hash,
        previous,
        now,
        message,
    ));
}

/// Where a rollback of an update to `desired` would go: the last configuration the whole group
/// carried, or else the most common configuration among the instances (an adopted group).
fn previous_for(mem: &Memory, desired: &Desired, observed: &Observed) -> Option<String> {
    if let Some(stable) = mem
        .stable_hash
        .as_ref()
        .filter(|h| **h != desired.config_hash)
    {
        return Some(stable.clone());
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for i in &observed.instances {
        if let Some(h) = i
            .config_hash
            .as_deref()
            .filter(|h| *h != desired.config_hash)
        {
            *counts.entry(h).or_default() += 1;
        }
    }
    // Most common; ties go to the smallest hash so the choice is deterministic.
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(h, _)| h.to_string())
}

/// Starts an update when members carry another configuration than the applied one; reopens a
/// finished one when outdated instances turn up again (adopted, or planted by hand).
pub(crate) fn start_if_outdated(
    mem: &mut Memory,
    desired: &Desired,
    observed: &Observed,
    view: &View,
    now: u64,
) {
    if view.all_current() {
        return;
    }
    match mem.update.as_ref().map(|u| u.state) {
        None => {
            let previous = previous_for(mem, desired, observed);
            let message = format!("updating to {}", short(&desired.config_hash));
            mem.update = Some(UpdateProgress::start(
                &desired.config_hash,
                previous,
                now,
                message,
            ));
        }
        Some(UpdateState::Completed) => {
            if let Some(u) = mem.update.as_mut() {
                u.new_phase(
                    UpdateState::Updating,
                    false,
                    now,
                    "outdated instances found; updating them".into(),
                );
            }
        }
        Some(UpdateState::RolledBack) => {
            if let Some(u) = mem.update.as_mut() {
                let msg = "instances of another configuration found; rolling them back".to_string();
                u.new_phase(UpdateState::RollingBack, true, now, msg);
            }
        }
        Some(_) => {}
    }
}

/// What the update's progress asks of the rest of the decision.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The applied configuration changed (a rollback started): classify again.
    pub redo: bool,
    /// Failed replacements still present: destroy and retry them.
    pub retry_failed: Vec<String>,
    /// Slots (logical IDs, `None` for cattle) whose replacement just failed, for backoff.
    pub slot_failures: Vec<Option<String>>,
}

/// Counts failures, applies the failure action, and completes the update when nothing is left.
/// Records a failed replacement found by another rule (remediation of a replacement that never
/// became available). The failure action applies at the next round.
pub(crate) fn note_failure(mem: &mut Memory, instance: &str, what: String) {
    if let Some(u) = mem.update.as_mut().filter(|u| u.state.is_rolling()) {
        if u.failed.insert(format!("i:{instance}")) {
            u.failures += 1;
            u.last_failure = what;
        }
    }
}

pub(crate) fn progress(
    mem: &mut Memory,
    policy: &Policy,
    target: u64,
    view: &View,
    events: &Events,
    now: u64,
) -> Progress {
    let mut out = Progress::default();
    let stable_candidate = mem.update.as_ref().is_none_or(|u| !u.state.is_running());
    if stable_candidate && view.all_current() && !view.members.is_empty() {
        // Nothing running and every member current: this is now the configuration to return to.
        mem.stable_hash = Some(view.applied.clone());
    }
    // Replacements whose provision already counted as failed (it hung past the deadline).
    let late: BTreeSet<&str> = match &mem.update {
        Some(u) if u.state.is_rolling() => view
            .members
            .iter()
            .filter(|m| m.current && !m.ready)
            .filter(|m| {
                mem.instances
                    .get(m.id())
                    .and_then(|r| r.provision_key.as_ref())
                    .is_some_and(|key| u.failed.contains(key))
            })
            .map(|m| m.id())
            .collect(),
        _ => BTreeSet::new(),
    };
    let Some(u) = mem.update.as_mut() else {
        return out;
    };
    if !u.state.is_rolling() {
        return out;
    }
    let deadline = policy.healthy_deadline_ms();
    let phase = u.phase_started_ms;
    let due = move |since: u64| deadline.is_some_and(|d| now >= since.max(phase).saturating_add(d));

    let mut new_failures: Vec<String> = Vec::new();
    let mut unready_replacements = 0u64;
    for m in view.members.iter().filter(|m| m.current && !m.ready) {
        let key = format!("i:{}", m.id());
        if u.failed.contains(&key) || late.contains(m.id()) {
            out.retry_failed.push(m.id().to_string());
            continue;
        }
        if m.first_seen < u.window_started_ms {
            continue; // not made by this update
        }
        unready_replacements += 1;
        if due(m.born) {
            new_failures.push(format!(
                "{} not available within {}s of appearing",
                m.id(),
                seconds(deadline)
            ));
            u.failed.insert(key);
            out.retry_failed.push(m.id().to_string());
            out.slot_failures.push(m.lid().map(str::to_string));
        }
    }
    for p in &view.pending_current {
        let key = pending_key(p.token, p.started_ms);
        if p.started_ms >= u.window_started_ms && due(p.started_ms) && u.failed.insert(key) {
            new_failures.push(format!(
                "a provision pending for more than {}s",
                seconds(deadline)
            ));
            out.slot_failures.push(p.logical_id.clone());
        }
    }
    let applied = u.applied_hash().to_string();
    for p in &events.failed_provisions {
        if p.config_hash == applied
            && p.started_ms >= u.window_started_ms
            && u.failed.insert(p.failure_key())
        {
            new_failures.push("a provision failed".to_string());
        }
    }

    let remaining = view.outdated_members() as u64 + view.pending_outdated;
    u.total = u.total.max(u.done.saturating_add(remaining));
    u.done = u.total.saturating_sub(remaining);
    u.failures += new_failures.len() as u64;
    if !new_failures.is_empty() {
        u.last_failure = new_failures.join("; ");
    }

    // Checked every round, not only when a failure is found here: remediation also records failed
    // replacements (between two rounds).
    let over = u.failures > 0
        && u.failures as f64 > policy.update.max_failure_ratio * u.total.max(1) as f64;
    let what = format!(
        "{} of {} replacement(s) failed (latest: {})",
        u.failures, u.total, u.last_failure
    );
    match policy.update.failure_action {
        FailureAction::Pause if over => {
            out.retry_failed.clear();
            pause(u, format!("{what}; paused"));
        }
        FailureAction::Rollback if over => {
            out.retry_failed.clear();
            match u.previous_hash.clone() {
                Some(prev) if !u.rolling_back && prev != u.target_hash => {
                    let msg = format!("{what}; rolling back to {}", short(&prev));
                    u.new_phase(UpdateState::RollingBack, true, now, msg);
                    out.redo = true;
                    return out;
                }
                Some(_) if u.rolling_back => pause(u, format!("rollback: {what}; paused")),
                _ => pause(
                    u,
                    format!("{what}; no previous configuration is known, so paused instead of rolling back"),
                ),
            }
        }
        FailureAction::Continue if over && !new_failures.is_empty() => {
            u.message = format!("{what}; continuing (FailureAction continue)");
        }
        _ if !new_failures.is_empty() => {
            u.message = format!("{what}; within MaxFailureRatio, retrying")
        }
        _ => {}
    }
    if !u.state.is_rolling() {
        return out;
    }

    // Done when nothing is outdated, nothing is on its way, every replacement is available, and the
    // group is full again (destroying the last outdated instance does not finish the update: its
    // replacement does).
    let current = view.members.iter().filter(|m| m.current).count() as u64;
    let finished =
        remaining == 0 && view.pending_new() == 0 && unready_replacements == 0 && current >= target;
    if finished && out.retry_failed.is_empty() {
        if u.rolling_back {
            u.state = UpdateState::RolledBack;
            u.message = format!("rolled back to {}", short(u.applied_hash()));
        } else {
            u.state = UpdateState::Completed;
            u.message = format!("update to {} completed", short(&u.target_hash));
        }
        mem.stable_hash = Some(applied);
    } else if new_failures.is_empty() {
        let verb = if u.rolling_back {
            "rolling back"
        } else {
            "updating"
        };
        u.message = format!("{verb}: {} of {} replaced", u.done, u.total);
    }
    out
}

fn pause(u: &mut UpdateProgress, message: String) {
    u.state = UpdateState::Paused;
    u.message = format!(
        "{message}; fix the spec and commit it, or run `infrakit group resume` or `infrakit group rollback`"
    );
}

fn seconds(ms: Option<u64>) -> u64 {
    ms.unwrap_or(0) / 1000
}

/// The outdated members to replace now, by Kubernetes' rule: never fewer than `target -
/// MaxUnavailable` instances that are (or may be) serving, counting new instances only once they are
/// available. `taken` marks members another rule already chose this round. An outdated instance that
/// is not serving is replaced first: that costs no availability.
pub(crate) fn choose_replacements<'v, 'a>(
    policy: &Policy,
    target: u64,
    pets: bool,
    view: &'v View<'a>,
    taken: &dyn Fn(&Inst) -> bool,
    blocked: &dyn Fn(&Inst) -> bool,
) -> Vec<&'v Inst<'a>> {
    let budget = policy.budget(target);
    // Pets cannot surge (two instances would claim one logical ID), so one may always be unavailable.
    let unavailable = if pets {
        budget.unavailable.max(1)
    } else {
        budget.unavailable
    };
    let min_available = target.saturating_sub(unavailable);
    let live = || view.members.iter().filter(|m| !taken(m));
    let new_members = live().filter(|m| m.current).count() as u64;
    let new_unready = live().filter(|m| m.current && !m.ready).count() as u64;
    let old_members = live().filter(|m| !m.current).count() as u64;
    let pending_new = view.pending_new();
    let all = new_members + pending_new + old_members + view.pending_outdated;
    let max_down = all
        .saturating_sub(min_available)
        .saturating_sub(new_unready + pending_new);
    if max_down == 0 {
        return Vec::new();
    }
    // Kubernetes' second limit: what is serving now may only drop to the floor. Pending provisions
    // and unknown instances count for `max_down` above but serve nobody.
    let serving = live().filter(|m| m.ready).count() as u64;
    let spare = serving.saturating_sub(min_available);
    // A backoff holds back provisions, so an outdated member is not rolled while its slot's
    // replacement could not be made. Once current members (and provisions on their way) make the
    // target, removing outdated ones needs no replacement: a rollback's failed replacements go at
    // once rather than after the backoff their failures started.
    let replaced = new_members + pending_new >= target;
    let old: Vec<&Inst> = live()
        .filter(|m| !m.current && (replaced || !blocked(m)))
        .collect();
    pick_removals(old, policy.scale_down.order, max_down, spare)
}
