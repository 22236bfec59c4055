//! Flavor plugins: what an instance means (a zookeeper member, a swarm manager, nothing special).

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::instance::{Description, InstanceId, LogicalId, Spec};
use crate::serde_util::{is_zero, null_as_default};
use crate::Result;

/// How a group allocates its instances: a count of identical cattle, or one pet per logical ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationMethod {
    #[serde(rename = "Size", default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(
        rename = "LogicalIDs",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub logical_ids: Vec<LogicalId>,
}

/// Which member of which group an instance will be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "Group", default)]
    pub group: String,
    #[serde(rename = "Sequence", default)]
    pub sequence: u64,
}

/// A flavor's verdict on an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Health {
    /// Cannot tell yet (still booting, not reachable).
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

// On the wire a health is a word ("healthy"); Go InfraKit sent 0/1/2, which we read too.
impl Serialize for Health {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Health, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => match n.as_u64() {
                Some(0) => Ok(Health::Unknown),
                Some(1) => Ok(Health::Healthy),
                Some(2) => Ok(Health::Unhealthy),
                _ => Err(serde::de::Error::custom(format!(
                    "unknown health {n}: expected 0, 1 or 2"
                ))),
            },
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "unknown" => Ok(Health::Unknown),
                "healthy" => Ok(Health::Healthy),
                "unhealthy" => Ok(Health::Unhealthy),
                _ => Err(serde::de::Error::custom(format!(
                    "unknown health '{s}': expected healthy, unhealthy or unknown"
                ))),
            },
            other => Err(serde::de::Error::custom(format!(
                "health must be a word, not {other}"
            ))),
        }
    }
}

/// How many `healthy` calls the default [`FlavorPlugin::healthy_many`] makes at once.
pub const HEALTHY_MANY_PARALLEL: usize = 32;

/// A flavor plugin. `properties` is the group's `Flavor.Properties` (JSON `null` when absent).
#[async_trait]
pub trait FlavorPlugin: Send + Sync + 'static {
    /// Checks the flavor properties against the allocation (e.g. zookeeper needs logical IDs).
    async fn validate(&self, properties: &Value, allocation: &AllocationMethod) -> Result<()>;
    /// Adds what the flavor means to an instance spec: init lines, tags, attachments.
    async fn prepare(
        &self,
        properties: &Value,
        spec: Spec,
        allocation: &AllocationMethod,
        index: &Index,
    ) -> Result<Spec>;
    /// Judges one instance.
    async fn healthy(&self, properties: &Value, instance: &Description) -> Result<Health>;
    /// Judges several instances in one call: one verdict per instance, in their order. An
    /// addition to InfraKit's SPI (`Flavor.HealthyMany`): a group controller meeting thousands of
    /// new instances makes one call per thousand instead of one each (100,000 calls were most of
    /// its time between the last provision and convergence). The default asks
    /// [`FlavorPlugin::healthy`] about each, [`HEALTHY_MANY_PARALLEL`] at a time, and reads a
    /// failed answer as `Unknown` ("cannot tell"), as the controller reads it. A remote plugin that
    /// does not know the method answers 404; the client reports `Unsupported` and the caller asks
    /// one instance at a time.
    async fn healthy_many(
        &self,
        properties: &Value,
        instances: &[Description],
    ) -> Result<Vec<Health>> {
        let mut verdicts = Vec::with_capacity(instances.len());
        for chunk in instances.chunks(HEALTHY_MANY_PARALLEL) {
            let answers =
                futures_util::future::join_all(chunk.iter().map(|d| self.healthy(properties, d)))
                    .await;
            verdicts.extend(answers.into_iter().map(|a| a.unwrap_or(Health::Unknown)));
        }
        Ok(verdicts)
    }
    /// Which of `instances` lead their cluster (a raft leader, a primary): the group controller
    /// replaces and removes those last, so a rolling update moves leadership once instead of at
    /// every step. An addition to InfraKit's SPI (`Flavor.Leading`); the default, and a remote
    /// plugin that does not know the method (404), name none.
    async fn leading(
        &self,
        _properties: &Value,
        _instances: &[Description],
    ) -> Result<Vec<InstanceId>> {
        Ok(Vec::new())
    }
    /// Prepares an instance to be destroyed (e.g. leave a cluster). An error of kind
    /// [`crate::ErrorKind::Conflict`] refuses: the controller does not destroy the instance now
    /// and tries again on a later pass (e.g. it would take a cluster below quorum). Any other
    /// error is logged and the destroy goes ahead, so a dead instance can always be replaced.
    async fn drain(&self, properties: &Value, instance: &Description) -> Result<()>;
}

/// Reads `Null` as "no properties" for flavors whose properties are all optional.
pub fn properties_or_empty(v: &Value) -> Value {
    if v.is_null() {
        Value::Object(Default::default())
    } else {
        v.clone()
    }
}
