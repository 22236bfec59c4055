//! `infrakit up FILE`: the quick start. One process runs the group controller and the built-in
//! plugins (file instances, vanilla and combo flavors), commits the file, shows the group converge,
//! and keeps it converged until Ctrl-C. The plugins are also served on their sockets, so
//! `infrakit group describe`, `infrakit instance describe` etc. work from another terminal meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use infrakit_controller::GroupController;
use infrakit_plugins::flavor_combo::ComboFlavor;
use infrakit_plugins::flavor_vanilla::VanillaFlavor;
use infrakit_plugins::instance_file::{self, FileInstancePlugin};
use infrakit_sdk::resolve::{DiscoveryResolver, LocalResolver, PluginResolver};
use infrakit_sdk::rpc::server::{Plugins, Server};
use infrakit_sdk::spi::flavor::FlavorPlugin;
use infrakit_sdk::spi::group::{GroupPlugin, GroupSpec};
use infrakit_sdk::spi::instance::InstancePlugin;

use super::group::watch;
use super::input::read_json;
use super::serve::{raise_open_files_limit, socket_for, ControllerArgs};
use crate::output::{errln, outln};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  infrakit up examples/cattle.json\n\
    then, in another terminal: infrakit group describe cattle; ls ~/.infrakit/instance-file")]
pub struct UpArgs {
    /// The group file to commit.
    pub file: String,
    /// Where the file instance plugin keeps its instances (default ~/.infrakit/instance-file).
    #[arg(long, env = "INFRAKIT_INSTANCE_FILE_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Exit once the group has converged (the instances stay) instead of keeping it converged.
    #[arg(long)]
    pub until_converged: bool,
    /// Give up if the group has not converged after this long (0: wait forever).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub timeout: Duration,
    #[command(flatten)]
    pub controller: ControllerArgs,
}

pub fn run(args: UpArgs) -> Result<()> {
    raise_open_files_limit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(up(args))
}

async fn up(args: UpArgs) -> Result<()> {
    let spec: GroupSpec = read_json(&args.file, "group spec")?;
    let group_socket = socket_for("group", None);
    let group_server = Server::bind(&group_socket).context(
        "cannot start the group controller (is another `infrakit up` or group plugin running?)",
    )?;

    let dir = args.dir.clone().unwrap_or_else(instance_file::default_dir);
    let files: Arc<dyn InstancePlugin> = Arc::new(
        FileInstancePlugin::new(&dir)
            .with_context(|| format!("cannot use instance directory {}", dir.display()))?,
    );
    let vanilla: Arc<dyn FlavorPlugin> = Arc::new(VanillaFlavor::new());
    let discovered: Arc<dyn PluginResolver> =
        Arc::new(DiscoveryResolver::new(infrakit_docker::discovery_from_env()));
    // The combo's children: the built-in vanilla in this process, everything else discovered.
    let children =
        LocalResolver::new(Some(discovered.clone())).with_flavor("flavor-vanilla", vanilla.clone());
    let combo: Arc<dyn FlavorPlugin> = Arc::new(ComboFlavor::new(Arc::new(children)));
    let resolver: Arc<dyn PluginResolver> = Arc::new(
        LocalResolver::new(Some(discovered))
            .with_instance("instance-file", files.clone())
            .with_flavor("flavor-vanilla", vanilla.clone())
            .with_flavor("flavor-combo", combo.clone()),
    );
    let store = args.controller.open_store()?;
    errln!(
        "infrakit up: instances in {}, groups stored in {}",
        dir.display(),
        store.dir().display()
    );
    // The built-in instance plugin lives (and dies) with this process: nothing a previous run
    // started can still finish, so there is nothing to wait for after a restart.
    let options = infrakit_controller::Options {
        restart_grace: Duration::ZERO,
        ..args.controller.options()?
    };
    let controller = Arc::new(GroupController::start(resolver, store, options)?);

    // One shutdown for every server: Ctrl-C/SIGTERM, or convergence with --until-converged. Each
    // server then removes its socket file.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Serve the built-ins too, where nobody else already does, for the other CLI commands.
    for (name, plugins) in [
        ("instance-file", Plugins::new().instance_type("", files)),
        ("flavor-vanilla", Plugins::new().flavor_type("", vanilla)),
        ("flavor-combo", Plugins::new().flavor_type("", combo)),
    ] {
        match Server::bind(socket_for(name, None)) {
            Ok(server) => {
                servers.spawn(server.serve_until(plugins, stopped(stop_rx.clone())));
            }
            Err(e) => tracing::info!("not serving {name} here: {e}"),
        }
    }
    servers.spawn(group_server.serve_until(
        Plugins::new().group_type("", controller.clone()),
        stopped(stop_rx),
    ));
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });

    let id = spec.id.clone();
    let outcome = async {
        let result = controller.commit_group(spec, false).await?;
        outln!("{}", result.details);
        watch(controller.as_ref(), &id, args.timeout).await
    }
    .await;
    if outcome.is_ok() && !args.until_converged {
        errln!("infrakit up: keeping group '{id}' converged; Ctrl-C to stop (the instances stay)");
    } else {
        let _ = stop_tx.send(true);
    }
    while let Some(r) = servers.join_next().await {
        r??;
    }
    outcome
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
    errln!("infrakit up: stopping (the instances stay)");
}
