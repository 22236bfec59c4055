//! `flavor-vanilla`: the flavor that means "nothing special". It adds what its properties list to
//! every instance spec, and knows nothing about what runs on an instance: it calls an instance
//! healthy unless the instance plugin's own description says otherwise.
//!
//! Properties, all optional (InfraKit's own shape, so existing group files load unchanged):
//!
//! ```json
//! {"Init": ["apt-get install -y nginx", "systemctl start nginx"],
//!  "Tags": {"tier": "web"},
//!  "Attachments": [{"ID": "vol-1", "Type": "volume"}]}
//! ```
//!
//! `null` (no properties at all) is the same as `{}`. Unknown fields are refused, so a typo such as
//! `"Inits"` is an error naming the field rather than a silently ignored setting.
//!
//! Prepare:
//! - `Init`: the spec's existing init (when not empty), then the lines, joined by `"\n"`;
//! - `Tags`: merged into the spec's tags; the flavor's value wins on a shared key;
//! - `Attachments`: appended to the spec's attachments.
//!
//! Health: the backend's own verdict when the description's properties carry one (instance-docker's
//! `State`, `Running` and `Health`), otherwise healthy (an instance that exists is healthy):
//! - `State` `"exited"` or `"dead"`, or `Running: false` → unhealthy (it will not come back by
//!   itself; replacing it is the only way);
//! - `State` `"restarting"` or `"paused"` → unknown (not serving now, not proven dead either);
//! - Docker's `Health` `"unhealthy"` → unhealthy, `"starting"` → unknown (its HEALTHCHECK has not
//!   passed yet);
//! - anything else, no such fields, or no properties at all → healthy.
//!
//! Only fields of the expected type count (`State`/`Health` strings, `Running` a boolean), so another
//! backend's properties (instance-file's stored record) are not misread.

use async_trait::async_trait;
use infrakit_sdk::spi::backend::BackendState;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use infrakit_sdk::spi::instance::{Attachment, Description, Spec, Tags};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use infrakit_sdk::spi::serde_util::null_as_default;

/// The vanilla flavor's properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VanillaProperties {
    /// Boot script lines, appended in order.
    #[serde(
        rename = "Init",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub init: Vec<String>,
    /// Tags every instance gets.
    #[serde(
        rename = "Tags",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Tags::is_empty"
    )]
    pub tags: Tags,
    /// Attachments every instance gets.
    #[serde(
        rename = "Attachments",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub attachments: Vec<Attachment>,
}

impl VanillaProperties {
    /// Parses a group's `Flavor.Properties`; `null` means no properties.
    pub fn parse(properties: &Value) -> Result<VanillaProperties> {
        if properties.is_null() {
            return Ok(VanillaProperties::default());
        }
        VanillaProperties::deserialize(properties)
            .map_err(|e| Error::invalid(format!("flavor-vanilla properties: {e}")))
    }

