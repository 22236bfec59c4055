//! Carrying the core's actions out through the plugins: provisions (flavor Prepare, then the
//! instance plugin) and destroys (drain, then destroy), bounded in parallel across all groups.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use infrakit_group::core::{Action, Decision, PendingProvision};
use infrakit_group::spec::ValidGroup;
use infrakit_sdk::resolve::PluginResolver;
use infrakit_sdk::spi::flavor::{AllocationMethod, Index};
use infrakit_sdk::spi::instance::{
    Description, DestroyContext, DestroyReason, InstanceId, InstancePlugin, Spec,
};
use infrakit_sdk::Result;

use super::state::{group_tags, now_ms, Backoff, Ctx, Group, Pending};
use crate::events::What;
use crate::record::Blocks;
use crate::tags;

/// Registers and starts the decision's actions. Every action is carried out: the core counts a
/// provision it asked for and never saw as a failure.
///
/// Linear in the actions and the instances: a decision may ask for 100,000 destroys (a group
/// destroyed) or provisions (one committed), so nothing here is done per action over the whole
/// list (each destroy used to search the described list for its instance: 100,000 destroys took
/// 5·10⁹ comparisons), and a queued action holds only what identifies it, sharing the spec's blocks
/// and the allocation with every other action of the pass.
pub(crate) fn execute(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    versions: &BTreeMap<String, Blocks>,
    valid: &ValidGroup,
    decision: &Decision,
    described: &[Description],
) {
    if decision.actions.is_empty() {
        return;
    }
    // One copy of the blocks and of the allocation for every action of this pass, not one each: a
    // flavor's Prepare reads the whole list, and ten thousand pets each carrying ten thousand IDs
    // is gigabytes.
    let versions: BTreeMap<&str, Arc<Blocks>> = versions
        .iter()
        .map(|(h, b)| (h.as_str(), Arc::new(b.clone())))
        .collect();
    let mut allocation: Option<Arc<AllocationMethod>> = None;
    let mut index: Option<HashMap<&str, usize>> = None;
    let mut s = group.state();
    for action in &decision.actions {
        match action {
            Action::Provision {
                logical_id,
                config_hash,
            } => {
                let Some(blocks) = versions.get(config_hash.as_str()).cloned() else {
                    tracing::error!(group = %group.id, hash = %config_hash, "no stored version to provision");
                    continue;
                };
                let allocation = allocation
                    .get_or_insert_with(|| {
                        Arc::new(crate::controller::allocation(&valid.allocation))
                    })
                    .clone();
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
                s.unanswered += 1;
                let job = ProvisionJob {
                    token,
                    logical_id: logical_id.clone(),
                    config_hash: config_hash.clone(),
                    blocks,
                    allocation,
                    sequence,
                };
                tokio::spawn(provision(group.clone(), ctx.clone(), job));
            }
            Action::Destroy { id, reason } => {
                if !s.destroying.insert(id.clone()) {
                    continue;
                }
                let at = index
                    .get_or_insert_with(|| by_id(described))
                    .get(id.as_str())
                    .copied();
                let blocks = blocks_of(&versions, valid, at.map(|i| &described[i]));
                let target = target(described, at, id);
                tokio::spawn(destroy(group.clone(), ctx.clone(), target, *reason, blocks));
            }
        }
    }
}

/// Where each instance is in a describe's answer.
fn by_id(described: &[Description]) -> HashMap<&str, usize> {
    described
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect()
}

/// The blocks an instance was made with (to drain it with its own flavor properties), else the
/// current ones.
fn blocks_of(
    versions: &BTreeMap<&str, Arc<Blocks>>,
    valid: &ValidGroup,
    d: Option<&Description>,
) -> Option<Arc<Blocks>> {
    d.and_then(|d| d.tags.get(tags::CONFIG_HASH))
        .and_then(|h| versions.get(h.as_str()))
        .or_else(|| versions.get(valid.hash.as_str()))
        .cloned()
}

/// The instance a destroy is for: a copy of its description in the observation it was decided on
/// (the flavor drains by it), or just its ID when that observation does not list it. A copy, not a
/// share of the whole observation: 100,000 queued destroys kept every observation they were
/// decided on alive while later passes made new ones. Tags are shared, so a copy is the ID.
fn target(described: &[Description], at: Option<usize>, id: &str) -> Description {
    match at {
        Some(i) => described[i].clone(),
        None => Description {
            id: id.to_string(),
            ..Description::default()
        },
    }
}

struct ProvisionJob {
    token: u64,
    logical_id: Option<String>,
    config_hash: String,
    blocks: Arc<Blocks>,
    allocation: Arc<AllocationMethod>,
    sequence: u64,
}

