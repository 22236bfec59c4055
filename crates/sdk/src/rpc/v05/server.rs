//! Answers InfraKit v0.5's JSON-RPC requests (`POST /`) with the plugins a socket serves.
//!
//! The requests are read into our own message types (their fields are InfraKit's in both
//! protocols), the tags renamed to ours, the same plugin methods called as on the native routes,
//! and the answers written in v0.5's shapes: `{"Type": ..., "OK": true}` and friends, health as a
//! number, descriptions and specs with every field Go writes.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    codes, health_number, interface_of, retag_description, retag_spec, tags_from_v05, tags_to_v05,
    DescriptionOut, RpcError, SpecOut,
};
use crate::rpc::messages::*;
use crate::rpc::server::{pick, Plugins};
use crate::spi::instance::{Description, DestroyContext};
use crate::Error;

/// A JSON-RPC 2.0 request as v0.5's client sends it.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    jsonrpc: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
}

/// Answers one request body; the reply body is JSON-RPC (always status 200, as v0.5's server).
pub(crate) async fn handle(plugins: &Plugins, body: &[u8]) -> Bytes {
    let (id, outcome) = match serde_json::from_slice::<Request>(body) {
        Err(e) => (
            Value::Null,
            Err(RpcError {
                code: codes::PARSE,
                message: format!("the body of POST / is not a JSON-RPC request: {e}"),
                data: Value::Null,
            }),
        ),
        Ok(req) => {
            let id = req.id.clone().unwrap_or(Value::Null);
            (id, answer(plugins, req).await)
        }
    };
    let reply = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
        Err(error) => json!({"jsonrpc": "2.0", "error": error, "id": id}),
    };
    Bytes::from(serde_json::to_vec(&reply).unwrap_or_default())
}

async fn answer(plugins: &Plugins, req: Request) -> Result<Value, RpcError> {
    if req.jsonrpc.as_deref() != Some("2.0") {
        return Err(RpcError {
            code: codes::INVALID_REQUEST,
            message: "jsonrpc must be 2.0".to_string(),
            data: Value::Null,
        });
    }
    let method = req.method.unwrap_or_default();
    // gorilla/rpc also takes the params object wrapped in a one-element array.
    let params = match req.params {
        Some(Value::Array(mut a)) if a.len() == 1 => a.remove(0),
        Some(v) => v,
        None => json!({}),
    };
    let (iface, name) = method.split_once('.').unwrap_or((method.as_str(), ""));
    let served = match iface {
        "Handshake" => handshake(plugins, name),
        "Instance" if !plugins.instances().is_empty() => instance(plugins, name, params).await,
        "Flavor" if !plugins.flavors().is_empty() => flavor(plugins, name, params).await,
        "Group" if !plugins.groups().is_empty() => group(plugins, name, params).await,
        _ => return Err(cannot_find(&method)),
    };
    match served {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(cannot_find(&method)),
        Err(Call::Params(message)) => Err(RpcError {
            code: codes::INVALID_REQUEST,
            message,
            data: Value::Null,
        }),
        Err(Call::Plugin(e)) => Err(RpcError {
            code: codes::SERVER,
            message: e.message,
            data: Value::Null,
        }),
    }
}

/// v0.5's words for an unknown service or method (its clients read them as "not implemented").
fn cannot_find(method: &str) -> RpcError {
    RpcError {
        code: codes::SERVER,
        message: format!("rpc: can't find method \"{method}\""),
        data: Value::Null,
    }
}

/// Why a call failed: its params do not fit the method, or the plugin said no.
enum Call {
    Params(String),
    Plugin(Error),
}

impl From<Error> for Call {
    fn from(e: Error) -> Call {
        Call::Plugin(e)
    }
}

/// `Ok(None)`: the interface has no such method.
type Served = Result<Option<Value>, Call>;

fn params<T: DeserializeOwned>(method: &str, v: Value) -> Result<T, Call> {
    serde_json::from_value(v).map_err(|e| Call::Params(format!("params of {method}: {e}")))
}

fn handshake(plugins: &Plugins, name: &str) -> Served {
    let mut apis = Vec::new();
    let mut types = serde_json::Map::new();
    for (ours, kinds) in [
        (
            crate::spi::INSTANCE,
            plugins.instances().keys().collect::<Vec<_>>(),
        ),
        (crate::spi::FLAVOR, plugins.flavors().keys().collect()),
        (crate::spi::GROUP, plugins.groups().keys().collect()),
    ] {
        if kinds.is_empty() {
            continue;
        }
        let (n, v) = interface_of(ours);
        apis.push(json!({"Name": n, "Version": v}));
        // v0.5 names the default implementation ".".
        let kinds: Vec<&str> = kinds
            .iter()
            .map(|k| if k.is_empty() { "." } else { k.as_str() })
            .collect();
        types.insert(format!("{n}/{v}"), json!(kinds));
    }
    Ok(match name {
        "Implements" => Some(json!({ "APIs": apis })),
        "Types" => Some(json!({ "Types": types })),
        _ => None,
    })
}

