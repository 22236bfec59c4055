//! Plugin services: swarm services whose tasks are managed plugins (`TaskTemplate.Runtime:
//! "plugin"`), so that the swarm installs, enables and upgrades a plugin on every node.
//!
//! Our own serde types and requests ([`crate::raw`]), because bollard 0.21's `TaskSpecPluginSpec`
//! has neither `Privileges` (it sends `PluginPrivilege`, which the engine ignores) nor `Env`, and
//! reading a plugin service back through it loses them. Facts this is built on (Docker 20.10,
//! measured in docs/swarm-notes.md and again here):
//! - plugin services need the daemon's experimental flag on every node that creates or runs them;
//!   they are always global (a placement constraint narrows them, e.g. to managers);
//! - `Privileges` must equal what the plugin asks for (`GET /plugins/privileges?remote=`);
//! - `Env` is applied when a node first pulls the plugin, not on later updates;
//! - the engine writes the `PluginSpec` keys back in lowercase (`name`, `remote`, ...);
//! - `GET /services` and `GET /tasks` list plugin services only with a `runtime=plugin` filter.

use std::collections::BTreeMap;

use hyper::Method;
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::plugins::null_default;
use crate::Engine;

/// The label every service of a bundle carries, with the bundle's name as value.
pub const BUNDLE_LABEL: &str = "infrakit.bundle";
/// The label naming the plugin a service runs (`group`, `instance-file`, ...).
pub const PLUGIN_LABEL: &str = "infrakit.plugin";
/// The placement constraint of plugins that run on managers only (the group controller).
pub const MANAGERS_ONLY: &str = "node.role==manager";

/// One permission a plugin asks for (a mount, a network, a capability), as
/// `GET /plugins/privileges` lists it. Reads both the API's `Name` and the lowercase `name` the
/// engine writes back into a service's `PluginSpec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privilege {
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    #[serde(rename = "Description", alias = "description", default)]
    pub description: String,
    #[serde(
        rename = "Value",
        alias = "value",
        default,
        deserialize_with = "null_default"
    )]
    pub value: Vec<String>,
}

/// What a plugin service runs on each node: the plugin `remote` installed under the local name
/// `name`, granted `privileges`, with `env` set at its first install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSpec {
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    #[serde(rename = "Remote", alias = "remote", default)]
    pub remote: String,
    #[serde(
        rename = "Privileges",
        alias = "privileges",
        default,
        deserialize_with = "null_default"
    )]
    pub privileges: Vec<Privilege>,
    #[serde(rename = "Disabled", alias = "disabled", default)]
    pub disabled: bool,
    #[serde(
        rename = "Env",
        alias = "env",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
}

/// A plugin service as we create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginServiceSpec {
    /// The service's name (`infrakit-group`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub plugin: PluginSpec,
    /// Only on managers (`node.role==manager`); else on every node.
    pub managers_only: bool,
}

impl PluginServiceSpec {
    /// The engine's `ServiceSpec` for it. Updates go one node at a time, each watched for a
    /// moment, so that an upgrade that does not start stops (pauses) before it reaches every node.
    pub fn to_json(&self) -> Value {
        let mut template = json!({
            "Runtime": "plugin",
            "PluginSpec": self.plugin,
        });
        if self.managers_only {
            template["Placement"] = json!({ "Constraints": [MANAGERS_ONLY] });
        }
        json!({
            "Name": self.name,
            "Labels": self.labels,
            "TaskTemplate": template,
            "Mode": { "Global": {} },
            "UpdateConfig": {
                "Parallelism": 1,
                "Monitor": 2_000_000_000u64,
                "FailureAction": "pause",
                "Order": "stop-first"
            },
        })
    }
}

/// A plugin service as the engine has it.
#[derive(Debug, Clone)]
pub struct PluginService {
    pub id: String,
    /// The object version an update must name.
    pub version: u64,
    pub spec: PluginServiceSpec,
    /// The state of the last update (`updating`, `paused`, `completed`, `rollback_*`) and its
    /// message, when there was one.
    pub update: Option<(String, String)>,
}

