//! Creating a managed plugin without the docker CLI: the context (`config.json` + `rootfs/`) as a
//! tar built in memory, `POST /plugins/create?name=...` on the engine (through bollard).

use std::path::Path;

use bytes::Bytes;
use infrakit_sdk::{Error, Result};

use bollard::body_full;
use bollard::query_parameters::CreatePluginOptions;

use crate::engine::Engine;

/// The plugin context `dir` (which must hold `config.json` and `rootfs/`) as an uncompressed tar,
/// in memory (a plugin's rootfs here is one ~5 MB binary).
pub fn context_tar(dir: &Path) -> Result<Vec<u8>> {
    for (what, is_ok) in [
        ("config.json", dir.join("config.json").is_file()),
        ("rootfs/", dir.join("rootfs").is_dir()),
    ] {
        if !is_ok {
            return Err(Error::invalid(format!(
                "{} has no {what}: a plugin context holds config.json and rootfs/ (make plugins assembles them in target/plugins/<name>)",
                dir.display()
            )));
        }
    }
    let mut builder = tar::Builder::new(Vec::new());
    // Symlinks are kept as links: a rootfs may contain them and they must not be followed out.
    builder.follow_symlinks(false);
    // The engine's tar reader refuses GNU sparse entries ("unhandled tar header type 83"), which
    // the tar crate writes for files with holes (a linked binary can have some).
    builder.sparse(false);
    // No owners or times: the same context always makes the same layer.
    builder.mode(tar::HeaderMode::Deterministic);
    let io = |e: std::io::Error| Error::internal(format!("cannot pack {}: {e}", dir.display()));
    builder
        .append_path_with_name(dir.join("config.json"), "config.json")
        .map_err(io)?;
    builder
        .append_dir_all("rootfs", dir.join("rootfs"))
        .map_err(io)?;
    builder.into_inner().map_err(io)
}

impl Engine {
    /// `POST /plugins/create?name=NAME` with the context tar (bollard's `create_plugin`): creates
    /// a disabled plugin.
    pub async fn create_plugin(&self, name: &str, context: Vec<u8>) -> Result<()> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | ':' | '.' | '-' | '_'))
        {
            return Err(Error::invalid(format!(
                "invalid plugin reference '{name}': use e.g. infrakit/group:0.1.0"
            )));
        }
        let options = CreatePluginOptions {
            name: name.to_string(),
        };
        self.docker()?
            .create_plugin(options, body_full(Bytes::from(context)))
            .await
            .map_err(|e| self.error(&format!("creating plugin '{name}'"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_config_and_rootfs_and_refuses_an_incomplete_context() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(context_tar(tmp.path())
            .unwrap_err()
            .message
            .contains("config.json"));
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(tmp.path().join("rootfs/run/docker/plugins")).unwrap();
        std::fs::write(tmp.path().join("rootfs/infrakit"), b"binary").unwrap();
        let tar = context_tar(tmp.path()).unwrap();
        let mut names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(names.contains(&"config.json".to_string()), "{names:?}");
        assert!(names.contains(&"rootfs/infrakit".to_string()), "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("rootfs/run/docker/plugins")),
            "{names:?}"
        );
    }
}
