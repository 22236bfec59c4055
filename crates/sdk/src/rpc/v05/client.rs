//! Speaks InfraKit v0.5's JSON-RPC to a plugin that does not know our protocol.
//!
//! [`RpcClient`](crate::rpc::client::RpcClient) falls back to this when `Plugin.Activate` is
//! answered 404 (v0.5's router has only `/`) or with a JSON-RPC reply. The typed clients keep
//! building our requests and reading our replies: [`call`] turns each request into v0.5's params
//! (tags renamed, our additions left out), and v0.5's result back into our reply's shape. Methods
//! v0.5 does not have are answered here, without a call, as a 404 would be (so the callers' usual
//! fallbacks apply: polling instead of `Instance.Changes`, one `Healthy` per instance, no leaders).

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    codes, interface_of, retag_description, retag_spec, tags_from_v05, tags_to_v05, DescriptionOut,
    RpcError, SpecOut, CONTENT_TYPE,
};
use crate::rpc::messages::*;
use crate::rpc::transport::Transport;
use crate::spi::instance::Description;
use crate::spi::InterfaceSpec;
use crate::{Error, ErrorKind, Result};

/// One entry of v0.5's `Handshake.Implements`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Api {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Version")]
    pub version: String,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.version)
    }
}

/// Whether a reply body is JSON-RPC (a v0.5 server answering something at a path it ignores).
pub(crate) fn is_json_rpc(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("jsonrpc").is_some())
}

/// Asks `Handshake.Implements`.
pub(crate) async fn implements(transport: &Transport, plugin: &str) -> Result<Vec<Api>> {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "APIs", default)]
        apis: Option<Vec<Api>>,
    }
    let r: Reply = rpc(transport, plugin, "Handshake.Implements", json!({})).await?;
    Ok(r.apis.unwrap_or_default())
}

/// Checks that the plugin implements `ours` in v0.5's version (v0.5 itself requires equal versions).
pub(crate) fn check(ours: InterfaceSpec, plugin: &str, apis: &[Api]) -> Result<()> {
    let (name, version) = interface_of(ours);
    let listed: Vec<String> = apis.iter().map(Api::to_string).collect();
    match apis.iter().find(|a| a.name == name) {
        Some(a) if a.version == version => Ok(()),
        Some(a) => Err(Error::new(
            ErrorKind::Incompatible,
            format!(
                "plugin '{plugin}' speaks InfraKit v0.5's protocol with {a}, but this client \
                 knows {name}/{version} of it; use a plugin built for InfraKit v0.5"
            ),
        )),
        None => Err(Error::new(
            ErrorKind::Incompatible,
            format!(
                "plugin '{plugin}' (InfraKit v0.5 protocol) does not implement {name} (it \
                 implements: {}); check the plugin name",
                if listed.is_empty() {
                    "nothing".to_string()
                } else {
                    listed.join(", ")
                }
            ),
        )),
    }
}

/// Makes the call `path` (`Instance.Provision`) with our request body, and returns our reply body.
pub(crate) async fn call(
    transport: &Transport,
    plugin: &str,
    path: &str,
    body: &[u8],
) -> Result<Bytes> {
    let params = request(path, body)?;
    let result: Value = rpc(transport, plugin, path, params).await?;
    let ours = reply(path, result);
    serde_json::to_vec(&ours)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot re-encode the reply to {path}: {e}")))
}

fn ours<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::internal(format!("cannot read our own request for {path}: {e}")))
}

fn description_out(d: &Description) -> Value {
    let d = retag_description(d, tags_to_v05);
    serde_json::to_value(DescriptionOut::new(&d)).unwrap_or(Value::Null)
}

