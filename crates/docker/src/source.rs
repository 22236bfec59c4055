//! Discovery through the engine: the enabled managed plugins that implement an InfraKit interface.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infrakit_sdk::discovery::{validate_name, Source};
use infrakit_sdk::{Error, ErrorKind, Result};

use crate::engine::Engine;

/// The environment variable naming where the engine's plugin runtime directories are seen from
/// here. On the host that is the engine's own `/run/docker/plugins`; inside a managed plugin the
/// engine mounts that plugin's *own* directory there, so the host's is mounted elsewhere (our
/// config.json files use `/run/infrakit/host-plugins`) and this variable says where.
pub const ENGINE_PLUGINS_DIR_ENV: &str = "INFRAKIT_ENGINE_PLUGINS_DIR";

/// The engine's plugin runtime directory on the host (its `--exec-root`/plugins).
pub const DEFAULT_ENGINE_PLUGINS_DIR: &str = "/run/docker/plugins";

/// How long one answer of the engine is reused. The group controller resolves plugins on every
/// pass; asking the engine each time would be a `GET /plugins` per plugin call. A plugin disabled
/// or re-created meanwhile costs at most this long of "cannot connect" before it is seen.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// An engine that failed to answer is not asked again for this long, so a hung dockerd costs one
/// timeout every few seconds, not one per lookup.
const FAILURE_CACHE_FOR: Duration = Duration::from_secs(5);

type Listing = Arc<Vec<(String, PathBuf)>>;

/// The engine as a discovery source (label `engine`).
pub struct EngineSource {
    engine: Option<Engine>,
    plugins_dir: PathBuf,
    cache: Mutex<Option<(Instant, std::result::Result<Listing, Error>)>>,
}

impl EngineSource {
    /// The engine from `DOCKER_HOST` (default `/var/run/docker.sock`), sockets under
    /// `$INFRAKIT_ENGINE_PLUGINS_DIR` (default `/run/docker/plugins`).
    pub fn from_env() -> EngineSource {
        let dir = std::env::var_os(ENGINE_PLUGINS_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ENGINE_PLUGINS_DIR));
        EngineSource::new(Engine::from_env(), dir)
    }

    /// `engine: None` is a source that never finds anything (e.g. `DOCKER_HOST=tcp://...`).
    pub fn new(engine: Option<Engine>, plugins_dir: impl Into<PathBuf>) -> EngineSource {
        EngineSource {
            engine,
            plugins_dir: plugins_dir.into(),
            cache: Mutex::new(None),
        }
    }

    fn describe(&self) -> String {
        match &self.engine {
            Some(e) => format!("enabled plugins of the Docker engine at {}", e.address()),
            None => "the Docker engine (none: DOCKER_HOST is not a unix:// address)".to_string(),
        }
    }

    /// `(short name, socket)` of every enabled InfraKit plugin, from the cache when fresh.
    async fn plugins(&self) -> Result<Listing> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, answer)) = cache.as_ref() {
                let fresh_for = if answer.is_ok() {
                    CACHE_FOR
                } else {
                    FAILURE_CACHE_FOR
                };
                if at.elapsed() < fresh_for {
                    return answer.clone();
                }
            }
        }
        let answer = self.fetch().await;
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((Instant::now(), answer.clone()));
        }
        answer
    }

    async fn fetch(&self) -> Result<Listing> {
        let Some(engine) = &self.engine else {
            return Ok(Arc::new(Vec::new()));
        };
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for p in engine.list_plugins().await? {
            if !p.enabled || !p.is_infrakit() || p.config.interface.socket.is_empty() {
                continue;
            }
            let name = p.short_name();
            if validate_name(name).is_err() || p.id.is_empty() || p.id.contains('/') {
                tracing::debug!(plugin = %p.name, "engine plugin with an unusable name or id");
                continue;
            }
            let socket = self
                .plugins_dir
                .join(&p.id)
                .join(&p.config.interface.socket);
            // Two enabled plugins with the same short name (acme/group and other/group) are
            // ambiguous; the engine's order decides and we say so.
            if let Some((_, first)) = out.iter().find(|(n, _)| n == name) {
                tracing::warn!(
                    plugin = %p.name,
                    "another enabled engine plugin is also called '{name}' ({}); using that one",
                    first.display()
                );
                continue;
            }
            out.push((name.to_string(), socket));
        }
        out.sort();
        Ok(Arc::new(out))
    }
}

#[async_trait]
impl Source for EngineSource {
    fn label(&self) -> &str {
        "engine"
    }

    fn looked_at(&self, name: &str) -> String {
        format!(
            "{} named '{name}' (sockets under {})",
            self.describe(),
            self.plugins_dir.display()
        )
    }

    async fn find(&self, name: &str) -> Result<Option<PathBuf>> {
        let plugins = self.plugins().await?;
        Ok(plugins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone()))
    }

    /// No engine answering is not an error for a listing: most machines running plugins by hand
    /// have none, and `infrakit plugin ls` must not warn about it every time.
    async fn list(&self) -> Result<Vec<(String, PathBuf)>> {
        match self.plugins().await {
            Ok(p) => Ok(p.as_ref().clone()),
            Err(e) if e.kind == ErrorKind::Unavailable => {
                tracing::debug!("engine discovery skipped: {}", e.message);
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_engine_is_quiet_in_listings_and_named_in_lookups() {
        let tmp = tempfile::tempdir().unwrap();
        let src = EngineSource::new(
            Some(Engine::new(tmp.path().join("docker.sock"))),
            "/run/docker/plugins",
        );
        assert!(src.list().await.unwrap().is_empty());
        let e = src.find("group").await.unwrap_err();
        assert!(e.message.contains("no Docker engine"), "{e}");
        assert!(src.looked_at("group").contains("docker.sock"));
        let none = EngineSource::new(None, "/x");
        assert_eq!(none.find("group").await.unwrap(), None);
    }

    /// A fake engine answering `GET /plugins` with a fixed body.
    #[tokio::test]
    async fn finds_enabled_infrakit_plugins_by_short_name() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let body = r#"[
          {"Id": "id1", "Name": "acme/instance-file:1.2", "Enabled": true,
           "Config": {"Env": [{"Name": "X", "Value": null}],
                      "Interface": {"Types": [{"Prefix": "infrakit", "Capability": "instance", "Version": "1.0"}], "Socket": "ifile.sock"}}},
          {"Id": "id2", "Name": "acme/group:1.2", "Enabled": false,
           "Config": {"Interface": {"Types": ["infrakit.group/1.0"], "Socket": "group.sock"}}},
          {"Id": "id3", "Name": "vieux/sshfs:latest", "Enabled": true,
           "Config": {"Interface": {"Types": ["docker.volumedriver/1.0"], "Socket": "sshfs.sock"}}}
        ]"#;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let src = EngineSource::new(Some(Engine::new(&sock)), "/host-plugins");
        assert_eq!(
            src.find("instance-file").await.unwrap(),
            Some(PathBuf::from("/host-plugins/id1/ifile.sock"))
        );
        assert_eq!(src.find("group").await.unwrap(), None, "disabled");
        assert_eq!(src.find("sshfs").await.unwrap(), None, "not InfraKit's");
        let names: Vec<String> = src.list().await.unwrap().into_iter().map(|p| p.0).collect();
        assert_eq!(names, vec!["instance-file"]);
    }
}
