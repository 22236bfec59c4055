//! `infrakit up FILE`: the quick start. One process runs the group controller and the built-in
//! plugins (file instances, vanilla and combo flavors), commits the file, shows the group converge,
//! and keeps it converged until Ctrl-C, printing a line whenever the group changes. The plugins are
//! also served on their sockets, so `infrakit group describe`, `infrakit instance describe` etc.
//! work from another terminal meanwhile.
//!
//! Its groups are stored apart from `infrakit plugin serve group`'s (~/.infrakit/up/groups, not
//! ~/.infrakit/groups): a group left by `up` would otherwise be resumed by a later hand-run group
//! plugin against other plugins, and its instances left unmanaged.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use infrakit_controller::{FileStore, GroupController};
use infrakit_flavor_combo::ComboFlavor;
use infrakit_flavor_vanilla::VanillaFlavor;
use infrakit_group::core::Allocation;
use infrakit_instance_file::FileInstancePlugin;
use infrakit_sdk::resolve::{DiscoveryResolver, LocalResolver, PluginResolver};
use infrakit_sdk::rpc::server::{Plugins, Server};
use infrakit_sdk::spi::flavor::FlavorPlugin;
use infrakit_sdk::spi::group::{GroupDescription, GroupPlugin, GroupSpec};
use infrakit_sdk::spi::instance::InstancePlugin;

use super::group::Readiness;
use super::input::read_json;
use super::serve::{raise_open_files_limit, socket_for, ControllerArgs};
use crate::output::{errln, outln};

/// How often `up` asks the controller how the group is doing.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// At most this many instance IDs in one "appeared"/"gone" line.
const IDS_PER_LINE: usize = 8;

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  infrakit up examples/cattle.json\n\
    then, in another terminal: infrakit group describe cattle; ls ~/.infrakit/instance-file\n\n\
    Its groups are stored in ~/.infrakit/up/groups (--store), apart from `infrakit plugin serve \
    group`'s ~/.infrakit/groups, so a hand-run group plugin never resumes a group `up` left.",
    mut_arg("store", |a| a.help(
        "Where committed groups are stored (default ~/.infrakit/up/groups: `up`'s own, not the group plugin's)"
    ))
)]
pub struct UpArgs {
    /// The group file to commit.
    pub file: String,
    /// Where the file instance plugin keeps its instances (default ~/.infrakit/instance-file).
    #[arg(long, env = "INFRAKIT_INSTANCE_FILE_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Exit once the group is ready: converged and every one of its target healthy (the
    /// instances stay), instead of keeping it converged.
    #[arg(long)]
    pub until_converged: bool,
    /// Commit FILE even when the store already holds the group with another spec (a changed
    /// group, or an update that stopped half way with the last `up`): without it, `up` resumes the
    /// stored group and says what differs.
    #[arg(long)]
    pub force: bool,
    /// Give up if the group is not ready after this long (0: wait forever).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub timeout: Duration,
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `up`'s own group store: ~/.infrakit/up/groups.
pub fn default_store_dir() -> PathBuf {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home)
            .join(".infrakit")
            .join("up")
            .join("groups"),
        None => PathBuf::from("/var/lib/infrakit/up/groups"),
    }
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

    let dir = args
        .dir
        .clone()
        .unwrap_or_else(infrakit_instance_file::default_dir);
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
    let store_dir = args
        .controller
        .store
        .clone()
        .unwrap_or_else(default_store_dir);
    let store = FileStore::open(&store_dir)
        .with_context(|| format!("cannot use group store {}", store_dir.display()))?;
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
    let leadership = Arc::new(infrakit_controller::leader::Always::new());
    let controller =
        Arc::new(GroupController::start(resolver, Box::new(store), leadership, options).await?);

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
    // What the controller decides and sees, as it happens (the state lines below say where the
    // group stands).
    {
        let controller = controller.clone();
        let id = id.clone();
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                r = super::events::follow(controller.as_ref(), Some(&id), Some(Duration::ZERO), true, false) => {
                    if let Err(e) = r {
                        errln!("infrakit up: no more events: {e}");
                    }
                }
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
    let outcome = async {
        if commit_or_resume(controller.as_ref(), &spec, &args, &store_dir).await? {
            let result = controller.commit_group(spec, false).await?;
            outln!("{}", result.details);
        }
        follow(controller.as_ref(), &id, &args, stop_tx.subscribe()).await
    }
    .await;
    let _ = stop_tx.send(true);
    while let Some(r) = servers.join_next().await {
        r??;
    }
    outcome
}

