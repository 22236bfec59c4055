//! Keeping a controller's groups in step with its store: at start (every stored group), and with a
//! store that others write too.
//!
//! With the file store this controller is the only writer and nothing here runs. With a shared
//! store (the swarm's), other managers' controllers accept commits, scales and destroys and write
//! them; the leader picks them up here, and a newly elected leader starts from what the store holds
//! rather than from what it saw while it stood by. A record is replaced only by a newer revision
//! (revisions grow with every write), so a load that raced this controller's own write never
//! rolls it back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use infrakit_sdk::Result;

use crate::controller::spawn;
use crate::store::{Revision, Unusable};
use crate::worker::{self, Ctx, Group};

/// Loads the store and brings every group in line with it: new groups are started, changed ones
/// take the stored record (their task re-decides), groups gone from the store stop.
pub(crate) async fn resync(ctx: &Arc<Ctx>, after_election: bool) -> Result<()> {
    // What this controller held before the load: a group missing from the load is gone only if
    // this controller did not write it meanwhile (a commit racing the load is newer than it).
    let before: BTreeMap<String, Revision> = ctx
        .groups()
        .values()
        .map(|g| (g.id.clone(), g.state().revision))
        .collect();
    let loaded = ctx.store.load().await?;
    let mut present = BTreeSet::new();
    for stored in loaded.groups {
        let id = stored.record.id().to_string();
        present.insert(id.clone());
        let _writer = ctx.writer(&id).await;
        let existing = ctx.groups().get(&id).cloned();
        if let Some(g) = &existing {
            let mut s = g.state();
            if s.revision >= stored.revision {
                if after_election {
                    // Already up to date, but what the previous leader had in flight is not this
                    // controller's to wait for as its own: without this its provisions would count
                    // as failed, and the first failure pauses an update.
                    s.record.memory.after_restart_within(
                        worker::now_ms(),
                        ctx.options.restart_grace.as_millis() as u64,
                    );
                    s.generation += 1;
                    drop(s);
                    g.wake.notify_one();
                }
                continue;
            }
        }
        let mut record = stored.record;
        let valid = match record.parse() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(group = %id, "not managing group: its stored spec is unusable: {e}");
                if let Some(g) = existing {
                    stop(ctx, &g);
                }
                ctx.unusable().insert(
                    id.clone(),
                    Unusable {
                        source: ctx.store.describe(),
                        id: Some(id.clone()),
                        spec: Some(record.spec.clone()),
                        error: e.to_string(),
                        revision: stored.revision,
                    },
                );
                continue;
            }
        };
        ctx.unusable().remove(&id);
        if after_election || existing.is_none() {
            // Provisions the previous leader had in flight may still land; they are waited for
            // (as after a restart) rather than made again.
            record.memory.after_restart_within(
                worker::now_ms(),
                ctx.options.restart_grace.as_millis() as u64,
            );
        }
        match existing {
            Some(g) => {
                let mut s = g.state();
                s.record = record;
                s.valid = Arc::new(valid);
                s.revision = stored.revision;
                s.generation += 1;
                drop(s);
                g.wake.notify_one();
            }
            None => {
                tracing::info!(group = %id, "group found in the store");
                spawn(ctx, Group::new(record, valid, stored.revision));
            }
        }
    }
    for u in loaded.unusable {
        if let Some(id) = u.id.clone() {
            present.insert(id.clone());
            ctx.unusable().insert(id, u);
        }
    }
    // Gone from the store (freed, or destroyed to the end, by another manager): stop managing.
    // A group this controller wrote after the load began (or created since) stays. (Comparing
    // with the newest revision in the load instead missed the last group of a store: an empty
    // load has no revision, and followers kept showing a destroyed group.)
    let unchanged_since_load = |g: &Group| before.get(&g.id) == Some(&g.state().revision);
    let gone: Vec<Arc<Group>> = ctx
        .groups()
        .values()
        .filter(|g| !present.contains(&g.id) && unchanged_since_load(g))
        .cloned()
        .collect();
    for g in gone {
        let _writer = ctx.writer(&g.id).await;
        if unchanged_since_load(&g) {
            tracing::info!(group = %g.id, "group no longer in the store: no longer managed here");
            stop(ctx, &g);
        }
    }
    Ok(())
}

fn stop(ctx: &Ctx, g: &Arc<Group>) {
    g.state().stopped = true;
    g.wake.notify_one();
    ctx.groups().remove(&g.id);
}
