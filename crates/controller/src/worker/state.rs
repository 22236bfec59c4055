//! What the controller and every group task share: options, the store, the groups and their
//! state under one lock each, and the one way a group's record is changed ([`write_locked`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use infrakit_group::core::{rules, ObservedInstance, PendingProvision, Status};
use infrakit_group::spec::ValidGroup;
use infrakit_sdk::resolve::PluginResolver;
use infrakit_sdk::spi::flavor::Health;
use infrakit_sdk::spi::instance::{Description, InstanceId, Tags};
use infrakit_sdk::{Error, Result};
use tokio::sync::{watch, Notify, OwnedMutexGuard, Semaphore};

use crate::leader::Role;
use crate::record::GroupRecord;
use crate::store::{GroupStore, Revision, Unusable};
use crate::tags;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a group is observed when nothing else wakes it (drift detection).
    pub poll_interval: Duration,
    /// How long a Healthy verdict is trusted before the flavor is asked again (while an update
    /// rolls, at most `poll_interval`). Instances that are not healthy, or have not yet counted as
    /// available (a new instance in its MinReadySeconds soak), are asked on every pass.
    pub health_interval: Duration,
    /// Provisions and destroys running at once, across all groups.
    pub max_parallel: usize,
    /// The store is shared with other controllers (the swarm's): read it again every poll interval,
    /// on election and after a refused write, and retry a change refused as stale once.
    pub shared_store: bool,
    /// After a restart, how long provisions the previous process had started may still finish in
    /// their (separate) instance plugin processes; until then they count toward the target. Zero
    /// when the instance plugins lived in the process that died (`infrakit up`).
    pub restart_grace: Duration,
    /// Follow the instance plugins' `Instance.Changes` (where they offer it) and observe a group
    /// as soon as its plugin reports a change, not only every `poll_interval`.
    pub change_notifications: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            poll_interval: Duration::from_secs(5),
            health_interval: Duration::from_secs(30),
            max_parallel: 32,
            restart_grace: Duration::from_secs(30),
            shared_store: false,
            change_notifications: true,
        }
    }
}

/// What the controller shares with every group task.
pub(crate) struct Ctx {
    pub resolver: Arc<dyn PluginResolver>,
    pub store: Box<dyn GroupStore>,
    pub options: Options,
    pub permits: Semaphore,
    pub groups: Mutex<BTreeMap<String, Arc<Group>>>,
    /// Stored records that cannot be managed, by group ID: shown, never acted on.
    pub unusable: Mutex<BTreeMap<String, Unusable>>,
    /// One writer lock per group ID (see `crate::controller`'s module docs). Entries are never
    /// removed: one small mutex per group ID ever seen.
    pub writers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub role: watch::Receiver<Role>,
    /// Kept alive for as long as the controller: whatever drives the role (a poller) runs while
    /// its owner does.
    pub _leadership: Arc<dyn crate::leader::Leadership>,
    /// Asks `keep_in_step` (shared stores only) to read the store again now.
    pub resync_wanted: Notify,
    /// The instance plugins whose changes a watcher follows (`worker::watch`).
    pub watchers: Mutex<BTreeSet<String>>,
    /// What the controller decided and saw happen (`Group.Events`).
    pub events: crate::events::EventLog,
    /// The instance plugins' observations, shared by the groups using each (`worker::describe`).
    pub observations: super::describe::Observations,
}

impl Ctx {
    pub fn groups(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Group>>> {
        lock(&self.groups)
    }

    pub fn unusable(&self) -> MutexGuard<'_, BTreeMap<String, Unusable>> {
        lock(&self.unusable)
    }

    /// Waits for the right to change group `id`'s record.
    pub async fn writer(&self, id: &str) -> OwnedMutexGuard<()> {
        let m = lock(&self.writers)
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }
}

