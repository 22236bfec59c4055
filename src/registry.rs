//! The one table of InfraKit's plugins. Everything that lists plugins is derived from it or checked
//! against it by the tests below:
//!
//! - `infrakit plugin serve <name>`: the names it accepts and how each plugin is started
//!   ([`Start`]);
//! - the bundle `infrakit swarm deploy` runs ([`Entry::bundle`]);
//! - the managed-plugin manifests, `plugins/<name>/config.json` (included here; a test checks their
//!   entrypoint, interface types and socket against the entry, and that every manifest directory
//!   has an entry);
//! - the packaging script, `scripts/plugins.sh` (a test runs `scripts/plugins.sh list` and
//!   compares what it would build, and from which binary, with this table).
//!
//! Adding a plugin: a crate of its own on `infrakit-sdk` (and its backend library), its manifest
//! in `plugins/<name>/config.json`, and one [`Entry`] here. A plugin whose dependencies should not
//! sit in every other plugin's rootfs (a cloud SDK) has a binary of its own ([`Start::Binary`]);
//! the others are served by the multi-call `infrakit` binary ([`Start::InProcess`]).

use std::future::Future;
use std::pin::Pin;

use infrakit_docker::swarm::bundle::BundlePlugin;
use infrakit_sdk::rpc::server::Plugins;
use infrakit_sdk::spi::{InterfaceSpec, FLAVOR, GROUP, INSTANCE};

use crate::cli::serve::{self, ServeArgs};

/// What starting a plugin in this process returns: the plugin objects the server serves.
pub type Starting<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Plugins>> + 'a>>;

