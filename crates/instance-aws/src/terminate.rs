//! Destroying instances: the destroys that arrive within [`WINDOW`] of each other in one location
//! go out together (up to [`MAX_BATCH`] IDs): one `DescribeInstances` to tell which of them are
//! live instances of this plugin (an unknown or already terminated ID is `NotFound`, which the
//! group controller takes as done; EC2's `TerminateInstances` would either accept it again or
//! refuse the whole batch), then one `TerminateInstances` for those.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infrakit_sdk::{Error, Result};
use tokio::sync::oneshot;

use crate::describe;
use crate::ec2::{self, Ec2};
use crate::properties::Location;

/// How long a destroy waits for others to go out with it.
pub const WINDOW: Duration = Duration::from_millis(50);
/// The most IDs one batch holds (EC2's filters take at most 1,000 values; TerminateInstances
/// takes 1,000 IDs).
pub const MAX_BATCH: usize = 1000;

type Reply = oneshot::Sender<Result<()>>;

pub struct Terminator {
    ec2: Arc<Ec2>,
    open: Mutex<HashMap<Location, Vec<(String, Reply)>>>,
    on_change: Arc<dyn Fn() + Send + Sync>,
}

impl Terminator {
    pub fn new(ec2: Arc<Ec2>, on_change: Arc<dyn Fn() + Send + Sync>) -> Terminator {
        Terminator {
            ec2,
            open: Mutex::default(),
            on_change,
        }
    }

    /// Terminates `id` in `location` (with the others queued meanwhile).
    pub async fn destroy(self: &Arc<Self>, location: Location, id: String) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let full = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let batch = open.entry(location.clone()).or_default();
            batch.push((id, tx));
            if batch.len() == 1 {
                let me = self.clone();
                let location = location.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(WINDOW).await;
                    let batch = me
                        .open
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&location);
                    if let Some(batch) = batch {
                        me.run(&location, batch).await;
                    }
                });
                None
            } else if batch.len() >= MAX_BATCH {
                open.remove(&location)
            } else {
                None
            }
        };
        if let Some(batch) = full {
            let me = self.clone();
            tokio::spawn(async move { me.run(&location, batch).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::internal("the destroy was dropped")))
    }

    async fn run(&self, location: &Location, batch: Vec<(String, Reply)>) {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        match self.terminate(location, ids).await {
            Ok(live) => {
                for (id, reply) in batch {
                    let answer = if live.contains(&id) {
                        Ok(())
                    } else {
                        Err(Error::not_found(format!(
                            "no live instance {id} of instance-aws in {location}"
                        )))
                    };
                    let _ = reply.send(answer);
                }
                (self.on_change)();
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Terminates those of `ids` that are live instances of the plugin; returns them.
    async fn terminate(&self, location: &Location, ids: Vec<String>) -> Result<HashSet<String>> {
        let found = describe::instances(
            &self.ec2,
            location,
            describe::filters(&Default::default(), Some(ids.as_slice())),
        )
        .await?;
        let live: HashSet<String> = found
            .iter()
            .filter(|i| describe::is_live(i))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        if live.is_empty() {
            return Ok(live);
        }
        let request = self
            .ec2
            .client(location)
            .terminate_instances()
            .set_instance_ids(Some(live.iter().cloned().collect()));
        let sent = {
            let _permit = self.ec2.permit().await;
            request.send().await
        };
        match sent {
            Ok(_) => {
                tracing::info!(count = live.len(), %location, "terminated");
                Ok(live)
            }
            Err(e) => Err(ec2::error("TerminateInstances", location, e)),
        }
    }
}