/// Changes a group's record and stores it, compare-and-swap on the revision it was read at. The
/// caller holds the group's writer lock ([`Ctx::writer`]); on a failed save nothing changes.
pub(crate) async fn write_locked(
    ctx: &Ctx,
    group: &Arc<Group>,
    change: impl FnOnce(&mut GroupRecord, &mut Arc<ValidGroup>) -> Result<()>,
) -> Result<()> {
    let (record, valid, expected) = {
        let s = group.state();
        if s.stopped {
            return Err(Error::not_found(format!(
                "group '{}' was just destroyed or freed; commit it again to manage it",
                group.id
            )));
        }
        let mut record = s.record.clone();
        let mut valid = s.valid.clone();
        change(&mut record, &mut valid)?;
        (record, valid, s.revision)
    };
    let revision = ctx.store.put(&record, expected).await?;
    let mut s = group.state();
    s.record = record;
    s.valid = valid;
    s.revision = revision;
    s.generation += 1;
    s.changed_at = Instant::now();
    drop(s);
    group.wake.notify_one();
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the controller: the state is still consistent enough to
    // reconcile from (the next pass re-observes everything).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A provision the core asked for.
pub(crate) struct Pending {
    pub(crate) provision: PendingProvision,
    /// Set when the plugin answered: the ID, and when. Kept until the instance is observed, so a
    /// backend that lists new instances late never causes a second provision.
    pub(crate) done: Option<(InstanceId, Instant)>,
}

/// What `DescribeGroup` shows: the last observation and decision.
#[derive(Default, Clone)]
pub(crate) struct View {
    // Shared, not copied: with a thousand instances a copy per pass is most of the controller's
    // memory traffic.
    pub instances: Arc<Vec<Description>>,
    /// The flavor's verdicts, `health[i]` on `instances[i]`.
    pub health: Arc<Vec<Health>>,
    pub status: Option<Status>,
    pub error: Option<String>,
    pub observed: bool,
    /// The record generation the status was decided for: a status older than the last commit
    /// says nothing about whether the new spec has converged.
    pub generation: u64,
    /// Why this controller does not act (not the swarm's leader, no quorum), shown beside the
    /// group's state.
    pub standby: Option<String>,
}

/// Provision failures in a row. The core decides when to try again (it backs off per logical ID,
/// or per group for cattle); this only remembers what to tell a person.
#[derive(Default)]
pub(crate) struct Backoff {
    pub failures: u32,
    /// The last provision failure, shown by `DescribeGroup` until a provision succeeds.
    pub message: Option<String>,
}

pub(crate) struct GroupState {
    pub record: GroupRecord,
    /// The record's spec as parsed (once, at commit or load).
    pub valid: Arc<ValidGroup>,
    /// The record's revision in the store: what the next write must name.
    pub revision: Revision,
    /// Bumped by every change of the record from outside the task (commit, scale, destroy).
    pub generation: u64,
    pub(crate) pending: BTreeMap<u64, Pending>,
    /// Provisions in `pending` the plugin has not answered yet: counted, so that telling whether
    /// anything is still running costs nothing (it is asked at every completion; walking the
    /// answered ones to find an unanswered one made a converge of N provisions cost N²).
    pub(crate) unanswered: usize,
    pub destroying: BTreeSet<InstanceId>,
    /// Destroys answered, with when: an observation that began before an instance's destroy
    /// answered may still list it, and must not count it (it would be destroyed twice, or counted
    /// as present). Dropped once an observation that began after the answer has been used.
    pub(crate) destroyed: HashMap<InstanceId, Instant>,
    pub(crate) health: HashMap<InstanceId, (Health, Instant)>,
    /// Every instance in the core's memory has counted as available (as of the last decision):
    /// spares [`GroupState::proven`] a lookup per instance on each pass of a settled group.
    pub(crate) all_proven: bool,
    pub view: View,
    pub stopped: bool,
    pub(crate) next_token: u64,
    pub backoff: Backoff,
    /// When something this group did last changed its instances (an action answered) or its
    /// record changed: an observation shared with other groups must have started after it.
    pub(crate) changed_at: Instant,
    /// The last observation failed because the instance plugin did not answer.
    pub(crate) unreachable: bool,
    /// When the instance plugin last answered again after not answering, or said it restarted
    /// (`Observed::recovered_ms`).
    pub(crate) recovered_ms: Option<u64>,
    /// Instances whose description could not be read, as last reported (`DescribeGroup` says so).
    pub(crate) unreadable: BTreeSet<InstanceId>,
}

pub(crate) struct Group {
    pub id: String,
    pub state: Mutex<GroupState>,
    pub wake: Notify,
}

impl Group {
    pub fn new(record: GroupRecord, valid: ValidGroup, revision: Revision) -> Arc<Group> {
        Arc::new(Group {
            id: record.id().to_string(),
            state: Mutex::new(GroupState {
                record,
                valid: Arc::new(valid),
                revision,
                generation: 0,
                pending: BTreeMap::new(),
                unanswered: 0,
                destroying: BTreeSet::new(),
                destroyed: HashMap::new(),
                health: HashMap::new(),
                all_proven: false,
                view: View::default(),
                stopped: false,
                next_token: 1,
                backoff: Backoff::default(),
                changed_at: Instant::now(),
                unreachable: false,
                recovered_ms: None,
                unreadable: BTreeSet::new(),
            }),
            wake: Notify::new(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.state)
    }

    pub(crate) fn set_error(&self, message: String) {
        tracing::warn!(group = %self.id, "{message}");
        crate::metrics::metrics().error(&self.id);
        self.state().view.error = Some(message);
    }
}

impl GroupState {
    /// How long a Healthy verdict is trusted on this pass ([`rules::healthy_trust_ms`]).
    pub(crate) fn healthy_trust_ms(&self, options: &Options) -> u64 {
        rules::healthy_trust_ms(
            &self.record.memory,
            millis(options.health_interval),
            millis(options.poll_interval),
        )
    }

    /// Whether the core has counted this instance as available at least once (healthy for
    /// MinReadySeconds).
    pub(crate) fn proven(&self, id: &str) -> bool {
        // `all_proven` is cleared when a verdict is given to an instance the memory does not
        // know yet (check_health), so it never answers for a newcomer.
        self.all_proven
            || self
                .record
                .memory
                .instances
                .get(id)
                .is_some_and(|m| m.ever_ready)
    }

    /// True while a provision or destroy of this group has not answered yet.
    pub(crate) fn running(&self) -> bool {
        !self.destroying.is_empty() || self.unanswered > 0
    }
}

/// The tags that select a group's instances.
pub(crate) fn group_tags(id: &str) -> Tags {
    [(tags::GROUP.to_string(), id.to_string())].into()
}

/// What the core sees of one described instance.
pub(crate) fn observe_instance(d: &Description, health: Health, leads: bool) -> ObservedInstance {
    ObservedInstance {
        id: d.id.clone(),
        logical_id: d
            .logical_id
            .clone()
            .or_else(|| d.tags.get(tags::LOGICAL_ID).cloned()),
        config_hash: d.tags.get(tags::CONFIG_HASH).cloned(),
        health,
        leads,
    }
}

/// A verdict and how long ago it was given, as the core's rules take it.
pub(crate) fn aged((health, at): &(Health, Instant)) -> (Health, u64) {
    (*health, millis(at.elapsed()))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
