//! What the controller must remember across decisions and restarts.
//!
//! Everything else is observed again after a restart. The executor persists [`Memory`] (atomically)
//! after every decision that changed it; a crash may lose the last write, so every rule reading it
//! must stay safe when it is a few decisions old: counts of instances always come from the observed
//! state, memory only refines *which* instance to pick and *when*.

use std::collections::{BTreeMap, BTreeSet};

use infrakit_spi::instance::{DestroyReason, InstanceId, LogicalId};
use serde::{Deserialize, Serialize};

use super::types::{Cause, UpdateState, UpdateStatus};

/// The persisted state of one group's controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    /// Format of this record, for future migrations.
    pub format: u32,
    /// The current (or last) update; `None` until the group first needs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateProgress>,
    /// The last configuration the whole group carried: what a rollback returns to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_hash: Option<String>,
    /// Per-instance bookkeeping, for instances observed (or being destroyed) now.
    pub instances: BTreeMap<InstanceId, InstanceMemory>,
    /// Slots whose replacements keep failing (key: [`slot_key`]).
    pub backoff: BTreeMap<String, Backoff>,
    /// The configuration `backoff` built up under. A commit of another one starts without it: the
    /// failures (an image that is not there, one that exits at once) were the old configuration's,
    /// and the commit that fixes them must be acted on at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_hash: Option<String>,
    /// Provisions asked for and not yet seen to finish, to tell a finished one from a failed one
    /// (including one that failed before it was ever observed pending).
    pub inflight: Vec<InflightProvision>,
    /// Numbers the provisions asked for.
    pub next_serial: u64,
    /// Remediated instances whose replacement is not available yet (they count toward MaxInFlight).
    pub owed: Vec<OwedReplacement>,
}

pub const MEMORY_FORMAT: u32 = 1;

impl Memory {
    /// Call once on memory loaded from the store when the executor (re)starts. Provisions that were in
    /// flight in the previous process are not in the new one's `pending`, and may or may not still
    /// finish (a plugin in another process completes them; one in the dead process does not). They
    /// become *ghosts*: counted like pending provisions (a pet's logical ID stays taken, cattle count
    /// toward the target) until their instance appears or `Policy::ghost_ms` after they started
    /// (the healthy deadline, at most 30 s), so a restart neither creates a second instance for a
    /// logical ID nor overshoots the target. A ghost that expires is forgotten without counting as
    /// a failure: its fate is unknown.
    pub fn after_restart(&mut self) {
        self.make_ghosts(None);
    }

    /// [`Memory::after_restart`] for an executor that knows how long its plugins may still finish
    /// a provision: ghosts are waited for until `now_ms + wait_ms`. With `wait_ms` 0 (the instance
    /// plugins ran in the process that died, as with `infrakit up`) there is nothing to wait for.
    pub fn after_restart_within(&mut self, now_ms: u64, wait_ms: u64) {
        if wait_ms == 0 {
            self.inflight.clear();
        }
        self.make_ghosts(Some(now_ms.saturating_add(wait_ms)));
    }

    fn make_ghosts(&mut self, expires_ms: Option<u64>) {
        for p in &mut self.inflight {
            p.ghost = true;
            p.token = None;
            p.expires_ms = expires_ms;
        }
        // Instances known before the restart are not a ghost's: while the previous process ran, it
        // would have matched them to their provision.
        for m in self.instances.values_mut() {
            m.claimed = true;
        }
    }

    /// The update as `describe` shows it.
    pub fn update_status(&self) -> Option<UpdateStatus> {
        self.update.as_ref().map(UpdateProgress::status)
    }
}

/// Progress of one update (or of the rollback that followed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateProgress {
    pub state: UpdateState,
    /// The committed configuration this update rolls out; a commit with another hash supersedes it.
    pub target_hash: String,
    /// Where a rollback goes; `None` when no earlier configuration is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    /// Going back to `previous_hash` (rolling back, rolled back, or paused while rolling back).
    #[serde(default)]
    pub rolling_back: bool,
    /// When this direction (the update, or its rollback) started: instances first seen since then
    /// and carrying the applied configuration are its replacements.
    pub window_started_ms: u64,
    /// When this phase started (a resume starts a phase, not a window): healthy deadlines run from
    /// here at the earliest, so a resumed update gives its leftovers a fresh chance.
    pub phase_started_ms: u64,
    /// Instances this phase replaces (grows if more outdated ones turn up).
    pub total: u64,
    pub done: u64,
    /// Failed replacements counted against MaxFailureRatio in this phase.
    pub failures: u64,
    /// Keys of the failures of this update (`i:<instance>` or `p:<token>@<started>`), so none counts
    /// twice; a failed instance still present is destroyed and retried whenever the update rolls.
    #[serde(default)]
    pub failed: BTreeSet<String>,
    /// What the latest failure was, for the pause message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_failure: String,
    pub message: String,
}

