//! The invariants, checked against the simulated truth (not the core's own view).
//!
//! A check either passes, fails the seed, or — when a fault made the invariant impossible to keep —
//! counts as *tolerated* under a named reason in the report. Nothing is skipped silently.

use std::collections::{BTreeMap, BTreeSet};

use infrakit_spi::flavor::Health;

use super::world::{GroupSim, World};
use super::Report;
use crate::core::{Action, Allocation, Cause, Decision, Memory, Observed, UpdateState};
use crate::policy::FailureAction;

/// Steps after a restart during which the restored memory may be older than the truth (a lost write,
/// a soak clock that missed a flap): decisions that depend on that memory are tolerated, not failed.
const RESTART_WINDOW: u64 = 8;

pub(crate) fn tolerate(report: &mut Report, reason: &str) {
    *report.tolerated.entry(reason.to_string()).or_default() += 1;
}

fn recently_restarted(w: &World) -> bool {
    w.last_restart_step
        .is_some_and(|s| w.step <= s + RESTART_WINDOW)
}

/// The availability floor, `target - MaxUnavailable` (pets always allow one unavailable).
pub(crate) fn floor(g: &GroupSim) -> u64 {
    let target = g.desired.allocation.target();
    let mut u = g.desired.policy.budget(target).unavailable;
    if g.desired.allocation.is_pets() {
        u = u.max(1);
    }
    target.saturating_sub(u)
}

/// Serving capacity by the truth: instances healthy for at least MinReadySeconds, not being
/// destroyed, not in `excluded`; for pets, listed logical IDs with at least one such instance.
pub(crate) fn available(w: &World, g: &GroupSim, excluded: &BTreeSet<&str>) -> u64 {
    let min_ready = g.desired.policy.min_ready_ms();
    let serving = |id: &str, i: &super::world::Inst| {
        i.group == g.desired.group
            && i.health == Health::Healthy
            && i.healthy_since.is_some_and(|t| w.now >= t + min_ready)
            && !excluded.contains(id)
            && !w.being_destroyed(id)
    };
    match &g.desired.allocation {
        Allocation::Size(_) => w.insts.iter().filter(|(id, i)| serving(id, i)).count() as u64,
        Allocation::Pets(_) => {
            let listed: BTreeSet<&str> = g.desired.allocation.logical_ids().into_iter().collect();
            let slots: BTreeSet<&str> = w
                .insts
                .iter()
                .filter(|(id, i)| serving(id, i))
                .filter_map(|(_, i)| i.lid.as_deref())
                .filter(|l| listed.contains(l))
                .collect();
            slots.len() as u64
        }
    }
}

