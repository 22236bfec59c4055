//! What goes into a decision and what comes out of it.

use std::collections::BTreeSet;

use infrakit_spi::flavor::Health;
use infrakit_spi::instance::{DestroyReason, InstanceId, LogicalId};
use serde::{Deserialize, Serialize};

use super::memory::Memory;
use super::policy::Policy;

/// How many instances the group keeps: cattle by count, pets by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allocation {
    Size(u64),
    /// One instance per logical ID, in this order (duplicates in the list are ignored).
    Pets(Vec<LogicalId>),
}

impl Allocation {
    /// The number of instances the group should have.
    pub fn target(&self) -> u64 {
        match self {
            Allocation::Size(n) => *n,
            Allocation::Pets(ids) => ids.iter().collect::<BTreeSet<_>>().len() as u64,
        }
    }

    /// The logical IDs without repeats, in the order given.
    pub fn logical_ids(&self) -> Vec<&str> {
        match self {
            Allocation::Size(_) => Vec::new(),
            Allocation::Pets(ids) => {
                let mut seen = BTreeSet::new();
                ids.iter()
                    .map(String::as_str)
                    .filter(|id| seen.insert(*id))
                    .collect()
            }
        }
    }

    pub fn is_pets(&self) -> bool {
        matches!(self, Allocation::Pets(_))
    }
}

/// The committed spec of a group, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub group: String,
    pub allocation: Allocation,
    /// [`config_hash`] of the spec's Instance and Flavor blocks; instances carrying another are outdated.
    pub config_hash: String,
    pub policy: Policy,
}

/// One instance of the group as the executor sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: InstanceId,
    pub logical_id: Option<LogicalId>,
    /// The `infrakit.config.hash` tag (`None` for instances adopted without one: they are outdated).
    pub config_hash: Option<String>,
    /// The flavor's latest verdict. Pass the last known verdict for an instance not checked this
    /// round, not `Unknown`: Unknown means "cannot tell", which stops the instance counting as
    /// available and restarts its soak.
    pub health: Health,
    /// The flavor says this member leads its cluster (`Flavor.Leading`): it is replaced and
    /// removed after every other candidate, so leadership moves once, at the end.
    pub leads: bool,
}

/// A provision the executor started and has not seen finish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingProvision {
    /// Unique among the executor's provisions (with `started_ms`, across restarts too).
    pub token: u64,
    pub logical_id: Option<LogicalId>,
    pub config_hash: String,
    pub started_ms: u64,
}

/// The observed state of one group. The executor's contract:
/// - `instances` come from a successful describe; after a failed describe, do not decide at all
///   (an empty list would look like a group that lost every instance).
/// - A finished provision leaves `pending` and enters `instances` in the same snapshot; a failed one
///   just leaves `pending` (the core infers the failure and backs off).
/// - Every action of a decision is reflected (in `pending` or `destroying`) before the next decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub instances: Vec<ObservedInstance>,
    pub pending: Vec<PendingProvision>,
    /// Instances whose drain and destroy are in flight (they may still be listed in `instances`).
    pub destroying: BTreeSet<InstanceId>,
    /// When the instance plugin last answered again after an outage (it could not be reached, or
    /// said it restarted: `Resync`), if it did. Provisions started before then that failed are not
    /// counted as failures (of the slot's backoff or of an update), and the backoff recorded until
    /// then is dropped: the plugin is back, so the work resumes at once.
    pub recovered_ms: Option<u64>,
}

/// One thing for the executor to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Provision one instance from the spec whose hash is `config_hash` (the committed one, or the
    /// previous one while rolling back: the executor keeps both specs).
    Provision {
        logical_id: Option<LogicalId>,
        config_hash: String,
    },
    /// Drain (through the flavor) and then destroy.
    Destroy {
        id: InstanceId,
        reason: DestroyReason,
    },
}