/// Whether to commit the file: yes when the store does not hold its group, or holds it with the
/// same spec (nothing to change). A stored group with another spec (committed since, scaled, or
/// half way through an update when the last `up` was stopped) is resumed as it is unless `--force`:
/// committing the file would silently undo that. Either way, what differs is said on stderr.
async fn commit_or_resume(
    group: &dyn GroupPlugin,
    file_spec: &GroupSpec,
    args: &UpArgs,
    store_dir: &std::path::Path,
) -> Result<bool> {
    let id = &file_spec.id;
    let Some(stored) = group
        .inspect_groups()
        .await?
        .into_iter()
        .find(|s| &s.id == id)
    else {
        return Ok(true);
    };
    let differs = differences(&stored, file_spec, &args.file);
    if differs.is_empty() {
        return Ok(true);
    }
    let update = first_observation(group, id)
        .await
        .filter(update_in_progress)
        .and_then(|d| update_line(&d));
    let what = differs.join("; ");
    if args.force {
        errln!(
            "infrakit up: --force: committing {} over the stored group '{id}' ({what}){}",
            args.file,
            update.map_or(String::new(), |u| format!(
                "; this abandons its update in progress ({u})"
            ))
        );
        return Ok(true);
    }
    errln!(
        "infrakit up: group '{id}' is stored in {} with another spec than {} ({what}){}; resuming \
         the stored group as it is, not committing the file. To commit the file instead (undoing \
         that), run again with --force (make up UP_FLAGS=--force)",
        store_dir.display(),
        args.file,
        update.map_or(String::new(), |u| format!(
            ", and its update is in progress ({u})"
        ))
    );
    Ok(false)
}