/// Checks one decision against the world it was made in (before it is executed).
pub(crate) fn decision(
    w: &World,
    gi: usize,
    observed: &Observed,
    before: &Memory,
    d: &Decision,
    report: &mut Report,
) -> Result<(), String> {
    let g = &w.groups[gi];
    let name = &g.desired.group;
    let policy = &g.desired.policy;
    let target = g.desired.allocation.target();
    if d.actions.len() != d.causes.len() {
        return Err("a decision's causes do not match its actions".into());
    }
    let mut seen = BTreeSet::new();
    let mut destroyed: BTreeSet<&str> = BTreeSet::new();
    let mut retried: BTreeSet<&str> = BTreeSet::new();
    let mut remediated = 0u64;
    for (a, c) in d.actions.iter().zip(&d.causes) {
        match a {
            Action::Destroy { id, .. } => {
                let Some(inst) = w.insts.get(id) else {
                    return Err(format!("{name}: destroy of {id}, which does not exist"));
                };
                if inst.group != *name {
                    return Err(format!(
                        "{name}: destroy of {id}, which belongs to group {}",
                        inst.group
                    ));
                }
                if g.exec.destroying.contains(id) || !seen.insert(id.as_str()) {
                    return Err(format!("{name}: {id} destroyed twice"));
                }
                if *c == Cause::Retry {
                    retried.insert(id);
                } else {
                    destroyed.insert(id);
                }
                if *c == Cause::Remediation {
                    remediated += 1;
                }
            }
            Action::Provision {
                logical_id,
                config_hash,
            } => {
                if *config_hash != g.desired.config_hash
                    && before
                        .update
                        .as_ref()
                        .and_then(|u| u.previous_hash.as_ref())
                        != Some(config_hash)
                    && d.memory
                        .update
                        .as_ref()
                        .and_then(|u| u.previous_hash.as_ref())
                        != Some(config_hash)
                {
                    return Err(format!(
                        "{name}: provision of unknown configuration {config_hash}"
                    ));
                }
                match (&g.desired.allocation, logical_id) {
                    (Allocation::Pets(ids), Some(l)) if ids.contains(l) => {}
                    (Allocation::Size(_), None) => {}
                    _ => {
                        return Err(format!(
                        "{name}: provision with logical ID {logical_id:?} not in the allocation"
                    ))
                    }
                }
            }
        }
    }

    // The controller never takes serving capacity below the floor by its own destroys. A retried
    // destroy is exempt: the instance was drained by the first attempt.
    let before_avail = available(w, g, &retried);
    let mut both = retried.clone();
    both.extend(destroyed.iter().copied());
    let after_avail = available(w, g, &both);
    if after_avail < before_avail && after_avail < floor(g) {
        if recently_restarted(w) {
            tolerate(
                report,
                "availability: decided from memory restored after a restart",
            );
        } else {
            return Err(format!(
                "{name}: destroys took available instances from {before_avail} to {after_avail}, below \
                 target {target} - MaxUnavailable = {}",
                floor(g)
            ));
        }
    }

    // Remediation: never in a meltdown, never more than MaxInFlight at once.
    if remediated > 0 {
        let unhealthy = unhealthy_members(g, observed, before);
        let cap = policy.max_unhealthy(target);
        if unhealthy > cap {
            return Err(format!(
                "{name}: remediated with {unhealthy} unhealthy members, above MaxUnhealthy ({cap})"
            ));
        }
        let running = w
            .dels
            .iter()
            .filter(|d| {
                d.cause == Cause::Remediation
                    && w.insts.get(&d.id).is_some_and(|i| i.group == *name)
            })
            .count() as u64;
        if running + remediated > policy.remediation.max_in_flight {
            if recently_restarted(w) {
                tolerate(report, "remediation: in-flight count lost with a restart");
            } else {
                return Err(format!(
                    "{name}: {} remediations in flight, above MaxInFlight {}",
                    running + remediated,
                    policy.remediation.max_in_flight
                ));
            }
        }
    }

    // Updates pause and roll back only as the policy (or a command, applied outside decide) says.
    if let (Some(b), Some(a)) = (&before.update, &d.memory.update) {
        if a.target_hash == b.target_hash {
            let action = policy.update.failure_action;
            if a.state == UpdateState::Paused && b.state != UpdateState::Paused {
                let ok = match action {
                    FailureAction::Pause => true,
                    FailureAction::Rollback => {
                        b.rolling_back
                            || b.previous_hash.is_none()
                            || b.previous_hash == Some(b.target_hash.clone())
                    }
                    FailureAction::Continue => false,
                };
                if !ok {
                    return Err(format!(
                        "{name}: update paused against FailureAction {action:?}: {}",
                        a.message
                    ));
                }
            }
            if a.rolling_back && !b.rolling_back && action != FailureAction::Rollback {
                return Err(format!(
                    "{name}: update rolled back against FailureAction {action:?}: {}",
                    a.message
                ));
            }
        }
    }
    Ok(())
}

/// Unhealthy members as the core counts them (doomed instances and pet duplicates aside).
fn unhealthy_members(g: &GroupSim, observed: &Observed, before: &Memory) -> u64 {
    let live = observed.instances.iter().filter(|i| {
        !observed.destroying.contains(&i.id)
            && before
                .instances
                .get(&i.id)
                .is_none_or(|m| m.doomed.is_none())
    });
    match &g.desired.allocation {
        Allocation::Size(_) => live.filter(|i| i.health == Health::Unhealthy).count() as u64,
        Allocation::Pets(_) => {
            let listed: BTreeSet<&str> = g.desired.allocation.logical_ids().into_iter().collect();
            // A slot's keeper is unhealthy only when every live instance of it is.
            let mut slots: BTreeMap<&str, bool> = BTreeMap::new();
            for i in live {
                if let Some(l) = i.logical_id.as_deref().filter(|l| listed.contains(l)) {
                    let all_bad = slots.entry(l).or_insert(true);
                    *all_bad &= i.health == Health::Unhealthy;
                }
            }
            slots.values().filter(|b| **b).count() as u64
        }
    }
}

/// Checks the world after every group decided and its actions started.
pub(crate) fn step(w: &mut World, report: &mut Report) -> Result<(), String> {
    let known: BTreeSet<String> = w.groups.iter().map(|g| g.desired.group.clone()).collect();
    if let Some((id, i)) = w.insts.iter().find(|(_, i)| !known.contains(&i.group)) {
        return Err(format!("{id} belongs to no known group ({})", i.group));
    }
    for gi in 0..w.groups.len() {
        bound(w, gi, report)?;
        pets(w, gi, report)?;
        let g = &w.groups[gi];
        if available(w, g, &BTreeSet::new()) < floor(g) {
            let reason = shortfall_reason(w, gi);
            tolerate(report, &format!("availability below the floor: {reason}"));
        }
    }
    Ok(())
}

