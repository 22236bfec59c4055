//! `Instance.Changes` for instance-docker, from the engine's event stream: a container event
//! (`start`, `die`, `stop`, `kill`, `destroy`, `health_status`) on a container carrying the
//! plugin's marker label is a change. The stream is opened with the first `Changes` call and
//! `since` a second before, so an event between the caller's describe and the subscription is
//! not lost; when it ends or fails the feed is blind (pollers poll) and it is opened again, from
//! where it stopped, after a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use infrakit_docker::bollard::query_parameters::EventsOptions;
use infrakit_docker::engine::Engine;
use infrakit_sdk::spi::changes::ChangeFeed;

use super::MARKER_LABEL;

/// The container events that change what a describe (or a flavor's health verdict) shows.
const EVENTS: &[&str] = &["start", "die", "stop", "kill", "destroy", "health_status"];

/// How long after a lost stream it is opened again.
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Changes {
    pub(super) feed: Arc<ChangeFeed>,
    started: Mutex<bool>,
}

impl Changes {
    /// Starts following the engine's events unless already following them.
    pub(super) fn ensure_started(&self, engine: &Arc<Engine>) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if !*started {
            tokio::spawn(follow(engine.clone(), self.feed.clone()));
            *started = true;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn follow(engine: Arc<Engine>, feed: Arc<ChangeFeed>) {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![MARKER_LABEL.to_string()]),
        (
            "event".to_string(),
            EVENTS.iter().map(|e| e.to_string()).collect(),
        ),
    ]);
    // Events from a second before the (re)subscription are replayed by the engine: one that
    // happened while the stream was being opened is reported, at worst twice.
    let mut since = unix_now().saturating_sub(1);
    loop {
        let problem = match engine.docker() {
            Err(e) => e.message,
            Ok(docker) => {
                let options = EventsOptions {
                    since: Some(since.to_string()),
                    until: None,
                    filters: Some(filters.clone()),
                };
                let mut events = docker.events(Some(options));
                loop {
                    match events.next().await {
                        Some(Ok(_)) => {
                            since = unix_now().saturating_sub(1);
                            feed.changed();
                        }
                        Some(Err(e)) => {
                            break engine.error("following the engine's events", e).message
                        }
                        None => break "the engine closed its event stream".to_string(),
                    }
                }
            }
        };
        since = since.min(unix_now().saturating_sub(1));
        tracing::info!(
            "change feed: {problem}; following the engine's events again in {RECONNECT:?}"
        );
        feed.set_blind(Some(problem));
        tokio::time::sleep(RECONNECT).await;
        // Seeing again from `since` on: what happens while the stream opens is replayed by it, and
        // if it cannot be opened the feed is blind again at once.
        feed.set_blind(None);
    }
}
