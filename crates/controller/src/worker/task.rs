//! The group's task: observe, decide, write ahead, act, then sleep until the next event, deadline
//! or poll. Only a leader acts (see `crate::leader`). An event is also a change its instance
//! plugin reported (`super::watch`).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use infrakit_group::core::{decide, rules, Allocation, Observed};
use infrakit_group::spec::ValidGroup;
use infrakit_sdk::spi::flavor::Health;
use infrakit_sdk::spi::instance::{Description, InstanceId};

use super::execute::execute;
use super::observe::check_health;
use super::state::{millis, now_ms, observe_instance, Ctx, Group, View};
use crate::leader::Role;
use crate::record::Blocks;
use crate::tags;

/// The group's task: reconcile, then sleep until woken, a deadline, or the poll interval.
pub(crate) async fn run(group: Arc<Group>, ctx: Arc<Ctx>) {
    tracing::info!(group = %group.id, "managing group");
    let mut role = ctx.role.clone();
    // How long the last pass took: completions are batched at least that long (see `settle`).
    let mut last_pass;
    loop {
        if let Some(plugin) = super::watch::instance_plugin(&group) {
            super::watch::ensure(&ctx, &plugin);
        }
        let current = role.borrow_and_update().clone();
        let started = tokio::time::Instant::now();
        let wake_at = match current {
            Role::Leader => {
                let started = std::time::Instant::now();
                let wake = reconcile(&group, &ctx).await;
                crate::metrics::metrics().pass(started.elapsed());
                wake
            }
            Role::Follower { reason } => {
                stand_by(&group, &ctx, reason);
                observe_only(&group, &ctx).await;
                None
            }
        };
        release_freed_memory();
        last_pass = started.elapsed();
        tracing::debug!(group = %group.id, ms = last_pass.as_millis() as u64, "pass");
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
            settle(&group, &ctx, last_pass).await;
        }
    }
    tracing::info!(group = %group.id, "no longer managing group");
}

/// Not the leader: act on nothing, and say why (beside the group's state, not as its error: the
/// group itself may be fine, and `DescribeGroup` on a follower shows whether it converged).
fn stand_by(group: &Group, ctx: &Ctx, reason: String) {
    let mut s = group.state();
    if s.view.standby.as_deref() != Some(reason.as_str()) {
        tracing::info!(group = %group.id, "standing by: {reason}");
        ctx.events.emit(
            &group.id,
            crate::events::What {
                kind: "standing-by",
                ..Default::default()
            },
            reason.clone(),
        );
    }
    s.view.standby = Some(reason);
}

/// A follower still looks (never acts), so that `DescribeGroup` on any manager shows the same
/// instances, health and verdict as the leader's: it observes and asks the flavor as the leader
/// does, and runs the core's (pure) decision for its status, but writes nothing and acts on
/// nothing.
async fn observe_only(group: &Arc<Group>, ctx: &Arc<Ctx>) {
    let (valid, blocks, generation) = {
        let s = group.state();
        match s.record.versions.get(&s.valid.hash) {
            Some(b) => (s.valid.clone(), b.clone(), s.generation),
            None => return,
        }
    };
    // A view it cannot complete is not shown: the previous one stays.
    let Ok((described, health, leading, _)) = look(group, ctx, &blocks, &valid).await else {
        return;
    };
    let mut s = group.state();
    if s.generation != generation || s.stopped {
        return;
    }
    let observed = Observed {
        instances: described
            .iter()
            .zip(health.iter())
            .map(|(d, verdict)| observe_instance(d, *verdict, leading.contains(&d.id)))
            .collect(),
        pending: Vec::new(),
        destroying: Default::default(),
        recovered_ms: None,
    };
    let decision = decide(
        &valid.desired(s.record.deleting),
        &observed,
        &s.record.memory,
        now_ms(),
    );
    super::report::gauges(group, &decision.status, &health, false);
    let standby = s.view.standby.take();
    s.view = View {
        instances: described,
        health,
        status: Some(decision.status),
        error: None,
        observed: true,
        generation,
        standby,
    };
}

