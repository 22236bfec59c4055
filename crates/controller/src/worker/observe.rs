//! Observation beyond the instance plugin's list: the flavor's verdicts on the instances that need
//! one this pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use infrakit_group::core::rules;
use infrakit_sdk::spi::flavor::{FlavorPlugin, Health};
use infrakit_sdk::spi::instance::{Description, InstanceId, InstancePlugin};
use infrakit_sdk::Result;

use super::state::{aged, group_tags, Ctx, Group};
use crate::record::Blocks;

/// Asks the flavor about instances whose verdict is missing, not Healthy, older than the health
/// interval, or not yet proven ([`rules::needs_health_check`]); at most `max_parallel` at a time.
///
/// A flavor judges health by backend state (a container's exit code, its addresses), which makes
/// a description several times bigger: the pass lists the group without it, and it is asked for
/// here for just the instances to judge (`describe_instances_by_id`; all of them in one describe
/// when every instance is due). Describing the whole group with backend state whenever a single
/// new instance needed a verdict (every pass of a large commit) made the passes of 100,000
/// instances move and parse hundreds of megabytes. An observation that fails decides nothing.
pub(crate) async fn check_health(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    instance: &dyn InstancePlugin,
    flavor: &dyn FlavorPlugin,
    blocks: &Blocks,
    described: &[Description],
) -> Result<HashMap<InstanceId, Health>> {
    let stale: Vec<InstanceId> = {
        let s = group.state();
        let trust = s.healthy_trust_ms(&ctx.options);
        described
            .iter()
            .filter(|d| {
                rules::needs_health_check(s.health.get(&d.id).map(aged), s.proven(&d.id), trust)
            })
            .map(|d| d.id.clone())
            .collect()
    };
    let mut fresh = Vec::with_capacity(stale.len());
    if !stale.is_empty() {
        let tags = group_tags(&group.id);
        let with_state = if stale.len() == described.len() {
            instance.describe_instances(&tags, true).await?
        } else {
            instance
                .describe_instances_by_id(&tags, true, &stale)
                .await?
        };
        let mut with_state: HashMap<InstanceId, Description> =
            with_state.into_iter().map(|d| (d.id.clone(), d)).collect();
        let props = blocks.flavor.properties.clone().unwrap_or_default();
        for chunk in stale.chunks(ctx.options.max_parallel.max(1)) {
            // An instance gone since the listing has no state to judge: it cannot tell, and is
            // not counted available on a blind verdict.
            let judged: Vec<Option<Description>> =
                chunk.iter().map(|id| with_state.remove(id)).collect();
            let answers =
                join_all(judged.iter().flatten().map(|d| flavor.healthy(&props, d))).await;
            let mut answers = answers.into_iter();
            for (id, d) in chunk.iter().zip(&judged) {
                let h = match d {
                    None => Health::Unknown,
                    Some(_) => answers.next().map_or(Health::Unknown, |a| {
                        a.unwrap_or_else(|e| {
                            tracing::debug!(group = %group.id, instance = %id, "health unknown: {e}");
                            Health::Unknown
                        })
                    }),
                };
                fresh.push((id.clone(), h));
            }
        }
    }
    let mut s = group.state();
    let now = Instant::now();
    let live: HashSet<&str> = described.iter().map(|d| d.id.as_str()).collect();
    s.health.retain(|id, _| live.contains(id.as_str()));
    for (id, h) in fresh {
        if s.all_proven && !s.record.memory.instances.contains_key(&id) {
            s.all_proven = false;
        }
        s.health.insert(id, (h, now));
    }
    Ok(s.health
        .iter()
        .map(|(id, (h, _))| (id.clone(), *h))
        .collect())
}
