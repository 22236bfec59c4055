//! Exponential backoff for slots whose replacements keep failing.

use super::memory::{slot_key, Memory};
use super::policy::Policy;

pub(crate) fn record_failure(mem: &mut Memory, pets: bool, logical_id: Option<&str>, now: u64) {
    let b = mem.backoff.entry(slot_key(pets, logical_id)).or_default();
    b.failures = b.failures.saturating_add(1);
    b.last_failure_ms = now;
}

/// A provision of the slot, started at `started_ms`, failed. Failures of provisions that were
/// already running when the slot's last failure was counted are the same failure: one cause (an
/// instance plugin that went away, a backend refusing the spec) fails every provision in flight at
/// once, and counting each made one outage of a 2,000-instance commit hundreds of failures in a
/// row, held back for MaxBackoffSeconds. Counted this way the backoff grows per round of retries.
pub(crate) fn record_provision_failure(
    mem: &mut Memory,
    pets: bool,
    logical_id: Option<&str>,
    started_ms: u64,
    now: u64,
) {
    let b = mem.backoff.entry(slot_key(pets, logical_id)).or_default();
    // Strictly before: a provision asked by the decision that counted the failure is a retry.
    if b.failures > 0 && started_ms < b.last_failure_ms {
        return;
    }
    b.failures = b.failures.saturating_add(1);
    b.last_failure_ms = now;
}

/// The instance plugin answers again after an outage (`Observed::recovered_ms`): the backoff
/// built up until then was the outage's, so the work resumes at once.
pub(crate) fn forget_outage(mem: &mut Memory, recovered_ms: u64) {
    mem.backoff.retain(|_, b| b.last_failure_ms > recovered_ms);
}

/// An instance of the slot became available: its replacements work again.
pub(crate) fn record_success(mem: &mut Memory, pets: bool, logical_id: Option<&str>) {
    mem.backoff.remove(&slot_key(pets, logical_id));
}

/// When the slot may be provisioned again, if that is later than `now`.
pub(crate) fn blocked_until(
    mem: &Memory,
    policy: &Policy,
    pets: bool,
    logical_id: Option<&str>,
    now: u64,
) -> Option<u64> {
    let b = mem.backoff.get(&slot_key(pets, logical_id))?;
    let until = b
        .last_failure_ms
        .saturating_add(policy.backoff_ms(b.failures));
    (until > now).then_some(until)
}

/// Drops the backoff of logical IDs no longer in the list (and of the group slot for pets, and the
/// other way round), so memory does not grow with every ID ever used.
pub(crate) fn prune(mem: &mut Memory, pets: bool, ids: &[&str]) {
    mem.backoff.retain(|key, _| match key.strip_prefix("id:") {
        Some(id) => pets && ids.contains(&id),
        None => !pets,
    });
}