/// What the group's instances are and how the flavor judges them: the observation a leader
/// decides on and a follower shows. `Err` says why it could not be made (for `DescribeGroup`).
async fn look(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    blocks: &Blocks,
    valid: &ValidGroup,
) -> Result<Seen, String> {
    let instance = ctx
        .resolver
        .instance(&blocks.instance.plugin)
        .await
        .map_err(|e| {
            group.state().unreachable = true;
            format!(
                "instance plugin '{}': {e}; retrying",
                blocks.instance.plugin
            )
        })?;
    let flavor = ctx
        .resolver
        .flavor(&blocks.flavor.plugin)
        .await
        .map_err(|e| format!("flavor plugin '{}': {e}; retrying", blocks.flavor.plugin))?;
    let fresh_after = group.state().changed_at;
    let (described, began) = ctx
        .observations
        .instances(
            &blocks.instance.plugin,
            instance.as_ref(),
            &group.id,
            fresh_after,
            super::max_age(ctx.options.poll_interval),
        )
        .await
        .map_err(|e| {
            group.state().unreachable = true;
            format!(
                "cannot list the instances of group '{}' through '{}': {e}; retrying",
                group.id, blocks.instance.plugin
            )
        })?;
    {
        // Answering again after an outage: what failed with it is not held against the group.
        let mut s = group.state();
        if std::mem::take(&mut s.unreachable) {
            s.recovered_ms = Some(now_ms());
        }
    }
    let health = check_health(
        group,
        ctx,
        instance.as_ref(),
        flavor.as_ref(),
        blocks,
        &described,
    )
    .await
    .map_err(|e| {
        group.state().unreachable = true;
        format!(
            "cannot describe the instances of group '{}' to check through '{}': {e}; retrying",
            group.id, blocks.instance.plugin
        )
    })?;
    let leading = if a_member_may_go(valid, &described) {
        let props = blocks.flavor.properties.clone().unwrap_or_default();
        match flavor.leading(&props, &described).await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                // No answer: every member is equal, as with a flavor that names no leader.
                tracing::debug!(group = %group.id, "flavor '{}' Leading: {e}", blocks.flavor.plugin);
                HashSet::new()
            }
        }
    } else {
        HashSet::new()
    };
    Ok((described, Arc::new(health), leading, began))
}

/// The observation: the members, the flavor's verdicts (in the members' order), and the members it
/// says lead.
/// And when the describe behind it began.
type Seen = (
    Arc<Vec<Description>>,
    Arc<Vec<Health>>,
    HashSet<InstanceId>,
    std::time::Instant,
);

/// Whether the core may have to choose a member to replace or remove (one is outdated, or there are
/// more than the target): only then is the flavor asked which members lead, so a settled group of
/// any size costs no extra call.
fn a_member_may_go(valid: &ValidGroup, described: &[Description]) -> bool {
    let target = match &valid.allocation {
        Allocation::Size(n) => *n,
        Allocation::Pets(ids) => ids.len() as u64,
    };
    described.len() as u64 > target
        || described
            .iter()
            .any(|d| d.tags.get(tags::CONFIG_HASH) != Some(&valid.hash))
}