/// A provision: queued for a permit, then carried out. The calls' state is boxed and made only
/// once the permit is held, so the thousands of provisions a large decision queues each cost
/// their job and a task, not the few kilobytes of a call in flight.
async fn provision(group: Arc<Group>, ctx: Arc<Ctx>, job: ProvisionJob) {
    let started = Instant::now();
    let result = {
        let _permit = ctx.permits.acquire().await;
        Box::pin(make_instance(&group.id, ctx.resolver.as_ref(), &job)).await
    };
    {
        let mut s = group.state();
        s.unanswered = s.unanswered.saturating_sub(1);
        s.changed_at = Instant::now();
        match result {
            Ok(id) => {
                tracing::info!(group = %group.id, instance = %id, logical_id = ?job.logical_id, "provisioned");
                crate::metrics::metrics().action(&group.id, "provision", true, started.elapsed());
                ctx.events.emit(
                    &group.id,
                    What {
                        kind: "provision-finished",
                        instance: &id,
                        logical_id: job.logical_id.as_deref().unwrap_or_default(),
                        ..What::default()
                    },
                    format!("in {} ms", started.elapsed().as_millis()),
                );
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
                crate::metrics::metrics().action(&group.id, "provision", false, started.elapsed());
                ctx.events.emit(
                    &group.id,
                    What {
                        kind: "provision-failed",
                        logical_id: job.logical_id.as_deref().unwrap_or_default(),
                        ..What::default()
                    },
                    e.to_string(),
                );
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

/// A destroy: queued for a permit like a provision, then drain and destroy.
async fn destroy(
    group: Arc<Group>,
    ctx: Arc<Ctx>,
    target: Description,
    reason: DestroyReason,
    blocks: Option<Arc<Blocks>>,
) {
    let started = Instant::now();
    let result = {
        let _permit = ctx.permits.acquire().await;
        Box::pin(drain_and_destroy(
            &group.id,
            ctx.resolver.as_ref(),
            &target,
            reason,
            blocks.as_deref(),
        ))
        .await
    };
    let id = &target.id;
    let logical_id = target.logical_id.clone().unwrap_or_default();
    {
        let mut s = group.state();
        s.changed_at = Instant::now();
        s.destroying.remove(id);
        s.health.remove(id);
        match result {
            Ok(()) => {
                s.destroyed.insert(id.clone(), Instant::now());
                tracing::info!(group = %group.id, instance = %id, %reason, "destroyed");
                crate::metrics::metrics().action(&group.id, "destroy", true, started.elapsed());
                ctx.events.emit(
                    &group.id,
                    What {
                        kind: "destroyed",
                        instance: id,
                        logical_id: &logical_id,
                        ..What::default()
                    },
                    format!("reason: {reason}; in {} ms", started.elapsed().as_millis()),
                );
            }
            Err(e) => {
                let message = format!(
                    "destroying {id} of group '{}' failed (will retry): {e}",
                    group.id
                );
                tracing::warn!("{message}");
                crate::metrics::metrics().action(&group.id, "destroy", false, started.elapsed());
                ctx.events.emit(
                    &group.id,
                    What {
                        kind: "destroy-failed",
                        instance: id,
                        logical_id: &logical_id,
                        ..What::default()
                    },
                    e.to_string(),
                );
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
    blocks: Option<&Blocks>,
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
    // cannot answer its flavor could never be replaced. A flavor that refuses (Conflict: it
    // would break the cluster, e.g. take it below quorum) keeps the instance: a later pass asks
    // again.
    match flavor.drain(&props, d).await {
        Ok(()) => {}
        Err(e) if e.kind == infrakit_sdk::ErrorKind::Conflict => {
            return Err(e.context(format!(
                "flavor '{}' refused to drain it",
                blocks.flavor.plugin
            )));
        }
        Err(e) => {
            tracing::warn!(group, instance = %d.id, "drain failed, destroying anyway: {e}")
        }
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
    let owned = s.record.versions.clone();
    let versions: BTreeMap<&str, Arc<Blocks>> = owned
        .iter()
        .map(|(h, b)| (h.as_str(), Arc::new(b.clone())))
        .collect();
    let valid = s.valid.clone();
    let described = s.view.instances.clone();
    let index = by_id(&described);
    for id in ids {
        if !s.destroying.insert(id.clone()) {
            continue;
        }
        let at = index.get(id.as_str()).copied();
        let blocks = blocks_of(&versions, &valid, at.map(|i| &described[i]));
        tokio::spawn(destroy(
            group.clone(),
            ctx.clone(),
            target(&described, at, id),
            DestroyReason::Terminate,
            blocks,
        ));
    }
}