/// How a plugin's process runs.
#[derive(Clone, Copy)]
pub enum Start {
    /// `infrakit plugin serve <name>`: the function that builds the plugin from the arguments (after
    /// the socket is bound).
    InProcess(fn(&ServeArgs) -> Starting<'_>),
    /// A binary of its own (`infrakit-instance-aws`), beside `infrakit` in the build output and
    /// alone in its managed plugin's rootfs.
    Binary(&'static str),
}

/// One plugin.
#[derive(Clone, Copy)]
pub struct Entry {
    /// The name it is found by and its manifest's directory: `plugins/<name>/config.json`.
    pub name: &'static str,
    /// One line for `infrakit plugin serve --help`.
    pub about: &'static str,
    /// The interfaces it answers `Plugin.Activate` with.
    pub interfaces: &'static [InterfaceSpec],
    pub start: Start,
    /// Its managed plugin's manifest.
    pub manifest: &'static str,
    /// Whether `infrakit swarm deploy` runs it. The plugins with a binary and rootfs of their own
    /// (EC2, QEMU) are installed on their own (`make plugins`, `docker plugin install`): `swarm
    /// deploy --push` builds each plugin from the one static `infrakit` binary.
    pub in_bundle: bool,
    /// On a swarm: only on managers (the group controller), else on every node.
    pub managers_only: bool,
    /// Settings it gets on a swarm, before the user's `--env`.
    pub swarm_env: &'static [&'static str],
}

/// Every plugin, in the order they are created, enabled and deployed: the plugins others call
/// first, the group controller (which calls them) last.
pub const PLUGINS: &[Entry] = &[
    Entry {
        name: "instance-file",
        about: "Instances are JSON files in a directory (--dir).",
        interfaces: &[INSTANCE],
        start: Start::InProcess(serve::instance_file),
        manifest: include_str!("../plugins/instance-file/config.json"),
        in_bundle: true,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "instance-docker",
        about: "Instances are containers on the Docker engine at DOCKER_HOST (default /var/run/docker.sock).",
        interfaces: &[INSTANCE],
        start: Start::InProcess(serve::instance_docker),
        manifest: include_str!("../plugins/instance-docker/config.json"),
        in_bundle: true,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "flavor-vanilla",
        about: "Adds Init lines, Tags and Attachments from its properties; healthy unless the instance \
                plugin's description says otherwise (a container exited, dead, or failing its HEALTHCHECK).",
        interfaces: &[FLAVOR],
        start: Start::InProcess(serve::flavor_vanilla),
        manifest: include_str!("../plugins/flavor-vanilla/config.json"),
        in_bundle: true,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "flavor-zookeeper",
        about: "ZooKeeper ensemble members (pets: logical IDs are their IPv4 addresses).",
        interfaces: &[FLAVOR],
        start: Start::InProcess(serve::flavor_zookeeper),
        manifest: include_str!("../plugins/flavor-zookeeper/config.json"),
        in_bundle: true,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "flavor-swarm",
        about: "Docker hosts in a swarm: flavor-swarm/manager (pets: logical IDs are their IPv4 \
                addresses) and flavor-swarm/worker; asks the swarm through the engine at DOCKER_HOST.",
        interfaces: &[FLAVOR],
        start: Start::InProcess(serve::flavor_swarm),
        manifest: include_str!("../plugins/flavor-swarm/config.json"),
        in_bundle: true,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "flavor-combo",
        about: "Runs a list of child flavors in order and merges what they add.",
        interfaces: &[FLAVOR],
        start: Start::InProcess(serve::flavor_combo),
        manifest: include_str!("../plugins/flavor-combo/config.json"),
        in_bundle: true,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "instance-aws",
        about: "Instances are EC2 instances (the AWS SDK's credentials chain; AWS_REGION, AWS_ENDPOINT_URL): \
                a binary of its own, infrakit-instance-aws.",
        interfaces: &[INSTANCE],
        start: Start::Binary("infrakit-instance-aws"),
        manifest: include_str!("../plugins/instance-aws/config.json"),
        in_bundle: false,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "instance-qemu",
        about: "Instances are QEMU virtual machines (TCG, or KVM where it can run guests): a binary \
                of its own, infrakit-instance-qemu, with QEMU in its rootfs.",
        interfaces: &[INSTANCE],
        start: Start::Binary("infrakit-instance-qemu"),
        manifest: include_str!("../plugins/instance-qemu/config.json"),
        in_bundle: false,
        managers_only: false,
        swarm_env: &[],
    },
    Entry {
        name: "group",
        about: "The group controller: keeps committed groups as their specs say.",
        interfaces: &[GROUP],
        start: Start::InProcess(serve::group),
        manifest: include_str!("../plugins/group/config.json"),
        in_bundle: true,
        managers_only: true,
        // On a swarm the group controller must follow the swarm: refuse to start on one host's
        // store rather than quietly act beside the leader.
        swarm_env: &["INFRAKIT_SWARM=on"],
    },
];

impl Entry {
    /// The entry as the swarm bundle sees it.
    pub fn bundle(&self) -> BundlePlugin {
        BundlePlugin {
            name: self.name,
            manifest: self.manifest,
            managers_only: self.managers_only,
            swarm_env: self.swarm_env,
        }
    }

    /// The binary its rootfs holds (`infrakit`, or its own).
    pub fn binary(&self) -> &'static str {
        match self.start {
            Start::InProcess(_) => "infrakit",
            Start::Binary(b) => b,
        }
    }
}

/// The plugins `infrakit swarm deploy` runs, in order, as the bundle sees them.
pub fn bundle() -> impl Iterator<Item = BundlePlugin> {
    PLUGINS.iter().filter(|e| e.in_bundle).map(Entry::bundle)
}