    /// Adds these properties to `spec` (see the module documentation for the rules).
    pub fn apply(&self, mut spec: Spec) -> Spec {
        spec.init = append_init(&spec.init, &self.init);
        spec.tags
            .extend(self.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        spec.attachments.extend(self.attachments.iter().cloned());
        spec
    }
}

/// `existing` then `lines`, one per line; an empty `existing` adds no blank first line.
fn append_init(existing: &str, lines: &[String]) -> String {
    let head = (!existing.is_empty()).then_some(existing);
    head.into_iter()
        .chain(lines.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the instance plugin's description says about the instance's health, if it says anything
/// (see the module documentation). `None`: no verdict, the instance exists.
pub fn backend_verdict(properties: Option<&Value>) -> Option<Health> {
    properties?;
    let b = BackendState::read(properties);
    match b.state {
        Some("exited" | "dead") => return Some(Health::Unhealthy),
        _ if b.running == Some(false) => return Some(Health::Unhealthy),
        Some("restarting" | "paused") => return Some(Health::Unknown),
        _ => {}
    }
    match b.health {
        Some("unhealthy") => Some(Health::Unhealthy),
        Some("starting") => Some(Health::Unknown),
        _ => None,
    }
}

/// The vanilla flavor. It has no state; one value serves every group.
#[derive(Debug, Clone, Copy, Default)]
pub struct VanillaFlavor;

impl VanillaFlavor {
    pub fn new() -> VanillaFlavor {
        VanillaFlavor
    }
}

#[async_trait]
impl FlavorPlugin for VanillaFlavor {
    async fn validate(&self, properties: &Value, _allocation: &AllocationMethod) -> Result<()> {
        VanillaProperties::parse(properties).map(|_| ())
    }

    async fn prepare(
        &self,
        properties: &Value,
        spec: Spec,
        _allocation: &AllocationMethod,
        _index: &Index,
    ) -> Result<Spec> {
        Ok(VanillaProperties::parse(properties)?.apply(spec))
    }

    async fn healthy(&self, _properties: &Value, instance: &Description) -> Result<Health> {
        // Vanilla knows nothing about what runs on the instance: existing is being healthy, unless
        // the backend itself says otherwise.
        Ok(backend_verdict(instance.properties.as_ref()).unwrap_or(Health::Healthy))
    }

    async fn drain(&self, _properties: &Value, _instance: &Description) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::ErrorKind;
    use serde_json::json;

    async fn prepare(properties: Value, spec: Spec) -> Result<Spec> {
        VanillaFlavor::new()
            .prepare(
                &properties,
                spec,
                &AllocationMethod::default(),
                &Index::default(),
            )
            .await
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn prepare_appends_init_merges_tags_appends_attachments() {
        let spec = Spec {
            init: "echo first".into(),
            tags: tags(&[("tier", "db"), ("keep", "me")]),
            attachments: vec![Attachment {
                id: "a0".into(),
                kind: String::new(),
            }],
            properties: Some(json!({"Note": "v1"})),
            logical_id: Some("10.0.0.1".into()),
        };
        let props = json!({
            "Init": ["echo a", "echo b"],
            "Tags": {"tier": "web"},
            "Attachments": [{"ID": "vol-1", "Type": "volume"}]
        });
        let out = prepare(props, spec).await.unwrap();
        assert_eq!(out.init, "echo first\necho a\necho b");
        assert_eq!(out.tags, tags(&[("tier", "web"), ("keep", "me")]));
        let ids: Vec<&str> = out.attachments.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["a0", "vol-1"]);
        assert_eq!(out.attachments[1].kind, "volume");
        assert_eq!(out.properties, Some(json!({"Note": "v1"})));
        assert_eq!(out.logical_id.as_deref(), Some("10.0.0.1"));
    }

    #[tokio::test]
    async fn empty_existing_init_adds_no_blank_line_and_null_is_empty() {
        let out = prepare(json!({"Init": ["echo a"]}), Spec::default())
            .await
            .unwrap();
        assert_eq!(out.init, "echo a");
        let spec = Spec {
            init: "keep".into(),
            ..Spec::default()
        };
        assert_eq!(prepare(Value::Null, spec.clone()).await.unwrap(), spec);
        let nulls = json!({"Init": null, "Tags": null, "Attachments": null});
        assert_eq!(prepare(nulls, spec.clone()).await.unwrap(), spec);
    }

    #[tokio::test]
    async fn unknown_field_is_refused_by_name() {
        let flavor = VanillaFlavor::new();
        let err = flavor
            .validate(&json!({"Inits": ["x"]}), &AllocationMethod::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(
            err.message.starts_with("flavor-vanilla properties: "),
            "{err}"
        );
        assert!(err.message.contains("Inits"), "{err}");
        let err = flavor
            .validate(&json!({"Init": "not a list"}), &AllocationMethod::default())
            .await
            .unwrap_err();
        assert!(
            err.message.starts_with("flavor-vanilla properties: "),
            "{err}"
        );
        assert!(flavor
            .validate(&Value::Null, &AllocationMethod::default())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn healthy_without_a_backend_verdict_and_drain_is_ok() {
        let flavor = VanillaFlavor::new();
        let d = Description::default();
        assert_eq!(
            flavor.healthy(&Value::Null, &d).await.unwrap(),
            Health::Healthy
        );
        flavor.drain(&Value::Null, &d).await.unwrap();
        // Properties that say nothing about health (instance-file's stored record).
        let d = Description {
            properties: Some(json!({"ID": "i-1", "Tags": {}, "Spec": {"Properties": {"x": 1}}})),
            ..Description::default()
        };
        assert_eq!(
            flavor.healthy(&Value::Null, &d).await.unwrap(),
            Health::Healthy
        );
    }

    async fn judged(properties: Value) -> Health {
        let d = Description {
            properties: Some(properties),
            ..Description::default()
        };
        VanillaFlavor::new()
            .healthy(&json!({"Tags": {"tier": "web"}}), &d)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn honours_the_backends_own_verdict() {
        use Health::*;
        let cases = [
            // instance-docker's properties, as it describes containers.
            (
                json!({"State": "running", "Running": true, "Health": "none"}),
                Healthy,
            ),
            (
                json!({"State": "running", "Running": true, "Health": "healthy"}),
                Healthy,
            ),
            (
                json!({"State": "exited", "Running": false, "ExitCode": 1, "Health": "none"}),
                Unhealthy,
            ),
            (
                json!({"State": "exited", "Running": false, "ExitCode": 0}),
                Unhealthy,
            ),
            (json!({"State": "dead", "Running": false}), Unhealthy),
            (json!({"State": "created", "Running": false}), Unhealthy),
            (json!({"Running": false}), Unhealthy),
            (json!({"State": "exited"}), Unhealthy),
            // Exited beats whatever its last health check said.
            (
                json!({"State": "exited", "Running": false, "Health": "healthy"}),
                Unhealthy,
            ),
            (
                json!({"State": "restarting", "Running": true, "Health": "none"}),
                Unknown,
            ),
            (json!({"State": "paused", "Running": true}), Unknown),
            (
                json!({"State": "running", "Running": true, "Health": "unhealthy"}),
                Unhealthy,
            ),
            (
                json!({"State": "running", "Running": true, "Health": "starting"}),
                Unknown,
            ),
            // Fields of another type are another backend's business: no verdict.
            (json!({"State": {"exited": true}, "Running": "no"}), Healthy),
            (json!({"Health": 0}), Healthy),
            (json!("exited"), Healthy),
            (Value::Null, Healthy),
        ];
        for (props, want) in cases {
            assert_eq!(judged(props.clone()).await, want, "{props}");
        }
    }
}
