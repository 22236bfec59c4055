//! The rules the executor applies between decisions, decided here from their inputs so the
//! executor only does IO: when to ask the flavor about an instance again, how long an answered
//! provision is waited for before it counts as lost, and when a group may be called converged.
//! Times are plain milliseconds (ages and intervals), never a clock read.

use infrakit_spi::flavor::Health;

use super::memory::Memory;
use super::types::Status;

/// How long a provision the plugin answered is waited for in `DescribeInstances` before it counts
/// as gone (and the core may replace it). A backend that lists new instances late must not cause a
/// second provision; one that lost the instance must not block the group forever.
pub const PROVISION_VISIBILITY_MS: u64 = 60_000;

/// Whether an answered provision still counts as pending: not yet observed, and answered less
/// than [`PROVISION_VISIBILITY_MS`] ago.
pub fn still_pending(observed: bool, answered_ms_ago: u64) -> bool {
    !observed && answered_ms_ago < PROVISION_VISIBILITY_MS
}

/// How long a Healthy verdict is trusted on this pass. While an update rolls, no longer than the
/// poll interval: the core takes serving members down counting on the others' verdicts, and a
/// member that died 20 s ago but is still trusted Healthy could be the one that makes a ZooKeeper
/// ensemble lose its quorum. Bounded by the poll interval, a rollout re-asks the whole group at
/// most once per poll, which costs little next to the replacements themselves.
pub fn healthy_trust_ms(memory: &Memory, health_interval_ms: u64, poll_interval_ms: u64) -> u64 {
    let rolling = memory.update.as_ref().is_some_and(|u| u.state.is_rolling());
    if rolling {
        health_interval_ms.min(poll_interval_ms)
    } else {
        health_interval_ms
    }
}

/// Whether the flavor must be asked about an instance on this pass, given its last verdict and its
/// age, and whether the instance has counted as available yet. A Healthy verdict is trusted for
/// `trust_ms`, but only for a proven instance: during its soak (MinReadySeconds) a new instance is
/// asked on every pass, since "healthy for MinReadySeconds" must mean healthy throughout, not one
/// Healthy answer followed by a long trust. A replacement that runs for a second and exits is
/// caught before the rolling update counts it available and destroys an instance that served.
pub fn needs_health_check(last: Option<(Health, u64)>, proven: bool, trust_ms: u64) -> bool {
    match last {
        Some((Health::Healthy, age_ms)) => !proven || age_ms >= trust_ms,
        _ => true,
    }
}

/// Whether a group is converged as `DescribeGroup` reports it: the core said so, on an observation
/// that succeeded and was decided for the record as it is now (a status older than the last commit
/// says nothing about the new spec), and the group is not being destroyed.
pub fn converged(status: Option<&Status>, observation_current: bool, deleting: bool) -> bool {
    observation_current && !deleting && status.is_some_and(|s| s.converged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{UpdateProgress, UpdateState};

    #[test]
    fn healthy_is_trusted_only_once_proven() {
        let trust = 30_000;
        // Never judged, or not healthy: asked every pass.
        assert!(needs_health_check(None, true, trust));
        assert!(needs_health_check(Some((Health::Unknown, 0)), true, trust));
        assert!(needs_health_check(
            Some((Health::Unhealthy, 0)),
            true,
            trust
        ));
        // Healthy but still soaking (never available yet): asked every pass.
        assert!(needs_health_check(Some((Health::Healthy, 0)), false, trust));
        // Proven and healthy: trusted for the interval, then asked again.
        assert!(!needs_health_check(
            Some((Health::Healthy, 29_999)),
            true,
            trust
        ));
        assert!(needs_health_check(
            Some((Health::Healthy, 30_000)),
            true,
            trust
        ));
    }

    #[test]
    fn a_rolling_update_trusts_healthy_for_one_poll_at_most() {
        let mut memory = Memory::default();
        assert_eq!(healthy_trust_ms(&memory, 30_000, 5_000), 30_000);
        let mut update = UpdateProgress::start("h2", None, 0, String::new());
        memory.update = Some(update.clone());
        assert_eq!(healthy_trust_ms(&memory, 30_000, 5_000), 5_000);
        update.state = UpdateState::Paused;
        memory.update = Some(update);
        assert_eq!(healthy_trust_ms(&memory, 30_000, 5_000), 30_000);
    }

    #[test]
    fn an_answered_provision_is_waited_for_a_minute() {
        assert!(still_pending(false, 0));
        assert!(still_pending(false, PROVISION_VISIBILITY_MS - 1));
        assert!(!still_pending(false, PROVISION_VISIBILITY_MS));
        assert!(!still_pending(true, 0), "observed: it is an instance now");
    }

    #[test]
    fn converged_needs_a_current_observation_and_no_destroy() {
        let done = Status {
            converged: true,
            ..Status::default()
        };
        assert!(converged(Some(&done), true, false));
        assert!(!converged(Some(&done), false, false));
        assert!(!converged(Some(&done), true, true));
        assert!(!converged(None, true, false));
        assert!(!converged(Some(&Status::default()), true, false));
    }
}
