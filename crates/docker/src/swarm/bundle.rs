//! InfraKit's bundle on a swarm: every plugin as a plugin service (instance and flavor plugins on
//! every node, the group controller on managers only), named after the bundle, and how far a
//! deployment or upgrade has come on each node ([`progress`], a pure function of the services,
//! nodes and tasks, so that what `infrakit swarm deploy` waits for is unit-tested).

use std::collections::BTreeMap;
use std::time::Duration;

use infrakit_sdk::{Error, Result};

use super::services::{
    PluginServiceSpec, PluginSpec, PluginTask, Privilege, BUNDLE_LABEL, PLUGIN_LABEL,
};
use crate::Engine;

/// One plugin of the bundle: its name, its manifest (the same `plugins/<name>/config.json` that
/// `make plugins` builds from), where it runs and what it is told on a swarm. The `infrakit` CLI's
/// plugin registry (src/registry.rs) makes one of these per plugin; this crate does not list them.
#[derive(Debug, Clone, Copy)]
pub struct BundlePlugin {
    pub name: &'static str,
    pub manifest: &'static str,
    pub managers_only: bool,
    /// Settings it gets on a swarm (before the user's `--env`).
    pub swarm_env: &'static [&'static str],
}

/// A bundle deployed under a name: its services are `<name>-<plugin>`, each plugin installed on
/// the nodes as `<name>/<plugin>` (found by InfraKit as `<plugin>`), from `<registry>/<plugin>:<version>`.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub name: String,
    /// Where the plugins are: a registry and path (`10.99.0.1:5000/infrakit`).
    pub registry: String,
    pub version: String,
}

impl Bundle {
    pub fn new(name: &str, registry: &str, version: &str) -> Result<Bundle> {
        let ok_name = !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-');
        if !ok_name {
            return Err(Error::invalid(format!(
                "bundle name '{name}': use 1-40 lowercase letters, digits and '-' (e.g. infrakit)"
            )));
        }
        let registry = registry.trim_end_matches('/');
        if registry.is_empty() || registry.contains("://") || registry.contains(char::is_whitespace)
        {
            return Err(Error::invalid(format!(
                "registry '{registry}': give a registry host and path without a scheme, e.g. 10.99.0.1:5000/infrakit"
            )));
        }
        if version.is_empty()
            || version.len() > 128
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(Error::invalid(format!(
                "version '{version}': a tag of letters, digits, '.', '-' and '_' (e.g. 0.1.0)"
            )));
        }
        Ok(Bundle {
            name: name.to_string(),
            registry: registry.to_string(),
            version: version.to_string(),
        })
    }

    pub fn remote(&self, plugin: &BundlePlugin) -> String {
        format!("{}/{}:{}", self.registry, plugin.name, self.version)
    }

    pub fn service_name(&self, plugin: &BundlePlugin) -> String {
        format!("{}-{}", self.name, plugin.name)
    }

    /// The name the plugin is installed under on each node. It does not change with the version,
    /// so an upgrade replaces the plugin in place (same ID, same socket) instead of installing a
    /// second one beside it.
    pub fn alias(&self, plugin: &BundlePlugin) -> String {
        format!("{}/{}", self.name, plugin.name)
    }

    /// The service that runs `plugin`, granted `privileges`, with `env` (`KEY=VALUE`).
    pub fn service(
        &self,
        plugin: &BundlePlugin,
        privileges: Vec<Privilege>,
        env: Vec<String>,
    ) -> PluginServiceSpec {
        PluginServiceSpec {
            name: self.service_name(plugin),
            labels: BTreeMap::from([
                (BUNDLE_LABEL.to_string(), self.name.clone()),
                (PLUGIN_LABEL.to_string(), plugin.name.to_string()),
            ]),
            plugin: PluginSpec {
                name: self.alias(plugin),
                remote: self.remote(plugin),
                privileges,
                disabled: false,
                env,
            },
            managers_only: plugin.managers_only,
        }
    }
}

/// A swarm node as deployment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    pub manager: bool,
    /// `Status.State == ready`.
    pub ready: bool,
    /// `Spec.Availability == active` (a drained node runs no tasks).
    pub active: bool,
}

