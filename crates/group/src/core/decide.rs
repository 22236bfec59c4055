//! One decision: observe, follow the update, then act in InfraKit's order — remove what must go,
//! shrink, roll, remediate, grow — within the bounds.

use std::collections::BTreeSet;

use infrakit_spi::flavor::Health;
use infrakit_spi::instance::DestroyReason;

use super::backoff;
use super::memory::{Doom, Memory, MEMORY_FORMAT};
use super::observe;
use super::remediate;
use super::rollout;
use super::scale;
use super::types::{Action, Cause, Decision, Desired, Observed, Status};
use super::view::{classify, Inst, View};

/// How long a remediation debt waits for its replacement when there is no healthy deadline.
const OWED_EXPIRY_MS: u64 = 300_000;

/// Decides what to do now. Pure: the same inputs give the same decision.
pub fn decide(desired: &Desired, observed: &Observed, memory: &Memory, now_ms: u64) -> Decision {
    let now = now_ms;
    let policy = &desired.policy;
    let pets = desired.allocation.is_pets();
    let ids = desired.allocation.logical_ids();
    let target = desired.allocation.target();
    let min_ready = policy.min_ready_ms();
    let mut mem = memory.clone();
    mem.format = MEMORY_FORMAT;

    // Bookkeeping first: what finished, failed, became available since last time.
    let ghost_ms = policy.ghost_ms();
    let mut events = observe::record(&mut mem, observed, now, min_ready, ghost_ms);
    if let Some(back) = observed.recovered_ms {
        // Provisions that were running when the instance plugin stopped answering failed with it:
        // neither the slot's nor the update's failures, and the backoff of the outage is dropped.
        events.failed_provisions.retain(|p| p.started_ms > back);
        backoff::forget_outage(&mut mem, back);
    }
    for (_, lid) in &events.newly_ready {
        backoff::record_success(&mut mem, pets, lid.as_deref());
    }
    for p in &events.failed_provisions {
        backoff::record_provision_failure(
            &mut mem,
            pets,
            p.logical_id.as_deref(),
            p.started_ms,
            now,
        );
    }
    let owed_expiry = policy.healthy_deadline_ms().unwrap_or(OWED_EXPIRY_MS);
    for lid in remediate::settle_owed(&mut mem, pets, &events.newly_ready, now, owed_expiry) {
        backoff::record_failure(&mut mem, pets, lid.as_deref(), now);
    }

    if mem.backoff_hash.as_deref() != Some(desired.config_hash.as_str()) {
        mem.backoff.clear();
        mem.backoff_hash = Some(desired.config_hash.clone());
    }

    // The update: supersede, start, count failures, complete.
    rollout::follow_commit(&mut mem, desired, observed, now);
    let mut applied = rollout::applied_hash(&mem, desired);
    let mut view = classify(desired, observed, &mem, &applied, now, min_ready);
    rollout::start_if_outdated(&mut mem, desired, observed, &view, now);
    let progress = rollout::progress(&mut mem, policy, target, &view, &events, now);
    if progress.redo {
        applied = rollout::applied_hash(&mem, desired);
        view = classify(desired, observed, &mem, &applied, now, min_ready);
    }
    for lid in &progress.slot_failures {
        backoff::record_failure(&mut mem, pets, lid.as_deref(), now);
    }
    let rolling = mem.update.as_ref().is_some_and(|u| u.state.is_rolling());

    let mut out = Out::default();
    // Whatever must go regardless of counts: decisions that still stand, duplicates, strays.
    for (inst, reason) in &view.retry {
        out.push(
            Action::Destroy {
                id: inst.id().to_string(),
                reason: *reason,
            },
            Cause::Retry,
        );
    }
    for (inst, cause) in &view.extras {
        out.destroy(&mut mem, inst, DestroyReason::Terminate, *cause, now);
    }
    // Shrink first...
    if !pets {
        for m in scale::choose_shrink(policy, target, &view, rolling) {
            out.destroy(&mut mem, m, DestroyReason::Terminate, Cause::Shrink, now);
        }
    }
    // ...then roll: retry failed replacements, replace outdated members within the budget...
    if rolling {
        let failed: BTreeSet<&str> = progress.retry_failed.iter().map(String::as_str).collect();
        for m in view.members.iter().filter(|m| failed.contains(m.id())) {
            if !out.taken(m) {
                out.destroy(
                    &mut mem,
                    m,
                    DestroyReason::Terminate,
                    Cause::FailedReplacement,
                    now,
                );
            }
        }
        let snapshot = &mem;
        let blocked =
            |m: &Inst| backoff::blocked_until(snapshot, policy, pets, m.lid(), now).is_some();
        let taken = out.taken_set();
        let is_taken = |m: &Inst| taken.contains(m.id());
        let chosen = rollout::choose_replacements(policy, target, pets, &view, &is_taken, &blocked);
        for m in chosen {
            out.destroy(
                &mut mem,
                m,
                DestroyReason::RollingUpdate,
                Cause::Rollout,
                now,
            );
        }
    }
    // ...remediate what stays unhealthy...
    let taken = out.taken_set();
    let is_taken = |m: &Inst| taken.contains(m.id());
    let remediation = remediate::choose(policy, target, &view, &mem, &is_taken, now);
    for m in &remediation.chosen {
        let unproven = m.current && !ever_ready(&mem, m);
        out.destroy(
            &mut mem,
            m,
            DestroyReason::Terminate,
            Cause::Remediation,
            now,
        );
        backoff::record_failure(&mut mem, pets, m.lid(), now);
        if unproven {
            let (id, after) = (m.id(), policy.remediation.unhealthy_seconds);
            rollout::note_failure(
                &mut mem,
                id,
                format!("{id} unhealthy for {after}s before it was ever available"),
            );
        }
    }
    // ...and grow.
    let taken = out.taken_set();
    let removed = |m: &Inst| taken.contains(m.id());
    let provisions = scale::choose_provisions(
        policy, target, pets, &ids, &view, &removed, rolling, &mem, now,
    );
    let provision_cause = if rolling { Cause::Rollout } else { Cause::Fill };
    for lid in &provisions.logical_ids {
        observe::asked(&mut mem, Some(lid), &applied, now);
        out.push(
            Action::Provision {
                logical_id: Some(lid.clone()),
                config_hash: applied.clone(),
            },
            provision_cause,
        );
    }
    for _ in 0..provisions.count {
        observe::asked(&mut mem, None, &applied, now);
        out.push(
            Action::Provision {
                logical_id: None,
                config_hash: applied.clone(),
            },
            provision_cause,
        );
    }

    backoff::prune(&mut mem, pets, &ids);
    let wake_at_ms = wake_at(
        &mem,
        policy,
        &view,
        now,
        remediation.next_due,
        provisions.backoff_until,
        owed_expiry,
    );
    let status = status(
        &mem,
        target,
        &view,
        &out,
        remediation.stopped,
        provisions.held,
    );
    Decision {
        actions: out.actions,
        causes: out.causes,
        memory: mem,
        wake_at_ms,
        status,
    }
}

