//! Observation beyond the instance plugin's list: the flavor's verdicts on the instances that need
//! one this pass.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use infrakit_group::core::rules;
use infrakit_sdk::spi::flavor::{FlavorPlugin, Health};
use infrakit_sdk::spi::instance::{Description, InstanceId};

use super::state::{aged, Ctx, Group};
use crate::record::Blocks;

/// Asks the flavor about instances whose verdict is missing, not Healthy, older than the health
/// interval, or not yet proven ([`rules::needs_health_check`]); at most `max_parallel` at a time.
pub(crate) async fn check_health(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    flavor: &dyn FlavorPlugin,
    blocks: &Blocks,
    described: &[Description],
) -> HashMap<InstanceId, Health> {
    let stale: Vec<&Description> = {
        let s = group.state();
        let trust = s.healthy_trust_ms(&ctx.options);
        described
            .iter()
            .filter(|d| {
                rules::needs_health_check(s.health.get(&d.id).map(aged), s.proven(&d.id), trust)
            })
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
