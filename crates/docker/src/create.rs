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

/// A plugin context built from a manifest and the one static binary, as `make plugins` assembles
/// it (scripts/plugins.sh): `config.json`, and a rootfs holding `/infrakit`, `/VERSION` (the
/// plugin's reference: it also keeps two plugins' layers apart, which the engine's content store
/// needs) and an empty directory for each mount destination and what runc expects.
pub fn context_from(manifest: &str, binary: &Path, reference: &str) -> Result<Vec<u8>> {
    let config: serde_json::Value = serde_json::from_str(manifest)
        .map_err(|e| Error::invalid(format!("the manifest of {reference} is not JSON: {e}")))?;
    let bin = std::fs::read(binary)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", binary.display())))?;
    let mut dirs: Vec<String> = ["run/docker/plugins", "tmp", "etc", "proc", "sys", "dev"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    for mount in config["mounts"].as_array().into_iter().flatten() {
        if let Some(dest) = mount["destination"].as_str() {
            let dest = dest.trim_start_matches('/');
            let dir = if dest.ends_with(".sock") {
                Path::new(dest)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            } else {
                dest.to_string()
            };
            if !dir.is_empty() && !dir.split('/').any(|c| c == "..") {
                dirs.push(dir);
            }
        }
    }
    let io = |e: std::io::Error| Error::internal(format!("cannot pack {reference}: {e}"));
    let mut builder = tar::Builder::new(Vec::new());
    let file = |builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        builder.append_data(&mut h, path, data)
    };
    file(&mut builder, "config.json", 0o644, manifest.as_bytes()).map_err(io)?;
    let mut made = std::collections::BTreeSet::new();
    for dir in &dirs {
        let mut path = String::from("rootfs");
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if made.insert(path.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o755);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_cksum();
                builder
                    .append_data(&mut h, format!("{path}/"), std::io::empty())
                    .map_err(io)?;
            }
        }
    }
    file(&mut builder, "rootfs/infrakit", 0o755, &bin).map_err(io)?;
    file(
        &mut builder,
        "rootfs/VERSION",
        0o644,
        format!("{reference}\n").as_bytes(),
    )
    .map_err(io)?;
    builder.into_inner().map_err(io)
}

/// Whether the ELF file `binary` is statically linked (no program interpreter): only such a
/// binary runs in a plugin's rootfs, which holds nothing else.
pub fn is_static_elf(binary: &Path) -> Result<bool> {
    let data = std::fs::read(binary)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", binary.display())))?;
    let not_elf = || Error::invalid(format!("{} is not a 64-bit ELF binary", binary.display()));
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(not_elf());
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(not_elf());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        let Some(kind) = data.get(at..at + 4) else {
            return Err(not_elf());
        };
        if u32::from_le_bytes([kind[0], kind[1], kind[2], kind[3]]) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
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
    fn a_context_from_a_manifest_holds_the_binary_and_every_mount_point() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("infrakit");
        std::fs::write(&bin, b"binary").unwrap();
        let manifest = r#"{"entrypoint": ["/infrakit"], "mounts": [
            {"destination": "/var/run/docker.sock"}, {"destination": "/store"},
            {"destination": "/../escape"}]}"#;
        let tar = context_from(manifest, &bin, "r/group:1").unwrap();
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for want in [
            "config.json",
            "rootfs/infrakit",
            "rootfs/VERSION",
            "rootfs/store",
            "rootfs/var/run",
            "rootfs/run/docker/plugins",
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("escape")), "{names:?}");
        assert!(context_from("not json", &bin, "r/x:1").is_err());
    }

    #[test]
    fn tells_a_static_binary_from_a_dynamic_one() {
        // The test binary itself is dynamically linked (a normal cargo build).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me).unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(is_static_elf(&f).is_err());
    }

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
