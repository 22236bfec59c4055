//! Change notifications: one watcher task per instance plugin in use (not per group) long-polls
//! the plugin's `Instance.Changes` and wakes every group that observes through that plugin when
//! something changed (or the plugin cannot tell: `Resync`, e.g. after its restart). The poll
//! interval stays the safety net: a plugin without `Changes` (InfraKit v0.5's, or any plugin
//! built on the SDK's default) is simply polled, and a watcher that fails backs off.
//!
//! A group's task calls [`ensure`] before each pass; the watcher ends when no group uses its
//! plugin any more (checked before every long poll, under the same lock [`ensure`] takes, so a
//! group that starts using the plugin meanwhile always finds a watcher or starts one).

use std::sync::Arc;
use std::time::Duration;

use infrakit_sdk::ErrorKind;

use super::state::{lock, Ctx, Group};

/// How long one long poll may wait: well under the server's cap (`MAX_CHANGES_WAIT`) and its
/// idle timeout, so neither side gives up on a connection that is merely waiting.
pub(crate) const LONG_POLL: Duration = Duration::from_secs(25);
/// The first pause after a failed long poll; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between attempts, and the pause after a plugin said it does not report
/// changes (asked again that rarely, in case it is upgraded).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the watcher of instance plugin `plugin` unless it runs (or notifications are off).
pub(crate) fn ensure(ctx: &Arc<Ctx>, plugin: &str) {
    if !ctx.options.change_notifications {
        return;
    }
    let mut running = lock(&ctx.watchers);
    if running.insert(plugin.to_string()) {
        tracing::debug!(plugin, "following the instance plugin's changes");
        tokio::spawn(watch(ctx.clone(), plugin.to_string()));
    }
}

/// The instance plugin group `group` observes through, if it has a usable version.
pub(crate) fn instance_plugin(group: &Group) -> Option<String> {
    let s = group.state();
    if s.stopped {
        return None;
    }
    s.record
        .versions
        .get(&s.valid.hash)
        .map(|b| b.instance.plugin.clone())
}

/// The groups using `plugin`; when there are none, the watcher's registration is removed in
/// the same critical section, and the watcher must end.
fn users(ctx: &Ctx, plugin: &str) -> Vec<Arc<Group>> {
    let mut running = lock(&ctx.watchers);
    let groups: Vec<Arc<Group>> = ctx.groups().values().cloned().collect();
    let users: Vec<Arc<Group>> = groups
        .into_iter()
        .filter(|g| instance_plugin(g).as_deref() == Some(plugin))
        .collect();
    if users.is_empty() {
        running.remove(plugin);
    }
    users
}

async fn watch(ctx: Arc<Ctx>, plugin: String) {
    let mut cursor = String::new();
    let mut backoff = FIRST_BACKOFF;
    let mut unsupported_said = false;
    loop {
        if users(&ctx, &plugin).is_empty() {
            tracing::debug!(
                plugin,
                "no group uses the instance plugin: no longer following its changes"
            );
            ctx.observations.following(&plugin, false);
            return;
        }
        let answer = match ctx.resolver.instance(&plugin).await {
            Ok(p) => p.changes(&cursor, LONG_POLL).await,
            Err(e) => Err(e),
        };
        let pause = match answer {
            Ok(changes) => {
                backoff = FIRST_BACKOFF;
                unsupported_said = false;
                // A resync for a cursor the plugin gave out: it restarted, so the provisions in
                // flight then failed with it (not for a reason of their own).
                let restarted = changes.resync && !cursor.is_empty();
                cursor = changes.cursor;
                if changes.changed || changes.resync {
                    ctx.observations.changed(&plugin);
                }
                // From here on every change reaches `changed` (through the cursor), so the
                // groups may keep their observation of this plugin until it reports one.
                ctx.observations.following(&plugin, true);
                if changes.changed || changes.resync {
                    for group in users(&ctx, &plugin) {
                        if restarted {
                            group.state().recovered_ms = Some(super::state::now_ms());
                        }
                        group.wake.notify_one();
                    }
                }
                continue;
            }
            Err(e) if e.kind == ErrorKind::Unsupported => {
                ctx.observations.following(&plugin, false);
                if !unsupported_said {
                    tracing::info!(plugin, "{e}; its groups are polled");
                    unsupported_said = true;
                }
                MAX_BACKOFF
            }
            Err(e) => {
                // Changes may now go unreported: the groups observe at the poll's pace again.
                ctx.observations.following(&plugin, false);
                tracing::debug!(
                    plugin,
                    "change notifications: {e}; trying again in {backoff:?}"
                );
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        // Whatever happened meanwhile is for the poll, or for the `Changed`/`Resync` answer the
        // next successful long poll gives for the old cursor.
        tokio::time::sleep(pause).await;
    }
}
