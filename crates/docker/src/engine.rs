//! A very small Docker Engine API client: HTTP/1.1 on the engine's unix socket.
//!
//! Why not bollard (DESIGN.md names it): bollard 0.21 has no public way to send a raw request, its
//! `list_plugins` fails on a plugin whose env has a `null` value (which the engine returns for an
//! env declared without one), and all we need is `GET /plugins` (plus `POST /plugins/create` later).
//! One hyper connection per call, already in the workspace, costs nothing in build time or binary
//! size; bollard would add ~60 crates to a static binary that must stay small.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Deserializer};
use tokio::net::UnixStream;

/// Where the engine listens when `DOCKER_HOST` says nothing else.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Replies larger than this are refused (a `GET /plugins` with dozens of plugins is a few 10 kB).
const MAX_REPLY_BYTES: usize = 16 << 20;

/// The engine's API on a unix socket.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Engine {
    /// `DOCKER_HOST` when it is a `unix://` address, else `/var/run/docker.sock`. A non-unix
    /// `DOCKER_HOST` (tcp://, ssh://) yields `None`: plugin sockets of a remote engine are not
    /// reachable from here anyway.
    pub fn from_env() -> Option<Engine> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(Engine::new),
            _ => Some(Engine::new(DEFAULT_SOCKET)),
        }
    }

    /// Timeouts are short on purpose: discovery asks the engine on behalf of a person waiting at
    /// a prompt, and a machine without an engine must not feel slower for it.
    pub fn new(socket: impl Into<PathBuf>) -> Engine {
        Engine {
            socket: socket.into(),
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }

    pub fn with_timeouts(mut self, connect: Duration, total: Duration) -> Engine {
        self.connect_timeout = connect;
        self.timeout = total;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:///var/run/docker.sock`, for messages.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Sends one request; returns the status and the whole body. Failing to reach the engine is
    /// `Unavailable`.
    pub async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        let what = format!("{method} {path}");
        match tokio::time::timeout(
            self.timeout,
            self.request_inner(method, path, content_type, body),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!(
                "the Docker engine at {} did not answer {what} within {:?}",
                self.address(),
                self.timeout
            ))),
        }
    }

    async fn request_inner(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, UnixStream::connect(&self.socket))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let why = match e.kind() {
                        std::io::ErrorKind::NotFound => "no such socket".to_string(),
                        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                        _ => e.to_string(),
                    };
                    return Err(Error::unavailable(format!(
                        "no Docker engine at {} ({why})",
                        self.address()
                    )));
                }
                Err(_) => {
                    return Err(Error::unavailable(format!(
                        "no Docker engine at {} (no connection within {:?})",
                        self.address(),
                        self.connect_timeout
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
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "docker");
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::internal(format!("cannot build {method} {path}: {e}")))?;
        let resp = sender.send_request(req).await.map_err(|e| {
            Error::unavailable(format!("{method} {path} on {}: {e}", self.address()))
        })?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "reading the reply to {method} {path} from {}: {e}",
                    self.address()
                ))
            })?
            .to_bytes();
        // One request per connection: dropping the sender ends the connection task.
        drop(sender);
        conn.abort();
        Ok((status, body))
    }

    /// `GET /plugins`: every installed plugin, enabled or not.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>> {
        let (status, body) = self
            .request(hyper::Method::GET, "/plugins", None, Bytes::new())
            .await?;
        if status != 200 {
            return Err(Error::unavailable(format!(
                "GET /plugins on {} answered {status}: {}",
                self.address(),
                engine_message(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::internal(format!(
                "GET /plugins on {} returned JSON we do not understand: {e}",
                self.address()
            ))
        })
    }
}

/// The engine's `{"message": "..."}` error body, or the body itself.
pub fn engine_message(body: &[u8]) -> String {
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

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
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
}
