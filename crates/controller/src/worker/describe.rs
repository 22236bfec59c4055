//! One observation per instance plugin at a time, shared by every group that uses the plugin.
//!
//! Each group used to ask its plugin for its own instances on every pass. The plugin filters by
//! tag over everything it holds, so 2,000 groups of one instance on one plugin cost 2,000 x 2,000
//! per round of passes (~185,000 DescribeInstances for one commit storm), and the calls crowded
//! out the provisions. Now a pass asks [`Observations::instances`]: one `DescribeInstances` of
//! the whole plugin, split by group, answers every group whose pass wants it while it runs or
//! soon after; concurrent requests wait for the one running (or the next one) instead of each
//! making their own. The cost is linear in the instances, whatever the number of groups.
//!
//! A shared answer is never older than what a pass must see:
//! - it started after the group's own last change (an action answered, a commit: `fresh_after`),
//!   so a pass never sees a destroyed instance again nor misses one it was told was made;
//! - it started after the plugin last reported a change ([`Observations::changed`]);
//! - and it started at most [`max_age`] before the pass asked (drift from elsewhere is seen that
//!   late at most, well within the poll interval that bounds it anyway) — unless the plugin is
//!   *followed*: its change notifications answer (`Instance.Changes`, see `watch.rs`), so any
//!   change after the answer started reaches [`Observations::changed`] and ends the sharing. Then
//!   the answer is kept for up to [`SAFETY_RESYNC`]: an idle group costs its plugin nothing, and
//!   the full describe at that interval is only the safety net for a notification lost in a bug.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infrakit_sdk::spi::instance::{Description, InstancePlugin, Tags};
use infrakit_sdk::Result;

use super::state::lock;
use crate::tags;

/// What one describe of a plugin answered, split by group.
struct Snapshot {
    started: Instant,
    by_group: Result<HashMap<String, Arc<Vec<Description>>>>,
}

/// Per plugin: the last answer, behind the lock a describe holds while it runs (so requests made
/// meanwhile queue behind it and then share it, or the one describe that follows).
type Slot = Arc<tokio::sync::Mutex<Option<Snapshot>>>;

#[derive(Default)]
pub(crate) struct Observations {
    slots: Mutex<HashMap<String, Slot>>,
    /// When each plugin last reported a change (`Instance.Changes`).
    changed: Mutex<HashMap<String, Instant>>,
    /// The plugins whose change notifications answer now (their watcher holds a live cursor).
    followed: Mutex<std::collections::HashSet<String>>,
    /// DescribeInstances made, for tests and logs.
    pub(crate) describes: std::sync::atomic::AtomicU64,
}

/// How old a shared answer may be when a pass asks: half the poll interval, at most a second.
pub(crate) fn max_age(poll_interval: Duration) -> Duration {
    (poll_interval / 2).min(Duration::from_secs(1))
}

/// How long an answer from a followed plugin (one whose change notifications answer) is kept while
/// it reports no change: the slow full resync. Why 60 s: a notification can only be lost to a
/// plugin's bug (the cursor carries every change across reconnects, and a restarted plugin says
/// Resync), so this bounds the harm of such a bug, not normal drift; it is also the interval the
/// idle benchmark (`cargo bench --bench changes`) measures over, at one describe per minute. A poll
/// interval longer than this keeps the poll's own bound.
pub(crate) const SAFETY_RESYNC: Duration = Duration::from_secs(60);

impl Observations {
    /// The plugin reported a change: no answer started before now is shared any more.
    pub(crate) fn changed(&self, plugin: &str) {
        lock(&self.changed).insert(plugin.to_string(), Instant::now());
    }

    /// Whether the plugin's change notifications answer (so answers may be kept longer). A watcher
    /// says `false` as soon as a long poll fails, before anything else happens.
    pub(crate) fn following(&self, plugin: &str, followed: bool) {
        let mut set = lock(&self.followed);
        if followed {
            set.insert(plugin.to_string());
        } else {
            set.remove(plugin);
        }
    }

    /// The instances of `group` on instance plugin `name`, from a describe that started after
    /// `fresh_after`, after the plugin's last reported change, and at most `max_age` ago
    /// ([`SAFETY_RESYNC`] ago for a followed plugin); with when that describe began.
    pub(crate) async fn instances(
        &self,
        name: &str,
        plugin: &dyn InstancePlugin,
        group: &str,
        fresh_after: Instant,
        max_age: Duration,
    ) -> Result<(Arc<Vec<Description>>, Instant)> {
        let asked = Instant::now();
        let max_age = if lock(&self.followed).contains(name) {
            max_age.max(SAFETY_RESYNC)
        } else {
            max_age
        };
        let mut not_before = fresh_after.max(asked.checked_sub(max_age).unwrap_or(asked));
        if let Some(changed) = lock(&self.changed).get(name) {
            not_before = not_before.max(*changed);
        }
        let slot = lock(&self.slots)
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut last = slot.lock().await;
        let snapshot = match last.take() {
            Some(s) if s.started >= not_before => last.insert(s),
            _ => {
                let started = Instant::now();
                self.describes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let by_group = plugin
                    .describe_instances(&Tags::new(), false)
                    .await
                    .map(split_by_group);
                last.insert(Snapshot { started, by_group })
            }
        };
        match &snapshot.by_group {
            Ok(by_group) => Ok((
                by_group.get(group).cloned().unwrap_or_default(),
                snapshot.started,
            )),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The described instances by the group their tag names; instances of no group are left out.
fn split_by_group(all: Vec<Description>) -> HashMap<String, Arc<Vec<Description>>> {
    let mut by_group: HashMap<String, Vec<Description>> = HashMap::new();
    for d in all {
        if let Some(g) = d.tags.get(tags::GROUP) {
            by_group.entry(g.clone()).or_default().push(d);
        }
    }
    by_group
        .into_iter()
        .map(|(g, list)| (g, Arc::new(list)))
        .collect()
}