/// How far a plugin service has come: on which of the nodes it should run it runs the wanted
/// version, and what the others are doing (or why they failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub service: String,
    /// Nodes it should run on (hostnames).
    pub want: Vec<String>,
    /// Of those, where the wanted version runs.
    pub running: Vec<String>,
    /// The others: hostname, state of its newest task, and the newest error seen there.
    pub pending: Vec<(String, String, String)>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Where `spec` stands on `nodes`, from its `tasks` (every task, current and past).
pub fn progress(spec: &PluginServiceSpec, nodes: &[NodeInfo], tasks: &[PluginTask]) -> Progress {
    let mut p = Progress {
        service: spec.name.clone(),
        want: Vec::new(),
        running: Vec::new(),
        pending: Vec::new(),
    };
    for node in nodes {
        if !node.ready || !node.active || (spec.managers_only && !node.manager) {
            continue;
        }
        p.want.push(node.hostname.clone());
        let here = tasks_on(tasks, &node.id);
        let current = current_task(&here);
        let ok = current.is_some_and(|t| t.state == "running" && t.remote == spec.plugin.remote);
        if ok {
            p.running.push(node.hostname.clone());
            continue;
        }
        let state = match current {
            Some(t) if t.remote != spec.plugin.remote => format!("{} (old version)", t.state),
            Some(t) => t.state.clone(),
            None => "no task yet".to_string(),
        };
        let error = last_error(&here).unwrap_or_default();
        p.pending.push((node.hostname.clone(), state, error));
    }
    p
}

/// The tasks on node `node`, newest first (RFC 3339 timestamps of one clock sort as text).
pub fn tasks_on<'a>(tasks: &'a [PluginTask], node: &str) -> Vec<&'a PluginTask> {
    let mut here: Vec<&PluginTask> = tasks.iter().filter(|t| t.node_id == node).collect();
    here.sort_by(|a, b| b.timestamp.cmp(&a.timestamp));
    here
}

/// Of a node's tasks (newest first), the one the swarm wants running there.
pub fn current_task<'a>(here: &[&'a PluginTask]) -> Option<&'a PluginTask> {
    here.iter().copied().find(|t| t.desired == "running")
}

/// Of a node's tasks (newest first), the newest error.
pub fn last_error(here: &[&PluginTask]) -> Option<String> {
    here.iter()
        .find(|t| !t.error.is_empty())
        .map(|t| t.error.clone())
}

/// What to do about a task's error, when we recognise it.
pub fn advice(error: &str) -> Option<&'static str> {
    let e = error.to_lowercase();
    if e.contains("experimental") {
        Some("plugin services need \"experimental\": true in /etc/docker/daemon.json on every node (restart dockerd after)")
    } else if e.contains("no such file or directory") && e.contains("error mounting") {
        Some("a host directory the plugin mounts is missing on that node: create it there (e.g. mkdir -p /var/lib/infrakit/instances /var/lib/infrakit/groups)")
    } else if e.contains("not found")
        || e.contains("manifest unknown")
        || e.contains("does not exist")
    {
        Some("the plugin is not in the registry: push it (infrakit swarm deploy --push, or make plugins push REPO=<registry>)")
    } else if e.contains("http response to https client") {
        Some("the registry speaks plain HTTP: list it in insecure-registries in /etc/docker/daemon.json on every node")
    } else if e.contains("already exists") {
        Some("a plugin of that name was created by hand on that node: remove it there (docker plugin rm -f NAME)")
    } else {
        None
    }
}