/// After a wake-up, waits (at most `window`) while actions are still running, so that a burst of
/// completions (a thousand provisions finishing) costs one observation instead of one each; when
/// nothing is running any more (one step of a rolling update done) the next pass starts at once.
///
/// The window is [`SETTLE`], or as long as the last pass took if that was longer. A pass costs
/// time in proportion to the group's size (it observes and decides over every instance), and the
/// provisions of a large commit keep completing for a time in proportion to the size too: with a
/// fixed window the number of passes grew with the size, and so their total cost with its square
/// (100,000 instances: passes of a second or more, back to back). With the window as long as a
/// pass, passes take at most about half of the controller's time however large the group is, and
/// their number during a burst of completions stays about the same at any size.
///
/// A group being destroyed waits longer ([`settle_window`]); the window is worked out again at
/// every wake-up, so a commit that revives the group ends that wait at once.
async fn settle(group: &Group, ctx: &Ctx, last_pass: Duration) {
    let started = tokio::time::Instant::now();
    while group.state().running() {
        let deadline = started + settle_window(group, ctx, last_pass);
        tokio::select! {
            _ = group.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// How long [`settle`] may wait after a wake-up.
///
/// A group being destroyed has nothing to decide while its destroys run (every instance it lists
/// is already being destroyed; one provisioned late is destroyed by the pass after the last
/// completion), so its passes wait until nothing runs, or a poll interval: a destroy of 10,000
/// spent half its time on passes every 25 ms over the instances still there, and took 17x the
/// time of 1,000 (now 10-11x; `DescribeGroup` shows the destroy's progress a poll late).
fn settle_window(group: &Group, ctx: &Ctx, last_pass: Duration) -> Duration {
    if group.state().record.deleting {
        ctx.options.poll_interval.max(SETTLE)
    } else {
        last_pass.max(SETTLE)
    }
}

/// How long completions are batched at least (at most, when passes are quicker than this).
const SETTLE: Duration = Duration::from_millis(25);

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
    // An observation that fails decides nothing: acting on a partial view is how instances get
    // destroyed by mistake.
    let (described, health, leading, began) = match look(group, ctx, &blocks, &valid).await {
        Ok(seen) => seen,
        Err(why) => {
            group.set_error(why);
            return None;
        }
    };

    // Deciding, writing ahead and starting the actions happen under the group's writer lock: no
    // commit, scale or destroy can slip between the decision and the record it is based on.
    let _writer = ctx.writer(&group.id).await;
    let current = ctx.role.borrow().clone();
    if let Role::Follower { reason } = current {
        // Deposed while observing.
        stand_by(group, ctx, reason);
        return None;
    }
    let now = now_ms();
    let mut decision;
    let to_save;
    let deleting;
    let previous;
    {
        let mut s = group.state();
        if s.generation != generation || s.stopped {
            // The spec changed while we looked: look again with the new one.
            group.wake.notify_one();
            return None;
        }
        deleting = s.record.deleting;
        // Destroys answered after the describe began: what it says of those instances is old.
        // Described here after it began, a destroyed instance is the plugin's truth again.
        s.destroyed.retain(|_, answered| *answered > began);
        let destroyed = std::mem::take(&mut s.destroyed);
        let gone = |d: &Description| destroyed.contains_key(&d.id);
        let seen: BTreeSet<&str> = described
            .iter()
            .filter(|d| !gone(d))
            .map(|d| d.id.as_str())
            .collect();
        s.pending.retain(|_, p| match &p.done {
            None => true,
            Some((id, at)) => {
                rules::still_pending(seen.contains(id.as_str()), millis(at.elapsed()))
            }
        });
        let observed = Observed {
            instances: described
                .iter()
                .zip(health.iter())
                .filter(|(d, _)| !gone(d))
                .map(|(d, verdict)| observe_instance(d, *verdict, leading.contains(&d.id)))
                .collect(),
            pending: s.pending.values().map(|p| p.provision.clone()).collect(),
            destroying: s.destroying.clone(),
            recovered_ms: s.recovered_ms,
        };
        s.destroyed = destroyed;
        decision = decide(&valid.desired(deleting), &observed, &s.record.memory, now);
        if s.view.standby.is_some() {
            ctx.events.emit(
                &group.id,
                crate::events::What {
                    kind: "leading",
                    ..Default::default()
                },
                "this controller leads: acting on the group",
            );
        }
        previous = s.view.status.take();
        super::report::gauges(group, &decision.status, &health, true);
        to_save = if s.record.memory != decision.memory {
            // The record to write carries the new memory, moved; the old memory is not copied.
            let record = s.record.with_memory(std::mem::take(&mut decision.memory));
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
            standby: None,
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
                if e.kind == infrakit_sdk::ErrorKind::Conflict {
                    // Another writer (a commit through another manager) changed the record.
                    ctx.resync_wanted.notify_one();
                }
                group.set_error(format!("{e}; not acting until the store works again"));
                return None;
            }
        }
    }
    super::report::decided(group, ctx, previous.as_ref(), &decision);
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
    crate::metrics::metrics().forget(&group.id);
    tracing::info!(group = %group.id, "group destroyed: no instance left");
    ctx.events.emit(
        &group.id,
        crate::events::What {
            kind: "group-destroyed",
            ..Default::default()
        },
        "no instance left: the group is forgotten",
    );
    true
}
