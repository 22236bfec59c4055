//! Launching instances: `RunInstances`, made safe to retry and cheap at scale.
//!
//! - **Batching**: cattle provisions of an equal spec (same location, properties, tags and Init)
//!   that arrive within [`WINDOW`] of each other, or while [`MAX_RUNNING`] launches of that spec
//!   are in flight, go out as one `RunInstances` with `MinCount` and
//!   `MaxCount` the number of them (at most [`MAX_BATCH`]): all or nothing, so a batch EC2 cannot
//!   fill (short of capacity) fails for every caller, and the group controller backs off and asks
//!   again. Should EC2 answer with fewer instances anyway, the first callers get one each and the
//!   rest an `Unavailable` error. Pets are never batched: each has its own LogicalID (tag) and
//!   private IP.
//! - **Idempotency**: every launch has a token, sent as its `ClientToken` (EC2 then makes a retried
//!   request, e.g. by the SDK after a timeout, launch nothing new) and as the `LAUNCH_TAG` tag. The
//!   launch is written to the state directory before it is sent and forgotten once answered. A
//!   launch left unanswered (the plugin was killed, or the answer was lost) is an orphan: its
//!   instances, found by their token tag, are handed to the next provisions of the same spec
//!   instead of launching more. A pet is first looked up by its tags (group, config, LogicalID):
//!   one that exists is returned, not launched again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::error::SdkError;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use base64::Engine as _;
use infrakit_sdk::spi::instance::{InstanceId, Spec, Tags};
use infrakit_sdk::{Error, Result};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::describe::{self, LAUNCH_TAG, LOGICAL_ID_TAG, MARKER_TAG};
use crate::ec2::{self, Ec2};
use crate::properties::{Location, Properties};
use crate::state::{Pending, State};

/// How long a cattle provision waits for equal ones to launch with it.
pub const WINDOW: Duration = Duration::from_millis(50);
/// The most instances one `RunInstances` asks for.
pub const MAX_BATCH: usize = 100;
/// `RunInstances` of one spec in flight at once; provisions arriving meanwhile queue and go out
/// together when it returns. One: the group controller has a bounded number of provisions out
/// (32 by default), and two launches in flight split them into two small batches (1,000
/// instances took 99 requests with two, about a third of that with one).
pub const MAX_RUNNING: usize = 1;
/// EC2's limit on user data (before base64).
const USER_DATA_LIMIT: usize = 16 * 1024;
/// EC2's Name tag, shown in the console; set from the group and LogicalID unless given.
const NAME_TAG: &str = "Name";

/// One provision, checked and ready to launch.
pub struct Launch {
    pub location: Location,
    properties: Properties,
    /// The EC2 tags: the spec's, the marker, the LogicalID, a Name.
    tags: Tags,
    user_data: Option<String>,
    private_ip: Option<String>,
    /// Equal for provisions that may share a `RunInstances`.
    key: String,
    pet: bool,
}