fn descriptions_out(list: &[Description]) -> Vec<Value> {
    list.iter()
        .map(|d| {
            let d = retag_description(d, tags_to_v05);
            serde_json::to_value(DescriptionOut::new(&d)).unwrap_or(Value::Null)
        })
        .collect()
}

async fn instance(plugins: &Plugins, name: &str, p: Value) -> Served {
    let map = plugins.instances();
    const WHAT: &str = "instance plugin";
    let method = format!("Instance.{name}");
    let v = match name {
        "Validate" => {
            let r: InstanceValidateRequest = params(&method, p)?;
            pick(map, &r.r#type, WHAT)?.validate(&r.properties).await?;
            json!({"Type": r.r#type, "OK": true})
        }
        "Provision" => {
            let r: ProvisionRequest = params(&method, p)?;
            let spec = retag_spec(r.spec, tags_from_v05);
            let id = pick(map, &r.r#type, WHAT)?.provision(spec).await?;
            json!({"Type": r.r#type, "ID": id})
        }
        "Label" => {
            let r: LabelRequest = params(&method, p)?;
            pick(map, &r.r#type, WHAT)?
                .label(&r.instance, tags_from_v05(&r.labels))
                .await?;
            json!({"Type": r.r#type, "OK": true})
        }
        "Destroy" => {
            // v0.5 gives no reason: a destroy is a termination.
            let r: DestroyRequest = params(&method, p)?;
            pick(map, &r.r#type, WHAT)?
                .destroy(&r.instance, DestroyContext::default())
                .await?;
            json!({"Type": r.r#type, "OK": true})
        }
        "DescribeInstances" => {
            let r: DescribeInstancesRequest = params(&method, p)?;
            let list = pick(map, &r.r#type, WHAT)?
                .describe_instances(&tags_from_v05(&r.tags), r.properties)
                .await?;
            json!({"Type": r.r#type, "Descriptions": descriptions_out(&list)})
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

async fn flavor(plugins: &Plugins, name: &str, p: Value) -> Served {
    let map = plugins.flavors();
    const WHAT: &str = "flavor plugin";
    let method = format!("Flavor.{name}");
    let v = match name {
        "Validate" => {
            let r: FlavorValidateRequest = params(&method, p)?;
            pick(map, &r.r#type, WHAT)?
                .validate(&r.properties, &r.allocation)
                .await?;
            json!({"Type": r.r#type, "OK": true})
        }
        "Prepare" => {
            let r: PrepareRequest = params(&method, p)?;
            let spec = pick(map, &r.r#type, WHAT)?
                .prepare(
                    &r.properties,
                    retag_spec(r.spec, tags_from_v05),
                    &r.allocation,
                    &r.index,
                )
                .await?;
            let spec = retag_spec(spec, tags_to_v05);
            json!({"Type": r.r#type, "Spec": SpecOut::new(&spec)})
        }
        "Healthy" => {
            let r: FlavorInstanceRequest = params(&method, p)?;
            let instance = retag_description(&r.instance, tags_from_v05);
            let health = pick(map, &r.r#type, WHAT)?
                .healthy(&r.properties, &instance)
                .await?;
            json!({"Type": r.r#type, "Health": health_number(health)})
        }
        "Drain" => {
            let r: FlavorInstanceRequest = params(&method, p)?;
            let instance = retag_description(&r.instance, tags_from_v05);
            pick(map, &r.r#type, WHAT)?
                .drain(&r.properties, &instance)
                .await?;
            json!({"Type": r.r#type, "OK": true})
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

async fn group(plugins: &Plugins, name: &str, p: Value) -> Served {
    // v0.5's group service has no sub-types: the default group plugin answers.
    let plugin = pick(plugins.groups(), "", "group plugin")?;
    let method = format!("Group.{name}");
    let v = match name {
        "CommitGroup" => {
            let r: CommitGroupRequest = params(&method, p)?;
            let res = plugin.commit_group(r.spec, r.pretend).await?;
            json!({"Details": res.details})
        }
        "FreeGroup" => {
            let r: GroupIdRequest = params(&method, p)?;
            plugin.free_group(&r.id).await?;
            json!({"OK": true})
        }
        "DescribeGroup" => {
            let r: GroupIdRequest = params(&method, p)?;
            let d = plugin.describe_group(&r.id).await?;
            json!({"Description": {
                "Instances": descriptions_out(&d.instances),
                "Converged": d.converged,
            }})
        }
        "DestroyGroup" => {
            let r: GroupIdRequest = params(&method, p)?;
            plugin.destroy_group(&r.id).await?;
            json!({"OK": true})
        }
        "InspectGroups" => {
            let groups = plugin.inspect_groups().await?;
            json!({ "Groups": groups })
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}