/// One task of a plugin service: the plugin on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginTask {
    pub id: String,
    pub service_id: String,
    pub node_id: String,
    /// The remote this task installs (its spec's: the version it runs once running).
    pub remote: String,
    /// `running` (installed and enabled), `failed`, `rejected`, `shutdown`, `preparing`, ...
    pub state: String,
    pub desired: String,
    /// Why it failed, when it did.
    pub error: String,
    pub timestamp: String,
}

#[derive(Deserialize)]
struct ServiceWire {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Version", default)]
    version: VersionWire,
    #[serde(rename = "Spec", default)]
    spec: Value,
    #[serde(rename = "UpdateStatus", default)]
    update_status: Option<UpdateStatusWire>,
}

#[derive(Default, Deserialize)]
struct VersionWire {
    #[serde(rename = "Index", default)]
    index: u64,
}

#[derive(Deserialize)]
struct UpdateStatusWire {
    #[serde(rename = "State", default)]
    state: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Deserialize)]
struct TaskWire {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    #[serde(rename = "NodeID", default)]
    node_id: String,
    #[serde(rename = "DesiredState", default)]
    desired: String,
    #[serde(rename = "Spec", default)]
    spec: TaskSpecWire,
    #[serde(rename = "Status", default)]
    status: TaskStatusWire,
}

#[derive(Default, Deserialize)]
struct TaskSpecWire {
    #[serde(rename = "PluginSpec", default)]
    plugin: Option<PluginSpec>,
}

#[derive(Default, Deserialize)]
struct TaskStatusWire {
    #[serde(rename = "State", default)]
    state: String,
    #[serde(rename = "Err", default)]
    err: Option<String>,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "Timestamp", default)]
    timestamp: String,
}

impl ServiceWire {
    /// A plugin service of ours, or `None` for anything else (no `PluginSpec`).
    fn into_plugin_service(self) -> Option<PluginService> {
        let template = self.spec.get("TaskTemplate")?;
        let plugin: PluginSpec =
            serde_json::from_value(template.get("PluginSpec")?.clone()).ok()?;
        let labels = self
            .spec
            .get("Labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let managers_only = template
            .pointer("/Placement/Constraints")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.as_str().map(|s| s.replace(' ', "")) == Some(MANAGERS_ONLY.into()))
            });
        Some(PluginService {
            id: self.id,
            version: self.version.index,
            spec: PluginServiceSpec {
                name: self
                    .spec
                    .get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                labels,
                plugin,
                managers_only,
            },
            update: self.update_status.map(|u| (u.state, u.message)),
        })
    }
}

/// A `filters=` query value.
fn filters(f: &[(&str, &str)]) -> String {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in f {
        map.entry(k).or_default().push(v);
    }
    percent_encode(&serde_json::to_string(&map).unwrap_or_default())
}

