//! Size: removing members above the target, and provisioning up to it.

use super::backoff;
use super::memory::Memory;
use super::policy::Policy;
use super::view::{pick_removals, Inst, View};

/// Cattle members above the target to destroy now: outdated first, then unhealthy, then not yet
/// available, then by the scale-down order. A member that may be serving is only removed while the
/// ones that remain keep `target - MaxUnavailable` serving, so a shrink during an update cannot
/// leave only unproven instances; what is skipped now goes once the rest are available.
///
/// While an update rolls, outdated members are the rollout's to replace (and surge instances are
/// meant to be there): only current members above the target are removed here.
pub(crate) fn choose_shrink<'v, 'a>(
    policy: &Policy,
    target: u64,
    view: &'v View<'a>,
    rolling: bool,
) -> Vec<&'v Inst<'a>> {
    let excess = if rolling {
        let current = view.members.iter().filter(|m| m.current).count() as u64;
        (current + view.pending_new())
            .saturating_sub(target)
            .min(current)
    } else {
        (view.members.len() as u64).saturating_sub(target)
    };
    if excess == 0 {
        return Vec::new();
    }
    let floor = target.saturating_sub(policy.budget(target).unavailable);
    let available = view.members.iter().filter(|m| m.ready).count() as u64;
    let spare = available.saturating_sub(floor);
    let candidates: Vec<&Inst> = view
        .members
        .iter()
        .filter(|m| !rolling || m.current)
        .collect();
    pick_removals(candidates, policy.scale_down.order, excess, spare)
}

/// What to provision.
pub(crate) struct Provisions {
    /// Logical IDs for pets; `count` anonymous instances for cattle.
    pub logical_ids: Vec<String>,
    pub count: u64,
    /// When a backoff that holds a provision back ends.
    pub backoff_until: Option<u64>,
    /// Why provisions are held back, when they are.
    pub held: Option<String>,
}

/// Provisions to reach the target, never letting everything that exists or will (instances being
/// destroyed included: they exist until the destroy finishes) exceed `target + MaxSurge`. While an
/// update rolls, the target counts current instances only, so the surge makes room for
/// replacements; otherwise (paused, or no update) every member counts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn choose_provisions(
    policy: &Policy,
    target: u64,
    pets: bool,
    ids: &[&str],
    view: &View,
    removed: &dyn Fn(&Inst) -> bool,
    rolling: bool,
    mem: &Memory,
    now: u64,
) -> Provisions {
    let mut out = Provisions {
        logical_ids: Vec::new(),
        count: 0,
        backoff_until: None,
        held: None,
    };
    let surge = policy.budget(target).surge;
    let room = target.saturating_add(surge).saturating_sub(view.physical);
    if pets {
        let mut room = room;
        for id in ids {
            if view.busy_ids.contains(id) {
                continue; // one instance per logical ID: wait until the slot is empty
            }
            if room == 0 {
                out.held = Some(format!(
                    "waiting for destroys to finish before creating more (at most {} instances)",
                    target + surge
                ));
                break;
            }
            if let Some(until) = backoff::blocked_until(mem, policy, true, Some(id), now) {
                out.backoff_until = Some(out.backoff_until.map_or(until, |t| t.min(until)));
                out.held = Some(format!(
                    "logical ID {id} keeps failing; retrying after a backoff"
                ));
                continue;
            }
            room -= 1;
            out.logical_ids.push((*id).to_string());
        }
        return out;
    }
    let live = || view.members.iter().filter(|m| !removed(m));
    let current = live().filter(|m| m.current).count() as u64 + view.pending_new();
    let outdated = live().filter(|m| !m.current).count() as u64 + view.pending_outdated;
    let want = if rolling {
        target.saturating_sub(current)
    } else {
        target.saturating_sub(current + outdated)
    };
    if want == 0 {
        return out;
    }
    if let Some(until) = backoff::blocked_until(mem, policy, false, None, now) {
        out.backoff_until = Some(until);
        out.held = Some("new instances keep failing; retrying after a backoff".into());
        return out;
    }
    out.count = want.min(room);
    if out.count < want && !rolling {
        out.held = Some(format!(
            "waiting for destroys to finish before creating more (at most {} instances)",
            target + surge
        ));
    }
    out
}
