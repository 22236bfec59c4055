//! One task per group: observe, ask the pure core what to do, persist what it must remember, carry
//! the actions out through the plugins, and sleep until the next event, deadline or poll.
//!
//! Everything the core needs to know about work in progress (provisions started and not yet
//! observed, destroys under way) lives in [`GroupState`], under one lock, and is registered in the
//! same critical section that takes the decision, so two passes never start the same work twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use infrakit_group::core::{
    decide, Action, Decision, Observed, ObservedInstance, PendingProvision, Status,
};
use infrakit_group::spec::ValidGroup;
use infrakit_sdk::resolve::PluginResolver;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use infrakit_sdk::spi::instance::{
    Description, DestroyContext, DestroyReason, InstanceId, InstancePlugin, Spec, Tags,
};
use infrakit_sdk::{Error, Result};
use tokio::sync::{watch, Notify, OwnedMutexGuard, Semaphore};

use crate::leader::Role;
use crate::record::{Blocks, GroupRecord};
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
    /// After a restart, how long provisions the previous process had started may still finish in
    /// their (separate) instance plugin processes; until then they count toward the target. Zero
    /// when the instance plugins lived in the process that died (`infrakit up`).
    pub restart_grace: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            poll_interval: Duration::from_secs(5),
            health_interval: Duration::from_secs(30),
            max_parallel: 32,
            restart_grace: Duration::from_secs(30),
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
struct Pending {
    provision: PendingProvision,
    /// Set when the plugin answered: the ID, and when. Kept until the instance is observed, so a
    /// backend that lists new instances late never causes a second provision.
    done: Option<(InstanceId, Instant)>,
}

/// What `DescribeGroup` shows: the last observation and decision.
#[derive(Default, Clone)]
pub(crate) struct View {
    // Shared, not copied: with a thousand instances a copy per pass is most of the controller's
    // memory traffic.
    pub instances: Arc<Vec<Description>>,
    pub health: Arc<HashMap<InstanceId, Health>>,
    pub status: Option<Status>,
    pub error: Option<String>,
    pub observed: bool,
    /// The record generation the status was decided for: a status older than the last commit
    /// says nothing about whether the new spec has converged.
    pub generation: u64,
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
    pending: BTreeMap<u64, Pending>,
    pub destroying: BTreeSet<InstanceId>,
    health: HashMap<InstanceId, (Health, Instant)>,
    /// Every instance in the core's memory has counted as available (as of the last decision):
    /// spares [`GroupState::proven`] a lookup per instance on each pass of a settled group.
    all_proven: bool,
    pub view: View,
    pub stopped: bool,
    next_token: u64,
    pub backoff: Backoff,
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
                destroying: BTreeSet::new(),
                health: HashMap::new(),
                all_proven: false,
                view: View::default(),
                stopped: false,
                next_token: 1,
                backoff: Backoff::default(),
            }),
            wake: Notify::new(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.state)
    }

    fn set_error(&self, message: String) {
        tracing::warn!(group = %self.id, "{message}");
        self.state().view.error = Some(message);
    }
}

/// The group's task: reconcile, then sleep until woken, a deadline, or the poll interval.
pub(crate) async fn run(group: Arc<Group>, ctx: Arc<Ctx>) {
    tracing::info!(group = %group.id, "managing group");
    let mut role = ctx.role.clone();
    loop {
        let current = role.borrow_and_update().clone();
        let wake_at = match current {
            Role::Leader => reconcile(&group, &ctx).await,
            Role::Follower { reason } => {
                stand_by(&group, reason);
                None
            }
        };
        release_freed_memory();
        if group.state().stopped {
            break;
        }
        let mut sleep = ctx.options.poll_interval;
        if let Some(at) = wake_at {
            sleep = sleep.min(Duration::from_millis(at.saturating_sub(now_ms())));
        }
        let woken = tokio::select! {
            _ = group.wake.notified() => true,
            _ = tokio::time::sleep(sleep) => false,
            // A sender that is gone never changes the role again: sleep on.
            Ok(()) = role.changed() => false,
        };
        if woken {
            settle(&group).await;
        }
    }
    tracing::info!(group = %group.id, "no longer managing group");
}

