//! `infrakit bootstrap FILE`: one seed node grows into a whole swarm that then manages itself.
//!
//! On a machine with only the infrastructure engine (the one that makes the nodes: the host's,
//! through the in-process `instance-docker`): make the seed (the manager group's first logical
//! ID), whose boot script starts the swarm; deploy the bundle onto that swarm as plugin services;
//! commit the groups to the swarm's store; and wait while the seed's controller makes the rest.
//! The seed is already a member of the manager group as the controller sees it (same tags, config
//! hash and logical ID), so it is adopted, not made again. Each step is skipped when already done,
//! so a bootstrap that stopped half way is finished by running it again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use infrakit_controller::record::GroupRecord;
use infrakit_controller::store::GroupStore;
use infrakit_docker::swarm::bundle::Bundle;
use infrakit_docker::swarm::nodes::{self, NodeHealth};
use infrakit_docker::Engine;
use infrakit_flavor_swarm::{Role, SwarmFlavor};
use infrakit_group::core::Allocation;
use infrakit_group::spec::{self, Origin, ValidGroup};
use infrakit_instance_docker::DockerInstancePlugin;
use infrakit_manager::swarm_store::SwarmStore;
use infrakit_sdk::spi::flavor::{FlavorPlugin, Index};
use infrakit_sdk::spi::group::GroupSpec;
use infrakit_sdk::spi::instance::{InstancePlugin, Spec, Tags};
use infrakit_sdk::spi::tags;
use serde::Deserialize;

mod down;

use super::input::read_json;
use super::swarm::{deploy, parse_env, RolloutFlags};
use crate::output::outln;

#[derive(Args, Debug)]
#[command(
    disable_version_flag = true,
    after_help = "FILE is InfraKit's multi-group format: a JSON list of {\"Plugin\": \"group\", \
\"Properties\": <group spec>}, with exactly one group whose flavor is flavor-swarm/manager (its \
first logical ID is the seed) and any others (workers: flavor-swarm/worker). The manager group's \
instances are made with instance-docker, here on the engine at $DOCKER_HOST (default \
/var/run/docker.sock), and on the swarm through the socket --infrastructure names.\n\n\
Example (examples/swarm/bootstrap.json; see docs/swarm.md, \"Bootstrap a swarm\"):\n  \
infrakit bootstrap examples/swarm/bootstrap.json --registry 10.98.0.1:5000/infrakit --push --pretend\n  \
infrakit bootstrap examples/swarm/bootstrap.json --registry 10.98.0.1:5000/infrakit --push\n\n\
--down removes what it made: the bundle (through a manager that answers, which stops the group \
controllers) and every container instance-docker made for the file's groups on $DOCKER_HOST's \
engine; other containers, images, networks and the registry are left alone:\n  \
infrakit bootstrap --down examples/swarm/bootstrap.json"
)]
pub struct BootstrapArgs {
    /// The groups to create (the multi-group file).
    pub file: String,
    /// Where the nodes pull the plugins from (and where --push puts them): registry host and
    /// path, e.g. 10.98.0.1:5000/infrakit.
    #[arg(long, value_name = "REGISTRY", required_unless_present = "down")]
    pub registry: Option<String>,
    /// Remove what bootstrap made for FILE instead: the bundle, then every node of its groups
    /// (with --pretend: say what would go).
    #[arg(long)]
    pub down: bool,
    /// The plugins' tag.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
    /// The bundle's name (services NAME-<plugin>, plugins NAME/<plugin>).
    #[arg(long, default_value = "infrakit")]
    pub bundle: String,
    /// The seed's engine as this machine reaches it; {ip} is the seed's logical ID. The node
    /// image listens there when its INFRAKIT_NODE_SOCKET_DIR is bound to the host (see the
    /// example).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/infrakit/swarm-nodes/{ip}/docker.sock"
    )]
    pub seed_engine: String,
    /// The engine the swarm's instance-docker makes nodes on, as seen inside the plugin on a
    /// manager (the example binds the host's socket into each manager at
    /// /run/docker/infrastructure.sock, which the plugin sees under /run/docker-host).
    #[arg(
        long,
        value_name = "DOCKER_HOST",
        default_value = "unix:///run/docker-host/infrastructure.sock"
    )]
    pub infrastructure: String,
    /// A plugin setting on the swarm: PLUGIN:NAME=VALUE (repeatable), as `swarm deploy --env`.
    #[arg(long = "env", value_name = "PLUGIN:NAME=VALUE")]
    pub env: Vec<String>,
    /// Print what would be done, and do nothing.
    #[arg(long)]
    pub pretend: bool,
    /// How long to wait for every node to be Ready (and for the seed's swarm to start).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub ready_timeout: Duration,
    #[command(flatten)]
    pub rollout: RolloutFlags,
}

