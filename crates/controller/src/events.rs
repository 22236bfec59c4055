//! The controller's event stream (`Group.Events`, `infrakit group events`): every decision it
//! carries out and its outcome, kept in a bounded ring in memory with a sequence number per
//! event. A reader hands back the sequence it saw last; one that fell behind the ring is told how
//! many events it lost. Events are not persisted: after a restart the stream starts again (the
//! group's state itself is in the store).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infrakit_sdk::spi::group::{Event, EventBatch};
use tokio::sync::Notify;

/// Events kept (about 200 bytes each: a few MB at most).
pub const CAPACITY: usize = 10_000;
/// Events returned by one call at most.
pub const MAX_BATCH: usize = 1_000;

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    added: Notify,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    /// The sequence number of the last event added (0: none yet).
    last: u64,
}

/// What happened, to whom, and why.
#[derive(Debug, Default, Clone)]
pub struct What<'a> {
    pub kind: &'a str,
    pub instance: &'a str,
    pub logical_id: &'a str,
    pub cause: &'a str,
}

impl EventLog {
    /// Adds an event and wakes the readers waiting for one.
    pub fn emit(&self, group: &str, what: What<'_>, message: impl Into<String>) {
        let message = message.into();
        {
            let mut ring = match self.ring.lock() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            ring.last += 1;
            let event = Event {
                seq: ring.last,
                time: rfc3339_millis(SystemTime::now()),
                group: group.to_string(),
                kind: what.kind.to_string(),
                instance: what.instance.to_string(),
                logical_id: what.logical_id.to_string(),
                cause: what.cause.to_string(),
                message,
            };
            if ring.events.len() == CAPACITY {
                ring.events.pop_front();
            }
            ring.events.push_back(event);
        }
        self.added.notify_waiters();
    }

    /// The events after `cursor` (of `group` only, when given); with none yet, waits up to
    /// `timeout` for one.
    pub async fn after(&self, cursor: u64, group: Option<&str>, timeout: Duration) -> EventBatch {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an event added in between is not missed.
            let added = self.added.notified();
            let batch = self.read(cursor, group);
            if !batch.events.is_empty() || batch.lost > 0 {
                return batch;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.read(cursor, group);
            }
        }
    }

    fn read(&self, cursor: u64, group: Option<&str>) -> EventBatch {
        let ring = match self.ring.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A cursor from before a restart (larger than anything here) starts over.
        let cursor = if cursor > ring.last { 0 } else { cursor };
        let first = ring.events.front().map(|e| e.seq).unwrap_or(ring.last + 1);
        let lost = if cursor > 0 && cursor + 1 < first {
            first - cursor - 1
        } else {
            0
        };
        let mut next = cursor.max(first.saturating_sub(1));
        let mut events = Vec::new();
        for e in ring.events.iter().filter(|e| e.seq > cursor) {
            if events.len() == MAX_BATCH {
                break;
            }
            next = e.seq;
            if group.is_none_or(|g| g == e.group) {
                events.push(e.clone());
            }
        }
        EventBatch { events, next, lost }
    }
}

/// `2026-12-05T01:02:03.456Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(k: &str) -> What<'_> {
        What {
            kind: k,
            ..What::default()
        }
    }

    #[tokio::test]
    async fn readers_get_what_came_after_their_cursor_and_are_told_what_they_lost() {
        let log = EventLog::default();
        log.emit("a", kind("commit"), "one");
        log.emit("b", kind("commit"), "two");
        log.emit("a", kind("scale"), "three");
        let all = log.after(0, None, Duration::ZERO).await;
        assert_eq!(
            all.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!((all.next, all.lost), (3, 0));
        let only_a = log.after(0, Some("a"), Duration::ZERO).await;
        assert_eq!(only_a.events.len(), 2);
        assert_eq!(
            only_a.next, 3,
            "a filtered reader still moves past others' events"
        );

        // Nothing new: waits, and wakes for an event.
        let waiting = log.after(3, None, Duration::from_secs(5));
        let (batch, ()) = tokio::join!(waiting, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            log.emit("a", kind("provision-started"), "four");
        });
        assert_eq!(batch.events[0].seq, 4);
        // Nothing at all: the timeout answers an empty batch at the same cursor.
        let empty = log.after(4, None, Duration::from_millis(10)).await;
        assert!(empty.events.is_empty() && empty.next == 4);

        // A reader that fell behind the ring is told how many it lost.
        for i in 0..CAPACITY + 5 {
            log.emit("a", kind("x"), format!("{i}"));
        }
        let behind = log.after(2, None, Duration::ZERO).await;
        assert!(behind.lost > 0, "{}", behind.lost);
        assert_eq!(behind.events[0].seq, 2 + behind.lost + 1);
        // A cursor from another life of the controller starts over.
        let fresh = log.after(u64::MAX, None, Duration::ZERO).await;
        assert_eq!(fresh.lost, 0);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_896_523_456);
        assert_eq!(rfc3339_millis(t), "2025-12-05T01:02:03.456Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
