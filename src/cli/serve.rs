//! `infrakit plugin serve <kind>`: runs one plugin on a unix socket until SIGTERM/SIGINT.
//!
//! The socket is bound before any start-up work, so a Docker engine enabling the plugin sees it at
//! once; the plugin is then built and served. A start refused after the bind (a store another
//! controller holds, a bad directory) removes the socket again as it exits: binding after the slow
//! work instead would make the engine's enable wait on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use infrakit_controller::{FileStore, GroupController, Options};
use infrakit_flavor_combo::ComboFlavor;
use infrakit_flavor_swarm::{Role as SwarmRole, SwarmFlavor};
use infrakit_flavor_vanilla::VanillaFlavor;
use infrakit_flavor_zookeeper::ZooKeeperFlavor;
use infrakit_instance_docker::DockerInstancePlugin;
use infrakit_instance_file::FileInstancePlugin;
use infrakit_sdk::discovery::{self, PluginsDir};
use infrakit_sdk::resolve::DiscoveryResolver;
use infrakit_sdk::rpc::server::{Plugins, Server};

use crate::registry::{Start, Starting};

/// The group controller's knobs, shared by `plugin serve group` and `up`.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// group: where committed groups are stored (default ~/.infrakit/groups).
    #[arg(long, env = "INFRAKIT_GROUP_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// group: how often each group is observed for drift when nothing else wakes it.
    #[arg(long, env = "INFRAKIT_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "5s")]
    pub poll_interval: Duration,
    /// group: how long a Healthy verdict is trusted before the flavor is asked again (an instance
    /// that has not counted as available yet, e.g. in its MinReadySeconds soak, is asked every pass).
    #[arg(long, env = "INFRAKIT_HEALTH_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    pub health_interval: Duration,
    /// group: provisions and destroys running at once.
    #[arg(long, env = "INFRAKIT_MAX_PARALLEL", default_value_t = 32)]
    pub max_parallel: usize,
    /// group: follow the instance plugins' change notifications (Instance.Changes, where a plugin
    /// offers it) and observe a group as soon as its plugin reports a change; `false` polls only.
    #[arg(long, env = "INFRAKIT_CHANGE_NOTIFICATIONS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub change_notifications: bool,
    /// group: swarm mode. `auto` (the default) follows the swarm when the Docker engine
    /// ($DOCKER_HOST, else /var/run/docker.sock) is a swarm manager: groups live in the swarm's
    /// replicated store (configs) instead of --store, and only the swarm leader's controller acts.
    /// `on` insists (and fails on an engine that is not a manager); `off` never asks the engine.
    #[arg(long, env = "INFRAKIT_SWARM", value_enum, default_value = "auto")]
    pub swarm: SwarmMode,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmMode {
    Auto,
    On,
    Off,
}

impl ControllerArgs {
    pub fn options(&self) -> Result<Options> {
        if self.poll_interval < Duration::from_millis(10) {
            anyhow::bail!(
                "--poll-interval {:?} is too short; use at least 10ms",
                self.poll_interval
            );
        }
        if self.max_parallel == 0 {
            anyhow::bail!("--max-parallel must be at least 1");
        }
        Ok(Options {
            poll_interval: self.poll_interval,
            health_interval: self.health_interval,
            max_parallel: self.max_parallel,
            change_notifications: self.change_notifications,
            ..Options::default()
        })
    }