/// Our request for `path` as v0.5's params; a method v0.5 lacks is a `NotFound` error.
fn request(path: &str, body: &[u8]) -> Result<Value> {
    Ok(match path {
        "Instance.Validate" => {
            let r: InstanceValidateRequest = ours(path, body)?;
            json!({"Type": r.r#type, "Properties": r.properties})
        }
        "Instance.Provision" => {
            let r: ProvisionRequest = ours(path, body)?;
            let spec = retag_spec(r.spec, tags_to_v05);
            json!({"Type": r.r#type, "Spec": SpecOut::new(&spec)})
        }
        "Instance.Label" => {
            let r: LabelRequest = ours(path, body)?;
            json!({"Type": r.r#type, "Instance": r.instance, "Labels": tags_to_v05(&r.labels)})
        }
        // v0.5 takes no reason: the plugin destroys as it always does.
        "Instance.Destroy" => {
            let r: DestroyRequest = ours(path, body)?;
            json!({"Type": r.r#type, "Instance": r.instance})
        }
        // v0.5 takes no IDs: it answers every instance with the tags, which the trait allows.
        "Instance.DescribeInstances" => {
            let r: DescribeInstancesRequest = ours(path, body)?;
            json!({"Type": r.r#type, "Tags": tags_to_v05(&r.tags), "Properties": r.properties})
        }
        "Flavor.Validate" => {
            let r: FlavorValidateRequest = ours(path, body)?;
            json!({"Type": r.r#type, "Properties": r.properties, "Allocation": r.allocation})
        }
        "Flavor.Prepare" => {
            let r: PrepareRequest = ours(path, body)?;
            let spec = retag_spec(r.spec, tags_to_v05);
            json!({"Type": r.r#type, "Properties": r.properties, "Spec": SpecOut::new(&spec),
                   "Allocation": r.allocation, "Index": r.index})
        }
        "Flavor.Healthy" | "Flavor.Drain" => {
            let r: FlavorInstanceRequest = ours(path, body)?;
            json!({"Type": r.r#type, "Properties": r.properties,
                   "Instance": description_out(&r.instance)})
        }
        "Group.CommitGroup" => {
            let r: CommitGroupRequest = ours(path, body)?;
            if !r.expect.is_empty() {
                return Err(Error::unsupported(
                    "an InfraKit v0.5 group plugin cannot commit against an expected plan; \
                     commit without --expect",
                ));
            }
            json!({"Spec": r.spec, "Pretend": r.pretend})
        }
        "Group.FreeGroup" | "Group.DescribeGroup" | "Group.DestroyGroup" => {
            let r: GroupIdRequest = ours(path, body)?;
            json!({ "ID": r.id })
        }
        "Group.InspectGroups" => json!({}),
        // Ours only (Instance.Changes, Flavor.HealthyMany, Flavor.Leading, Group.Events,
        // Group.Size, ...): answered as an unknown method, which each caller already handles.
        _ => {
            return Err(Error::not_found(format!(
                "unknown method '{path}': an InfraKit v0.5 plugin has no {path}"
            )))
        }
    })
}

/// v0.5's result for `path` in our reply's shape: the tags renamed back (the extra `Type` is
/// ignored by our readers).
fn reply(path: &str, mut result: Value) -> Value {
    let retag = |tags: &mut Value| {
        if let Ok(t) = serde_json::from_value::<crate::spi::instance::Tags>(tags.clone()) {
            *tags = json!(tags_from_v05(&t));
        }
    };
    let retag_list = |list: Option<&mut Value>| {
        if let Some(Value::Array(items)) = list {
            for d in items {
                if let Some(t) = d.get_mut("Tags") {
                    retag(t);
                }
            }
        }
    };
    match path {
        "Instance.DescribeInstances" => retag_list(result.get_mut("Descriptions")),
        "Group.DescribeGroup" => retag_list(
            result
                .get_mut("Description")
                .and_then(|d| d.get_mut("Instances")),
        ),
        "Flavor.Prepare" => {
            if let Some(t) = result.get_mut("Spec").and_then(|s| s.get_mut("Tags")) {
                retag(t);
            }
        }
        _ => {}
    }
    result
}

/// One JSON-RPC call: `POST /` with `{"jsonrpc":"2.0","method":...,"params":...,"id":...}`.
async fn rpc<T: DeserializeOwned>(
    transport: &Transport,
    plugin: &str,
    method: &str,
    params: Value,
) -> Result<T> {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<Value>,
    }
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": next_id()});
    let body = serde_json::to_vec(&body)
        .map_err(|e| Error::internal(format!("cannot encode the request {method}: {e}")))?;
    let (status, reply) = transport
        .post_as("", Bytes::from(body), CONTENT_TYPE)
        .await?;
    if status != 200 {
        return Err(Error::new(
            ErrorKind::from_status(status),
            format!(
                "plugin '{plugin}' answered {method} (InfraKit v0.5 protocol) with status {status}: {}",
                String::from_utf8_lossy(&reply).trim()
            ),
        ));
    }
    let r: Reply = serde_json::from_slice(&reply).map_err(|e| {
        Error::internal(format!(
            "plugin '{plugin}' sent a reply to {method} that is not JSON-RPC: {e}"
        ))
    })?;
    if let Some(error) = r.error.filter(|e| !e.is_null()) {
        return Err(error_from(plugin, method, error));
    }
    let result = r.result.filter(|v| !v.is_null()).ok_or_else(|| {
        Error::internal(format!(
            "plugin '{plugin}' answered {method} with neither a result nor an error"
        ))
    })?;
    serde_json::from_value(result).map_err(|e| {
        Error::internal(format!(
            "plugin '{plugin}' sent a result to {method} that does not parse: {e}"
        ))
    })
}

/// A v0.5 error as ours. v0.5 carries no kind: an unknown method or sub-type is `NotFound` (so
/// optional methods fall back), malformed params `Invalid`, the rest `Internal`.
fn error_from(plugin: &str, method: &str, error: Value) -> Error {
    let e: RpcError = serde_json::from_value(error.clone()).unwrap_or(RpcError {
        code: codes::SERVER,
        message: error.to_string(),
        data: Value::Null,
    });
    let kind = if e.message.starts_with("rpc: can't find") || e.message.starts_with("no-plugin:") {
        ErrorKind::NotFound
    } else if matches!(e.code, codes::PARSE | codes::INVALID_REQUEST | -32602) {
        ErrorKind::Invalid
    } else {
        ErrorKind::Internal
    };
    let message = if kind == ErrorKind::NotFound {
        format!(
            "plugin '{plugin}' (InfraKit v0.5) has no {method}: {}",
            e.message
        )
    } else {
        e.message
    };
    Error::new(kind, message)
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v05_errors_read_as_our_kinds() {
        let kind = |e: Value| error_from("p", "Instance.Changes", e).kind;
        // What gorilla/rpc says for a method the service does not have.
        let missing = json!({"code": -32000, "message": "rpc: can't find method \"Instance.Changes\"", "data": null});
        assert_eq!(kind(missing), ErrorKind::NotFound);
        // What v0.5's services say for an unknown sub-type.
        assert_eq!(
            kind(json!({"code": -32000, "message": "no-plugin:manager"})),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(json!({"code": -32600, "message": "jsonrpc must be 2.0"})),
            ErrorKind::Invalid
        );
        let e = error_from(
            "p",
            "Instance.Destroy",
            json!({"code": -32000, "message": "gone"}),
        );
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Internal, "gone"));
        // Not even the error shape: kept whole in the message.
        let e = error_from("p", "m", json!("boom"));
        assert!(e.message.contains("boom"), "{e}");
    }

    #[test]
    fn requests_leave_our_additions_out_and_rename_tags() {
        let ours = json!({"Instance": "i-1", "Context": {"Reason": "rolling_update"}});
        let p = request("Instance.Destroy", ours.to_string().as_bytes()).unwrap();
        assert_eq!(p, json!({"Type": "", "Instance": "i-1"}));
        let ours = json!({"Tags": {"infrakit.config.hash": "h"}, "Properties": true, "IDs": ["a"]});
        let p = request("Instance.DescribeInstances", ours.to_string().as_bytes()).unwrap();
        assert_eq!(
            p,
            json!({"Type": "", "Tags": {"infrakit.config_sha": "h"}, "Properties": true})
        );
        let e = request("Instance.Changes", b"{}").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = request("Flavor.HealthyMany", b"{}").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        let back = reply(
            "Instance.DescribeInstances",
            json!({"Type": "", "Descriptions": [{"ID": "a", "Tags": {"infrakit.config_sha": "h"}}]}),
        );
        assert_eq!(
            back["Descriptions"][0]["Tags"],
            json!({"infrakit.config.hash": "h"})
        );
    }
}
