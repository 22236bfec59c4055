//! An instance plugin that keeps its "instances" in memory: the smallest complete plugin, to copy
//! and turn into a real one (replace the map with calls to your cloud's API).
//!
//! Run it, then talk to it with the infrakit CLI:
//!
//! ```text
//! cargo run -p infrakit-sdk --example instance_memory &
//! echo '{"Properties": {"Size": "small"}, "Tags": {"tier": "web"}}' > spec.json
//! infrakit instance --name instance-memory provision spec.json
//! infrakit instance --name instance-memory describe --tags tier=web
//! ```
//!
//! It listens on `$INFRAKIT_PLUGINS_DIR/instance-memory.sock` (default `~/.infrakit/plugins`),
//! where `infrakit` and the group controller look for a plugin named `instance-memory`;
//! `INFRAKIT_PLUGIN_SOCKET` overrides the path. Everything is forgotten when it exits.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

// The prelude has the traits, their types, `async_trait`, `Value` and the error type: a plugin
// needs no dependency but `infrakit-sdk`.
use infrakit_sdk::prelude::*;
// Logging goes through `tracing`, re-exported too.
use infrakit_sdk::tracing;

/// The plugin's state. Every method may be called concurrently, hence the mutex.
#[derive(Default)]
struct MemoryPlugin {
    instances: Mutex<BTreeMap<InstanceId, Description>>,
    next_id: AtomicU64,
}

impl MemoryPlugin {
    /// The map, even if a panic elsewhere poisoned the lock (the data is still consistent: every
    /// change below is a single insert or remove).
    fn instances(&self) -> std::sync::MutexGuard<'_, BTreeMap<InstanceId, Description>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl InstancePlugin for MemoryPlugin {
    /// Called before anything is provisioned with these properties (e.g. at `group commit`).
    /// Refuse here what can never work, with a message that says how to fix it.
    async fn validate(&self, properties: &Value) -> Result<()> {
        match properties {
            Value::Null | Value::Object(_) => Ok(()),
            other => Err(Error::invalid(format!(
                "instance properties must be a JSON object such as {{\"Size\": \"small\"}}, not {other}"
            ))),
        }
    }

    /// Creates one instance and returns its ID. Keep the tags and the logical ID: the group
    /// controller finds its instances again by their tags (`infrakit.group`, ...).
    async fn provision(&self, spec: Spec) -> Result<InstanceId> {
        self.validate(spec.properties.as_ref().unwrap_or(&Value::Null))
            .await?;
        let id = format!("mem-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let description = Description {
            id: id.clone(),
            logical_id: spec.logical_id,
            tags: spec.tags.into(),
            properties: spec.properties,
        };
        self.instances().insert(id.clone(), description);
        tracing::info!(%id, "provisioned");
        Ok(id)
    }

    /// Merges `labels` into the instance's tags.
    async fn label(&self, id: &str, labels: Tags) -> Result<()> {
        match self.instances().get_mut(id) {
            Some(d) => {
                d.tags.make_mut().extend(labels);
                Ok(())
            }
            None => Err(Error::not_found(format!("no instance {id}"))),
        }
    }

    /// An ID that does not exist is `NotFound` (HTTP 404 on the wire): the group controller takes
    /// that as "already gone", so a destroy that is retried does no harm.
    async fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        match self.instances().remove(id) {
            Some(_) => {
                tracing::info!(%id, reason = %context.reason, "destroyed");
                Ok(())
            }
            None => Err(Error::not_found(format!("no instance {id}"))),
        }
    }

    /// Every instance whose tags include all of `tags`. Never answer "none" when you could not
    /// look (return an error instead): the controller would provision replacements for everything.
    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>> {
        Ok(self
            .instances()
            .values()
            .filter(|d| tags_match(&d.tags, tags))
            .map(|d| Description {
                properties: if properties {
                    d.properties.clone()
                } else {
                    None
                },
                ..d.clone()
            })
            .collect())
    }
}

fn main() -> ExitCode {
    // Logs (info to stdout, warnings to stderr; INFRAKIT_LOG=debug for more), the socket bound
    // where discovery looks, SIGTERM/SIGINT handled, the socket removed on exit.
    infrakit_sdk::run::instance(MemoryPlugin::default(), RunOptions::new("instance-memory"))
}
