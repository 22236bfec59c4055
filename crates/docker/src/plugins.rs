//! The engine's plugin list (`GET /plugins`): our own request and types, the one part of the
//! engine's API we do not reach through bollard.
//!
//! bollard 0.21's `Plugin` model has plain strings where a 20.10 engine sends `null`
//! (`Config.Env[].Value` for an env declared without a value, `Config.Args.Value`, mount
//! sources), so `list_plugins` and `inspect_plugin` fail on our own plugins, and bollard has no
//! public way to send a request and read the answer ourselves. So this is one HTTP/1.1 request on
//! the unix socket with hyper (which bollard brings anyway) and serde types that take `null` and
//! absence everywhere ([`null_default`]). Discovery is its only user.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Deserializer};
use tokio::net::UnixStream;

use crate::engine::{io_reason, Engine, API_VERSION};

/// Replies larger than this are refused (a `GET /plugins` with dozens of plugins is a few 10 kB).
const MAX_REPLY_BYTES: usize = 16 << 20;

impl Engine {
    /// `GET /plugins`: every installed plugin, enabled or not.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>> {
        let path = format!(
            "/v{}.{}/plugins",
            API_VERSION.major_version, API_VERSION.minor_version
        );
        let (status, body) = match tokio::time::timeout(self.timeout(), self.get(&path)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "the Docker engine at {} did not answer GET {path} within {:?}",
                    self.address(),
                    self.timeout()
                )))
            }
        };
        if status != 200 {
            return Err(Error::unavailable(format!(
                "GET {path} on {} answered {status}: {}",
                self.address(),
                engine_message(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::internal(format!(
                "GET {path} on {} returned JSON we do not understand: {e}",
                self.address()
            ))
        })
    }

    /// One `GET` on its own connection; the status and the whole body. Failing to reach the
    /// engine is `Unavailable`.
    async fn get(&self, path: &str) -> Result<(u16, Bytes)> {
        let unreachable = |why: String| {
            Error::unavailable(format!("no Docker engine at {} ({why})", self.address()))
        };
        let stream =
            match tokio::time::timeout(self.connect_timeout(), UnixStream::connect(self.socket()))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(unreachable(io_reason(&e))),
                Err(_) => {
                    return Err(unreachable(format!(
                        "no connection within {:?}",
                        self.connect_timeout()
                    )))
                }
            };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::unavailable(format!("{}: {e}", self.address())))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("engine connection ended: {e}");
            }
        });
        let req = Request::get(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::internal(format!("cannot build GET {path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Error::unavailable(format!("GET {path} on {}: {e}", self.address())))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "reading the reply to GET {path} from {}: {e}",
                    self.address()
                ))
            })?
            .to_bytes();
        // One request per connection: dropping the sender ends the connection task.
        drop(sender);
        conn.abort();
        Ok((status, body))
    }
}

/// The engine's `{"message": "..."}` error body, or the body itself.
fn engine_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Msg {
        message: String,
    }
    match serde_json::from_slice::<Msg>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
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
