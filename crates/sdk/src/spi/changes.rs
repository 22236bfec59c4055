//! [`ChangeFeed`]: the cursor bookkeeping behind `Instance.Changes`, so a plugin only says *when*
//! something changed ([`ChangeFeed::changed`]) and whether it can currently tell at all
//! ([`ChangeFeed::set_blind`]).
//!
//! A cursor is `<epoch>.<sequence>`: the epoch is drawn when the feed is made (each plugin process
//! has its own), the sequence counts changes. A cursor from another epoch (the plugin restarted),
//! one that does not parse, or one from the future answers `Resync`; an older sequence answers
//! `Changed` at once; the current one waits for the next change or the timeout.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::spi::instance::Changes;
use crate::{Error, Result};

/// Counts changes for long pollers. Cheap to share behind an `Arc`.
pub struct ChangeFeed {
    epoch: String,
    sequence: watch::Sender<u64>,
    /// Why changes cannot be told right now (the source is lost); pollers get `Unavailable`.
    blind: Mutex<Option<String>>,
}

impl Default for ChangeFeed {
    fn default() -> ChangeFeed {
        ChangeFeed::new()
    }
}

impl ChangeFeed {
    pub fn new() -> ChangeFeed {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        ChangeFeed {
            epoch: format!("{:x}{:x}", std::process::id(), nanos),
            sequence: watch::Sender::new(0),
            blind: Mutex::new(None),
        }
    }

    /// Something changed: every waiter returns, every older cursor is `Changed`.
    pub fn changed(&self) {
        self.sequence.send_modify(|n| *n += 1);
    }

    /// `Some(why)`: the source of changes is lost, and pollers get an `Unavailable` error saying
    /// why until it is back (`None`). Either transition counts as a change, so that nobody trusts a
    /// cursor across a time nothing was watched.
    pub fn set_blind(&self, why: Option<String>) {
        let mut blind = self.blind.lock().unwrap_or_else(|p| p.into_inner());
        if blind.is_some() != why.is_some() {
            *blind = why;
            drop(blind);
            self.changed();
        } else {
            *blind = why;
        }
    }

    fn cursor(&self, sequence: u64) -> String {
        format!("{}.{sequence}", self.epoch)
    }

    fn check_sight(&self) -> Result<()> {
        match &*self.blind.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::unavailable(format!(
                "changes cannot be told right now: {why}; poll meanwhile"
            ))),
            None => Ok(()),
        }
    }

    /// Answers `Instance.Changes` for `cursor`, waiting at most `timeout`.
    pub async fn wait(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        self.check_sight()?;
        let mut rx = self.sequence.subscribe();
        let now = *rx.borrow_and_update();
        let known = cursor
            .split_once('.')
            .filter(|(epoch, _)| *epoch == self.epoch)
            .and_then(|(_, n)| n.parse::<u64>().ok())
            .filter(|n| *n <= now);
        let answer = |sequence: u64, changed: bool, resync: bool| Changes {
            cursor: self.cursor(sequence),
            changed,
            resync,
        };
        match known {
            None => return Ok(answer(now, false, true)),
            Some(n) if n < now => return Ok(answer(now, true, false)),
            Some(_) => {}
        }
        match tokio::time::timeout(timeout, rx.changed()).await {
            Ok(Ok(())) => {
                let next = *rx.borrow_and_update();
                self.check_sight()?;
                Ok(answer(next, true, false))
            }
            // Timed out (or the feed is being dropped): nothing changed.
            _ => Ok(answer(now, false, false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cursors() {
        let feed = ChangeFeed::new();
        let first = feed.wait("", Duration::ZERO).await.expect("first");
        assert!(first.resync && !first.changed);
        let idle = feed
            .wait(&first.cursor, Duration::from_millis(10))
            .await
            .expect("idle");
        assert!(!idle.changed && !idle.resync);
        assert_eq!(idle.cursor, first.cursor);
        feed.changed();
        let changed = feed
            .wait(&first.cursor, Duration::ZERO)
            .await
            .expect("changed");
        assert!(changed.changed && !changed.resync);
        assert_ne!(changed.cursor, first.cursor);
        let other = ChangeFeed::new();
        let foreign = other
            .wait(&changed.cursor, Duration::ZERO)
            .await
            .expect("foreign");
        assert!(foreign.resync, "a cursor from another process resyncs");
        let future = feed
            .wait(&format!("{}.99", feed.epoch), Duration::ZERO)
            .await;
        assert!(future.expect("future").resync);
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_a_change_and_blindness_is_an_error() {
        let feed = std::sync::Arc::new(ChangeFeed::new());
        let cursor = feed.wait("", Duration::ZERO).await.expect("first").cursor;
        let waiter = {
            let feed = feed.clone();
            let cursor = cursor.clone();
            tokio::spawn(async move { feed.wait(&cursor, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        feed.changed();
        let woke = waiter.await.expect("join").expect("wait");
        assert!(woke.changed);
        feed.set_blind(Some("the directory is gone".into()));
        let err = feed
            .wait(&woke.cursor, Duration::ZERO)
            .await
            .expect_err("blind");
        assert_eq!(err.kind, crate::ErrorKind::Unavailable);
        feed.set_blind(None);
        let back = feed.wait(&woke.cursor, Duration::ZERO).await.expect("back");
        assert!(back.changed, "a blind spell counts as a change");
    }
}
