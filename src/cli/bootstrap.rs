//! `infrakit bootstrap FILE`: one seed node grows into a whole swarm that then manages itself.
//!
//! On a machine with only the infrastructure engine (the one that makes the nodes: the host's,
//! through the in-process `instance-docker`): make the seed (the manager group's first logical
//! ID), whose boot script starts the swarm; deploy the bundle onto that swarm as plugin services;
//! commit the groups through the swarm's own group plugin (`Group.CommitGroup`: every check a
//! commit gets); and wait while the seed's controller makes the rest. The seed is already a member
//! of the manager group as the controller sees it (same tags, config hash and logical ID), so it
//! is adopted, not made again. Each step is skipped when already done, so a bootstrap that
//! stopped half way is finished by running it again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use infrakit_docker::swarm::bundle::Bundle;
use infrakit_docker::Engine;
use infrakit_flavor_swarm::Role;
use infrakit_instance_docker::DockerInstancePlugin;

mod commit;
mod down;
mod plan;
mod ready;
mod seed;

use super::swarm::{deploy, parse_env, RolloutFlags};
use crate::output::outln;
use plan::Planned;
use seed::Seed;

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

/// What a bootstrap deploys, worked out from the arguments (and checked) before anything runs.
struct Deployment {
    registry: String,
    bundle: Bundle,
    /// Plugin settings on the swarm (`swarm deploy --env`), ours first.
    env: Vec<String>,
}

impl Deployment {
    fn new(args: &BootstrapArgs) -> Result<Deployment> {
        let registry = args
            .registry
            .clone()
            .context("--registry is needed to bootstrap (where the nodes pull the plugins from)")?;
        let bundle = Bundle::new(&args.bundle, &registry, &args.version)?;
        let mut env = vec![format!(
            "instance-docker:DOCKER_HOST={}",
            args.infrastructure
        )];
        env.extend(args.env.iter().cloned());
        Ok(Deployment {
            registry,
            bundle,
            env,
        })
    }
}

pub async fn run(args: BootstrapArgs) -> Result<()> {
    let started = Instant::now();
    let groups = plan::plan(&args.file)?;
    // Checked as `swarm deploy --env` checks it, and before --pretend prints a plan it would refuse.
    parse_env(&args.env)?;
    let (managers, ids) = plan::managers(&groups)?;
    if args.down {
        return down::down(&groups, ids, &args.seed_engine, &args.bundle, args.pretend).await;
    }
    let deployment = Deployment::new(&args)?;
    let seed = Seed::new(managers, ids, &args.seed_engine).await?;
    if args.pretend {
        return print_plan(&args, &seed, &deployment, &groups);
    }
    let deadline = started + args.ready_timeout;

    // 1. The seed, 2. its swarm.
    let instances = DockerInstancePlugin::from_env()?;
    let container = seed.make(&instances, started).await?;
    let engine = seed
        .wait_for_swarm(started, deadline, args.ready_timeout)
        .await?;

    // 3. The bundle.
    deploy(&engine, &deployment.bundle, &deployment.env, &args.rollout).await?;
    outln!("bundle deployed ({:.1} s)", started.elapsed().as_secs_f64());

    // 4. The groups, through the swarm's group plugin.
    let host = Engine::from_env().context(
        "DOCKER_HOST is not a unix:// address: bootstrap reaches the seed through this machine's \
         engine",
    )?;
    let plugins = commit::SeedPlugins::new(&host, &container, &engine).await?;
    let (group_plugin, managed) = plugins.group(deadline).await?;
    commit::commit_groups(&group_plugin, &managed, &groups, deadline).await?;

    // 5. Every node Ready.
    ready::wait_ready(
        &engine,
        &instances,
        &groups,
        managers,
        started,
        deadline,
        args.ready_timeout,
    )
    .await
}

/// `--pretend`: what bootstrap would do, step by step; nothing is asked of any engine or plugin.
fn print_plan(
    args: &BootstrapArgs,
    seed: &Seed,
    deployment: &Deployment,
    groups: &[Planned],
) -> Result<()> {
    let id = &seed.id;
    outln!("bootstrap would:");
    outln!(
        "  1. make the seed {id} (group '{}') with instance-docker on this machine's engine; \
         its boot script runs `docker swarm init --advertise-addr {id}`",
        seed.managers.valid.id
    );
    outln!(
        "  2. wait for the seed's engine at {} to lead a swarm",
        seed.socket
    );
    outln!(
        "  3. deploy bundle '{}' from {} (version {}{}) with {}",
        deployment.bundle.name,
        deployment.registry,
        args.version,
        if args.rollout.push {
            ", pushed first"
        } else {
            ""
        },
        deployment.env.join(", ")
    );
    for g in groups {
        outln!(
            "  4. commit group '{}' ({} {}, flavor {}) through the swarm's group plugin{}",
            g.valid.id,
            g.count(),
            g.unit(),
            g.valid.properties.flavor.plugin,
            if g.role == Some(Role::Manager) {
                format!(" (the seed {id} adopted, the others made by the swarm)")
            } else {
                String::new()
            }
        );
    }
    outln!(
        "  5. wait until every node is Ready (at most {:?})",
        args.ready_timeout
    );
    Ok(())
}
