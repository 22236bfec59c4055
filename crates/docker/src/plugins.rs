//! The engine's plugin list (`GET /plugins`): our own request and types, the one part of the
//! engine's API we do not reach through bollard.
//!
//! bollard 0.21's `Plugin` model has plain strings where a 20.10 engine sends `null`
//! (`Config.Env[].Value` for an env declared without a value, `Config.Args.Value`, mount
//! sources), so `list_plugins` and `inspect_plugin` fail on our own plugins, and bollard has no
//! public way to send a request and read the answer ourselves. So this is our own request
//! ([`crate::raw`]) and serde types that take `null` and absence everywhere ([`null_default`]).
//! Discovery is its only user.

use hyper::Method;
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Deserializer};

use crate::engine::Engine;
use crate::raw::engine_message;

impl Engine {
    /// `GET /plugins`: every installed plugin, enabled or not.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>> {
        let reply = self.request(Method::GET, "/plugins", None).await?;
        if reply.status != 200 {
            return Err(Error::unavailable(format!(
                "GET /plugins on {} answered {}: {}",
                self.address(),
                reply.status,
                engine_message(&reply.body)
            )));
        }
        serde_json::from_slice(&reply.body).map_err(|e| {
            Error::internal(format!(
                "GET /plugins on {} returned JSON we do not understand: {e}",
                self.address()
            ))
        })
    }
}

/// The part of the engine's plugin object discovery needs. Every field tolerates `null` and
/// absence: the engine (and other tools creating plugins) are not strict about either.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PluginInfo {
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    /// The local name (`acme/instance-docker:1.2`): the reference it was created or installed
    /// under, or the alias given at install.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub enabled: bool,
    /// Where it was installed from (a registry reference), when it was installed.
    #[serde(default, deserialize_with = "null_default")]
    pub plugin_reference: String,
    #[serde(default, deserialize_with = "null_default")]
    pub config: PluginConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PluginConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub interface: PluginInterface,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PluginInterface {
    #[serde(default, deserialize_with = "null_default")]
    pub types: Vec<InterfaceType>,
    #[serde(default, deserialize_with = "null_default")]
    pub socket: String,
}

/// An interface type. The API returns objects (`{"Prefix": "infrakit", "Capability": "group",
/// "Version": "1.0"}`); config.json and older engines write strings (`infrakit.group/1.0`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InterfaceType {
    Text(String),
    Parts {
        #[serde(rename = "Prefix", default)]
        prefix: String,
        #[serde(rename = "Capability", default)]
        capability: String,
        #[serde(rename = "Version", default)]
        version: String,
    },
}

impl InterfaceType {
    /// `prefix.capability/version`, as written in config.json.
    pub fn text(&self) -> String {
        match self {
            InterfaceType::Text(t) => t.clone(),
            InterfaceType::Parts {
                prefix,
                capability,
                version,
            } => format!("{prefix}.{capability}/{version}"),
        }
    }
}

impl PluginInfo {
    /// True when one of its interface types is InfraKit's (`infrakit.`).
    pub fn is_infrakit(&self) -> bool {
        self.config
            .interface
            .types
            .iter()
            .any(|t| t.text().starts_with("infrakit."))
    }

    /// The name InfraKit finds it by: the repository part of its name without registry, path,
    /// tag or digest (`127.0.0.1:5000/acme/instance-docker:1.2` → `instance-docker`).
    pub fn short_name(&self) -> &str {
        short_name(&self.name)
    }
}

/// See [`PluginInfo::short_name`].
pub fn short_name(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    // A ':' in the last path component can only be a tag (a registry's port is never last).
    last.split(':').next().unwrap_or(last)
}

/// `null` as the type's default (the engine writes `null` for empty lists, maps and strings).
pub fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(short_name("acme/instance-docker:1.2"), "instance-docker");
        assert_eq!(short_name("instance-docker"), "instance-docker");
        assert_eq!(short_name("127.0.0.1:5000/infrakit/group:0.1.0"), "group");
        assert_eq!(
            short_name("reg:5000/a/b/flavor-vanilla@sha256:abc"),
            "flavor-vanilla"
        );
        assert_eq!(short_name("infrakit/group:latest"), "group");
    }

    #[test]
    fn parses_engine_plugins_with_nulls_and_both_type_forms() {
        let json = r#"[
          {"Id": "abc", "Name": "infrakit/group:0.1.0", "Enabled": true, "PluginReference": null,
           "Settings": {"Env": ["A=b"], "Mounts": null},
           "Config": {"Env": [{"Name": "X", "Value": null}],
                      "Interface": {"Types": [{"Prefix": "infrakit", "Capability": "group", "Version": "1.0"}],
                                    "Socket": "group.sock"}}},
          {"Id": "def", "Name": "vieux/sshfs:latest", "Enabled": false,
           "Config": {"Interface": {"Types": ["docker.volumedriver/1.0"], "Socket": "sshfs.sock"}}},
          {"Id": "ghi", "Name": "x", "Enabled": true, "Config": {"Interface": {"Types": null, "Socket": null}}}
        ]"#;
        let plugins: Vec<PluginInfo> = serde_json::from_str(json).unwrap();
        assert_eq!(plugins.len(), 3);
        assert!(plugins[0].is_infrakit() && plugins[0].enabled);
        assert_eq!(plugins[0].short_name(), "group");
        assert_eq!(
            plugins[0].config.interface.types[0].text(),
            "infrakit.group/1.0"
        );
        assert!(!plugins[1].is_infrakit());
        assert!(!plugins[2].is_infrakit());
    }

    /// Why this module exists: bollard's own model refuses what a 20.10 engine says about a
    /// plugin with an env declared without a value. When this fails, bollard reads such plugins
    /// and `list_plugins` can move to it.
    #[test]
    fn bollard_still_refuses_a_null_env_value() {
        let json = r#"{"Id": "abc", "Name": "infrakit/group:0.1.0", "Enabled": true,
           "Settings": {"Env": [], "Args": [], "Devices": [], "Mounts": []},
           "Config": {"Description": "", "Documentation": "", "Entrypoint": ["/infrakit"],
                      "WorkDir": "/", "Env": [{"Name": "X", "Description": "", "Settable": null, "Value": null}],
                      "Args": {"Name": "", "Description": "", "Settable": null, "Value": null},
                      "Interface": {"Types": ["infrakit.group/1.0"], "Socket": "group.sock"},
                      "Network": {"Type": "none"}, "Linux": {"Capabilities": null,
                      "AllowAllDevices": false, "Devices": null}, "PropagatedMount": "",
                      "IpcHost": false, "PidHost": false, "Mounts": []}}"#;
        assert!(serde_json::from_str::<bollard::models::Plugin>(json).is_err());
        let ours: PluginInfo = serde_json::from_str(json).unwrap();
        assert!(ours.is_infrakit());
    }
}
