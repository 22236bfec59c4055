//! Instance plugins: one physical resource (a container, a VM, a file) per instance.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flavor::AllocationMethod;
use crate::serde_util::null_as_default;
pub use crate::shared_tags::SharedTags;
use crate::{Error, Result};

/// An instance's ID as its backend knows it.
pub type InstanceId = String;
/// A stable name for a pet (often an IP address), kept across re-creation.
pub type LogicalId = String;
/// Tags: a string map; backends store them as labels.
pub type Tags = BTreeMap<String, String>;

/// Something attached to an instance (a volume, a network interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// What to provision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Spec {
    /// Backend-specific JSON, opaque to everyone but the instance plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: Tags,
    /// The boot script.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub init: String,
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub attachments: Vec<Attachment>,
}

fn is_empty(tags: &SharedTags) -> bool {
    tags.is_empty()
}

/// What exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Description {
    #[serde(rename = "ID")]
    pub id: InstanceId,
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    /// Shared with the other descriptions of a list that carry the same tags (see
    /// [`SharedTags`]); read it as a map, change it with `make_mut`.
    #[serde(
        rename = "Tags",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_empty"
    )]
    pub tags: SharedTags,
    /// Backend state (only when asked for with `properties = true`).
    #[serde(
        rename = "Properties",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub properties: Option<Value>,
}

/// Why an instance is destroyed; a backend may act differently (e.g. keep a volume on update).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestroyReason {
    #[default]
    #[serde(rename = "terminate")]
    Terminate,
    #[serde(rename = "rolling_update")]
    RollingUpdate,
}

impl std::fmt::Display for DestroyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DestroyReason::Terminate => "terminate",
            DestroyReason::RollingUpdate => "rolling_update",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyContext {
    #[serde(rename = "Reason", default)]
    pub reason: DestroyReason,
}

/// The answer to [`InstancePlugin::changes`]: a long poll for "something may have changed".
///
/// The cursor is opaque to the caller: it hands back the one it was given last. `Changed` says
/// that something changed (an instance appeared, went away, or changed state) since the cursor it
/// sent; `Resync` that the plugin cannot tell (it restarted, or the cursor is unknown or too old),
/// so the caller must look at everything again (`DescribeInstances`). Neither says *what*
/// changed: the caller describes, as it would on a poll. See docs/design-notes.md, "Change
/// notifications".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Changes {
    #[serde(default)]
    pub cursor: String,
    #[serde(default)]
    pub changed: bool,
    #[serde(default)]
    pub resync: bool,
}

/// An instance plugin. Every method may be called concurrently.
#[async_trait]
pub trait InstancePlugin: Send + Sync + 'static {
    /// Checks instance properties before anything is provisioned with them.
    async fn validate(&self, properties: &Value) -> Result<()>;
    /// Checks instance properties for a group that allocates `allocation`: what only makes sense
    /// with the logical IDs in view (a pet's IP address inside the network's subnet) can be refused
    /// at commit instead of at provision. An addition to InfraKit's SPI: on the wire it is
    /// `Instance.Validate` with an `Allocation` field, which plugins that do not know it ignore;
    /// the default checks the properties alone.
    async fn validate_with_allocation(
        &self,
        properties: &Value,
        allocation: &AllocationMethod,
    ) -> Result<()> {
        let _ = allocation;
        self.validate(properties).await
    }
    /// Creates one instance and returns its ID.
    async fn provision(&self, spec: Spec) -> Result<InstanceId>;
    /// Merges `labels` into the instance's tags.
    async fn label(&self, id: &str, labels: Tags) -> Result<()>;
    /// Destroys one instance. An instance that does not exist is a `NotFound` error.
    async fn destroy(&self, id: &str, context: DestroyContext) -> Result<()>;
    /// Every instance whose tags include all of `tags`; with `properties`, backend state too.
    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>>;
    /// As [`InstancePlugin::describe_instances`], for a caller that wants only the instances
    /// named in `ids` (those that exist and match `tags`; an ID that is not there is left out). A
    /// caller that needs backend state for a few instances of a large group (the group controller,
    /// for the first health verdict of new instances) asks for just those. An addition to
    /// InfraKit's SPI: on the wire it is `Instance.DescribeInstances` with an `IDs` field, which
    /// plugins that do not know it ignore, answering every instance. So the answer may hold others
    /// too (the default here, and a remote plugin that does not know `IDs`, answer all): keep what
    /// you asked for; an answer longer than what was asked says the plugin lists everything.
    async fn describe_instances_by_id(
        &self,
        tags: &Tags,
        properties: bool,
        ids: &[InstanceId],
    ) -> Result<Vec<Description>> {
        let _ = ids;
        self.describe_instances(tags, properties).await
    }
    /// Waits until something changed since `cursor` (see [`Changes`]), or at most `timeout`, then
    /// answers with the cursor to send next. An empty or unknown cursor is answered at once with
    /// `Resync`. Optional (an addition to InfraKit's SPI, `Instance.Changes`): the default is an
    /// `Unsupported` error, and callers then poll.
    async fn changes(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        let _ = (cursor, timeout);
        Err(Error::unsupported(
            "this instance plugin does not report changes (no Instance.Changes); it is polled",
        ))
    }
}

/// True when `have` contains every pair of `want`.
pub fn tags_match(have: &Tags, want: &Tags) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}