    pub fn open_store(&self) -> Result<FileStore> {
        let dir = self
            .store
            .clone()
            .unwrap_or_else(infrakit_controller::store::default_dir);
        Ok(FileStore::open(&dir)?)
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  infrakit plugin serve group --store /var/lib/infrakit/groups --poll-interval 2s\n  \
    infrakit plugin serve instance-file --dir /var/lib/instances\n  \
    infrakit plugin serve instance-docker\n  \
    infrakit plugin serve flavor-vanilla --name vanilla-2\n  \
    infrakit plugin serve flavor-combo --socket /run/docker/plugins/combo.sock"
)]
pub struct ServeArgs {
    /// Which plugin to run (src/registry.rs lists them).
    #[arg(value_name = "PLUGIN", value_parser = crate::registry::serve_values())]
    pub kind: String,
    /// The name others find it by (default: the plugin's, e.g. instance-file).
    #[arg(long)]
    pub name: Option<String>,
    /// Socket path (default: <plugins dir>/<name>.sock).
    #[arg(long, env = "INFRAKIT_PLUGIN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// instance-file: the directory holding the instance files.
    #[arg(long, env = "INFRAKIT_INSTANCE_FILE_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// instance-file: fsync every file before it is renamed into place (survives power loss; every
    /// write is atomic against a plugin crash either way).
    #[arg(long, env = "INFRAKIT_INSTANCE_FILE_SYNC")]
    pub sync: bool,
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Also serve the Prometheus metrics (what GET /metrics on the plugin's socket answers) on
    /// this TCP address, e.g. 127.0.0.1:9101. Off by default: no TCP listener unless asked.
    #[arg(long, env = "INFRAKIT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    raise_open_files_limit();
    one_malloc_arena();
    // One thread per plugin process: requests are small and mostly wait on IO or other plugins, so
    // one thread answers them with the least latency (no hand-off between workers: 10-15% faster
    // round trips in `make bench`) and the smallest footprint (one malloc arena; the group plugin's
    // RSS target is under 10 MB). Blocking file work goes to tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

/// Makes glibc's malloc keep one arena for the whole process, before any thread starts. By
/// default each thread that allocates gets an arena of its own (up to 8 per core), and the blocking
/// pool's threads (file work: instance-file reads and parses its files there, the group store writes
/// there) each kept what they had held at their busiest: instance-file's peak RSS over a
/// 100,000-instance commit and destroy was 457 MB for 251 MB of live allocations at most, and 289 MB
/// with one arena (`cargo bench --bench scale`). The threads rarely allocate at once, so sharing an
/// arena costs them next to nothing.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; it takes no pointers, and this runs before the
    // process starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Raises the soft open-file limit to the hard one: a plugin's clients, its own outbound connections
/// and its files share it, and many systems start processes at 1,024. Failing is not fatal: the
/// server fits its connection cap to whatever limit is in force.
pub fn raise_open_files_limit() {
    match infrakit_sdk::rpc::open_files::raise_to_hard_limit() {
        Ok(limit) => tracing::debug!(?limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit (ulimit -n): {e}"),
    }
}

/// The socket for plugin `name`: `--socket`, else `<plugins dir>/<name>.sock`.
pub fn socket_for(name: &str, explicit: Option<&PathBuf>) -> PathBuf {
    match explicit {
        Some(s) => s.clone(),
        None => PluginsDir::new(discovery::default_plugins_dir()).socket_for(name),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let entry = crate::registry::find(&args.kind)?;
    let start = match entry.start {
        Start::InProcess(start) => start,
        Start::Binary(binary) => anyhow::bail!(
            "{} runs as a binary of its own: run {binary} (beside infrakit in the build output, \
             e.g. target/release/{binary}); its managed plugin's rootfs holds it",
            entry.name
        ),
    };
    let name = args.name.clone().unwrap_or_else(|| entry.name.to_string());
    discovery::validate_name(&name)?;
    let socket = socket_for(&name, args.socket.as_ref());
    let server = Server::bind(&socket).with_context(|| format!("cannot serve plugin '{name}'"))?;
    let plugins = start(&args).await?;
    let _metrics = match args.metrics_listen {
        Some(addr) => Some(infrakit_sdk::metrics::serve_tcp(addr).await?),
        None => None,
    };
    tracing::info!(name, plugin = entry.name, socket = %socket.display(), "plugin ready");
    server.serve(plugins).await?;
    Ok(())
}

/// The engine whose swarm the group controller follows, if any (see `--swarm`).
async fn swarm_engine(mode: SwarmMode) -> Result<Option<infrakit_docker::Engine>> {
    if mode == SwarmMode::Off {
        return Ok(None);
    }
    let Some(engine) = infrakit_docker::Engine::from_env() else {
        if mode == SwarmMode::On {
            anyhow::bail!(
                "--swarm on needs a Docker engine on a unix socket (DOCKER_HOST=unix://...)"
            );
        }
        return Ok(None);
    };
    match infrakit_docker::swarm::is_manager(&engine).await {
        Ok(true) => Ok(Some(engine)),
        Ok(false) if mode == SwarmMode::On => anyhow::bail!(
            "--swarm on: the engine at {} is not a manager of an active swarm; run the group plugin on a \
             manager (or `docker swarm init` first)",
            engine.address()
        ),
        Err(e) if mode == SwarmMode::On => {
            anyhow::bail!("--swarm on: cannot ask the engine at {}: {e}", engine.address())
        }
        // Auto: no engine, or not a manager: one host, the file store.
        _ => Ok(None),
    }
}

/// `group`: the group controller, on the swarm's store and leadership on a swarm manager (see
/// `--swarm`), else on the file store.
pub fn group(args: &ServeArgs) -> Starting<'_> {
    Box::pin(async move {
        let mut options = args.controller.options()?;
        let resolver = Arc::new(DiscoveryResolver::new(infrakit_docker::discovery_from_env()));
        let controller = match swarm_engine(args.controller.swarm).await? {
            Some(engine) => {
                use infrakit_manager::{swarm_leader as leader, SwarmStore};
                tracing::info!(engine = %engine.address(), poll = ?options.poll_interval,
                    "group controller in swarm mode: groups in the swarm's store, acting while this node leads");
                options.shared_store = true;
                let leadership = leader::SwarmLeadership::start(engine.clone(), leader::POLL).await;
                GroupController::start(
                    resolver,
                    Box::new(SwarmStore::new(engine)),
                    leadership,
                    options,
                )
                .await?
            }
            None => {
                let store = args.controller.open_store()?;
                tracing::info!(store = %store.dir().display(), poll = ?options.poll_interval, "group controller");
                let leadership = Arc::new(infrakit_controller::leader::Always::new());
                GroupController::start(resolver, Box::new(store), leadership, options).await?
            }
        };
        Ok(Plugins::new().group(controller))
    })
}

/// `instance-file`: instances are files in `--dir`.
pub fn instance_file(args: &ServeArgs) -> Starting<'_> {
    Box::pin(async move {
        let dir = args
            .dir
            .clone()
            .unwrap_or_else(infrakit_instance_file::default_dir);
        let plugin = FileInstancePlugin::new(&dir)
            .with_context(|| format!("cannot use instance directory {}", dir.display()))?
            .with_sync(args.sync);
        tracing::info!(dir = %dir.display(), "instance files");
        Ok(Plugins::new().instance(plugin))
    })
}

/// `instance-docker`: instances are containers on the engine at DOCKER_HOST.
pub fn instance_docker(_: &ServeArgs) -> Starting<'_> {
    Box::pin(async move {
        // No engine check here: the socket is already bound, and an engine that comes up later is
        // found on the first call (each call says clearly when there is none).
        let plugin = DockerInstancePlugin::from_env()?;
        tracing::info!(engine = %plugin.engine().address(), "docker instances");
        Ok(Plugins::new().instance(plugin))
    })
}

pub fn flavor_vanilla(_: &ServeArgs) -> Starting<'_> {
    Box::pin(async move { Ok(Plugins::new().flavor(VanillaFlavor::new())) })
}

/// `flavor-combo`: its children are found through discovery, as the controller finds plugins.
pub fn flavor_combo(_: &ServeArgs) -> Starting<'_> {
    Box::pin(async move {
        let resolver = DiscoveryResolver::new(infrakit_docker::discovery_from_env());
        Ok(Plugins::new().flavor(ComboFlavor::new(Arc::new(resolver))))
    })
}

pub fn flavor_zookeeper(_: &ServeArgs) -> Starting<'_> {
    Box::pin(async move { Ok(Plugins::new().flavor(ZooKeeperFlavor::new())) })
}

/// `flavor-swarm`: two sub-types, `flavor-swarm/manager` and `flavor-swarm/worker`.
pub fn flavor_swarm(_: &ServeArgs) -> Starting<'_> {
    Box::pin(async move {
        Ok(Plugins::new()
            .flavor_type("manager", Arc::new(SwarmFlavor::new(SwarmRole::Manager)))
            .flavor_type("worker", Arc::new(SwarmFlavor::new(SwarmRole::Worker))))
    })
}