/// The plugin called `name`, or an error listing the ones there are.
pub fn find(name: &str) -> anyhow::Result<&'static Entry> {
    PLUGINS.iter().find(|p| p.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "no plugin '{name}' (plugins: {})",
            PLUGINS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The names `infrakit plugin serve` accepts, with their help lines.
pub fn serve_values() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        PLUGINS
            .iter()
            .map(|p| clap::builder::PossibleValue::new(p.name).help(p.about)),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn manifest(entry: &Entry) -> serde_json::Value {
        serde_json::from_str(entry.manifest)
            .unwrap_or_else(|e| panic!("plugins/{}/config.json: {e}", entry.name))
    }

    #[test]
    fn every_manifest_directory_has_an_entry_and_every_entry_a_manifest() {
        let dirs: BTreeSet<String> =
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins"))
                .expect("plugins/")
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("config.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
        let entries: BTreeSet<String> = PLUGINS.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(
            dirs, entries,
            "plugins/*/config.json and registry::PLUGINS disagree"
        );
    }

    #[test]
    fn names_are_unique_and_the_group_controller_comes_last() {
        let names: BTreeSet<&str> = PLUGINS.iter().map(|p| p.name).collect();
        assert_eq!(
            names.len(),
            PLUGINS.len(),
            "a name twice in registry::PLUGINS"
        );
        assert_eq!(PLUGINS.last().map(|p| p.name), Some("group"));
        assert!(PLUGINS
            .iter()
            .all(|p| p.managers_only == (p.name == "group")));
    }

    #[test]
    fn each_manifest_runs_its_entry_with_its_interfaces_on_its_socket() {
        for entry in PLUGINS {
            let m = manifest(entry);
            let types: Vec<String> = m["interface"]["types"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no interface.types", entry.name))
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_string())
                .collect();
            let want: Vec<String> = entry
                .interfaces
                .iter()
                .map(|i| format!("{}/{}.{}", i.name, i.major, i.minor))
                .collect();
            assert_eq!(types, want, "{}: interface.types", entry.name);

            let socket = m["interface"]["socket"].as_str().unwrap_or_default();
            assert!(
                socket.ends_with(".sock") && socket.len() <= 20,
                "{}: interface.socket '{socket}' (short, .sock: the engine's path limit)",
                entry.name
            );
            let entrypoint: Vec<&str> = m["entrypoint"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no entrypoint", entry.name))
                .iter()
                .map(|a| a.as_str().unwrap_or_default())
                .collect();
            let socket_arg = format!("/run/docker/plugins/{socket}");
            let want: Vec<String> = match entry.start {
                Start::InProcess(_) => ["/infrakit", "plugin", "serve", entry.name, "--socket"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([socket_arg])
                    .collect(),
                // A binary of its own: its socket as `--socket PATH` among its arguments, or in
                // INFRAKIT_PLUGIN_SOCKET (the SDK's `run`), which its manifest sets.
                Start::Binary(b) => {
                    let env = m["env"].as_array().cloned().unwrap_or_default();
                    let in_env = env.iter().any(|e| {
                        e["name"] == "INFRAKIT_PLUGIN_SOCKET" && e["value"] == socket_arg.as_str()
                    });
                    let in_args = entrypoint
                        .windows(2)
                        .any(|w| w[0] == "--socket" && w[1] == socket_arg);
                    assert!(
                        in_env || in_args,
                        "{}: --socket {socket_arg} or env INFRAKIT_PLUGIN_SOCKET",
                        entry.name
                    );
                    let mut want = entrypoint.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                    want[0] = format!("/{b}");
                    want
                }
            };
            assert_eq!(entrypoint, want, "{}: entrypoint", entry.name);
        }
    }

    #[test]
    fn the_bundles_entry_manifest_is_the_group_controllers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let top = std::fs::read_to_string(root.join("config.json")).expect("config.json");
        assert_eq!(top, find("group").unwrap().manifest);
    }

    #[test]
    fn the_packaging_script_builds_what_the_registry_lists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/plugins.sh"))
            .arg("list")
            .current_dir(root)
            .output()
            .expect("run scripts/plugins.sh list");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        // The script enables in its own order; what matters is the same plugins from the same
        // binaries, and the group controller last.
        assert_eq!(listed.last().map(String::as_str), Some("group infrakit"));
        let listed: BTreeSet<String> = listed.into_iter().collect();
        let want: BTreeSet<String> = PLUGINS
            .iter()
            .map(|p| format!("{} {}", p.name, p.binary()))
            .collect();
        assert_eq!(listed, want, "scripts/plugins.sh list (name binary)");
    }

    #[test]
    fn an_unknown_name_lists_the_plugins_there_are() {
        let err = find("nope")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("plugins: instance-file, "), "{err}");
    }
}
