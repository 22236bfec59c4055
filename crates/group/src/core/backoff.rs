//! Exponential backoff for slots whose replacements keep failing.

use super::memory::{slot_key, Memory};
use super::policy::Policy;

pub(crate) fn record_failure(mem: &mut Memory, pets: bool, logical_id: Option<&str>, now: u64) {
    let b = mem.backoff.entry(slot_key(pets, logical_id)).or_default();
    b.failures = b.failures.saturating_add(1);
    b.last_failure_ms = now;
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