/// Why an action was chosen, for logs, `describe` and the simulation's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Provision: the group is below its target (growth, or an instance disappeared).
    Fill,
    /// Provision or destroy: a step of a rolling update (or rollback).
    Rollout,
    /// Destroy: the group is above its target.
    Shrink,
    /// Destroy: a second instance claims a pet's logical ID.
    Duplicate,
    /// Destroy: a pet whose logical ID is not in the list, or has none.
    Stray,
    /// Destroy: unhealthy for longer than `UnhealthySeconds`.
    Remediation,
    /// Destroy: a replacement that never became available; it is retried.
    FailedReplacement,
    /// Destroy: decided before (a failed destroy, or a restart lost it), still present.
    Retry,
}

impl Cause {
    /// Its name as serialized (`fill`, `rollout`, ...), without a serializer.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Fill => "fill",
            Cause::Rollout => "rollout",
            Cause::Shrink => "shrink",
            Cause::Duplicate => "duplicate",
            Cause::Stray => "stray",
            Cause::Remediation => "remediation",
            Cause::FailedReplacement => "failed_replacement",
            Cause::Retry => "retry",
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// `causes[i]` explains `actions[i]`.
    pub causes: Vec<Cause>,
    /// The memory to persist (atomically) when it differs from the one passed in.
    pub memory: Memory,
    /// The earliest time a time-based rule may change the decision (soak end, healthy deadline,
    /// unhealthy timeout, backoff end); decide again then, or on any event before it.
    pub wake_at_ms: Option<u64>,
    pub status: Status,
}

/// The state of an update as `describe` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollingBack,
    RolledBack,
}

impl UpdateState {
    /// Its name as serialized (`updating`, `rolled_back`, ...), without a serializer.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollingBack => "rolling_back",
            UpdateState::RolledBack => "rolled_back",
        }
    }

    /// Replacing instances now (not paused, not finished).
    pub fn is_rolling(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollingBack)
    }

    /// Updating, rolling back, or paused in the middle of either.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            UpdateState::Updating | UpdateState::RollingBack | UpdateState::Paused
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub message: String,
    /// Instances this update (or rollback) replaces.
    pub total: u64,
    pub done: u64,
    pub failures: u64,
    /// The committed configuration the update rolls out.
    pub target_hash: String,
    /// The configuration a rollback returns to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    /// True while the update goes back to `previous_hash` (rolling back, rolled back, or paused
    /// during a rollback).
    pub rolling_back: bool,
}

/// A summary of the group for `describe` and `watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    /// All present, all carrying the applied configuration, no update running, nothing pending or
    /// being destroyed. A rolled-back group converges on the previous configuration (and says so in
    /// `update`).
    pub converged: bool,
    pub target: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
    /// Everything a person should know, one clause per fact ("" when converged and quiet).
    pub message: String,
    pub unhealthy: Vec<InstanceId>,
    /// Members (not being destroyed, not duplicates or strays).
    pub present: u64,
    pub pending: u64,
    pub destroying: u64,
    /// Members carrying the configuration being applied.
    pub current: u64,
    /// Members healthy for at least MinReadySeconds.
    pub available: u64,
    /// The configuration being applied: the committed one, or the previous one during a rollback.
    pub applied_hash: String,
    /// Set when remediation is held back by MaxUnhealthy, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_stopped: Option<String>,
}

/// An operator's command on a group's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Pause,
    Resume,
    Rollback,
}

#[cfg(test)]
mod names {
    use super::*;

    #[test]
    fn names_are_what_serde_writes() {
        for c in [
            Cause::Fill,
            Cause::Rollout,
            Cause::Shrink,
            Cause::Duplicate,
            Cause::Stray,
            Cause::Remediation,
            Cause::FailedReplacement,
            Cause::Retry,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for u in [
            UpdateState::Updating,
            UpdateState::Paused,
            UpdateState::Completed,
            UpdateState::RollingBack,
            UpdateState::RolledBack,
        ] {
            assert_eq!(serde_json::to_value(u).unwrap(), u.as_str());
        }
    }
}
