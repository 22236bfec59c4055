//! Request and reply bodies, field for field InfraKit's (`pkg/rpc/*/types.go`).
//!
//! Every request carries an optional `Type`: the sub-type asked for (`flavor-swarm/manager` sends
//! `"Type": "manager"`); the empty string means the plugin's default implementation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flavor::{AllocationMethod, Health, Index};
use crate::group::{CommitResult, GroupDescription, GroupSpec, Plan, UpdateCommand};
use crate::instance::{Description, DestroyContext, InstanceId, Spec, Tags};
use crate::serde_util::null_as_default;

/// Reads a request's sub-type, whatever the method.
#[derive(Debug, Default, Deserialize)]
pub struct TypeOnly {
    #[serde(rename = "Type", default, deserialize_with = "null_as_default")]
    pub type_: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements", default, deserialize_with = "null_as_default")]
    pub implements: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OkResponse {
    #[serde(rename = "OK", default)]
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

// ---- Instance ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceValidateRequest {
    #[serde(default)]
    pub properties: Value,
    /// The group's allocation, when the caller is a group controller (our addition; InfraKit's
    /// plugins ignore the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationMethod>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProvisionRequest {
    #[serde(default)]
    pub spec: Spec,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProvisionResponse {
    #[serde(rename = "ID", default)]
    pub id: Option<InstanceId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LabelRequest {
    #[serde(default)]
    pub instance: InstanceId,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Tags,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestroyRequest {
    #[serde(default)]
    pub instance: InstanceId,
    #[serde(default)]
    pub context: DestroyContext,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

/// `Instance.Changes` (our addition): the reply is [`crate::instance::Changes`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChangesRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub cursor: String,
    /// How long the plugin may wait for a change; the server caps it at `MAX_CHANGES_WAIT`.
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Tags,
    #[serde(default)]
    pub properties: bool,
    /// Our addition: only these instances are wanted (see
    /// `InstancePlugin::describe_instances_by_id`). Absent means all; plugins that do not know it
    /// ignore it and answer all.
    #[serde(rename = "IDs", default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<InstanceId>>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesResponse {
    /// Equal tags in the list are read as one map (100,000 instances of a group carry the same).
    #[serde(default, deserialize_with = "crate::shared_tags::interned_list")]
    pub descriptions: Vec<Description>,
}

// ---- Flavor ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlavorValidateRequest {
    #[serde(default)]
    pub properties: Value,
    #[serde(default)]
    pub allocation: AllocationMethod,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrepareRequest {
    #[serde(default)]
    pub properties: Value,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub allocation: AllocationMethod,
    #[serde(default)]
    pub index: Index,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrepareResponse {
    #[serde(default)]
    pub spec: Spec,
}

/// `Flavor.Healthy` and `Flavor.Drain` take the same body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FlavorInstanceRequest {
    #[serde(default)]
    pub properties: Value,
    #[serde(default)]
    pub instance: Description,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthyResponse {
    #[serde(default)]
    pub health: Health,
}

/// `Flavor.HealthyMany` (our addition): several instances judged in one call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthyManyRequest {
    #[serde(default)]
    pub properties: Value,
    #[serde(default, deserialize_with = "null_as_default")]
    pub instances: Vec<Description>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

/// One verdict per instance of the request, in its order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthyManyResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub health: Vec<Health>,
}

/// `Flavor.Leading` (our addition): which of the instances lead their cluster. The request is a
/// [`HealthyManyRequest`]'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeadingResponse {
    #[serde(rename = "IDs", default, deserialize_with = "null_as_default")]
    pub ids: Vec<InstanceId>,
}

// ---- Group ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommitGroupRequest {
    #[serde(default)]
    pub spec: GroupSpec,
    #[serde(default)]
    pub pretend: bool,
    /// Our addition: refuse unless the plan's version is this (from an earlier pretend commit).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub expect: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommitGroupResponse {
    #[serde(default)]
    pub details: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

impl From<CommitResult> for CommitGroupResponse {
    fn from(r: CommitResult) -> Self {
        CommitGroupResponse {
            details: r.details,
            plan: r.plan,
        }
    }
}

/// The body of every group call that names one group (`FreeGroup`, `DescribeGroup`, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupIdRequest {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeGroupResponse {
    #[serde(default)]
    pub description: GroupDescription,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectGroupsResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub groups: Vec<GroupSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DestroyInstancesRequest {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub instances: Vec<InstanceId>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SizeResponse {
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SetSizeRequest {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default)]
    pub size: u64,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

/// `Group.UpdateCommand` (our addition): pause, resume or roll back a group's update.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateCommandRequest {
    #[serde(rename = "ID", default)]
    pub id: String,
    pub command: UpdateCommand,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DetailsResponse {
    #[serde(default)]
    pub details: String,
}

/// `Group.Events` (our addition): the reply is [`crate::group::EventBatch`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventsRequest {
    #[serde(default)]
    pub cursor: u64,
    /// Only this group's events (all groups' when empty).
    #[serde(
        rename = "ID",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    /// How long to wait for an event when there is none; the server caps it at `MAX_CHANGES_WAIT`.
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub r#type: String,
}