/// One entry of the multi-group file.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Plugin")]
    plugin: String,
    #[serde(rename = "Properties")]
    properties: GroupSpec,
}

/// A group of the file, checked.
struct Planned {
    spec: GroupSpec,
    valid: ValidGroup,
    role: Option<Role>,
}

impl Planned {
    fn count(&self) -> u64 {
        match &self.valid.allocation {
            Allocation::Size(n) => *n,
            Allocation::Pets(ids) => ids.len() as u64,
        }
    }
}

const MANAGER_FLAVOR: &str = "flavor-swarm/manager";
const WORKER_FLAVOR: &str = "flavor-swarm/worker";

fn plan(file: &str) -> Result<Vec<Planned>> {
    let entries: Vec<Entry> = read_json(file, "multi-group")?;
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, e) in entries.into_iter().enumerate() {
        if e.plugin != "group" {
            bail!(
                "{file}: entry {} is for plugin '{}'; bootstrap commits groups only (\"Plugin\": \"group\")",
                i + 1,
                e.plugin
            );
        }
        let valid =
            spec::parse(&e.properties, Origin::Commit).map_err(|m| anyhow!("{file}: {m}"))?;
        if !ids.insert(valid.id.clone()) {
            bail!("{file}: group '{}' is given twice", valid.id);
        }
        let role = match valid.properties.flavor.plugin.as_str() {
            MANAGER_FLAVOR => Some(Role::Manager),
            WORKER_FLAVOR => Some(Role::Worker),
            _ => None,
        };
        out.push(Planned {
            spec: e.properties,
            valid,
            role,
        });
    }
    let managers = out.iter().filter(|p| p.role == Some(Role::Manager)).count();
    if managers != 1 {
        bail!(
            "{file}: {managers} groups have the flavor {MANAGER_FLAVOR}; exactly one must (its first \
             logical ID is the seed)"
        );
    }
    Ok(out)
}

