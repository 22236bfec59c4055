//! A plugin name to a socket.
//!
//! Sources are asked in order and the first that knows the name wins:
//! 1. the plugins directory (`INFRAKIT_PLUGINS_DIR`, default `~/.infrakit/plugins`): `<name>.sock`,
//!    for plugins run by hand with `infrakit plugin serve`, then `<name>` (no extension), where
//!    InfraKit v0.5's plugins listen (the client then speaks v0.5's protocol to them);
//! 2. (the Docker engine's managed plugins, added by whoever builds the [`Discovery`] with
//!    [`Discovery::insert`]; the SDK itself does not talk to the engine);
//! 3. the legacy engine locations: `/run/docker/plugins/<name>.sock`, then
//!    `/etc/docker/plugins/<name>.spec` and `/usr/lib/docker/plugins/<name>.spec` (a `unix://` URL).

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::rpc::client::{split_name, Endpoint};
use crate::{Error, Result};

/// The environment variable naming the plugins directory.
pub const PLUGINS_DIR_ENV: &str = "INFRAKIT_PLUGINS_DIR";

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub socket: PathBuf,
    /// The source's label: `dir`, `engine`, `legacy`.
    pub source: String,
}

/// One place plugins can be found.
#[async_trait]
pub trait Source: Send + Sync {
    /// A short label shown by `infrakit plugin ls`.
    fn label(&self) -> &str;
    /// Where this source looks for `name`, for the error when nobody has it.
    fn looked_at(&self, name: &str) -> String;
    async fn find(&self, name: &str) -> Result<Option<PathBuf>>;
    async fn list(&self) -> Result<Vec<(String, PathBuf)>>;
}

/// The default plugins directory: `$INFRAKIT_PLUGINS_DIR`, else `~/.infrakit/plugins`, else (no
/// home, as inside a managed plugin) `/run/infrakit/plugins`.
pub fn default_plugins_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(PLUGINS_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".infrakit").join("plugins"),
        None => PathBuf::from("/run/infrakit/plugins"),
    }
}

/// Where a plugin run by hand listens by default, and so where discovery's first source looks for
/// it: `<plugins dir>/<name>.sock`.
pub fn default_socket(name: &str) -> PathBuf {
    PluginsDir::new(default_plugins_dir()).socket_for(name)
}

pub use infrakit_spi::is_safe_file_name;

/// Plugin names become file names: keep them to a safe alphabet.
pub fn validate_name(name: &str) -> Result<()> {
    if is_safe_file_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid plugin name '{name}': use letters, digits, '-', '_' and '.' (and '/TYPE' for a sub-type)"
        )))
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// `<dir>/<name>.sock`, or InfraKit v0.5's `<dir>/<name>`.
pub struct PluginsDir {
    dir: PathBuf,
}

impl PluginsDir {
    pub fn new(dir: impl Into<PathBuf>) -> PluginsDir {
        PluginsDir { dir: dir.into() }
    }
    pub fn socket_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }
    /// Where an InfraKit v0.5 plugin named `name` listens: the name alone.
    pub fn v05_socket_for(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[async_trait]
impl Source for PluginsDir {
    fn label(&self) -> &str {
        "dir"
    }
    fn looked_at(&self, name: &str) -> String {
        format!(
            "{}, {}",
            self.socket_for(name).display(),
            self.v05_socket_for(name).display()
        )
    }
    async fn find(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok([self.socket_for(name), self.v05_socket_for(name)]
            .into_iter()
            .find(|p| is_socket(p)))
    }
    async fn list(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut found = list_sockets(&self.dir)?;
        found.extend(list_bare_sockets(&self.dir)?);
        // One name in both forms: `<name>.sock` first, as `find` picks it.
        found.sort_by(|a, b| {
            (&a.0, a.1.extension().is_none()).cmp(&(&b.0, b.1.extension().is_none()))
        });
        Ok(found)
    }
}

/// InfraKit v0.5's sockets: `<dir>/<name>` with no extension (its `<name>.pid` files are not
/// sockets and are passed over).
fn list_bare_sockets(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.contains('.') && is_socket(&path) && validate_name(name).is_ok() {
            out.push((name.to_string(), path.clone()));
        }
    }
    Ok(out)
}