/// Not the leader: act on nothing, and say why.
fn stand_by(group: &Group, reason: String) {
    let mut s = group.state();
    if s.view.error.as_deref() != Some(reason.as_str()) {
        tracing::info!(group = %group.id, "standing by: {reason}");
    }
    s.view.error = Some(reason);
}

/// After a wake-up, waits (at most [`SETTLE`]) while actions are still running, so that a burst of
/// completions (a thousand provisions finishing) costs one observation instead of one each; when
/// nothing is running any more (one step of a rolling update done) the next pass starts at once.
async fn settle(group: &Group) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while group.state().running() {
        tokio::select! {
            _ = group.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// How long completions are batched at most.
const SETTLE: Duration = Duration::from_millis(25);

impl GroupState {
    /// True when the next pass asks the flavor about an instance it knows, or may meet a new one:
    /// - a provision is on its way: its instance may be in this describe, and its first verdict
    ///   must see the backend's state (a container that exited at once), or the core would count
    ///   it available on a blind Healthy;
    /// - an instance needs a verdict ([`needs_check`]).
    ///
    /// An instance that appears without a provision of ours (made by hand while the controller
    /// runs) may be judged on a pass without properties; with MinReadySeconds above zero it is
    /// asked again, with them, before it counts as available.
    fn health_due(&self, interval: Duration) -> bool {
        !self.pending.is_empty()
            || self.health.is_empty()
            || self
                .health
                .iter()
                .any(|(id, v)| needs_check(Some(v), self.proven(id), interval))
    }

    /// How long a Healthy verdict is trusted on this pass. While an update rolls, no longer than
    /// the poll interval: the core takes serving members down counting on the others' verdicts,
    /// and a member that died 20 s ago but is still trusted Healthy could be the one that makes a
    /// ZooKeeper ensemble lose its quorum. Bounded by the poll interval, a rollout re-asks the
    /// whole group at most once per poll, which costs little next to the replacements themselves.
    fn trust_healthy_for(&self, options: &Options) -> Duration {
        let rolling = self
            .record
            .memory
            .update
            .as_ref()
            .is_some_and(|u| u.state.is_rolling());
        if rolling {
            options.health_interval.min(options.poll_interval)
        } else {
            options.health_interval
        }
    }

    /// Whether the core has counted this instance as available at least once (healthy for
    /// MinReadySeconds).
    fn proven(&self, id: &str) -> bool {
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
    fn running(&self) -> bool {
        !self.destroying.is_empty() || self.pending.values().any(|p| p.done.is_none())
    }
}

/// Whether the flavor must be asked about an instance on this pass, given its last verdict (and
/// when it was given) and whether it has counted as available yet. A Healthy verdict is trusted
/// for `interval`, but only for a proven instance: during its soak (MinReadySeconds) a new
/// instance is asked on every pass, since "healthy for MinReadySeconds" must mean healthy
/// throughout, not one Healthy answer followed by `interval` of trust. A replacement that runs
/// for a second and exits is caught before the rolling update counts it available and destroys an
/// instance that served.
fn needs_check(last: Option<&(Health, Instant)>, proven: bool, interval: Duration) -> bool {
    match last {
        Some((Health::Healthy, at)) => !proven || at.elapsed() >= interval,
        _ => true,
    }
}

/// Hands memory freed by a pass back to the kernel. A pass over a thousand instances allocates a few
/// megabytes and frees them again; glibc keeps freed chunks in its arenas, so without this the
/// controller's RSS settles at its busiest moment rather than at what it holds.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The tags that select a group's instances.
pub(crate) fn group_tags(id: &str) -> Tags {
    [(tags::GROUP.to_string(), id.to_string())].into()
}

/// What the core sees of one described instance.
pub(crate) fn observe_instance(d: &Description, health: Health) -> ObservedInstance {
    ObservedInstance {
        id: d.id.clone(),
        logical_id: d
            .logical_id
            .clone()
            .or_else(|| d.tags.get(tags::LOGICAL_ID).cloned()),
        config_hash: d.tags.get(tags::CONFIG_HASH).cloned(),
        health,
    }
}

/// One pass. Returns the core's next deadline, if any.
async fn reconcile(group: &Arc<Group>, ctx: &Arc<Ctx>) -> Option<u64> {
    let (valid, versions, generation) = {
        let s = group.state();
        if s.stopped {
            return None;
        }
        // The parsed spec is shared, not re-parsed; the versions are a handful of blocks.
        (s.valid.clone(), s.record.versions.clone(), s.generation)
    };
    let Some(blocks) = versions.get(&valid.hash).cloned() else {
        group.set_error(format!(
            "group '{}': no stored version for its config hash",
            group.id
        ));
        return None;
    };
    let instance = match ctx.resolver.instance(&blocks.instance.plugin).await {
        Ok(p) => p,
        Err(e) => {
            group.set_error(format!(
                "instance plugin '{}': {e}; retrying",
                blocks.instance.plugin
            ));
            return None;
        }
    };
    let flavor = match ctx.resolver.flavor(&blocks.flavor.plugin).await {
        Ok(p) => p,
        Err(e) => {
            group.set_error(format!(
                "flavor plugin '{}': {e}; retrying",
                blocks.flavor.plugin
            ));
            return None;
        }
    };
    // An observation that fails decides nothing: acting on a partial view is how instances get
    // destroyed by mistake.
    // Backend state (a container's exit code, its addresses) is what a flavor judges health by, but
    // it makes every description several times bigger: ask for it only on passes that will ask the
    // flavor about someone.
    let with_properties = {
        let s = group.state();
        s.health_due(s.trust_healthy_for(&ctx.options))
    };
    let described = match instance
        .describe_instances(&group_tags(&group.id), with_properties)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            group.set_error(format!(
                "cannot list the instances of group '{}' through '{}': {e}; retrying",
                group.id, blocks.instance.plugin
            ));
            return None;
        }
    };
    let described = Arc::new(described);
    let health = Arc::new(check_health(group, ctx, flavor.as_ref(), &blocks, &described).await);

    // Deciding, writing ahead and starting the actions happen under the group's writer lock: no
    // commit, scale or destroy can slip between the decision and the record it is based on.
    let _writer = ctx.writer(&group.id).await;
    let current = ctx.role.borrow().clone();
    if let Role::Follower { reason } = current {
        // Deposed while observing.
        stand_by(group, reason);
        return None;
    }
    let now = now_ms();
    let mut decision;
    let to_save;
    let deleting;
    {
        let mut s = group.state();
        if s.generation != generation || s.stopped {
            // The spec changed while we looked: look again with the new one.
            group.wake.notify_one();
            return None;
        }
        deleting = s.record.deleting;
        let seen: BTreeSet<&str> = described.iter().map(|d| d.id.as_str()).collect();
        s.pending.retain(|_, p| match &p.done {
            None => true,
            // Observed: it counts as an instance now. Not observed a minute after the plugin said
            // it was made: it is gone, and the core may replace it.
            Some((id, at)) => !seen.contains(id.as_str()) && at.elapsed() < Duration::from_secs(60),
        });
        let observed = Observed {
            instances: described
                .iter()
                .map(|d| observe_instance(d, health.get(&d.id).copied().unwrap_or_default()))
                .collect(),
            pending: s.pending.values().map(|p| p.provision.clone()).collect(),
            destroying: s.destroying.clone(),
        };
        decision = decide(&valid.desired(deleting), &observed, &s.record.memory, now);
        to_save = if s.record.memory != decision.memory {
            let mut record = s.record.clone();
            record.memory = std::mem::take(&mut decision.memory);
            Some((record, s.revision))
        } else {
            None
        };
        s.view = View {
            instances: described.clone(),
            health: health.clone(),
            status: Some(decision.status.clone()),
            error: None,
            observed: true,
            generation,
        };
    }
    if let Some((record, expected)) = to_save {
        // Write-ahead: what the core must remember is stored before any action it implies runs.
        // A write refused by the store (another writer, a lost leadership) stops the actions.
        match ctx.store.put(&record, expected).await {
            Ok(revision) => {
                let mut s = group.state();
                s.record.memory = record.memory;
                s.revision = revision;
                s.all_proven = s.record.memory.instances.values().all(|m| m.ever_ready);
            }
            Err(e) => {
                group.set_error(format!("{e}; not acting until the store works again"));
                return None;
            }
        }
    }
    execute(group, ctx, &versions, &valid, &decision, &described);
    if deleting && forget_if_gone(group, ctx, &described).await {
        return None;
    }
    decision.wake_at_ms
}

/// A deleted group is forgotten once nothing of it is left. The caller holds the writer lock.
async fn forget_if_gone(group: &Arc<Group>, ctx: &Arc<Ctx>, described: &[Description]) -> bool {
    let revision = {
        let s = group.state();
        if !(described.is_empty() && s.pending.is_empty() && s.destroying.is_empty()) {
            return false;
        }
        s.revision
    };
    if let Err(e) = ctx.store.delete(&group.id, revision).await {
        group.set_error(e.to_string());
        return false;
    }
    group.state().stopped = true;
    ctx.groups().remove(&group.id);
    tracing::info!(group = %group.id, "group destroyed: no instance left");
    true
}

/// Asks the flavor about instances whose verdict is missing, not Healthy, older than the health
/// interval, or not yet proven ([`needs_check`]); at most `max_parallel` at a time.
async fn check_health(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    flavor: &dyn FlavorPlugin,
    blocks: &Blocks,
    described: &[Description],
) -> HashMap<InstanceId, Health> {
    let stale: Vec<&Description> = {
        let s = group.state();
        let trust = s.trust_healthy_for(&ctx.options);
        described
            .iter()
            .filter(|d| needs_check(s.health.get(&d.id), s.proven(&d.id), trust))
            .collect()
    };
    let props = blocks.flavor.properties.clone().unwrap_or_default();
    let mut fresh = Vec::with_capacity(stale.len());
    for chunk in stale.chunks(ctx.options.max_parallel.max(1)) {
        let answers = join_all(chunk.iter().map(|d| flavor.healthy(&props, d))).await;
        for (d, a) in chunk.iter().zip(answers) {
            let h = a.unwrap_or_else(|e| {
                tracing::debug!(group = %group.id, instance = %d.id, "health unknown: {e}");
                Health::Unknown
            });
            fresh.push((d.id.clone(), h));
        }
    }
    let mut s = group.state();
    let now = Instant::now();
    let live: BTreeSet<&str> = described.iter().map(|d| d.id.as_str()).collect();
    s.health.retain(|id, _| live.contains(id.as_str()));
    for (id, h) in fresh {
        if s.all_proven && !s.record.memory.instances.contains_key(&id) {
            s.all_proven = false;
        }
        s.health.insert(id, (h, now));
    }
    s.health
        .iter()
        .map(|(id, (h, _))| (id.clone(), *h))
        .collect()
}

/// Registers and starts the decision's actions. Every action is carried out: the core counts a
/// provision it asked for and never saw as a failure.
fn execute(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    versions: &BTreeMap<String, Blocks>,
    valid: &ValidGroup,
    decision: &Decision,
    described: &[Description],
) {
    // One copy of the allocation for every provision of this pass, not one each: a flavor's
    // Prepare reads the whole list, and ten thousand pets each carrying ten thousand IDs is
    // gigabytes.
    let allocation = Arc::new(crate::controller::allocation(&valid.allocation));
    let mut s = group.state();
    for action in &decision.actions {
        match action {
            Action::Provision {
                logical_id,
                config_hash,
            } => {
                let Some(blocks) = versions.get(config_hash).cloned() else {
                    tracing::error!(group = %group.id, hash = %config_hash, "no stored version to provision");
                    continue;
                };
                let token = s.next_token;
                s.next_token += 1;
                let sequence = s.record.sequence;
                s.record.sequence += 1;
                s.pending.insert(
                    token,
                    Pending {
                        provision: PendingProvision {
                            token,
                            logical_id: logical_id.clone(),
                            config_hash: config_hash.clone(),
                            started_ms: now_ms(),
                        },
                        done: None,
                    },
                );
                let job = ProvisionJob {
                    token,
                    logical_id: logical_id.clone(),
                    config_hash: config_hash.clone(),
                    blocks,
                    allocation: allocation.clone(),
                    sequence,
                };
                tokio::spawn(provision(group.clone(), ctx.clone(), job));
            }
            Action::Destroy { id, reason } => {
                if !s.destroying.insert(id.clone()) {
                    continue;
                }
                let d = described
                    .iter()
                    .find(|d| &d.id == id)
                    .cloned()
                    .unwrap_or_else(|| Description {
                        id: id.clone(),
                        ..Description::default()
                    });
                let blocks = blocks_of(versions, valid, &d);
                tokio::spawn(destroy(group.clone(), ctx.clone(), d, *reason, blocks));
            }
        }
    }
}

/// The blocks an instance was made with (to drain it with its own flavor properties), else the
/// current ones.
fn blocks_of(
    versions: &BTreeMap<String, Blocks>,
    valid: &ValidGroup,
    d: &Description,
) -> Option<Blocks> {
    d.tags
        .get(tags::CONFIG_HASH)
        .and_then(|h| versions.get(h))
        .or_else(|| versions.get(&valid.hash))
        .cloned()
}

struct ProvisionJob {
    token: u64,
    logical_id: Option<String>,
    config_hash: String,
    blocks: Blocks,
    allocation: Arc<AllocationMethod>,
    sequence: u64,
}

async fn provision(group: Arc<Group>, ctx: Arc<Ctx>, job: ProvisionJob) {
    let result = {
        let _permit = ctx.permits.acquire().await;
        make_instance(&group.id, ctx.resolver.as_ref(), &job).await
    };
    {
        let mut s = group.state();
        match result {
            Ok(id) => {
                tracing::info!(group = %group.id, instance = %id, logical_id = ?job.logical_id, "provisioned");
                if let Some(p) = s.pending.get_mut(&job.token) {
                    p.done = Some((id, Instant::now()));
                }
                s.backoff = Backoff::default();
            }
            Err(e) => {
                // Dropping it from pending is how the core learns it failed (and backs off).
                s.pending.remove(&job.token);
                s.backoff.failures = s.backoff.failures.saturating_add(1);
                let message = format!(
                    "provisioning an instance of group '{}' failed ({} in a row): {e}",
                    group.id, s.backoff.failures
                );
                tracing::warn!("{message}");
                s.backoff.message = Some(message);
            }
        }
    }
    group.wake.notify_one();
}

async fn make_instance(
    group: &str,
    resolver: &dyn PluginResolver,
    job: &ProvisionJob,
) -> Result<InstanceId> {
    let instance: Arc<dyn InstancePlugin> = resolver.instance(&job.blocks.instance.plugin).await?;
    let flavor = resolver.flavor(&job.blocks.flavor.plugin).await?;
    let mut owned = group_tags(group);
    owned.insert(tags::CONFIG_HASH.to_string(), job.config_hash.clone());
    if let Some(l) = &job.logical_id {
        owned.insert(tags::LOGICAL_ID.to_string(), l.clone());
    }
    let spec = Spec {
        properties: job.blocks.instance.properties.clone(),
        tags: owned.clone(),
        logical_id: job.logical_id.clone(),
        ..Spec::default()
    };
    let index = Index {
        group: group.to_string(),
        sequence: job.sequence,
    };
    let props = job.blocks.flavor.properties.clone().unwrap_or_default();
    let mut spec = flavor
        .prepare(&props, spec, &job.allocation, &index)
        .await
        .map_err(|e| e.context(format!("flavor '{}' Prepare", job.blocks.flavor.plugin)))?;
    // The controller's own tags are authoritative: a flavor cannot move an instance to another
    // group or version by accident.
    spec.tags.extend(owned);
    spec.logical_id = job.logical_id.clone();
    instance.provision(spec).await.map_err(|e| {
        e.context(format!(
            "instance plugin '{}' Provision",
            job.blocks.instance.plugin
        ))
    })
}

async fn destroy(
    group: Arc<Group>,
    ctx: Arc<Ctx>,
    d: Description,
    reason: DestroyReason,
    blocks: Option<Blocks>,
) {
    let result = {
        let _permit = ctx.permits.acquire().await;
        drain_and_destroy(&group.id, ctx.resolver.as_ref(), &d, reason, blocks).await
    };
    {
        let mut s = group.state();
        s.destroying.remove(&d.id);
        s.health.remove(&d.id);
        match result {
            Ok(()) => tracing::info!(group = %group.id, instance = %d.id, %reason, "destroyed"),
            Err(e) => {
                let message = format!(
                    "destroying {} of group '{}' failed (will retry): {e}",
                    d.id, group.id
                );
                tracing::warn!("{message}");
                s.view.error = Some(message);
            }
        }
    }
    group.wake.notify_one();
}

async fn drain_and_destroy(
    group: &str,
    resolver: &dyn PluginResolver,
    d: &Description,
    reason: DestroyReason,
    blocks: Option<Blocks>,
) -> Result<()> {
    let Some(blocks) = blocks else {
        return Err(infrakit_sdk::Error::internal(format!(
            "no stored version of group '{group}' to find the plugins of {}",
            d.id
        )));
    };
    let flavor = resolver.flavor(&blocks.flavor.plugin).await?;
    let props = blocks.flavor.properties.clone().unwrap_or_default();
    // A drain that fails is logged and the destroy goes ahead: otherwise a dead instance that
    // cannot answer its flavor could never be replaced.
    if let Err(e) = flavor.drain(&props, d).await {
        tracing::warn!(group, instance = %d.id, "drain failed, destroying anyway: {e}");
    }
    let instance = resolver.instance(&blocks.instance.plugin).await?;
    match instance.destroy(&d.id, DestroyContext { reason }).await {
        Ok(()) => Ok(()),
        // Already gone is what we wanted.
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.context(format!(
            "instance plugin '{}' Destroy",
            blocks.instance.plugin
        ))),
    }
}

