//! `infrakit group events`: the group controller's event stream, followed (long polls of
//! `Group.Events`) and printed for a person, or as JSON lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use infrakit_sdk::rpc::long_polls::is_long_polls_full;
use infrakit_sdk::spi::group::{Event, GroupPlugin};
use infrakit_sdk::ErrorKind;

use crate::output::{errln, outln};

/// How long one long poll waits for an event.
const WAIT: Duration = Duration::from_secs(25);

/// How long a follower waits before asking again when the plugin already holds its limit of long
/// polls (`MAX_LONG_POLLS`): followers beyond it take turns instead of hammering the plugin, and
/// the cursor keeps their place, so nothing is missed while the ring keeps it.
const BUSY_PAUSE: Duration = Duration::from_secs(2);

/// `--since`: a duration (humantime: `10m`, `1h`, `2d`) that reaches no further back than 1970,
/// so that "now minus it" is a time; anything longer is an error, not an overflow.
pub fn parse_since(text: &str) -> std::result::Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 10m, 1h or 2d)"))?;
    let reaches = SystemTime::now()
        .checked_sub(d)
        .is_some_and(|t| t >= UNIX_EPOCH);
    if reaches {
        Ok(d)
    } else {
        Err(format!(
            "{text} reaches back before 1970; events are kept in memory for far less              (write e.g. 10m, 1h or 2d)"
        ))
    }
}

/// One event as a line for a person: `01:02:03.456 web provision-finished instance-1a2b (fill) in 12 ms`.
pub fn line(e: &Event) -> String {
    let time = e.time.get(11..23).unwrap_or(&e.time);
    let mut out = format!("{time} {} {}", e.group, e.kind);
    for part in [&e.instance, &e.logical_id] {
        if !part.is_empty() {
            out.push(' ');
            out.push_str(part);
        }
    }
    if !e.cause.is_empty() {
        out.push_str(&format!(" ({})", e.cause));
    }
    if !e.message.is_empty() {
        out.push_str(": ");
        out.push_str(&e.message);
    }
    out
}

/// Prints the events of `group` (every group's when `None`): those of the last `since` already
/// kept (none when `None`: only what happens from now on), then, with `follow`, new ones as they
/// come, until the plugin goes away.
pub async fn follow(
    plugin: &dyn GroupPlugin,
    group: Option<&str>,
    since: Option<Duration>,
    follow: bool,
    json: bool,
) -> Result<()> {
    let oldest = match since {
        Some(s) => Some(SystemTime::now().checked_sub(s).ok_or_else(|| {
            anyhow::anyhow!("--since {s:?} reaches back before the clock's start")
        })?),
        None => None,
    };
    let mut printed = 0u64;
    let mut cursor = 0;
    if oldest.is_none() {
        // Only what happens from now on: skip what is kept (page by page).
        loop {
            let batch = poll(plugin, cursor, group, Duration::ZERO).await?;
            if batch.events.is_empty() && batch.next == cursor {
                break;
            }
            cursor = batch.next;
        }
    }
    loop {
        let wait = if follow { WAIT } else { Duration::ZERO };
        let batch = poll(plugin, cursor, group, wait).await?;
        if batch.lost > 0 {
            errln!("infrakit: {} event(s) were no longer kept by the group plugin (read faster, or use its metrics)", batch.lost);
        }
        let done = !follow && batch.next == cursor && batch.events.is_empty();
        for e in &batch.events {
            let recent =
                oldest.is_none_or(|o| humantime::parse_rfc3339(&e.time).map_or(true, |t| t >= o));
            if recent {
                printed += 1;
                if json {
                    outln!("{}", serde_json::to_string(e)?);
                } else {
                    outln!("{}", line(e));
                }
            }
        }
        cursor = batch.next;
        if done {
            if printed == 0 {
                errln!("infrakit: {}", nothing_to_show(group, since));
            }
            return Ok(());
        }
    }
}

/// How often in a row a call that failed to reach the plugin is tried again before the follower
/// gives up (a plugin that went away), and the pause before each try. Reading events is
/// idempotent (the cursor says where), so a connection lost in a burst costs nothing but the pause.
const RETRIES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// One `Group.Events` call (a page of at most `MAX_BATCH` events / `MAX_BATCH_BYTES`); when the
/// plugin holds its limit of long polls, waits [`BUSY_PAUSE`] and asks again (saying so once); a
/// call that could not reach the plugin is tried again [`RETRIES`] times.
async fn poll(
    plugin: &dyn GroupPlugin,
    cursor: u64,
    group: Option<&str>,
    wait: Duration,
) -> Result<infrakit_sdk::spi::group::EventBatch> {
    // Said once per follower, not at every refusal: past the budget a follower may be refused
    // after every event.
    static SAID: AtomicBool = AtomicBool::new(false);
    let mut failures = 0;
    loop {
        match plugin.events(cursor, group, wait).await {
            Err(e) if is_long_polls_full(&e) => {
                if !SAID.swap(true, Ordering::Relaxed) {
                    errln!("infrakit: {e}; waiting for a turn");
                }
                tokio::time::sleep(BUSY_PAUSE).await;
            }
            Err(e) if e.kind == ErrorKind::Unavailable && failures < RETRIES => {
                failures += 1;
                errln!("infrakit: {e}; trying again ({failures} of {RETRIES})");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            answered => return Ok(answered?),
        }
    }
}

/// Refuses a group the plugin neither manages nor has kept events of (a typo would otherwise follow
/// silently forever); a destroyed group's kept events are still shown, with a word that it is gone.
/// For `group events ID`; `up` follows its group from before it commits it, so it does not ask.
pub async fn known(plugin: &dyn GroupPlugin, id: &str) -> Result<()> {
    // Group.Size: the cheapest call that names one group (no instances, no spec).
    match plugin.size(id).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == ErrorKind::NotFound => {
            let kept = plugin.events(0, Some(id), Duration::ZERO).await?;
            if kept.events.is_empty() {
                bail!(
                    "no group '{id}': the group plugin neither manages it nor keeps events of it \
                     (`infrakit group ls` lists the groups)"
                );
            }
            errln!(
                "infrakit: group '{id}' is not managed (any more); showing the events still kept"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// What `--no-follow` says on stderr when it printed no event, so an empty answer is not a puzzle.
fn nothing_to_show(group: Option<&str>, since: Option<Duration>) -> String {
    let of = group.map_or(String::new(), |g| format!(" of group '{g}'"));
    match since {
        Some(s) => format!(
            "no events{of} kept from the last {}",
            humantime::format_duration(s)
        ),
        None => format!(
            "no events{of} to show: without --since, --no-follow shows only what happens from now \
             on (add e.g. --since 10m for the events kept)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_longer_than_the_clock_is_an_error_not_a_panic() {
        for huge in ["500000000000y", "18446744073709551615s", "600y"] {
            let e = parse_since(huge).expect_err(huge);
            assert!(
                e.contains("before 1970") || e.contains("overflow"),
                "{huge}: {e}"
            );
        }
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_since("ten").unwrap_err().contains("e.g. 10m"));
    }

    #[test]
    fn a_line_for_a_person() {
        let e = Event {
            seq: 3,
            time: "2026-12-05T01:02:03.456Z".into(),
            group: "web".into(),
            kind: "provision-started".into(),
            instance: String::new(),
            logical_id: "10.0.0.1".into(),
            cause: "fill".into(),
            message: "below target (2 of 3)".into(),
        };
        assert_eq!(
            line(&e),
            "01:02:03.456 web provision-started 10.0.0.1 (fill): below target (2 of 3)"
        );
    }
}