pub async fn run(args: BootstrapArgs) -> Result<()> {
    let started = Instant::now();
    let groups = plan(&args.file)?;
    // Checked as `swarm deploy --env` checks it, and before --pretend prints a plan it would refuse.
    parse_env(&args.env)?;
    let managers = groups
        .iter()
        .find(|g| g.role == Some(Role::Manager))
        .context("no manager group")?;
    let Allocation::Pets(ids) = &managers.valid.allocation else {
        bail!(
            "group '{}': managers are pets: give Allocation.LogicalIDs",
            managers.valid.id
        );
    };
    let seed = ids.first().cloned().context("no logical ID")?;
    if args.down {
        return down::down(&groups, ids, &args.seed_engine, &args.bundle, args.pretend).await;
    }
    let registry = args
        .registry
        .clone()
        .context("--registry is needed to bootstrap (where the nodes pull the plugins from)")?;
    let flavor = SwarmFlavor::new(Role::Manager);
    let flavor_props = managers
        .valid
        .properties
        .flavor
        .properties
        .clone()
        .unwrap_or_default();
    let allocation = infrakit_sdk::spi::flavor::AllocationMethod {
        size: 0,
        logical_ids: ids.clone(),
    };
    flavor
        .validate(&flavor_props, &allocation)
        .await
        .map_err(|e| anyhow!("group '{}': {e}", managers.valid.id))?;
    let instance_plugin = &managers.valid.properties.instance.plugin;
    if instance_plugin != "instance-docker" {
        bail!(
            "group '{}' makes its nodes with '{instance_plugin}'; bootstrap makes the seed itself \
             with the built-in instance-docker (on $DOCKER_HOST's engine): use instance-docker",
            managers.valid.id
        );
    }
    let seed_socket = args.seed_engine.replace("{ip}", &seed);
    let bundle = Bundle::new(&args.bundle, &registry, &args.version)?;
    let mut env = vec![format!(
        "instance-docker:DOCKER_HOST={}",
        args.infrastructure
    )];
    env.extend(args.env.iter().cloned());

    if args.pretend {
        outln!("bootstrap would:");
        outln!(
            "  1. make the seed {seed} (group '{}') with instance-docker on this machine's engine; \
             its boot script runs `docker swarm init --advertise-addr {seed}`",
            managers.valid.id
        );
        outln!("  2. wait for the seed's engine at {seed_socket} to lead a swarm");
        outln!(
            "  3. deploy bundle '{}' from {} (version {}{}) with {}",
            bundle.name,
            registry,
            args.version,
            if args.rollout.push {
                ", pushed first"
            } else {
                ""
            },
            env.join(", ")
        );
        for g in &groups {
            outln!(
                "  4. commit group '{}' ({} {}, flavor {}) to the swarm's store{}",
                g.valid.id,
                g.count(),
                match &g.valid.allocation {
                    Allocation::Pets(_) => "pets",
                    Allocation::Size(_) => "instances",
                },
                g.valid.properties.flavor.plugin,
                if g.role == Some(Role::Manager) {
                    format!(" (the seed {seed} adopted, the others made by the swarm)")
                } else {
                    String::new()
                }
            );
        }
        outln!(
            "  5. wait until every node is Ready (at most {:?})",
            args.ready_timeout
        );
        return Ok(());
    }

    // 1. The seed.
    let instances = DockerInstancePlugin::from_env()?;
    let group_tags: Tags = [(tags::GROUP.to_string(), managers.valid.id.clone())].into();
    let existing = instances.describe_instances(&group_tags, false).await?;
    match existing.iter().find(|d| {
        d.logical_id.as_deref() == Some(seed.as_str())
            || d.tags.get(tags::LOGICAL_ID) == Some(&seed)
    }) {
        Some(d) => outln!("seed {seed}: exists ({}), kept", d.id),
        None => {
            let mut owned = group_tags.clone();
            owned.insert(tags::CONFIG_HASH.to_string(), managers.valid.hash.clone());
            owned.insert(tags::LOGICAL_ID.to_string(), seed.clone());
            let spec = Spec {
                properties: managers.valid.properties.instance.properties.clone(),
                tags: owned.clone(),
                logical_id: Some(seed.clone()),
                ..Spec::default()
            };
            let index = Index {
                group: managers.valid.id.clone(),
                sequence: 0,
            };
            let mut spec = flavor.prepare_seed(&flavor_props, spec, &index)?;
            spec.tags.extend(owned);
            let id = instances
                .provision(spec)
                .await
                .map_err(|e| anyhow!("making the seed {seed}: {e}"))?;
            outln!(
                "seed {seed}: made {id} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }

    // 2. Its swarm.
    let engine =
        Engine::new(&seed_socket).with_timeouts(Duration::from_secs(2), Duration::from_secs(300));
    let deadline = started + args.ready_timeout;
    loop {
        match nodes::local(&engine).await {
            Ok(l) if l.active() && l.manager => {
                outln!(
                    "seed {seed}: swarm running, node {} ({:.1} s)",
                    l.node_id,
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            Ok(l) if Instant::now() > deadline => bail!(
                "the seed's engine at {seed_socket} answers but is not a swarm manager (state {}) \
                 after {:?}: see the seed container's log (docker logs)",
                l.state,
                args.ready_timeout
            ),
            Err(e) if Instant::now() > deadline => bail!(
                "the seed's engine did not answer at {seed_socket} within {:?} ({e}): is the \
                 socket directory bound as the example does (INFRAKIT_NODE_SOCKET_DIR), and did the \
                 seed start (docker logs)?",
                args.ready_timeout
            ),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }

    // 3. The bundle.
    deploy(&engine, &bundle, &env, &args.rollout).await?;
    outln!("bundle deployed ({:.1} s)", started.elapsed().as_secs_f64());

    // 4. The groups.
    let store = SwarmStore::new(engine.clone());
    let stored: BTreeSet<String> = store
        .load()
        .await?
        .groups
        .iter()
        .map(|s| s.record.id().to_string())
        .collect();
    for g in &groups {
        if stored.contains(&g.valid.id) {
            outln!("group '{}': already in the swarm's store, kept", g.valid.id);
            continue;
        }
        let record = GroupRecord::new(g.spec.clone(), &g.valid);
        store.put(&record, 0).await?;
        outln!(
            "group '{}': committed ({} {})",
            g.valid.id,
            g.count(),
            if g.role == Some(Role::Manager) {
                "managers"
            } else {
                "members"
            }
        );
    }

    // 5. Every node Ready.
    let want_managers = managers.count() as usize;
    let want_workers: usize = groups
        .iter()
        .filter(|g| g.role == Some(Role::Worker))
        .map(|g| g.count() as usize)
        .sum();
    let mut last = (usize::MAX, usize::MAX);
    loop {
        let (m, w) = match nodes::list(&engine).await {
            Ok(all) => (
                all.iter()
                    .filter(|n| {
                        n.manager && n.state == NodeHealth::Ready && n.reachable == Some(true)
                    })
                    .count(),
                all.iter()
                    .filter(|n| !n.manager && n.state == NodeHealth::Ready)
                    .count(),
            ),
            Err(_) => last,
        };
        if (m, w) != last {
            outln!(
                "nodes Ready: {m}/{want_managers} managers, {w}/{want_workers} workers ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            last = (m, w);
        }
        if m >= want_managers && w >= want_workers {
            outln!(
                "swarm bootstrapped: {m} managers and {w} workers Ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut made = Vec::new();
            for g in &groups {
                let tags: Tags = [(tags::GROUP.to_string(), g.valid.id.clone())].into();
                let n = instances
                    .describe_instances(&tags, false)
                    .await
                    .map(|d| d.len().to_string())
                    .unwrap_or_else(|e| format!("? ({e})"));
                made.push(format!("group '{}': {n} of {} made", g.valid.id, g.count()));
            }
            bail!(
                "after {:?}, {m} of {want_managers} managers and {w} of {want_workers} workers are \
                 Ready ({}). The controller on the leading manager says why (`infrakit group \
                 describe ID` there), `docker logs CONTAINER` shows a node's boot; running \
                 bootstrap again continues from here",
                args.ready_timeout,
                made.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), json).expect("write");
        f
    }

    fn group(id: &str, flavor: &str, alloc: &str) -> String {
        format!(
            r#"{{"Plugin": "group", "Properties": {{"ID": "{id}", "Properties": {{
                "Allocation": {alloc},
                "Instance": {{"Plugin": "instance-docker", "Properties": {{"Image": "x"}}}},
                "Flavor": {{"Plugin": "{flavor}"}}}}}}}}"#
        )
    }

    #[test]
    fn the_file_needs_exactly_one_manager_group() {
        let managers = group("m", MANAGER_FLAVOR, r#"{"LogicalIDs": ["10.0.0.1"]}"#);
        let workers = group("w", WORKER_FLAVOR, r#"{"Size": 2}"#);
        let ok = write(&format!("[{managers}, {workers}]"));
        let planned = plan(ok.path().to_str().expect("utf-8")).expect("valid");
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[1].count(), 2);
        let none = write(&format!("[{workers}]"));
        let e = plan(none.path().to_str().expect("utf-8"))
            .err()
            .expect("no managers");
        assert!(e.to_string().contains("exactly one"), "{e}");
        let twice = write(&format!("[{managers}, {managers}]"));
        let e = plan(twice.path().to_str().expect("utf-8"))
            .err()
            .expect("twice");
        assert!(e.to_string().contains("given twice"), "{e}");
        let other = write(r#"[{"Plugin": "instance", "Properties": {"ID": "x"}}]"#);
        let e = plan(other.path().to_str().expect("utf-8"))
            .err()
            .expect("not a group");
        assert!(e.to_string().contains("groups only"), "{e}");
    }
}