/// Destroys named instances now (for `DestroyInstances`), registering them so the core does not
/// pick them again.
pub(crate) fn destroy_now(group: &Arc<Group>, ctx: &Arc<Ctx>, ids: &[InstanceId]) {
    let mut s = group.state();
    let versions = s.record.versions.clone();
    let valid = s.valid.clone();
    for id in ids {
        if !s.destroying.insert(id.clone()) {
            continue;
        }
        let d = s
            .view
            .instances
            .iter()
            .find(|d| &d.id == id)
            .cloned()
            .unwrap_or_else(|| Description {
                id: id.clone(),
                ..Description::default()
            });
        let blocks = blocks_of(&versions, &valid, &d);
        tokio::spawn(destroy(
            group.clone(),
            ctx.clone(),
            d,
            DestroyReason::Terminate,
            blocks,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_is_trusted_only_once_proven() {
        let interval = Duration::from_secs(30);
        let now = Instant::now();
        let old = now.checked_sub(Duration::from_secs(31)).unwrap_or(now);
        // Never judged, or not healthy: asked every pass.
        assert!(needs_check(None, true, interval));
        assert!(needs_check(Some(&(Health::Unknown, now)), true, interval));
        assert!(needs_check(Some(&(Health::Unhealthy, now)), true, interval));
        // Healthy but still soaking (never available yet): asked every pass.
        assert!(needs_check(Some(&(Health::Healthy, now)), false, interval));
        // Proven and healthy: trusted for the interval.
        assert!(!needs_check(Some(&(Health::Healthy, now)), true, interval));
        if old != now {
            assert!(needs_check(Some(&(Health::Healthy, old)), true, interval));
        }
    }

    #[test]
    fn a_rolling_update_trusts_healthy_for_one_poll_at_most() {
        let spec: infrakit_sdk::spi::group::GroupSpec = serde_json::from_value(serde_json::json!({
            "ID": "g",
            "Properties": {"Allocation": {"Size": 3},
                           "Instance": {"Plugin": "i"}, "Flavor": {"Plugin": "f"}}
        }))
        .expect("spec");
        let valid = infrakit_group::spec::parse(&spec, infrakit_group::spec::Origin::Commit)
            .expect("parsed");
        let group = Group::new(GroupRecord::new(spec, &valid), valid, 1);
        let options = Options {
            poll_interval: Duration::from_secs(5),
            ..Options::default()
        };
        let mut s = group.state();
        assert_eq!(s.trust_healthy_for(&options), options.health_interval);
        let mut update = infrakit_group::core::UpdateProgress::start("h2", None, 0, String::new());
        s.record.memory.update = Some(update.clone());
        assert_eq!(s.trust_healthy_for(&options), Duration::from_secs(5));
        update.state = infrakit_group::core::UpdateState::Paused;
        s.record.memory.update = Some(update);
        assert_eq!(s.trust_healthy_for(&options), options.health_interval);
    }
}