/// Instances (being destroyed included) plus provisions in flight never exceed `target + MaxSurge`;
/// while a shrink is under way the larger, previous target counts.
fn bound(w: &mut World, gi: usize, report: &mut Report) -> Result<(), String> {
    let name = w.groups[gi].desired.group.clone();
    let physical = w.insts.values().filter(|i| i.group == name).count() as u64
        + w.provs.iter().filter(|p| p.group == name).count() as u64;
    let orphans_in_flight = w
        .provs
        .iter()
        .filter(|p| p.group == name && p.orphan)
        .count() as u64;
    let g = &mut w.groups[gi];
    let target = g.desired.allocation.target();
    let policy = &g.desired.policy;
    let limit = |n: u64| n + policy.budget(n).surge;
    if physical <= limit(target) {
        g.shrink_from = None;
    }
    let effective = target.max(g.shrink_from.unwrap_or(0));
    let bound = limit(effective);
    if physical <= bound {
        g.excess_credit = 0;
        return Ok(());
    }
    if physical <= bound + g.excess_credit + orphans_in_flight {
        tolerate(report, "above target + MaxSurge: a planted instance, or a pre-restart provision the restored memory \
             did not know or that came after its deadline");
        return Ok(());
    }
    Err(format!(
        "{name}: {physical} instances and provisions, above target {effective} + MaxSurge = {bound} \
         (fault credit {})",
        g.excess_credit + orphans_in_flight
    ))
}

/// Never two instances for one logical ID made by the controller; a planted duplicate is being
/// destroyed within a step.
fn pets(w: &mut World, gi: usize, report: &mut Report) -> Result<(), String> {
    let name = w.groups[gi].desired.group.clone();
    if !w.groups[gi].desired.allocation.is_pets() {
        return Ok(());
    }
    // Per logical ID: instances and provisions the controller made, whether one of them is an
    // excusable orphan, whether one of them comes from before a restart at all.
    let mut made: BTreeMap<&str, (u64, bool, bool)> = BTreeMap::new();
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    for (id, i) in w.insts.iter().filter(|(_, i)| i.group == name) {
        let Some(l) = i.lid.as_deref() else { continue };
        if !i.planted {
            let e = made.entry(l).or_default();
            e.0 += 1;
            e.1 |= i.orphan;
            e.2 |= i.from_orphan;
        }
        if !w.being_destroyed(id) {
            *live.entry(l.to_string()).or_default() += 1;
        }
    }
    let deadline = w.deadline_ms(gi);
    for p in w.provs.iter().filter(|p| p.group == name) {
        if let Some(l) = p.lid.as_deref() {
            let e = made.entry(l).or_default();
            e.0 += 1;
            e.1 |= p.excusable(w.now, deadline);
            e.2 |= p.orphan;
        }
    }
    for (l, (n, excusable, orphan)) in &made {
        if *n <= 1 {
            continue;
        }
        if *excusable {
            tolerate(
                report,
                "two instances for a logical ID: a pre-restart provision the restored memory did not \
                 know, or that came after its deadline",
            );
        } else if *orphan
            && w.planted_since_restart
                .contains(&(name.clone(), l.to_string()))
        {
            tolerate(
                report,
                "two instances for a logical ID: an instance planted after a restart was taken for the \
                 pre-restart provision of that ID",
            );
        } else {
            return Err(format!(
                "{name}: the controller made {n} instances for logical ID {l}"
            ));
        }
    }
    let g = &mut w.groups[gi];
    g.dup_steps
        .retain(|l, _| live.get(l).is_some_and(|n| *n > 1));
    for (l, n) in live {
        if n > 1 {
            let steps = g.dup_steps.entry(l.clone()).or_default();
            *steps += 1;
            if *steps >= 2 {
                return Err(format!(
                    "{name}: logical ID {l} has had {n} live instances for {steps} steps"
                ));
            }
        }
    }
    Ok(())
}

/// Why a group serves less than its floor: a fault, always (the decision check makes sure the
/// controller's own destroys never cause it).
fn shortfall_reason(w: &World, gi: usize) -> &'static str {
    let g = &w.groups[gi];
    let name = &g.desired.group;
    let members: Vec<&super::world::Inst> = w
        .insts
        .iter()
        .filter(|(id, i)| i.group == *name && !w.being_destroyed(id))
        .map(|(_, i)| i)
        .collect();
    let target = g.desired.allocation.target();
    if (members.len() as u64) < target {
        "instances missing (died, failed or hung provisions, growth, or replacements under way)"
    } else if members
        .iter()
        .any(|i| !w.specs.get(&i.hash).copied().unwrap_or(true))
    {
        "instances of a broken configuration"
    } else if members.iter().any(|i| i.health == Health::Unhealthy) {
        "instances unhealthy (flaps, sickness)"
    } else {
        "instances not ready yet (booting, soaking, or health unknown)"
    }
}
