//! `Instance.Changes` for EC2. EC2 has no cheap push of instance state changes to a client (that
//! takes EventBridge and a queue, more than a plugin should set up in a user's account), so the
//! plugin polls: while someone is long-polling `Changes`, one `DescribeInstances` per location of
//! the plugin's live instances every [`POLL`], and a change when the set of (ID, state) pairs
//! differs from the last one. The plugin's own launches and terminations count as changes at once.
//! One request per location per poll, whatever the number of instances or groups: the controller
//! then describes only when something moved, instead of every group on every tick.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infrakit_sdk::spi::changes::ChangeFeed;
use infrakit_sdk::spi::instance::Tags;

use crate::describe;
use crate::ec2::Ec2;
use crate::properties::Location;

/// How often the poll looks (INFRAKIT_AWS_POLL_SECONDS overrides).
pub const POLL: Duration = Duration::from_secs(10);
/// The poll stops when nobody has asked for changes for this long.
const IDLE: Duration = Duration::from_secs(300);

pub struct Changes {
    pub feed: Arc<ChangeFeed>,
    asked: Mutex<Option<Instant>>,
    poll: Duration,
}

impl Changes {
    /// The poll interval from INFRAKIT_AWS_POLL_SECONDS, else [`POLL`].
    pub fn from_env() -> Changes {
        let poll = std::env::var("INFRAKIT_AWS_POLL_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(POLL);
        Changes {
            feed: Arc::new(ChangeFeed::new()),
            asked: Mutex::new(None),
            poll,
        }
    }

    /// Someone asked for changes: start polling unless already polling.
    pub fn asked(
        self: &Arc<Self>,
        ec2: &Arc<Ec2>,
        locations: impl Fn() -> Vec<Location> + Send + 'static,
    ) {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        let running = asked.is_some();
        *asked = Some(Instant::now());
        if !running {
            tokio::spawn(poll(self.clone(), ec2.clone(), locations));
        }
    }

    fn idle(&self) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if asked.is_some_and(|t| t.elapsed() > IDLE) {
            *asked = None;
            return true;
        }
        false
    }
}

async fn poll(
    me: Arc<Changes>,
    ec2: Arc<Ec2>,
    locations: impl Fn() -> Vec<Location> + Send + 'static,
) {
    let mut last: Option<BTreeSet<(String, String)>> = None;
    loop {
        if me.idle() {
            tracing::debug!("nobody asks for changes; the state poll stops");
            return;
        }
        let mut now = BTreeSet::new();
        let mut problem = None;
        for location in locations() {
            match describe::instances(&ec2, &location, describe::filters(&Tags::new(), None)).await
            {
                Ok(found) => now.extend(found.iter().map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_string(),
                        i.state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str().to_string())
                            .unwrap_or_default(),
                    )
                })),
                Err(e) => {
                    problem = Some(e.message);
                    break;
                }
            }
        }
        match problem {
            Some(why) => {
                me.feed.set_blind(Some(why));
                last = None;
            }
            None => {
                me.feed.set_blind(None);
                if last.as_ref().is_some_and(|l| *l != now) {
                    me.feed.changed();
                }
                last = Some(now);
            }
        }
        tokio::time::sleep(me.poll).await;
    }
}
