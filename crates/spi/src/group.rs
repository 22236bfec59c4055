//! Group plugins: the controller that keeps a group of instances as its spec says.
//!
//! [`GroupSpec`] is what a user commits (`{"ID": ..., "Properties": {...}}`). The properties are
//! the group plugin's business: the standard one reads InfraKit's shape (`Allocation`, `Instance`,
//! `Flavor`, plus optional policies) through `infrakit_group::spec`, the one place that parses and
//! checks them.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flavor::Health;
use crate::instance::{Description, InstanceId, LogicalId};
use crate::serde_util::null_as_default;
use crate::Result;

pub type GroupId = String;

/// A committed group: its ID and the group plugin's properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(rename = "ID")]
    pub id: GroupId,
    #[serde(
        rename = "Properties",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub properties: Option<Value>,
}

/// A plugin reference with its properties: `{"Plugin": "flavor-vanilla", "Properties": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The plugin's name as discovery finds it (`instance-file`, `flavor-swarm/manager`).
    #[serde(rename = "Plugin")]
    pub plugin: String,
    /// Given to the plugin as they are; the group controller does not read them.
    #[serde(
        rename = "Properties",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub properties: Option<Value>,
}

/// A structured plan: what a commit would do (returned by `CommitGroup` with or without `pretend`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Plan {
    /// Changes whenever the spec or the observed state the plan was made from changes.
    #[serde(default)]
    pub version: String,
    /// Instances to create to reach the target (growth), not counting replacements.
    #[serde(default)]
    pub create: u64,
    /// Logical IDs to create (pets), a subset of `create`.
    #[serde(
        rename = "CreateLogicalIDs",
        default,
        deserialize_with = "null_as_default"
    )]
    pub create_logical_ids: Vec<LogicalId>,
    /// Outdated instances a rolling update will replace.
    #[serde(default, deserialize_with = "null_as_default")]
    pub replace: Vec<InstanceId>,
    /// Instances to destroy (shrink, duplicates, unknown logical IDs).
    #[serde(default, deserialize_with = "null_as_default")]
    pub destroy: Vec<InstanceId>,
    /// Instances kept as they are.
    #[serde(default)]
    pub keep: u64,
    /// The target size after the change.
    #[serde(default)]
    pub target: u64,
}

/// The answer to `CommitGroup`: a sentence for people and the plan for programs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommitResult {
    #[serde(default)]
    pub details: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// One instance as the group sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStatus {
    #[serde(rename = "ID")]
    pub id: InstanceId,
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    #[serde(default)]
    pub health: Health,
    /// Carries the current config hash.
    #[serde(default)]
    pub current: bool,
}

/// `DescribeGroup`: InfraKit's `Instances` and `Converged`, plus what we know beyond them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupDescription {
    /// Shared, not copied: the controller answers with the list it observed last (100,000
    /// descriptions are about 100 MB; a copy per `DescribeGroup` was the controller's peak).
    #[serde(default, deserialize_with = "crate::shared_tags::interned_list")]
    pub instances: Arc<Vec<Description>>,
    /// All present, all current, no update running.
    #[serde(default)]
    pub converged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub status: Vec<InstanceStatus>,
    /// Update state and anything the controller wants a person to know (a paused update, an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// Steering a running update (our addition to InfraKit's interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateCommand {
    /// Stop replacing instances (the group still heals).
    Pause,
    /// Continue a paused update (or roll forward again after a rollback).
    Resume,
    /// Replace the new instances with the previous configuration.
    Rollback,
}

impl std::fmt::Display for UpdateCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateCommand::Pause => "pause",
            UpdateCommand::Resume => "resume",
            UpdateCommand::Rollback => "rollback",
        })
    }
}

/// A group plugin.
///
/// The last two methods are our additions to InfraKit's interface; their default implementations
/// refuse, so a group plugin written against InfraKit's methods alone still compiles and serves.
#[async_trait]
pub trait GroupPlugin: Send + Sync + 'static {
    /// Starts managing `spec` (or, with `pretend`, only says what that would do).
    async fn commit_group(&self, spec: GroupSpec, pretend: bool) -> Result<CommitResult>;
    /// Stops managing a group; its instances are left alone.
    async fn free_group(&self, id: &str) -> Result<()>;
    async fn describe_group(&self, id: &str) -> Result<GroupDescription>;
    /// Drains and destroys every instance; the group is forgotten once none is left.
    async fn destroy_group(&self, id: &str) -> Result<()>;
    async fn inspect_groups(&self) -> Result<Vec<GroupSpec>>;
    async fn destroy_instances(&self, id: &str, instances: &[InstanceId]) -> Result<()>;
    async fn size(&self, id: &str) -> Result<u64>;
    async fn set_size(&self, id: &str, size: u64) -> Result<()>;

    /// `CommitGroup` that refuses (Conflict) unless the plan it would carry out has version
    /// `expect`, i.e. neither the group nor its observed state changed since a `pretend` commit.
    async fn commit_group_expecting(
        &self,
        spec: GroupSpec,
        pretend: bool,
        expect: &str,
    ) -> Result<CommitResult> {
        let _ = (spec, pretend);
        Err(crate::Error::invalid(format!(
            "this group plugin cannot check a plan version ({expect}); commit without --expect"
        )))
    }

    /// Pauses, resumes or rolls back the group's update; returns what happened, for a person.
    async fn update_command(&self, id: &str, command: UpdateCommand) -> Result<String> {
        Err(crate::Error::invalid(format!(
            "this group plugin does not support {command} (group '{id}')"
        )))
    }

    /// The events after `cursor` (of group `group` only, when given), waiting up to `timeout`
    /// for one when there are none yet. Optional (our addition, `Group.Events`): the default is
    /// `Unsupported`.
    async fn events(
        &self,
        cursor: u64,
        group: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<EventBatch> {
        let _ = (cursor, group, timeout);
        Err(crate::Error::unsupported(
            "this group plugin has no event stream (no Group.Events)",
        ))
    }
}

/// One thing the group controller decided or saw happen, for `infrakit group events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    /// Increases by one per event of this controller (a cursor).
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub group: String,
    /// `commit`, `scale`, `provision-started`, `provision-finished`, `provision-failed`,
    /// `destroy-started`, `destroyed`, `destroy-failed`, `unhealthy`, `healthy-again`,
    /// `update-started`, `update-paused`, `update-completed`, `rollback-started`,
    /// `rolled-back`, `remediation-capped`, `group-destroyed`, `group-freed`, `standing-by`,
    /// `leading`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logical_id: String,
    /// Why: the core's cause (`fill`, `rollout`, `shrink`, `remediation`, ...) or the command.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    /// For a person.
    #[serde(default)]
    pub message: String,
}

/// The answer to [`GroupPlugin::events`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventBatch {
    #[serde(default)]
    pub events: Vec<Event>,
    /// The cursor to send next.
    #[serde(default)]
    pub next: u64,
    /// Events after the cursor that are no longer kept (the caller fell behind the buffer).
    #[serde(default)]
    pub lost: u64,
}
