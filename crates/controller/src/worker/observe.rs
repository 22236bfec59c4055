//! Observation beyond the instance plugin's list: the flavor's verdicts on the instances that need
//! one this pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use infrakit_group::core::rules;
use infrakit_sdk::spi::flavor::{FlavorPlugin, Health};
use infrakit_sdk::spi::instance::{Description, InstanceId, InstancePlugin};
use infrakit_sdk::spi::tags::UNREADABLE;
use infrakit_sdk::{ErrorKind, Result};

use super::state::{aged, group_tags, Ctx, Group};
use crate::record::Blocks;

/// How many instances' backend properties are asked for (and judged) at a time: what a pass
/// holds of them at once, however many new instances it meets (a pass of a 100,000-instance commit
/// may meet tens of thousands).
pub(crate) const PROPERTIES_CHUNK: usize = 1000;

/// Asks the flavor about instances whose verdict is missing, not Healthy, older than the health
/// interval, or not yet proven ([`rules::needs_health_check`]); at most `max_parallel` at a time.
///
/// A flavor judges health by backend state (a container's exit code, its addresses), which makes
/// a description several times bigger: the pass lists the group without it, and it is asked for
/// here for just the instances to judge, [`PROPERTIES_CHUNK`] at a time
/// (`describe_instances_by_id`). A plugin that does not know IDs answers every instance with its
/// properties: that answer is then used for all the instances to judge, and not asked for again.
/// Describing the whole group with backend state whenever a single new instance needed a verdict
/// (every pass of a large commit) made the passes of 100,000 instances move and parse hundreds of
/// megabytes. An observation that fails decides nothing.
pub(crate) async fn check_health(
    group: &Arc<Group>,
    ctx: &Arc<Ctx>,
    instance: &dyn InstancePlugin,
    flavor: &dyn FlavorPlugin,
    blocks: &Blocks,
    described: &[Description],
) -> Result<Vec<Health>> {
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
    let tags = group_tags(&group.id);
    let props = blocks.flavor.properties.clone().unwrap_or_default();
    let mut fresh = Vec::with_capacity(stale.len());
    // Set once a plugin answered more than it was asked: it lists everything, once is enough.
    let mut everything: Option<HashMap<InstanceId, Description>> = None;
    for asked in stale.chunks(PROPERTIES_CHUNK) {
        let mut with_state = match everything.as_mut() {
            Some(all) => take(all, asked),
            None => {
                let answer = instance
                    .describe_instances_by_id(&tags, true, asked)
                    .await?;
                note_unreadable(group, ctx, &answer);
                let lists_all = answer.len() > asked.len();
                let mut answer: HashMap<InstanceId, Description> =
                    answer.into_iter().map(|d| (d.id.clone(), d)).collect();
                if lists_all {
                    let mine = take(&mut answer, asked);
                    everything = Some(answer);
                    mine
                } else {
                    answer
                }
            }
        };
        judge(
            group,
            ctx,
            flavor,
            &props,
            asked,
            &mut with_state,
            &mut fresh,
        )
        .await;
    }
    let mut s = group.state();
    let now = Instant::now();
    let live: HashSet<&str> = described.iter().map(|d| d.id.as_str()).collect();
    s.health.retain(|id, _| live.contains(id.as_str()));
    s.unreadable.retain(|id| live.contains(id.as_str()));
    for (id, h) in fresh {
        if s.all_proven && !s.record.memory.instances.contains_key(&id) {
            s.all_proven = false;
        }
        s.health.insert(id, (h, now));
    }
    // In the order of `described`, so the pass and the view read a verdict by position instead of
    // each holding a map with a copy of every ID.
    Ok(described
        .iter()
        .map(|d| s.health.get(&d.id).map(|(h, _)| *h).unwrap_or_default())
        .collect())
}

/// Reports the instances whose description the client could not read whole (tag
/// [`UNREADABLE`]): they still count, by ID and tags, and are judged without their properties;
/// each is said once in the events and the log, and `DescribeGroup` lists them while they last.
fn note_unreadable(group: &Group, ctx: &Ctx, answer: &[Description]) {
    let mut s = group.state();
    for d in answer {
        let Some(why) = d.tags.get(UNREADABLE) else {
            continue;
        };
        if s.unreadable.insert(d.id.clone()) {
            tracing::warn!(group = %group.id, instance = %d.id, "instance {}: {why}", d.id);
            ctx.events.emit(
                &group.id,
                crate::events::What {
                    kind: "instance-unreadable",
                    instance: &d.id,
                    ..Default::default()
                },
                format!("{why}; counted by its ID and tags, judged without its properties"),
            );
        }
    }
}

/// Instances judged in one `healthy_many` call: their descriptions carry backend state, and the
/// request must stay well under the plugin server's 8 MiB body limit (32 KiB each here).
const HEALTH_BATCH: usize = 250;

/// The descriptions of `ids`, taken out of `all`.
fn take(
    all: &mut HashMap<InstanceId, Description>,
    ids: &[InstanceId],
) -> HashMap<InstanceId, Description> {
    ids.iter().filter_map(|id| all.remove_entry(id)).collect()
}

/// The flavor's verdicts on `asked`, judged by their descriptions with backend state: in one call
/// (`healthy_many`), or, from a flavor that judges one instance per call, at most `max_parallel`
/// calls at a time. An instance gone since the listing (not in `with_state`) has no state to
/// judge: it cannot tell, and is never counted available on a bare description.
async fn judge(
    group: &Group,
    ctx: &Ctx,
    flavor: &dyn FlavorPlugin,
    props: &serde_json::Value,
    asked: &[InstanceId],
    with_state: &mut HashMap<InstanceId, Description>,
    fresh: &mut Vec<(InstanceId, Health)>,
) {
    let present: Vec<Description> = asked
        .iter()
        .filter_map(|id| with_state.remove(id))
        .collect();
    let mut verdicts: HashMap<&str, Health> = HashMap::with_capacity(present.len());
    for batch in present.chunks(HEALTH_BATCH) {
        match flavor.healthy_many(props, batch).await {
            Ok(all) => verdicts.extend(batch.iter().map(|d| d.id.as_str()).zip(all)),
            Err(e) if e.kind == ErrorKind::Unsupported => {
                for chunk in batch.chunks(ctx.options.max_parallel.max(1)) {
                    let answers = join_all(chunk.iter().map(|d| flavor.healthy(props, d))).await;
                    for (d, a) in chunk.iter().zip(answers) {
                        let h = a.unwrap_or_else(|e| {
                            tracing::debug!(group = %group.id, instance = %d.id, "health unknown: {e}");
                            Health::Unknown
                        });
                        verdicts.insert(&d.id, h);
                    }
                }
            }
            // Verdicts missing are Unknown: nothing is counted available on a failed answer.
            Err(e) => {
                tracing::debug!(group = %group.id, "health of {} instances unknown: {e}", batch.len())
            }
        }
    }
    for id in asked {
        let h = verdicts
            .get(id.as_str())
            .copied()
            .unwrap_or(Health::Unknown);
        fresh.push((id.clone(), h));
    }
}