fn ever_ready(mem: &Memory, m: &Inst) -> bool {
    mem.instances.get(m.id()).is_some_and(|r| r.ever_ready)
}

/// The actions chosen so far, and the members they remove.
#[derive(Default)]
struct Out {
    actions: Vec<Action>,
    causes: Vec<Cause>,
    destroyed: BTreeSet<String>,
}

impl Out {
    fn push(&mut self, action: Action, cause: Cause) {
        if let Action::Destroy { id, .. } = &action {
            self.destroyed.insert(id.clone());
        }
        self.actions.push(action);
        self.causes.push(cause);
    }

    /// Destroys an instance and remembers the decision, so that it stands after a failed destroy or a
    /// restart.
    fn destroy(
        &mut self,
        mem: &mut Memory,
        inst: &Inst,
        reason: DestroyReason,
        cause: Cause,
        now: u64,
    ) {
        if self.destroyed.contains(inst.id()) {
            return;
        }
        if let Some(m) = mem.instances.get_mut(inst.id()) {
            m.doomed = Some(Doom {
                cause,
                reason,
                at_ms: now,
            });
        }
        self.push(
            Action::Destroy {
                id: inst.id().to_string(),
                reason,
            },
            cause,
        );
    }

    fn taken(&self, m: &Inst) -> bool {
        self.destroyed.contains(m.id())
    }