/// Percent-encodes everything but unreserved characters (for query values).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Engine {
    /// What the plugin `remote` asks to be granted (`GET /plugins/privileges?remote=`).
    /// The engine answers an empty list for a reference it cannot find, so this does not prove
    /// the plugin is in the registry: a missing plugin shows as a failed task.
    pub async fn plugin_privileges(&self, remote: &str) -> Result<Vec<Privilege>> {
        let what = format!("asking the engine which privileges {remote} needs");
        self.request(
            Method::GET,
            &format!("/plugins/privileges?remote={}", percent_encode(remote)),
            None,
        )
        .await?
        .json(self, &what)
    }

    /// The plugin services carrying `label=value` (every plugin service when `label` is None).
    pub async fn plugin_services(&self, label: Option<(&str, &str)>) -> Result<Vec<PluginService>> {
        let label_filter = label.map(|(k, v)| format!("{k}={v}"));
        let mut f = vec![("runtime", "plugin")];
        if let Some(l) = &label_filter {
            f.push(("label", l));
        }
        let wire: Vec<ServiceWire> = self
            .request(
                Method::GET,
                &format!("/services?filters={}", filters(&f)),
                None,
            )
            .await?
            .json(self, "listing plugin services")?;
        Ok(wire
            .into_iter()
            .filter_map(ServiceWire::into_plugin_service)
            .collect())
    }

    /// Creates the service; its ID.
    pub async fn create_plugin_service(&self, spec: &PluginServiceSpec) -> Result<String> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let what = format!("creating the plugin service {}", spec.name);
        let reply = self
            .request(Method::POST, "/services/create", Some(&spec.to_json()))
            .await?;
        experimental_advice(&reply, &what)?;
        Ok(reply.json::<Created>(self, &what)?.id)
    }

    /// Replaces the spec of the service `id`, which must still be at `version` (else Conflict:
    /// someone else changed it meanwhile).
    pub async fn update_plugin_service(
        &self,
        id: &str,
        version: u64,
        spec: &PluginServiceSpec,
    ) -> Result<()> {
        let what = format!("updating the plugin service {}", spec.name);
        let reply = self
            .request(
                Method::POST,
                &format!("/services/{}/update?version={version}", percent_encode(id)),
                Some(&spec.to_json()),
            )
            .await?;
        experimental_advice(&reply, &what)?;
        if reply.status == 500
            && crate::raw::engine_message(&reply.body).contains("out of sequence")
        {
            return Err(Error::conflict(format!(
                "{what}: it changed meanwhile (update out of sequence); run the command again"
            )));
        }
        reply.ok(&what)
    }

    /// Removes the service (the swarm then disables and removes its plugin on every node).
    pub async fn remove_service(&self, id: &str) -> Result<()> {
        let reply = self
            .request(
                Method::DELETE,
                &format!("/services/{}", percent_encode(id)),
                None,
            )
            .await?;
        if reply.status == 404 {
            return Ok(());
        }
        reply.ok(&format!("removing the service {id}"))
    }

    /// Every task of the plugin service `service_id` (current and past).
    /// A service that no longer exists has none.
    pub async fn plugin_tasks(&self, service_id: &str) -> Result<Vec<PluginTask>> {
        let reply = self
            .request(
                Method::GET,
                &format!(
                    "/tasks?filters={}",
                    filters(&[("runtime", "plugin"), ("service", service_id)])
                ),
                None,
            )
            .await?;
        if reply.status == 404 {
            return Ok(Vec::new());
        }
        let wire: Vec<TaskWire> = reply.json(self, "listing the tasks of plugin services")?;
        Ok(wire
            .into_iter()
            .filter(|t| t.service_id == service_id)
            .map(|t| PluginTask {
                id: t.id,
                service_id: t.service_id,
                node_id: t.node_id,
                remote: t.spec.plugin.map(|p| p.remote).unwrap_or_default(),
                state: t.status.state,
                desired: t.desired,
                error: t.status.err.filter(|e| !e.is_empty()).unwrap_or_else(|| {
                    if matches!(t.status.message.as_str(), "" | "started" | "preparing") {
                        String::new()
                    } else {
                        t.status.message
                    }
                }),
                timestamp: t.status.timestamp,
            })
            .collect())
    }

    /// `POST /plugins/{name}/push`: pushes the local plugin `name` to the registry its name
    /// points at. The engine streams progress and reports a failure inside a 200 answer; both
    /// are read here.
    pub async fn push_plugin(&self, name: &str) -> Result<()> {
        let what = format!("pushing the plugin {name}");
        let reply = self
            .request_with_auth(
                Method::POST,
                &format!("/plugins/{}/push", percent_encode(name)),
            )
            .await?;
        reply.ok(&what)?;
        for line in reply.body.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if let Some(e) = v.get("error").and_then(Value::as_str) {
                    return Err(Error::unavailable(format!("{what}: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Whether the registry holds `remote` (`GET /distribution/{remote}/json`: the engine resolves
    /// the reference with its own registry settings and asks the registry for the manifest, as a
    /// node does when it installs the plugin). `Ok(false)` when the registry answers that it has
    /// no such manifest (404); an error when the registry cannot be asked at all (not reachable,
    /// HTTP where HTTPS is expected, credentials wanted, ...), carrying the engine's reason.
    pub async fn registry_has(&self, remote: &str) -> Result<bool> {
        let reply = self
            .request_with_auth(
                Method::GET,
                &format!("/distribution/{}/json", percent_encode(remote)),
            )
            .await?;
        if reply.status == 404 {
            return Ok(false);
        }
        reply.ok(&format!("looking {remote} up in its registry"))?;
        Ok(true)
    }

    /// `DELETE /plugins/{name}?force=true` (nothing when it is not installed).
    pub async fn remove_plugin(&self, name: &str) -> Result<()> {
        let reply = self
            .request(
                Method::DELETE,
                &format!("/plugins/{}?force=true", percent_encode(name)),
                None,
            )
            .await?;
        if reply.status == 404 {
            return Ok(());
        }
        reply.ok(&format!("removing the plugin {name}"))
    }
}

/// The engine's refusal of a plugin service on a daemon without experimental features, as advice.
fn experimental_advice(reply: &crate::raw::Reply, what: &str) -> Result<()> {
    let message = crate::raw::engine_message(&reply.body);
    if !(200..300).contains(&reply.status) && message.to_lowercase().contains("experimental") {
        return Err(Error::invalid(format!(
            "{what}: {message}. Plugin services need the engine's experimental features on every \
             node that creates or runs them: add \"experimental\": true to /etc/docker/daemon.json \
             and restart dockerd on each node"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_plugin_service_as_the_engine_writes_it_back() {
        let json = r#"[{"ID": "svc1", "Version": {"Index": 28},
          "Spec": {"Name": "infrakit-group", "Labels": {"infrakit.bundle": "infrakit"},
            "TaskTemplate": {"PluginSpec": {"name": "infrakit/group", "remote": "r:5000/infrakit/group:1",
                "privileges": [{"name": "mount", "description": "host path to mount", "value": ["/var/run/docker.sock"]}],
                "env": ["INFRAKIT_LOG=debug"]},
              "Placement": {"Constraints": ["node.role == manager"]},
              "ForceUpdate": 0, "Runtime": "plugin"},
            "Mode": {"Global": {}}},
          "UpdateStatus": {"State": "paused", "Message": "update paused due to failure"}},
          {"ID": "svc2", "Version": {"Index": 3}, "Spec": {"Name": "web", "TaskTemplate": {"ContainerSpec": {}}}}]"#;
        let wire: Vec<ServiceWire> = serde_json::from_str(json).unwrap();
        let services: Vec<_> = wire
            .into_iter()
            .filter_map(ServiceWire::into_plugin_service)
            .collect();
        assert_eq!(services.len(), 1);
        let s = &services[0];
        assert_eq!(s.version, 28);
        assert!(s.spec.managers_only);
        assert_eq!(s.spec.plugin.remote, "r:5000/infrakit/group:1");
        assert_eq!(s.spec.plugin.privileges[0].value, ["/var/run/docker.sock"]);
        assert_eq!(s.spec.plugin.env, ["INFRAKIT_LOG=debug"]);
        assert_eq!(s.update.as_ref().map(|u| u.0.as_str()), Some("paused"));
    }

    #[test]
    fn the_spec_we_send_carries_privileges_env_and_placement() {
        let spec = PluginServiceSpec {
            name: "infrakit-group".into(),
            labels: BTreeMap::from([(BUNDLE_LABEL.to_string(), "infrakit".to_string())]),
            plugin: PluginSpec {
                name: "infrakit/group".into(),
                remote: "r:5000/infrakit/group:1".into(),
                privileges: vec![Privilege {
                    name: "network".into(),
                    description: "permissions to access a network".into(),
                    value: vec!["none".into()],
                }],
                disabled: false,
                env: vec!["INFRAKIT_SWARM=on".into()],
            },
            managers_only: true,
        };
        let v = spec.to_json();
        assert_eq!(v["TaskTemplate"]["Runtime"], "plugin");
        assert_eq!(
            v["TaskTemplate"]["PluginSpec"]["Privileges"][0]["Value"][0],
            "none"
        );
        assert_eq!(
            v["TaskTemplate"]["PluginSpec"]["Env"][0],
            "INFRAKIT_SWARM=on"
        );
        assert_eq!(
            v["TaskTemplate"]["Placement"]["Constraints"][0],
            MANAGERS_ONLY
        );
        assert!(v["Mode"]["Global"].is_object());
        // What we send reads back as what we meant (the round trip deploy compares with).
        let back: PluginSpec =
            serde_json::from_value(v["TaskTemplate"]["PluginSpec"].clone()).unwrap();
        assert_eq!(back, spec.plugin);
    }

    #[test]
    fn filters_are_encoded_for_a_query() {
        assert_eq!(
            filters(&[("runtime", "plugin"), ("label", "a=b")]),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%2C%22runtime%22%3A%5B%22plugin%22%5D%7D"
        );
    }
}