impl Launch {
    pub fn new(spec: &Spec, properties: Properties, location: Location) -> Result<Launch> {
        if spec.init.len() > USER_DATA_LIMIT {
            return Err(Error::invalid(format!(
                "the Init script is {} bytes; EC2 takes at most {USER_DATA_LIMIT} bytes of user \
                 data: shorten it, or have it download the rest",
                spec.init.len()
            )));
        }
        let mut tags = spec.tags.clone();
        tags.insert(MARKER_TAG.to_string(), "1".to_string());
        if let Some(l) = &spec.logical_id {
            tags.insert(LOGICAL_ID_TAG.to_string(), l.clone());
        }
        if !tags.contains_key(NAME_TAG) {
            let group = spec.tags.get(infrakit_sdk::spi::tags::GROUP);
            let name = match (group, &spec.logical_id) {
                (Some(g), Some(l)) => Some(format!("{g}-{l}")),
                (Some(g), None) => Some(g.clone()),
                (None, Some(l)) => Some(l.clone()),
                (None, None) => None,
            };
            if let Some(name) = name {
                tags.insert(NAME_TAG.to_string(), name);
            }
        }
        let private_ip = spec
            .logical_id
            .as_deref()
            .and_then(|l| l.parse::<IpAddr>().ok())
            .filter(IpAddr::is_ipv4)
            .map(|ip| ip.to_string());
        let user_data = (!spec.init.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(spec.init.as_bytes()));
        let key = {
            let canonical = serde_json::json!({
                "Location": &location,
                "Properties": &properties,
                "Tags": &tags,
                "Init": &spec.init,
                "LogicalID": &spec.logical_id,
            });
            hex(&Sha256::digest(canonical.to_string().as_bytes()))
        };
        Ok(Launch {
            location,
            properties,
            tags,
            user_data,
            private_ip,
            key,
            pet: spec.logical_id.is_some(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> String {
    format!("ik-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

type Reply = oneshot::Sender<Result<InstanceId>>;

/// The cattle provisions of one spec key: those waiting to go out, and the launches in flight.
struct Queue {
    launch: Arc<Launch>,
    waiting: Vec<Reply>,
    running: usize,
    /// A flush is scheduled (the first waiter's [`WINDOW`]).
    timer: bool,
}

pub struct Launcher {
    ec2: Arc<Ec2>,
    state: Arc<State>,
    /// Cattle provisions by spec key.
    queues: Mutex<HashMap<String, Queue>>,
    /// Unanswered launches (of an earlier process, or whose answer was lost), not yet looked at.
    orphans: Mutex<Vec<Pending>>,
    /// Instances of orphaned launches, by spec key, waiting for a provision to take them.
    adoptable: Mutex<HashMap<String, Vec<InstanceId>>>,
    /// Serialises the lookups of orphans, so that one is never handed out twice.
    adopting: tokio::sync::Mutex<()>,
    on_change: Arc<dyn Fn() + Send + Sync>,
}

impl Launcher {
    pub fn new(
        ec2: Arc<Ec2>,
        state: Arc<State>,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Launcher {
        let orphans = state.unfinished();
        if !orphans.is_empty() {
            tracing::info!(
                count = orphans.len(),
                "launches a previous run left unanswered; their instances go to the next equal provisions"
            );
        }
        Launcher {
            ec2,
            state,
            queues: Mutex::default(),
            orphans: Mutex::new(orphans),
            adoptable: Mutex::default(),
            adopting: tokio::sync::Mutex::new(()),
            on_change,
        }
    }

    /// Provisions one instance of `launch` and returns its ID.
    pub async fn provision(self: &Arc<Self>, launch: Launch) -> Result<InstanceId> {
        if let Some(id) = self.adopt(&launch.key).await? {
            tracing::info!(instance = %id, "handing out an instance of an unanswered launch");
            return Ok(id);
        }
        if launch.pet {
            if let Some(id) = self.existing_pet(&launch).await? {
                tracing::info!(instance = %id, "the pet exists already; not launching another");
                return Ok(id);
            }
            let (tx, rx) = oneshot::channel();
            self.run(Arc::new(launch), vec![tx]).await;
            return rx
                .await
                .unwrap_or_else(|_| Err(Error::internal("the launch was dropped")));
        }
        let (tx, rx) = oneshot::channel();
        let key = launch.key.clone();
        let (go, schedule) = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let q = queues.entry(key.clone()).or_insert_with(|| Queue {
                launch: Arc::new(launch),
                waiting: Vec::new(),
                running: 0,
                timer: false,
            });
            q.waiting.push(tx);
            if q.waiting.len() >= MAX_BATCH && q.running < MAX_RUNNING {
                (Self::take(q), false)
            } else if !q.timer && q.running < MAX_RUNNING {
                q.timer = true;
                (None, true)
            } else {
                // Goes out with the next launch: when the timer fires or one in flight returns.
                (None, false)
            }
        };
        if let Some((launch, waiters)) = go {
            self.spawn_run(key.clone(), launch, waiters);
        }
        if schedule {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(WINDOW).await;
                let go = {
                    let mut queues = me.queues.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(q) = queues.get_mut(&key) else {
                        return;
                    };
                    q.timer = false;
                    let go = if q.running < MAX_RUNNING {
                        Self::take(q)
                    } else {
                        None
                    };
                    if q.waiting.is_empty() && q.running == 0 {
                        queues.remove(&key);
                    }
                    go
                };
                if let Some((launch, waiters)) = go {
                    me.spawn_run(key, launch, waiters);
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::internal("the launch was dropped")))
    }

    /// Up to [`MAX_BATCH`] waiters of `q` to launch now (counted as running), if any wait.
    fn take(q: &mut Queue) -> Option<(Arc<Launch>, Vec<Reply>)> {
        if q.waiting.is_empty() {
            return None;
        }
        let n = q.waiting.len().min(MAX_BATCH);
        let waiters: Vec<Reply> = q.waiting.drain(..n).collect();
        q.running += 1;
        Some((q.launch.clone(), waiters))
    }

    /// Launches `waiters` in a task; when it returns, whoever queued meanwhile goes out at once
    /// (batching while busy: the longer EC2 takes, the bigger the next batch).
    fn spawn_run(self: &Arc<Self>, key: String, launch: Arc<Launch>, waiters: Vec<Reply>) {
        let me = self.clone();
        tokio::spawn(async move {
            me.run(launch, waiters).await;
            let next = {
                let mut queues = me.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(q) = queues.get_mut(&key) else {
                    return;
                };
                q.running = q.running.saturating_sub(1);
                let next = if q.timer { None } else { Self::take(q) };
                if q.waiting.is_empty() && q.running == 0 && !q.timer {
                    queues.remove(&key);
                }
                next
            };
            if let Some((launch, waiters)) = next {
                me.spawn_run(key, launch, waiters);
            }
        });
    }

    /// A live pet with the launch's tags (group, config, LogicalID), if there is one.
    async fn existing_pet(&self, launch: &Launch) -> Result<Option<InstanceId>> {
        let mut tags = launch.tags.clone();
        tags.remove(MARKER_TAG);
        tags.remove(NAME_TAG);
        let found =
            describe::instances(&self.ec2, &launch.location, describe::filters(&tags, None))
                .await?;
        Ok(found
            .iter()
            .filter(|i| describe::is_live(i))
            .find_map(|i| i.instance_id().map(str::to_string)))
    }

    /// An instance of an unanswered launch of the same spec, if there is one.
    async fn adopt(&self, key: &str) -> Result<Option<InstanceId>> {
        if let Some(id) = self.take_adoptable(key) {
            return Ok(Some(id));
        }
        let _one_at_a_time = self.adopting.lock().await;
        let mine: Vec<Pending> = {
            let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            let (mine, rest) = orphans.drain(..).partition(|p| p.spec_key == key);
            *orphans = rest;
            mine
        };
        if mine.is_empty() {
            return Ok(self.take_adoptable(key));
        }
        let mut by_location: HashMap<&Location, Vec<String>> = HashMap::new();
        for p in &mine {
            by_location
                .entry(&p.location)
                .or_default()
                .push(p.token.clone());
        }
        for (location, tokens) in by_location {
            let mut filters = describe::filters(&Tags::new(), None);
            filters.push(
                aws_sdk_ec2::types::Filter::builder()
                    .name(format!("tag:{LAUNCH_TAG}"))
                    .set_values(Some(tokens))
                    .build(),
            );
            match describe::instances(&self.ec2, location, filters).await {
                Ok(found) => {
                    let ids: Vec<String> = found
                        .iter()
                        .filter(|i| describe::is_live(i))
                        .filter_map(|i| i.instance_id().map(str::to_string))
                        .collect();
                    tracing::info!(count = ids.len(), %location, "found instances of unanswered launches");
                    self.adoptable
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(key.to_string())
                        .or_default()
                        .extend(ids);
                }
                Err(e) => {
                    // Looked nowhere: keep them for the next provision, and launch nothing now
                    // (launching could duplicate what the orphan made).
                    self.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(mine.iter().filter(|p| &p.location == location).cloned());
                    return Err(e.context("looking for the instances of an unanswered launch"));
                }
            }
        }
        for p in &mine {
            self.state.finish(&p.token);
        }
        Ok(self.take_adoptable(key))
    }

    fn take_adoptable(&self, key: &str) -> Option<InstanceId> {
        let mut adoptable = self.adoptable.lock().unwrap_or_else(|p| p.into_inner());
        let ids = adoptable.get_mut(key)?;
        let id = ids.pop();
        if ids.is_empty() {
            adoptable.remove(key);
        }
        id
    }

    /// Sends one `RunInstances` for `waiters.len()` instances and answers each waiter.
    async fn run(&self, launch: Arc<Launch>, waiters: Vec<Reply>) {
        let count = waiters.len();
        let result = self.run_instances(&launch, count).await;
        match result {
            Ok(ids) => {
                let launched = ids.len();
                let mut ids = ids.into_iter();
                for w in waiters {
                    let answer = ids.next().ok_or_else(|| {
                        Error::unavailable(format!(
                            "EC2 launched {launched} of the {count} instances asked for together \
                             ({}); try again later",
                            launch.location
                        ))
                    });
                    let _ = w.send(answer);
                }
                (self.on_change)();
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }

    async fn run_instances(&self, launch: &Launch, count: usize) -> Result<Vec<InstanceId>> {
        let token = new_token();
        self.state.remember(&launch.location)?;
        let pending = Pending {
            token: token.clone(),
            spec_key: launch.key.clone(),
            location: launch.location.clone(),
        };
        self.state.begin(&pending)?;
        let mut tags = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (k, v) in launch
            .tags
            .iter()
            .chain([(&LAUNCH_TAG.to_string(), &token)])
        {
            tags = tags.tags(Tag::builder().key(k).value(v).build());
        }
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        let request = launch
            .properties
            .apply(self.ec2.client(&launch.location).run_instances())
            // All or nothing: EC2 launches MaxCount when it can, and moto launches MinCount; a
            // batch EC2 cannot fill fails as a whole and the controller asks again.
            .min_count(count)
            .max_count(count)
            .client_token(&token)
            .tag_specifications(tags.build())
            .set_user_data(launch.user_data.clone())
            .set_private_ip_address(launch.private_ip.clone());
        let sent = {
            let _permit = self.ec2.permit().await;
            request.send().await
        };
        match sent {
            Ok(out) => {
                self.state.finish(&token);
                let ids: Vec<String> = out
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect();
                tracing::info!(count = ids.len(), location = %launch.location, ?ids, "launched");
                Ok(ids)
            }
            Err(e) => {
                if matches!(e, SdkError::ServiceError(_)) {
                    // Refused: nothing was launched.
                    self.state.finish(&token);
                } else {
                    // Perhaps launched, perhaps not: an orphan the next equal provision looks for.
                    self.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(pending);
                }
                Err(ec2::error("RunInstances", &launch.location, e))
            }
        }
    }
}