impl UpdateProgress {
    pub fn start(
        target: &str,
        previous: Option<String>,
        now_ms: u64,
        message: String,
    ) -> UpdateProgress {
        UpdateProgress {
            state: UpdateState::Updating,
            target_hash: target.to_string(),
            previous_hash: previous,
            rolling_back: false,
            window_started_ms: now_ms,
            phase_started_ms: now_ms,
            total: 0,
            done: 0,
            failures: 0,
            failed: BTreeSet::new(),
            last_failure: String::new(),
            message,
        }
    }

    /// Starts a new phase (a resume, a rollback, a reopened update): failures are counted afresh.
    /// A change of direction (`rolling_back` differs) also starts a new window of replacements.
    pub fn new_phase(
        &mut self,
        state: UpdateState,
        rolling_back: bool,
        now_ms: u64,
        message: String,
    ) {
        if rolling_back != self.rolling_back {
            self.window_started_ms = now_ms;
            self.total = 0;
            self.done = 0;
        }
        self.state = state;
        self.rolling_back = rolling_back;
        self.phase_started_ms = now_ms;
        self.failures = 0;
        self.message = message;
    }

    /// The configuration this update applies now.
    pub fn applied_hash(&self) -> &str {
        match (&self.previous_hash, self.rolling_back) {
            (Some(prev), true) => prev,
            _ => &self.target_hash,
        }
    }

    pub fn status(&self) -> UpdateStatus {
        UpdateStatus {
            state: self.state,
            message: self.message.clone(),
            total: self.total,
            done: self.done,
            failures: self.failures,
            target_hash: self.target_hash.clone(),
            previous_hash: self.previous_hash.clone(),
            rolling_back: self.rolling_back,
        }
    }
}

/// What the controller knows about one instance beyond what it observes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceMemory {
    /// When the controller first saw it: its age for the scale-down order, and whether it is a
    /// replacement made by the running update.
    pub first_seen_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    /// Continuously healthy since (soak); cleared by any other verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_since_ms: Option<u64>,
    /// Continuously unhealthy since; cleared only by a healthy verdict (Unknown does not interrupt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_since_ms: Option<u64>,
    /// Has been available at least once (its slot's backoff was reset then).
    pub ever_ready: bool,
    /// Matched to the provision that made it, or known not to be a pending provision's.
    pub claimed: bool,
    /// When the provision that made it started (once claimed): its healthy deadline runs from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub born_ms: Option<u64>,
    /// The failure key of that provision: a provision counted as failed while it hung is not
    /// counted again when its instance finally arrives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provision_key: Option<String>,
    /// The controller decided to destroy it; the decision stands until it is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doomed: Option<Doom>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doom {
    pub cause: Cause,
    pub reason: DestroyReason,
    pub at_ms: u64,
}

/// Consecutive failures of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub failures: u32,
    pub last_failure_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InflightProvision {
    pub serial: u64,
    /// The executor's token once the provision was observed pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    pub config_hash: String,
    /// When it was asked for, or (once observed) when the executor started it.
    pub started_ms: u64,
    /// Asked for by a previous process (see [`Memory::after_restart`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ghost: bool,
    /// When a ghost stops being waited for, if the executor said (else `Policy::ghost_ms` after
    /// `started_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

impl InflightProvision {
    /// When a ghost is given up.
    pub fn ghost_expiry(&self, ghost_ms: u64) -> u64 {
        self.expires_ms
            .unwrap_or_else(|| self.started_ms.saturating_add(ghost_ms))
    }
}

impl InflightProvision {
    /// Identifies the provision in an update's failure set. Keyed like a pending provision once the
    /// token is known, so a provision that hangs and then fails counts once.
    pub fn failure_key(&self) -> String {
        match self.token {
            Some(token) => pending_key(token, self.started_ms),
            None => format!("s:{}", self.serial),
        }
    }
}

/// The failure key of a pending provision.
pub fn pending_key(token: u64, started_ms: u64) -> String {
    format!("p:{token}@{started_ms}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedReplacement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    /// When the unhealthy instance was chosen; a replacement is an instance first seen since.
    pub since_ms: u64,
}

/// The backoff key of a slot: the logical ID for pets; the whole group for cattle, whose instances
/// are interchangeable (if replacements keep failing, the backend or the spec is broken).
pub fn slot_key(pets: bool, logical_id: Option<&str>) -> String {
    match (pets, logical_id) {
        (true, Some(id)) => format!("id:{id}"),
        _ => "group".to_string(),
    }
}
