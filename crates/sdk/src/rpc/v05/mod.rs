//! InfraKit v0.5's wire protocol, spoken beside ours on the same socket, both ways.
//!
//! v0.5 (Docker's Go InfraKit, tag `v0.5`) does not use Docker's plugin envelope: every call is a
//! JSON-RPC 2.0 request `POST /` with `Content-Type: application/json`, e.g.
//! `{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Type":"","Spec":{...}},"id":7}`,
//! answered with status 200 and `{"jsonrpc":"2.0","result":{...},"id":7}` or, on failure,
//! `{"jsonrpc":"2.0","error":{"code":-32000,"message":"...","data":null},"id":7}`. Interfaces are
//! found with `Handshake.Implements` (`{"APIs":[{"Name":"Instance","Version":"0.5.0"}]}`) instead of
//! `Plugin.Activate`.
//!
//! - [`server`]: answers v0.5's requests with the same plugins our native routes serve.
//! - [`client`]: speaks v0.5 to a plugin that did not answer our `Plugin.Activate`, translating our
//!   requests and its replies, so the typed clients (and the group controller) do not change.
//!
//! The payloads are InfraKit's in both protocols; what differs is listed in `docs/compat-v0.5.md`
//! (the envelope, the interface names and versions, the methods each side lacks, health as a
//! number, and one tag name: [`TAG_RENAMES`]).

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spi::flavor::Health;
use crate::spi::instance::{Description, Spec, Tags};
use crate::spi::{InterfaceSpec, FLAVOR, GROUP, INSTANCE};

/// The content type of v0.5's requests and replies (its server refuses others with 415).
pub const CONTENT_TYPE: &str = "application/json";

/// v0.5's name and version for each of our interfaces: its client requires the version to be
/// equal, so these are exactly what v0.5 sends and expects.
pub const INTERFACES: [(InterfaceSpec, &str, &str); 3] = [
    (INSTANCE, "Instance", "0.5.0"),
    (FLAVOR, "Flavor", "0.1.0"),
    (GROUP, "Group", "0.1.0"),
];

/// v0.5's `{"Name": ..., "Version": ...}` for `ours`.
pub fn interface_of(ours: InterfaceSpec) -> (&'static str, &'static str) {
    INTERFACES
        .iter()
        .find(|(i, _, _)| i.name == ours.name)
        .map(|(_, n, v)| (*n, *v))
        .unwrap_or((ours.rpc_prefix, "0.0.0"))
}

/// Tags whose names differ: (ours, v0.5's). Only the config hash: v0.5's group controller tags an
/// instance with `infrakit.config_sha`. `infrakit.group` is the same on both sides, and v0.5 has no
/// logical-ID tag (it uses the spec's `LogicalID` field), so ours passes through unchanged.
pub const TAG_RENAMES: [(&str, &str); 1] = [(crate::spi::tags::CONFIG_HASH, "infrakit.config_sha")];

/// Tags as v0.5 names them (ours → theirs).
pub fn tags_to_v05(tags: &Tags) -> Tags {
    rename(tags, |k| {
        TAG_RENAMES.iter().find(|(o, _)| *o == k).map(|(_, t)| *t)
    })
}

/// Tags as we name them (v0.5's → ours).
pub fn tags_from_v05(tags: &Tags) -> Tags {
    rename(tags, |k| {
        TAG_RENAMES.iter().find(|(_, t)| *t == k).map(|(o, _)| *o)
    })
}

fn rename(tags: &Tags, new_name: impl Fn(&str) -> Option<&'static str>) -> Tags {
    tags.iter()
        .map(|(k, v)| {
            let k = new_name(k).map(str::to_string).unwrap_or_else(|| k.clone());
            (k, v.clone())
        })
        .collect()
}

/// A spec with the tags renamed by `f`.
pub(crate) fn retag_spec(mut spec: Spec, f: fn(&Tags) -> Tags) -> Spec {
    spec.tags = f(&spec.tags);
    spec
}

/// A description with the tags renamed by `f`.
pub(crate) fn retag_description(d: &Description, f: fn(&Tags) -> Tags) -> Description {
    let mut d = d.clone();
    d.tags = f(&d.tags).into();
    d
}

/// v0.5's `instance.Spec` as Go writes it: every field present, `null` when empty.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SpecOut<'a> {
    properties: &'a Option<Value>,
    tags: &'a Tags,
    init: &'a str,
    #[serde(rename = "LogicalID")]
    logical_id: &'a Option<String>,
    attachments: Option<&'a [crate::spi::instance::Attachment]>,
}

impl<'a> SpecOut<'a> {
    pub(crate) fn new(s: &'a Spec) -> SpecOut<'a> {
        SpecOut {
            properties: &s.properties,
            tags: &s.tags,
            init: &s.init,
            logical_id: &s.logical_id,
            attachments: (!s.attachments.is_empty()).then_some(s.attachments.as_slice()),
        }
    }
}

/// v0.5's `instance.Description` as Go writes it (`Properties` only when there are some).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DescriptionOut<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "LogicalID")]
    logical_id: &'a Option<String>,
    #[serde(rename = "Tags")]
    tags: &'a Tags,
    #[serde(rename = "Properties", skip_serializing_if = "Option::is_none")]
    properties: &'a Option<Value>,
}

impl<'a> DescriptionOut<'a> {
    pub(crate) fn new(d: &'a Description) -> DescriptionOut<'a> {
        DescriptionOut {
            id: &d.id,
            logical_id: &d.logical_id,
            tags: &d.tags,
            properties: &d.properties,
        }
    }
}

/// v0.5's `flavor.Health`: a number (0 unknown, 1 healthy, 2 unhealthy). Ours reads numbers too.
pub fn health_number(h: Health) -> u8 {
    match h {
        Health::Unknown => 0,
        Health::Healthy => 1,
        Health::Unhealthy => 2,
    }
}

/// JSON-RPC 2.0 error codes as v0.5's server (gorilla/rpc's json2) uses them.
pub mod codes {
    /// The body is not JSON.
    pub const PARSE: i64 = -32700;
    /// Not a JSON-RPC 2.0 request, or params that do not fit the method.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Everything a method returned as an error, and unknown methods ("rpc: can't find ...").
    pub const SERVER: i64 = -32000;
}

/// The `error` member of a JSON-RPC reply; `data` is always present (`null`), as in v0.5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default)]
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_is_renamed_both_ways_and_other_tags_kept() {
        let ours: Tags = [
            ("infrakit.config.hash", "h"),
            ("infrakit.group", "g"),
            ("infrakit.logical_id", "l"),
            ("tier", "web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let theirs = tags_to_v05(&ours);
        assert_eq!(
            theirs.get("infrakit.config_sha").map(String::as_str),
            Some("h")
        );
        assert!(!theirs.contains_key("infrakit.config.hash"));
        assert_eq!(theirs.len(), 4);
        assert_eq!(tags_from_v05(&theirs), ours);
    }

    #[test]
    fn go_shapes_carry_every_field() {
        let v = serde_json::to_value(SpecOut::new(&Spec::default())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Properties": null, "Tags": {}, "Init": "", "LogicalID": null, "Attachments": null})
        );
        let d = Description {
            id: "i".into(),
            ..Description::default()
        };
        let v = serde_json::to_value(DescriptionOut::new(&d)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ID": "i", "LogicalID": null, "Tags": {}})
        );
    }
}
