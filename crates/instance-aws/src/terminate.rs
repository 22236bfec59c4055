//! Destroying instances: the destroys that arrive within [`WINDOW`] of each other in one location
//! go out together (up to [`MAX_BATCH`] IDs) as one `TerminateInstances`. An unknown or already
//! terminated ID is `NotFound`, which the group controller takes as done: IDs the plugin has not
//! seen live are looked up first (one `DescribeInstances` for the batch; EC2 would refuse the whole
//! batch for one unknown ID), and an ID whose previous state in the answer is `terminated` or
//! `shutting-down` was not live.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
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

/// One destroy: the ID, whether the plugin has seen it live (described or launched it), and
/// where to answer.
type Entry = (String, bool, Reply);

pub struct Terminator {
    ec2: Arc<Ec2>,
    open: Mutex<HashMap<Location, Vec<Entry>>>,
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

    /// Terminates `id` in `location` (with the others queued meanwhile). `known`: the plugin has
    /// seen it live, so it is one of the plugin's and need not be looked up first.
    pub async fn destroy(
        self: &Arc<Self>,
        location: Location,
        id: String,
        known: bool,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let full = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let batch = open.entry(location.clone()).or_default();
            batch.push((id, known, tx));
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

    async fn run(&self, location: &Location, batch: Vec<Entry>) {
        let ids: Vec<(String, bool)> = batch.iter().map(|(id, k, _)| (id.clone(), *k)).collect();
        match self.terminate(location, ids).await {
            Ok(live) => {
                for (id, _, reply) in batch {
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
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Terminates those of `ids` that are live instances of the plugin; returns them. IDs the
    /// plugin has seen live go straight to `TerminateInstances` (one that had terminated already
    /// shows as such in its answer); the others are looked up first, so that the plugin never
    /// terminates an instance it did not make. Should a seen ID be gone from EC2 altogether
    /// (`InvalidInstanceID.NotFound` fails the whole call), the batch is looked up and tried again.
    async fn terminate(
        &self,
        location: &Location,
        ids: Vec<(String, bool)>,
    ) -> Result<HashSet<String>> {
        let (known, unknown): (Vec<_>, Vec<_>) = ids.into_iter().partition(|(_, k)| *k);
        let mut live: HashSet<String> = known.into_iter().map(|(id, _)| id).collect();
        let unknown: Vec<String> = unknown.into_iter().map(|(id, _)| id).collect();
        if !unknown.is_empty() {
            live.extend(self.live_of(location, &unknown).await?);
        }
        match self.terminate_live(location, &live).await {
            Err(e) if e.message.contains("InvalidInstanceID") => {
                let all: Vec<String> = live.into_iter().collect();
                let live = self.live_of(location, &all).await?;
                self.terminate_live(location, &live).await
            }
            other => other,
        }
    }

    /// Those of `ids` that are live instances of the plugin (one `DescribeInstances`).
    async fn live_of(&self, location: &Location, ids: &[String]) -> Result<HashSet<String>> {
        let found = describe::instances(
            &self.ec2,
            location,
            describe::filters(&Default::default(), Some(ids)),
        )
        .await?;
        Ok(found
            .iter()
            .filter(|i| describe::is_live(i))
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect())
    }

    /// `TerminateInstances` of `live`; returns those that were not terminated already.
    async fn terminate_live(
        &self,
        location: &Location,
        live: &HashSet<String>,
    ) -> Result<HashSet<String>> {
        if live.is_empty() {
            return Ok(HashSet::new());
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
        let out = sent.map_err(|e| ec2::error("TerminateInstances", location, e))?;
        let mut terminated = live.clone();
        for change in out.terminating_instances() {
            let was = change.previous_state().and_then(|s| s.name());
            if matches!(
                was,
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ) {
                if let Some(id) = change.instance_id() {
                    terminated.remove(id);
                }
            }
        }
        tracing::info!(count = terminated.len(), %location, "terminated");
        Ok(terminated)
    }
}