    fn taken_set(&self) -> BTreeSet<String> {
        self.destroyed.clone()
    }
}

/// The earliest future time at which a time-based rule could decide differently.
fn wake_at(
    mem: &Memory,
    policy: &super::policy::Policy,
    view: &View,
    now: u64,
    remediation_due: Option<u64>,
    backoff_until: Option<u64>,
    owed_expiry: u64,
) -> Option<u64> {
    let mut times: Vec<u64> = Vec::new();
    let min_ready = policy.min_ready_ms();
    // Soak ends.
    for m in view.members.iter().filter(|m| m.healthy() && !m.ready) {
        if let Some(since) = mem.instances.get(m.id()).and_then(|r| r.healthy_since_ms) {
            times.push(since.saturating_add(min_ready));
        }
    }
    // Healthy deadlines of the running update's replacements.
    if let (Some(u), Some(deadline)) = (mem.update.as_ref(), policy.healthy_deadline_ms()) {
        if u.state.is_rolling() {
            let at = |since: u64| since.max(u.phase_started_ms).saturating_add(deadline);
            for m in view
                .members
                .iter()
                .filter(|m| m.current && !m.ready && m.first_seen >= u.window_started_ms)
            {
                times.push(at(m.born));
            }
            for p in view
                .pending_current
                .iter()
                .filter(|p| p.started_ms >= u.window_started_ms)
            {
                times.push(at(p.started_ms));
            }
        }
    }
    times.extend(remediation_due);
    times.extend(backoff_until);
    // Backoffs that may hold back a rolling replacement.
    for b in mem.backoff.values() {
        times.push(
            b.last_failure_ms
                .saturating_add(policy.backoff_ms(b.failures)),
        );
    }
    for o in &mem.owed {
        times.push(o.since_ms.saturating_add(owed_expiry));
    }
    // Ghost provisions expire.
    for p in mem.inflight.iter().filter(|p| p.ghost) {
        times.push(p.ghost_expiry(policy.ghost_ms()));
    }
    times.into_iter().filter(|t| *t > now).min()
}

fn status(
    mem: &Memory,
    target: u64,
    view: &View,
    out: &Out,
    remediation_stopped: Option<String>,
    held: Option<String>,
) -> Status {
    let update = mem.update_status();
    let running = update.as_ref().is_some_and(|u| u.state.is_running());
    let present = view.members.len() as u64;
    let pending = view.pending_new() + view.pending_outdated;
    let current = view.members.iter().filter(|m| m.current).count() as u64;
    let nothing_moving = out.actions.is_empty()
        && view.retry.is_empty()
        && view.extras.is_empty()
        && view.physical == present;
    let converged =
        !running && present == target && current == present && view.all_current() && nothing_moving;
    let mut clauses: Vec<String> = Vec::new();
    if present < target {
        clauses.push(format!("{present} of {target} instances present"));
    } else if present > target {
        clauses.push(format!(
            "{present} instances, {} above the target of {target}",
            present - target
        ));
    }
    if pending > 0 {
        clauses.push(format!("{pending} being created"));
    }
    if let Some(u) = &update {
        if running || !converged || u.rolling_back {
            clauses.push(u.message.clone());
        }
    }
    clauses.extend(remediation_stopped.clone());
    clauses.extend(held);
    Status {
        converged,
        target,
        update,
        message: clauses.join("; "),
        unhealthy: view
            .members
            .iter()
            .filter(|m| m.obs.health == Health::Unhealthy)
            .map(|m| m.id().to_string())
            .collect(),
        present,
        pending,
        destroying: view.destroying,
        current,
        available: view.members.iter().filter(|m| m.ready).count() as u64,
        applied_hash: view.applied.clone(),
        remediation_stopped,
    }
}
