//! Health-driven remediation: replace instances that stay unhealthy, a few at a time, and never in a
//! meltdown.

use infrakit_spi::flavor::Health;

use super::memory::Memory;
use super::policy::Policy;
use super::types::Cause;
use super::view::{Inst, View};

pub(crate) struct Remediation<'v, 'a> {
    pub chosen: Vec<&'v Inst<'a>>,
    /// Why remediation is held back, when it is.
    pub stopped: Option<String>,
    /// When the next unhealthy instance reaches its timeout.
    pub next_due: Option<u64>,
}

/// Remediations in flight: chosen instances not yet gone, plus replacements not yet available.
pub(crate) fn in_flight(mem: &Memory) -> u64 {
    let doomed = mem
        .instances
        .values()
        .filter(|m| m.doomed.is_some_and(|d| d.cause == Cause::Remediation))
        .count();
    (doomed + mem.owed.len()) as u64
}

pub(crate) fn choose<'v, 'a>(
    policy: &Policy,
    target: u64,
    view: &'v View<'a>,
    mem: &Memory,
    taken: &dyn Fn(&Inst) -> bool,
    now: u64,
) -> Remediation<'v, 'a> {
    let mut out = Remediation {
        chosen: Vec::new(),
        stopped: None,
        next_due: None,
    };
    let Some(after) = policy.unhealthy_ms() else {
        return out;
    };
    let unhealthy = view
        .members
        .iter()
        .filter(|m| m.obs.health == Health::Unhealthy)
        .count() as u64;
    let cap = policy.max_unhealthy(target);
    if unhealthy > cap {
        out.stopped = Some(format!(
            "remediation stopped: {unhealthy} of {target} instances are unhealthy, more than MaxUnhealthy \
             {} ({cap}); a failure this wide is more likely the network or the health check than the \
             instances, so none is replaced until fewer are unhealthy",
            policy.remediation.max_unhealthy
        ));
        return out;
    }
    let mut due: Vec<(u64, &Inst)> = Vec::new();
    for m in view
        .members
        .iter()
        .filter(|m| m.obs.health == Health::Unhealthy && !taken(m))
    {
        let since = m.unhealthy_since.unwrap_or(now);
        let at = since.saturating_add(after);
        if at <= now {
            due.push((since, m));
        } else {
            out.next_due = Some(out.next_due.map_or(at, |t| t.min(at)));
        }
    }
    let free = policy
        .remediation
        .max_in_flight
        .saturating_sub(in_flight(mem));
    due.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id().cmp(b.1.id())));
    out.chosen = due
        .into_iter()
        .take(usize::try_from(free).unwrap_or(usize::MAX))
        .map(|(_, m)| m)
        .collect();
    out
}

/// Settles remediation debts: a debt is paid when an instance first seen since the remediation
/// becomes available (the same logical ID for pets), and written off as a failure after `expiry_ms`.
/// Returns the slots (logical IDs) whose debt was written off.
pub(crate) fn settle_owed(
    mem: &mut Memory,
    pets: bool,
    newly_ready: &[(String, Option<String>)],
    now: u64,
    expiry_ms: u64,
) -> Vec<Option<String>> {
    for (id, lid) in newly_ready {
        let first_seen = mem.instances.get(id).map_or(now, |m| m.first_seen_ms);
        let pos = mem.owed.iter().position(|o| {
            o.since_ms <= first_seen && (!pets || o.logical_id.as_deref() == lid.as_deref())
        });
        if let Some(pos) = pos {
            mem.owed.remove(pos);
        }
    }
    let mut expired = Vec::new();
    mem.owed.retain(|o| {
        let keep = now < o.since_ms.saturating_add(expiry_ms);
        if !keep {
            expired.push(o.logical_id.clone());
        }
        keep
    });
    expired
}
