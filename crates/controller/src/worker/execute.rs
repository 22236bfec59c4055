//! Carrying the core's actions out through the plugins: provisions (flavor Prepare, then the
//! instance plugin) and destroys (drain, then destroy), bounded in parallel across all groups.

use std::collections::BTreeMap;
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
pub(crate) fn execute(
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
    let started = Instant::now();
    let result = {
        let _permit = ctx.permits.acquire().await;
        make_instance(&group.id, ctx.resolver.as_ref(), &job).await
    };
    {
        let mut s = group.state();
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

async fn destroy(
    group: Arc<Group>,
    ctx: Arc<Ctx>,
    d: Description,
    reason: DestroyReason,
    blocks: Option<Blocks>,
) {
    let started = Instant::now();
    let result = {
        let _permit = ctx.permits.acquire().await;
        drain_and_destroy(&group.id, ctx.resolver.as_ref(), &d, reason, blocks).await
    };
    {
        let mut s = group.state();
        s.destroying.remove(&d.id);
        s.health.remove(&d.id);
        let logical_id = d.logical_id.as_deref().unwrap_or_default();
        match result {
            Ok(()) => {
                tracing::info!(group = %group.id, instance = %d.id, %reason, "destroyed");
                crate::metrics::metrics().action(&group.id, "destroy", true, started.elapsed());
                ctx.events.emit(
                    &group.id,
                    What {
                        kind: "destroyed",
                        instance: &d.id,
                        logical_id,
                        ..What::default()
                    },
                    format!("reason: {reason}; in {} ms", started.elapsed().as_millis()),
                );
            }
            Err(e) => {
                let message = format!(
                    "destroying {} of group '{}' failed (will retry): {e}",
                    d.id, group.id
                );
                tracing::warn!("{message}");
                crate::metrics::metrics().action(&group.id, "destroy", false, started.elapsed());
                ctx.events.emit(
                    &group.id,
                    What {
                        kind: "destroy-failed",
                        instance: &d.id,
                        logical_id,
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