/// The group's description once the controller's first pass has looked at it (the update state
/// is known only then); None if that takes longer than a few seconds.
async fn first_observation(group: &dyn GroupPlugin, id: &str) -> Option<GroupDescription> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match group.describe_group(id).await {
            Ok(d) if d.target.is_some() => return Some(d),
            _ if Instant::now() > deadline => return None,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn update_in_progress(d: &GroupDescription) -> bool {
    let state = d
        .update
        .as_ref()
        .and_then(|u| u.get("State"))
        .and_then(|s| s.as_str());
    matches!(state, Some("updating" | "paused" | "rolling_back"))
}

/// What a commit of `file` would change in the `stored` group, for a person (empty: nothing).
fn differences(stored: &GroupSpec, file: &GroupSpec, file_name: &str) -> Vec<String> {
    use infrakit_group::spec::{parse, Origin};
    let (Ok(s), Ok(f)) = (parse(stored, Origin::Stored), parse(file, Origin::Commit)) else {
        // An invalid file is refused by the commit itself, with the reason.
        return Vec::new();
    };
    let mut out = Vec::new();
    if s.hash != f.hash {
        out.push(format!(
            "other Instance/Flavor properties: committing {file_name} replaces every instance"
        ));
    }
    if s.allocation != f.allocation {
        out.push(match (&s.allocation, &f.allocation) {
            (Allocation::Size(a), Allocation::Size(b)) => {
                format!("size {a} stored, {b} in {file_name}")
            }
            _ => format!("other allocation (Size/LogicalIDs) than {file_name}"),
        });
    }
    if s.policy != f.policy {
        out.push("other Policies".into());
    }
    out
}

/// Prints a line whenever the group changes, until Ctrl-C, or (--until-converged) until it is
/// ready. Fails when it is not ready within --timeout.
async fn follow(
    group: &dyn GroupPlugin,
    id: &str,
    args: &UpArgs,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last: Option<GroupDescription> = None;
    let mut gone = false;
    let mut ready_once = false;
    let mut last_error = String::new();
    loop {
        match group.describe_group(id).await {
            Ok(d) => {
                last_error.clear();
                if gone {
                    outln!("{id}: committed again");
                    gone = false;
                }
                for line in changes(last.as_ref(), &d) {
                    outln!("{id}: {line}");
                }
                let readiness = Readiness::of(&d);
                if readiness.ready() && !ready_once {
                    ready_once = true;
                    outln!("{id}: ready in {:.1}s", start.elapsed().as_secs_f64());
                    if args.until_converged {
                        return Ok(());
                    }
                    errln!(
                        "infrakit up: keeping group '{id}' converged; Ctrl-C to stop (the instances stay)"
                    );
                }
                if !ready_once && !args.timeout.is_zero() && start.elapsed() > args.timeout {
                    bail!(
                        "group '{id}' is not ready after {:?}: {} of {} instances, {readiness}",
                        args.timeout,
                        d.instances.len(),
                        d.target.map_or("?".into(), |t| t.to_string()),
                    );
                }
                last = Some(d);
            }
            Err(e) if e.is_not_found() => {
                if !gone {
                    gone = true;
                    let how = match &last {
                        Some(d) if d.extra.contains_key("Deleting") => "destroyed",
                        _ => "destroyed or freed",
                    };
                    outln!("{id}: gone ({how}); no group left to keep converged");
                    errln!(
                        "infrakit up: group '{id}' no longer exists; the plugins keep serving until Ctrl-C \
                         (`infrakit group commit FILE` manages a group again)"
                    );
                    last = None;
                    if args.until_converged {
                        bail!("group '{id}' was removed before it was ready");
                    }
                }
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    outln!("{id}: cannot describe the group: {e}");
                    last_error = e;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// What changed between two descriptions of a group, as lines for a person (the first
/// description against `None`: where the group stands).
pub fn changes(before: Option<&GroupDescription>, now: &GroupDescription) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(before) = before else {
        lines.push(format!(
            "{} of {} instances, {}",
            now.instances.len(),
            now.target.map_or("?".into(), |t| t.to_string()),
            Readiness::of(now)
        ));
        if let Some(u) = update_line(now) {
            lines.push(u);
        }
        if !now.message.is_empty() {
            lines.push(format!("note: {}", now.message));
        }
        return lines;
    };
    let ids = |d: &GroupDescription| {
        d.instances
            .iter()
            .map(|i| i.id.clone())
            .collect::<BTreeSet<_>>()
    };
    let (old, new) = (ids(before), ids(now));
    let appeared: Vec<&String> = new.difference(&old).collect();
    let vanished: Vec<&String> = old.difference(&new).collect();
    if !appeared.is_empty() {
        lines.push(format!("+{} {}", appeared.len(), id_list(&appeared)));
    }
    if !vanished.is_empty() {
        lines.push(format!("-{} {}", vanished.len(), id_list(&vanished)));
    }
    if before.target != now.target {
        lines.push(format!(
            "target {} -> {}",
            before.target.map_or("?".into(), |t| t.to_string()),
            now.target.map_or("?".into(), |t| t.to_string())
        ));
    }
    if now.extra.contains_key("Deleting") && !before.extra.contains_key("Deleting") {
        lines.push("being destroyed: draining and destroying every instance".into());
    }
    let update = update_line(now);
    if update != update_line(before) {
        if let Some(u) = update {
            lines.push(u);
        }
    }
    if before.message != now.message {
        lines.push(if now.message.is_empty() {
            "note cleared".into()
        } else {
            format!("note: {}", now.message)
        });
    }
    let (r0, r1) = (Readiness::of(before), Readiness::of(now));
    if r0 != r1 && !now.extra.contains_key("Deleting") {
        lines.push(format!(
            "now {} of {}: {r1}",
            now.instances.len(),
            now.target.map_or("?".into(), |t| t.to_string())
        ));
    }
    lines
}

/// "instance-a, instance-b" (and how many more).
fn id_list(ids: &[&String]) -> String {
    let mut s = ids
        .iter()
        .take(IDS_PER_LINE)
        .map(|i| i.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > IDS_PER_LINE {
        s.push_str(&format!(" and {} more", ids.len() - IDS_PER_LINE));
    }
    format!(
        "{} {s}",
        if ids.len() == 1 {
            "instance:"
        } else {
            "instances:"
        }
    )
}

/// "update: <the controller's message>" ("updating: 2 of 5 replaced"), or the state and counts
/// when there is no message.
fn update_line(d: &GroupDescription) -> Option<String> {
    let u = d.update.as_ref()?;
    if let Some(m) = u
        .get("Message")
        .and_then(|v| v.as_str())
        .filter(|m| !m.is_empty())
    {
        return Some(format!("update: {m}"));
    }
    let field = |k: &str| u.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Some(format!(
        "update {}: {} of {} replaced, {} failed",
        u.get("State").and_then(|v| v.as_str()).unwrap_or("?"),
        field("Done"),
        field("Total"),
        field("Failures")
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::spi::instance::Description;

    fn group(ids: &[&str], target: u64) -> GroupDescription {
        GroupDescription {
            instances: std::sync::Arc::new(
                ids.iter()
                    .map(|i| Description {
                        id: i.to_string(),
                        ..Description::default()
                    })
                    .collect(),
            ),
            target: Some(target),
            ..GroupDescription::default()
        }
    }

    #[test]
    fn changes_name_what_appeared_and_went_and_cap_long_id_lists() {
        let before = group(&["a", "b"], 2);
        let now = group(&["b", "c"], 2);
        assert_eq!(
            changes(Some(&before), &now),
            vec!["+1 instance: c", "-1 instance: a"]
        );
        assert!(changes(Some(&now), &now).is_empty(), "nothing changed");
        let many: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let lines = changes(Some(&group(&[], 10)), &group(&refs, 10));
        assert_eq!(
            lines[0],
            "+10 instances: i0, i1, i2, i3, i4, i5, i6, i7 and 2 more"
        );
    }
}