fn list_sockets(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read {}: {e}",
                dir.display()
            )))
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
        else {
            continue;
        };
        if is_socket(&path) && validate_name(name).is_ok() {
            out.push((name.to_string(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// Docker's legacy plugin locations: sockets in `/run/docker/plugins`, spec files in
/// `/etc/docker/plugins` and `/usr/lib/docker/plugins`.
pub struct Legacy {
    socket_dirs: Vec<PathBuf>,
    spec_dirs: Vec<PathBuf>,
}

impl Default for Legacy {
    fn default() -> Legacy {
        Legacy {
            socket_dirs: vec![PathBuf::from("/run/docker/plugins")],
            spec_dirs: vec![
                PathBuf::from("/etc/docker/plugins"),
                PathBuf::from("/usr/lib/docker/plugins"),
            ],
        }
    }
}

impl Legacy {
    pub fn new(socket_dirs: Vec<PathBuf>, spec_dirs: Vec<PathBuf>) -> Legacy {
        Legacy {
            socket_dirs,
            spec_dirs,
        }
    }

    fn read_spec(path: &Path) -> Result<Option<PathBuf>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        // A .json spec is {"Name": ..., "Addr": "unix:///..."}; a .spec file is the address alone.
        let addr = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("Addr").and_then(|a| a.as_str()).map(str::to_string))
                .unwrap_or_default()
        } else {
            text.trim().to_string()
        };
        match addr.strip_prefix("unix://") {
            Some(p) => Ok(Some(PathBuf::from(p))),
            None => Err(Error::invalid(format!(
                "{} names '{addr}': only unix:// addresses are supported",
                path.display()
            ))),
        }
    }
}

#[async_trait]
impl Source for Legacy {
    fn label(&self) -> &str {
        "legacy"
    }
    fn looked_at(&self, name: &str) -> String {
        let mut v: Vec<String> = self
            .socket_dirs
            .iter()
            .map(|d| d.join(format!("{name}.sock")).display().to_string())
            .collect();
        v.extend(
            self.spec_dirs
                .iter()
                .map(|d| d.join(format!("{name}.spec")).display().to_string()),
        );
        v.join(", ")
    }
    async fn find(&self, name: &str) -> Result<Option<PathBuf>> {
        for d in &self.socket_dirs {
            let p = d.join(format!("{name}.sock"));
            if is_socket(&p) {
                return Ok(Some(p));
            }
        }
        for d in &self.spec_dirs {
            for ext in ["spec", "json"] {
                if let Some(p) = Legacy::read_spec(&d.join(format!("{name}.{ext}")))? {
                    return Ok(Some(p));
                }
            }
        }
        Ok(None)
    }
    async fn list(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for d in &self.socket_dirs {
            out.extend(list_sockets(d)?);
        }
        for d in &self.spec_dirs {
            let Ok(entries) = std::fs::read_dir(d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let (Some(stem), Some(ext)) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) else {
                    continue;
                };
                if matches!(ext, "spec" | "json") {
                    if let Ok(Some(sock)) = Legacy::read_spec(&path) {
                        out.push((stem.to_string(), sock));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The ordered list of sources.
#[derive(Clone)]
pub struct Discovery {
    sources: Vec<Arc<dyn Source>>,
}

impl Discovery {
    /// The plugins directory (from the environment), then the legacy locations.
    pub fn from_env() -> Discovery {
        Discovery::with_plugins_dir(default_plugins_dir())
    }

    pub fn with_plugins_dir(dir: impl Into<PathBuf>) -> Discovery {
        Discovery {
            sources: vec![Arc::new(PluginsDir::new(dir)), Arc::new(Legacy::default())],
        }
    }

    pub fn new(sources: Vec<Arc<dyn Source>>) -> Discovery {
        Discovery { sources }
    }

    /// Adds a source at `index` (the engine goes at 1: after the plugins directory, before legacy).
    pub fn insert(&mut self, index: usize, source: Arc<dyn Source>) {
        let index = index.min(self.sources.len());
        self.sources.insert(index, source);
    }

    /// Finds `name` (optionally `name/subtype`).
    pub async fn find(&self, name: &str) -> Result<Endpoint> {
        Ok(self.locate(name).await?.0)
    }

    /// Finds `name` and says which source had it.
    pub async fn locate(&self, name: &str) -> Result<(Endpoint, String)> {
        let (base, _) = split_name(name);
        validate_name(base)?;
        let mut looked = Vec::new();
        for s in &self.sources {
            match s.find(base).await {
                Ok(Some(socket)) => {
                    return Ok((Endpoint::new(name, socket), s.label().to_string()))
                }
                Ok(None) => looked.push(s.looked_at(base)),
                Err(e) => looked.push(format!("{} ({})", s.looked_at(base), e.message)),
            }
        }
        Err(Error::not_found(format!(
            "plugin '{base}' not found; looked in: {}. Start it (infrakit plugin serve ...) or enable it \
             (docker plugin enable ...)",
            looked.join("; ")
        )))
    }

    /// Every plugin every source knows, hidden ones too: sorted by name, and for one name in the
    /// order the sources are asked, so the first of each name is the one [`Discovery::find`] picks
    /// (`infrakit plugin ls` marks it).
    pub async fn list_all(&self) -> Result<Vec<Found>> {
        let mut all: Vec<(usize, Found)> = Vec::new();
        for (rank, s) in self.sources.iter().enumerate() {
            let found = match s.list().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("plugin source {}: {}", s.label(), e.message);
                    continue;
                }
            };
            all.extend(found.into_iter().map(|(name, socket)| {
                let source = s.label().to_string();
                (
                    rank,
                    Found {
                        name,
                        socket,
                        source,
                    },
                )
            }));
        }
        // Stable: within one source, the source's own order stays.
        all.sort_by(|(ra, a), (rb, b)| a.name.cmp(&b.name).then(ra.cmp(rb)));
        Ok(all.into_iter().map(|(_, f)| f).collect())
    }

    /// Every plugin every source knows; a name found in an earlier source hides later ones.
    pub async fn list(&self) -> Result<Vec<Found>> {
        let mut seen: BTreeMap<String, Found> = BTreeMap::new();
        for s in &self.sources {
            let found = match s.list().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("plugin source {}: {}", s.label(), e.message);
                    continue;
                }
            };
            for (name, socket) in found {
                seen.entry(name.clone()).or_insert(Found {
                    name,
                    socket,
                    source: s.label().to_string(),
                });
            }
        }
        Ok(seen.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v05_sockets_without_extension_are_found_after_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let _a = std::os::unix::net::UnixListener::bind(dir.join("instance-file")).unwrap();
        let _b = std::os::unix::net::UnixListener::bind(dir.join("both")).unwrap();
        let _c = std::os::unix::net::UnixListener::bind(dir.join("both.sock")).unwrap();
        // v0.5 writes a pid file beside its socket: not a plugin.
        std::fs::write(dir.join("instance-file.pid"), "123").unwrap();
        std::fs::write(dir.join("notasocket"), "x").unwrap();
        let d = Discovery::new(vec![Arc::new(PluginsDir::new(dir))]);
        assert_eq!(
            d.find("instance-file").await.unwrap().socket,
            dir.join("instance-file")
        );
        assert_eq!(d.find("both").await.unwrap().socket, dir.join("both.sock"));
        let e = d.find("notasocket").await.unwrap_err();
        assert!(e.message.contains("notasocket.sock"), "{e}");
        let all: Vec<(String, PathBuf)> = d
            .list_all()
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.socket))
            .collect();
        assert_eq!(
            all,
            vec![
                ("both".to_string(), dir.join("both.sock")),
                ("both".to_string(), dir.join("both")),
                ("instance-file".to_string(), dir.join("instance-file")),
            ]
        );
    }

    #[tokio::test]
    async fn list_all_shows_hidden_plugins_after_the_one_find_picks() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        let _a = std::os::unix::net::UnixListener::bind(second.join("group.sock")).unwrap();
        let _b = std::os::unix::net::UnixListener::bind(first.join("group.sock")).unwrap();
        let _c = std::os::unix::net::UnixListener::bind(second.join("alpha.sock")).unwrap();
        let d = Discovery::new(vec![
            Arc::new(PluginsDir::new(&first)),
            Arc::new(PluginsDir::new(&second)),
        ]);
        let all: Vec<(String, PathBuf)> = d
            .list_all()
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.socket))
            .collect();
        assert_eq!(
            all,
            vec![
                ("alpha".to_string(), second.join("alpha.sock")),
                ("group".to_string(), first.join("group.sock")),
                ("group".to_string(), second.join("group.sock")),
            ]
        );
        assert_eq!(
            d.find("group").await.unwrap().socket,
            first.join("group.sock")
        );
        assert_eq!(d.list().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn dir_then_legacy_spec_and_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        let specs = tmp.path().join("specs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&specs).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.join("a.sock")).unwrap();
        std::fs::write(specs.join("b.spec"), "unix:///run/b.sock\n").unwrap();
        std::fs::write(specs.join("c.spec"), "tcp://127.0.0.1:80").unwrap();
        let d = Discovery::new(vec![
            Arc::new(PluginsDir::new(&dir)),
            Arc::new(Legacy::new(
                vec![tmp.path().join("none")],
                vec![specs.clone()],
            )),
        ]);
        let (a, src) = d.locate("a/manager").await.unwrap();
        assert_eq!(
            (a.name.as_str(), a.sub_type.as_str(), src.as_str()),
            ("a", "manager", "dir")
        );
        assert_eq!(
            d.find("b").await.unwrap().socket,
            PathBuf::from("/run/b.sock")
        );
        let e = d.find("c").await.unwrap_err();
        assert!(e.message.contains("only unix://"), "{e}");
        let e = d.find("zz").await.unwrap_err();
        assert!(
            e.message.contains("zz.sock") && e.message.contains("zz.spec"),
            "{e}"
        );
        assert!(d.find("../etc").await.is_err());
        let names: Vec<String> = d
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }
}
