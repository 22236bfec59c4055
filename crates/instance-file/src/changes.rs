//! `Instance.Changes` for instance-file: a second inotify watch on the directory (the cache's own
//! is drained only by describes), read by a task on the async runtime. Any event naming an
//! instance file (created, removed, renamed, written) is a change; temporary files are not. A
//! watch that is lost (the directory removed, events overflowed) makes the feed blind, which
//! pollers see as an error (they poll meanwhile), and it is set again every second; both
//! transitions count as changes, so nothing that happened unwatched is trusted as unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infrakit_sdk::spi::changes::ChangeFeed;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::watch::Watch;
use super::{id_of, lock};

/// How long after a lost watch it is set again.
const REWATCH: Duration = Duration::from_secs(1);

/// The feed, and whether its watching task runs (it starts with the first `Changes` call, on
/// the runtime that serves it).
#[derive(Default)]
pub(super) struct Changes {
    pub(super) feed: Arc<ChangeFeed>,
    started: Mutex<bool>,
}

impl Changes {
    /// Starts watching `dir` unless it is watched already. The watch is set before this returns,
    /// so every change after the caller's next describe is reported. An error says why the
    /// directory cannot be watched (a network file system, no inotify): the caller polls.
    pub(super) fn ensure_started(&self, dir: &Path) -> Result<(), String> {
        let mut started = lock(&self.started);
        if *started {
            return Ok(());
        }
        let fd = start(dir)?;
        tokio::spawn(watch_loop(fd, dir.to_path_buf(), self.feed.clone()));
        *started = true;
        Ok(())
    }
}

/// A new watch on `dir`, registered with the runtime's reactor.
fn start(dir: &Path) -> Result<AsyncFd<Watch>, String> {
    let watch = Watch::start(dir)?;
    // SAFETY: a `Watch` owns its inotify descriptor for its whole life and never replaces it, so
    // the descriptor stays open and the same while the `AsyncFd` owns the watch.
    unsafe { AsyncFd::register_with_interest(watch, Interest::READABLE) }
        .map_err(|e| format!("cannot wait for change events on the runtime: {e}"))
}

async fn watch_loop(mut fd: AsyncFd<Watch>, dir: PathBuf, feed: Arc<ChangeFeed>) {
    loop {
        let problem = watch_until_lost(&mut fd, &dir, &feed).await;
        tracing::info!(dir = %dir.display(), "change feed: {problem}; watching again in {REWATCH:?}");
        drop(fd);
        feed.set_blind(Some(problem));
        fd = loop {
            tokio::time::sleep(REWATCH).await;
            match start(&dir) {
                Ok(fd) => break fd,
                Err(problem) => feed.set_blind(Some(problem)),
            }
        };
        feed.set_blind(None);
    }
}

/// Reports every change until the watch can no longer vouch for the directory; returns why.
async fn watch_until_lost(fd: &mut AsyncFd<Watch>, dir: &Path, feed: &ChangeFeed) -> String {
    let mut names = BTreeSet::new();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => return format!("cannot wait for change events: {e}"),
        };
        // `changes` reads until the queue is empty, so the readiness can be cleared after it.
        let drained = guard.get_inner_mut().changes(dir, &mut names);
        guard.clear_ready();
        if names.iter().any(|name| id_of(name).is_some()) {
            feed.changed();
        }
        names.clear();
        if let Err(problem) = drained {
            return problem;
        }
    }
}
