//! The instance plugin: InfraKit's calls mapped onto EC2 (see the crate's docs for the mapping).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::Tag;
use infrakit_sdk::prelude::*;
use infrakit_sdk::spi::instance::Changes;

use crate::changes::Changes as ChangePoll;
use crate::describe;
use crate::ec2::{self, Ec2};
use crate::launch::{Launch, Launcher};
use crate::properties::{Location, Properties};
use crate::state::State;
use crate::terminate::Terminator;

/// The plugin. Every method may run concurrently.
pub struct AwsInstancePlugin {
    ec2: Arc<Ec2>,
    state: Arc<State>,
    launcher: Arc<Launcher>,
    terminator: Arc<Terminator>,
    changes: Arc<ChangePoll>,
    /// Where each instance seen lives (a Destroy or Label names only the ID).
    seen: Mutex<HashMap<InstanceId, Location>>,
}

impl AwsInstancePlugin {
    pub fn new(ec2: Ec2, state: State) -> AwsInstancePlugin {
        let ec2 = Arc::new(ec2);
        let state = Arc::new(state);
        let changes = Arc::new(ChangePoll::from_env());
        let on_change: Arc<dyn Fn() + Send + Sync> = {
            let feed = changes.feed.clone();
            Arc::new(move || feed.changed())
        };
        AwsInstancePlugin {
            launcher: Arc::new(Launcher::new(ec2.clone(), state.clone(), on_change.clone())),
            terminator: Arc::new(Terminator::new(ec2.clone(), on_change)),
            ec2,
            state,
            changes,
            seen: Mutex::default(),
        }
    }

    /// The plugin from its environment: the SDK's configuration and the state directory.
    pub async fn from_env() -> Result<AwsInstancePlugin> {
        let state = State::from_env()?;
        let ec2 = Ec2::from_env().await;
        match ec2.home() {
            Some(home) => {
                tracing::info!(%home, state = %state.dir().display(), "instance-aws ready")
            }
            None => tracing::info!(
                state = %state.dir().display(),
                "instance-aws ready; no region in the environment: specs must name their Region"
            ),
        }
        Ok(AwsInstancePlugin::new(ec2, state))
    }

    /// EC2 requests sent so far, by operation.
    pub fn calls(&self) -> Vec<(String, u64)> {
        self.ec2.calls()
    }

    /// Every location to look in: the plugin's own and every one launched in.
    fn locations(ec2: &Ec2, state: &State) -> Vec<Location> {
        let mut all: BTreeSet<Location> = state.locations();
        if let Some(home) = ec2.home() {
            all.insert(home.clone());
        }
        all.into_iter().collect()
    }

    fn parse(&self, properties: &Value) -> Result<(Properties, Location)> {
        let p = Properties::parse(properties)?;
        let location = self
            .ec2
            .locate(p.region.as_deref(), p.endpoint.as_deref())?;
        Ok((p, location))
    }

    fn remember_seen(&self, id: &str, location: &Location) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), location.clone());
    }

    /// The location of live instance `id`, and the instance, or `NotFound`.
    async fn find(&self, id: &str) -> Result<(Location, aws_sdk_ec2::types::Instance)> {
        let cached = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let candidates = match cached {
            Some(l) => vec![l],
            None => Self::locations(&self.ec2, &self.state),
        };
        let ids = [id.to_string()];
        for location in candidates {
            let found = describe::instances(
                &self.ec2,
                &location,
                describe::filters(&Tags::new(), Some(&ids[..])),
            )
            .await?;
            if let Some(i) = found.into_iter().find(describe::is_live) {
                self.remember_seen(id, &location);
                return Ok((location, i));
            }
        }
        Err(Error::not_found(format!(
            "no live instance {id} of instance-aws"
        )))
    }
}

#[async_trait]
impl InstancePlugin for AwsInstancePlugin {
    async fn validate(&self, properties: &Value) -> Result<()> {
        self.parse(properties).map(|_| ())
    }

    async fn provision(&self, spec: Spec) -> Result<InstanceId> {
        let (properties, location) =
            self.parse(spec.properties.as_ref().unwrap_or(&Value::Null))?;
        let launch = Launch::new(&spec, properties, location.clone())?;
        let id = self.launcher.provision(launch).await?;
        self.remember_seen(&id, &location);
        Ok(id)
    }

    async fn label(&self, id: &str, labels: Tags) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        for k in labels.keys() {
            if k == describe::MARKER_TAG || k == describe::LAUNCH_TAG {
                return Err(Error::invalid(format!(
                    "the tag '{k}' is instance-aws's own; label with another key"
                )));
            }
        }
        let (location, _) = self.find(id).await?;
        let mut request = self.ec2.client(&location).create_tags().resources(id);
        for (k, v) in &labels {
            request = request.tags(Tag::builder().key(k).value(v).build());
        }
        let sent = {
            let _permit = self.ec2.permit().await;
            request.send().await
        };
        sent.map(|_| ())
            .map_err(|e| ec2::error("CreateTags", &location, e))
    }

    async fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        let cached = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let known = cached.is_some();
        let location = match cached {
            Some(l) => l,
            None => {
                let locations = Self::locations(&self.ec2, &self.state);
                match locations.as_slice() {
                    [one] => one.clone(),
                    _ => self.find(id).await?.0,
                }
            }
        };
        let result = self
            .terminator
            .destroy(location, id.to_string(), known)
            .await;
        match &result {
            Ok(()) => tracing::info!(%id, reason = %context.reason, "destroyed"),
            Err(e) if !e.is_not_found() => return result,
            Err(_) => {}
        }
        // Gone either way: a later destroy of it looks it up again (and finds nothing).
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        result
    }

    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>> {
        self.describe(tags, properties, None).await
    }

    async fn describe_instances_by_id(
        &self,
        tags: &Tags,
        properties: bool,
        ids: &[InstanceId],
    ) -> Result<Vec<Description>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.describe(tags, properties, Some(ids)).await
    }

    async fn changes(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        let (ec2, state) = (self.ec2.clone(), self.state.clone());
        self.changes
            .asked(&self.ec2, move || Self::locations(&ec2, &state));
        self.changes.feed.wait(cursor, timeout).await
    }
}

impl AwsInstancePlugin {
    async fn describe(
        &self,
        tags: &Tags,
        properties: bool,
        ids: Option<&[InstanceId]>,
    ) -> Result<Vec<Description>> {
        let mut out = Vec::new();
        for location in Self::locations(&self.ec2, &self.state) {
            // EC2 filters take at most 1,000 values: ask for IDs in chunks.
            let chunks: Vec<Option<&[InstanceId]>> = match ids {
                Some(ids) => ids.chunks(1000).map(Some).collect(),
                None => vec![None],
            };
            for chunk in chunks {
                let found =
                    describe::instances(&self.ec2, &location, describe::filters(tags, chunk))
                        .await?;
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                for i in found.iter().filter(|i| describe::is_live(i)) {
                    let d = describe::description(i, properties);
                    // EC2 matched the filters; checked again, exactly, in case a tag value held a
                    // character a filter treats as a wildcard.
                    if !tags_match(&d.tags, tags) {
                        continue;
                    }
                    seen.insert(d.id.clone(), location.clone());
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}