/// The swarm's nodes.
pub async fn nodes(engine: &Engine) -> Result<Vec<NodeInfo>> {
    use bollard::models::{NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState};
    let docker = engine.docker()?;
    let list = tokio::time::timeout(Duration::from_secs(10), docker.list_nodes(None))
        .await
        .map_err(|_| Error::unavailable("listing the swarm's nodes: no answer within 10 s"))?
        .map_err(|e| engine.error("listing the swarm's nodes", e))?;
    Ok(list
        .into_iter()
        .map(|n| {
            let spec = n.spec.unwrap_or_default();
            NodeInfo {
                id: n.id.unwrap_or_default(),
                hostname: n
                    .description
                    .and_then(|d| d.hostname)
                    .unwrap_or_else(|| "?".into()),
                manager: spec.role == Some(NodeSpecRoleEnum::MANAGER),
                ready: n.status.and_then(|s| s.state) == Some(NodeState::READY),
                active: spec
                    .availability
                    .unwrap_or(NodeSpecAvailabilityEnum::ACTIVE)
                    == NodeSpecAvailabilityEnum::ACTIVE,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, manager: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            hostname: format!("host-{id}"),
            manager,
            ready: true,
            active: true,
        }
    }

    fn task(
        node: &str,
        remote: &str,
        state: &str,
        desired: &str,
        ts: &str,
        err: &str,
    ) -> PluginTask {
        PluginTask {
            id: format!("t-{node}-{ts}"),
            service_id: "s".into(),
            node_id: node.into(),
            remote: remote.into(),
            state: state.into(),
            desired: desired.into(),
            error: err.into(),
            timestamp: ts.into(),
        }
    }

    /// A group controller's entry as the CLI's registry makes it.
    const GROUP: BundlePlugin = BundlePlugin {
        name: "group",
        manifest: r#"{"entrypoint": ["/infrakit", "plugin", "serve", "group"]}"#,
        managers_only: true,
        swarm_env: &["INFRAKIT_SWARM=on"],
    };

    fn group(version: &str) -> PluginServiceSpec {
        let b = Bundle::new("infrakit", "r:5000/infrakit", version).unwrap();
        b.service(&GROUP, vec![], vec![])
    }

    #[test]
    fn the_group_is_wanted_on_ready_active_managers_only() {
        let mut drained = node("m3", true);
        drained.active = false;
        let mut down = node("m4", true);
        down.ready = false;
        let nodes = [node("m1", true), node("w1", false), drained, down];
        let p = progress(&group("1"), &nodes, &[]);
        assert_eq!(p.want, ["host-m1"]);
        assert_eq!(
            p.pending,
            [("host-m1".into(), "no task yet".into(), String::new())]
        );
    }

    #[test]
    fn done_only_when_every_wanted_node_runs_the_wanted_version() {
        let nodes = [node("m1", true), node("m2", true)];
        let r1 = "r:5000/infrakit/group:1";
        let r2 = "r:5000/infrakit/group:2";
        let tasks = [
            task("m1", r1, "running", "running", "2026-01-01T00:00:01Z", ""),
            task("m2", r1, "running", "running", "2026-01-01T00:00:01Z", ""),
        ];
        assert!(progress(&group("1"), &nodes, &tasks).done());

        // Upgrading: m1 moved on, m2 still runs the old version.
        let tasks = [
            task("m1", r1, "shutdown", "shutdown", "2026-01-01T00:00:01Z", ""),
            task("m1", r2, "running", "running", "2026-01-01T00:00:05Z", ""),
            task("m2", r1, "running", "running", "2026-01-01T00:00:01Z", ""),
        ];
        let p = progress(&group("2"), &nodes, &tasks);
        assert!(!p.done());
        assert_eq!(p.running, ["host-m1"]);
        assert_eq!(p.pending[0].1, "running (old version)");
    }

    #[test]
    fn a_failing_node_says_why_and_what_to_do() {
        let nodes = [node("m1", true)];
        let r = "r:5000/infrakit/group:1";
        let err = "error mounting \"/var/lib/infrakit/groups\" to rootfs: stat /var/lib/infrakit/groups: no such file or directory";
        let tasks = [
            task("m1", r, "failed", "shutdown", "2026-01-01T00:00:01Z", err),
            task("m1", r, "preparing", "running", "2026-01-01T00:00:02Z", ""),
        ];
        let p = progress(&group("1"), &nodes, &tasks);
        assert_eq!(p.pending[0].1, "preparing");
        assert_eq!(p.pending[0].2, err);
        assert!(advice(&p.pending[0].2).unwrap().contains("mkdir"));
    }

    #[test]
    fn names_and_references() {
        let b = Bundle::new("infrakit", "10.99.0.1:5000/infrakit/", "0.2.0").unwrap();
        let g = &GROUP;
        assert_eq!(b.remote(g), "10.99.0.1:5000/infrakit/group:0.2.0");
        assert_eq!(b.alias(g), "infrakit/group");
        assert_eq!(b.service_name(g), "infrakit-group");
        assert_eq!(crate::plugins::short_name(&b.alias(g)), "group");
        assert!(Bundle::new("Bad Name", "r", "1").is_err());
        assert!(Bundle::new("ok", "http://r", "1").is_err());
        assert!(Bundle::new("ok", "r", "1 2").is_err());
    }
}
