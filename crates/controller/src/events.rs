//! The controller's event stream (`Group.Events`, `infrakit group events`): every decision it
//! carries out and its outcome, kept in a bounded ring in memory with a sequence number per
//! event. A reader hands back the sequence it saw last; one that fell behind the ring is told how
//! many events it lost. Events are not persisted: after a restart the stream starts again (the
//! group's state itself is in the store).
//!
//! Bounded three ways, because what goes into an event can be large (a commit's plan lists every
//! logical ID it will provision, a plugin's error may echo what it was given): each text is cut to
//! [`MAX_MESSAGE_BYTES`] / [`MAX_FIELD_BYTES`], the ring keeps at most [`CAPACITY`] events and
//! [`MAX_RING_BYTES`], and one reply carries at most [`MAX_BATCH`] events and [`MAX_BATCH_BYTES`]
//! (the reader pages on with the cursor).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infrakit_sdk::spi::group::{Event, EventBatch};
use tokio::sync::Notify;

/// Events kept at most (most are about 200 bytes).
pub const CAPACITY: usize = 10_000;
/// Bytes of events kept at most (each counted as its texts plus [`EVENT_OVERHEAD`]): the oldest go
/// first when a new one would pass it.
pub const MAX_RING_BYTES: usize = 4 * 1024 * 1024;
/// Events returned by one call at most.
pub const MAX_BATCH: usize = 1_000;
/// Bytes of events returned by one call at most (one event is always returned, whatever its size,
/// so a reader always moves on).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// An event's message is cut to this many bytes (at a character boundary, saying how much was cut).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Each other text of an event (group, kind, instance, logical ID, cause) is cut to this.
pub const MAX_FIELD_BYTES: usize = 256;
/// What one event costs beyond its texts (sequence number, the strings' headers): counted so that
/// many tiny events also stay within [`MAX_RING_BYTES`].
pub const EVENT_OVERHEAD: usize = 200;

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    added: Notify,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    /// What the events kept weigh ([`weight`]).
    bytes: usize,
    /// The sequence number of the last event added (0: none yet).
    last: u64,
}

/// What an event counts for against [`MAX_RING_BYTES`] and [`MAX_BATCH_BYTES`].
fn weight(e: &Event) -> usize {
    EVENT_OVERHEAD
        + [
            &e.time,
            &e.group,
            &e.kind,
            &e.instance,
            &e.logical_id,
            &e.cause,
            &e.message,
        ]
        .iter()
        .map(|s| s.len())
        .sum::<usize>()
}

/// `text` cut to at most `max` bytes (at a character boundary), saying how many were left out.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end)
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
        let message = bounded(&message.into(), MAX_MESSAGE_BYTES);
        let field = |s: &str| bounded(s, MAX_FIELD_BYTES);
        {
            let mut ring = match self.ring.lock() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            ring.last += 1;
            let event = Event {
                seq: ring.last,
                time: rfc3339_millis(SystemTime::now()),
                group: field(group),
                kind: field(what.kind),
                instance: field(what.instance),
                logical_id: field(what.logical_id),
                cause: field(what.cause),
                message,
            };
            let bytes = weight(&event);
            while ring.events.len() == CAPACITY
                || (!ring.events.is_empty() && ring.bytes + bytes > MAX_RING_BYTES)
            {
                if let Some(old) = ring.events.pop_front() {
                    ring.bytes -= weight(&old);
                }
            }
            ring.bytes += bytes;
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
        let mut bytes = 0;
        // The ring is in sequence order: start at the first event after the cursor.
        let start = ring.events.partition_point(|e| e.seq <= cursor);
        for e in ring.events.range(start..) {
            if group.is_none_or(|g| g == e.group) {
                let w = weight(e);
                if events.len() == MAX_BATCH || (!events.is_empty() && bytes + w > MAX_BATCH_BYTES)
                {
                    break;
                }
                bytes += w;
                events.push(e.clone());
            }
            next = e.seq;
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

    #[tokio::test]
    async fn big_events_are_cut_and_the_ring_and_each_page_stay_within_their_bytes() {
        let log = EventLog::default();
        let plan = "pet-".repeat(100_000);
        for _ in 0..2_000 {
            log.emit("g", kind("commit"), plan.clone());
        }
        let kept = {
            let ring = log.ring.lock().expect("ring");
            assert_eq!(ring.bytes, ring.events.iter().map(weight).sum::<usize>());
            ring.bytes
        };
        assert!(kept <= MAX_RING_BYTES, "the ring holds {kept} bytes");
        let mut cursor = 0;
        let mut read = 0;
        loop {
            let page = log.after(cursor, None, Duration::ZERO).await;
            let size = serde_json::to_vec(&page).expect("json").len();
            assert!(size <= 2 * MAX_BATCH_BYTES, "a page of {size} bytes");
            for e in &page.events {
                assert!(e.message.len() <= MAX_MESSAGE_BYTES, "{}", e.message.len());
                assert!(e.message.ends_with("more bytes)"), "says it was cut");
            }
            read += page.events.len();
            if page.events.is_empty() {
                break;
            }
            cursor = page.next;
        }
        assert_eq!(cursor, 2_000, "paging reaches the end");
        assert!(read > 0);
    }

    #[tokio::test]
    async fn a_filtered_page_skips_others_events_without_counting_them() {
        let log = EventLog::default();
        for i in 0..(MAX_BATCH * 3) {
            let g = if i % 3 == 0 { "a" } else { "b" };
            log.emit(g, kind("x"), "m");
        }
        let page = log.after(0, Some("a"), Duration::ZERO).await;
        assert_eq!(page.events.len(), MAX_BATCH, "a page of a's events is full");
        assert!(page.events.iter().all(|e| e.group == "a"));
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_896_523_456);
        assert_eq!(rfc3339_millis(t), "2025-12-05T01:02:03.456Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
