//! Step 4 of a bootstrap: the file's groups committed through the swarm's own group plugin
//! (`Group.CommitGroup`), so they get every check a commit gets (the spec parsed, its instance and
//! flavor plugins' validation, the plan) and the controller learns of them as of any commit.
//!
//! The group plugin runs on the seed as a managed plugin of the seed's engine. It is found as
//! every command finds a plugin: the engine's enabled managed plugins, each listening at
//! `<engine's plugins dir>/<plugin ID>/<socket>`. That directory is inside the seed container, so
//! it is reached through the container's root as this machine sees it (`/proc/<pid>/root`),
//! which needs the rights of the engine's user (root) on the machine whose engine runs the seed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use infrakit_docker::bollard::query_parameters::InspectContainerOptions;
use infrakit_docker::source::DEFAULT_ENGINE_PLUGINS_DIR;
use infrakit_docker::{Engine, EngineSource};
use infrakit_sdk::discovery::Discovery;
use infrakit_sdk::rpc::client::GroupClient;
use infrakit_sdk::spi::group::GroupPlugin;
use infrakit_sdk::{Error, ErrorKind};

use super::plan::Planned;
use crate::output::outln;

/// How often a plugin that is not there yet (or not ready) is asked again.
const RETRY: Duration = Duration::from_millis(500);

/// How long a commit is retried while the group plugin cannot reach a plugin the group names (or
/// another passing failure). The bundle's plugins are all running by now (the deploy waited for
/// them), so this only covers their sockets appearing; a plugin the swarm does not have (a typo
/// in the file) is reported after this, not after the whole --ready-timeout.
const COMMIT_GRACE: Duration = Duration::from_secs(60);

/// The seed's managed plugins as this machine reaches them: a discovery over the seed's engine,
/// with the sockets under a short link to the seed's plugins directory (a unix socket's path
/// holds at most 107 bytes; `/proc/<pid>/root/run/docker/plugins/<64-hex ID>/group.sock` does not
/// fit, `/tmp/ikseedXXXXXX/p/<64-hex ID>/group.sock` does, with 15 bytes to spare).
pub(super) struct SeedPlugins {
    discovery: Discovery,
    /// Holds the link; removed on drop.
    _link: tempfile::TempDir,
}

impl SeedPlugins {
    /// The plugins of `seed_engine`, whose engine runs in container `container` of this
    /// machine's engine `host`.
    pub async fn new(host: &Engine, container: &str, seed_engine: &Engine) -> Result<SeedPlugins> {
        let dir = plugins_dir(host, container).await?;
        // In /tmp, not $TMPDIR: the link's path must stay short (see the type's comment).
        let link = tempfile::Builder::new()
            .prefix("ikseed")
            .tempdir_in("/tmp")
            .context(
                "cannot make a temporary directory in /tmp for the link to the seed's plugins",
            )?;
        let plugins = link.path().join("p");
        std::os::unix::fs::symlink(&dir, &plugins)
            .with_context(|| format!("cannot link {} to {}", plugins.display(), dir.display()))?;
        let source = EngineSource::new(Some(seed_engine.clone()), plugins);
        Ok(SeedPlugins {
            discovery: Discovery::new(vec![Arc::new(source)]),
            _link: link,
        })
    }

    /// The seed's group plugin once it answers (until `deadline`), and the groups it has.
    pub async fn group(&self, deadline: Instant) -> Result<(GroupClient, BTreeSet<String>)> {
        loop {
            let answer = match self.discovery.find("group").await {
                Ok(endpoint) => {
                    let client = GroupClient::new(endpoint);
                    client.inspect_groups().await.map(|specs| (client, specs))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((client, specs)) => {
                    return Ok((client, specs.into_iter().map(|s| s.id).collect()));
                }
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    tracing::debug!("the seed's group plugin: {e}");
                }
                Err(e) => {
                    bail!(
                        "the swarm's group plugin does not answer on the seed: {e}. The bundle's \
                         services show why (`docker service ps` on the seed's engine); running \
                         bootstrap again continues from here"
                    )
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Commits every group of `groups` the swarm does not manage yet through the seed's group
/// plugin, retrying while the plugin (or those it checks the spec with) is not ready, until
/// `deadline`. A group the swarm already has is kept as it is (a bootstrap run again changes
/// nothing; `infrakit group commit` on a manager changes a group).
pub(super) async fn commit_groups(
    group_plugin: &dyn GroupPlugin,
    managed: &BTreeSet<String>,
    groups: &[Planned],
    deadline: Instant,
) -> Result<()> {
    for g in groups {
        let id = &g.valid.id;
        if managed.contains(id) {
            outln!("group '{id}': already managed by the swarm, kept");
            continue;
        }
        let give_up = (Instant::now() + COMMIT_GRACE).min(deadline);
        let committed = loop {
            match group_plugin.commit_group(g.spec.clone(), false).await {
                Ok(r) => break r,
                Err(e) if retryable(&e) && Instant::now() < give_up => {
                    tracing::debug!(group = %id, "commit not taken yet: {e}");
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) if e.kind == ErrorKind::Invalid => {
                    bail!(
                        "group '{id}': the swarm's group plugin refused it: {e}. Fix the file and \
                         run bootstrap again (what is made so far is kept)"
                    )
                }
                Err(e) => bail!(
                    "group '{id}': cannot commit it through the swarm's group plugin: {e}; running \
                     bootstrap again continues from here"
                ),
            }
        };
        let plan = committed
            .details
            .trim_start_matches(&format!("Committed group '{id}': "));
        outln!(
            "group '{id}': committed ({} {}): {plan}",
            g.count(),
            if g.role == Some(infrakit_flavor_swarm::Role::Manager) {
                "managers"
            } else {
                "members"
            },
        );
    }
    Ok(())
}

/// A failure that may pass: the plugin (or one it asks) not there yet, not ready, or a write that
/// met another one.
fn retryable(e: &Error) -> bool {
    matches!(
        e.kind,
        ErrorKind::Unavailable | ErrorKind::NotFound | ErrorKind::Conflict
    )
}

/// The seed engine's plugins directory as this machine sees it: the engine's default
/// ([`DEFAULT_ENGINE_PLUGINS_DIR`]) under the root of the seed container's first process.
async fn plugins_dir(host: &Engine, container: &str) -> Result<PathBuf> {
    let inspected = host
        .docker()?
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| host.error(&format!("inspecting the seed's container {container}"), e))?;
    let pid = inspected
        .state
        .and_then(|s| s.pid)
        .filter(|pid| *pid > 0)
        .ok_or_else(|| {
            anyhow!(
                "the seed's container {container} is not running: see its log (docker logs \
                 {container})"
            )
        })?;
    let dir = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(DEFAULT_ENGINE_PLUGINS_DIR.trim_start_matches('/'));
    std::fs::metadata(&dir).map_err(|e| {
        anyhow!(
            "cannot see the seed's plugins at {} ({e}): bootstrap reaches the swarm's group plugin \
             through the seed container, so it must run as root on the machine whose engine \
             ($DOCKER_HOST) runs the seed",
            dir.display()
        )
    })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_controller::leader::Always;
    use infrakit_controller::{FileStore, GroupController, Options};
    use infrakit_flavor_vanilla::VanillaFlavor;
    use infrakit_group::spec::{self, Origin};
    use infrakit_instance_file::FileInstancePlugin;
    use infrakit_sdk::resolve::LocalResolver;
    use infrakit_sdk::spi::group::GroupSpec;

    fn planned(id: &str, size: u64, instance_properties: serde_json::Value) -> Planned {
        let spec: GroupSpec = serde_json::from_value(serde_json::json!({"ID": id, "Properties": {
            "Allocation": {"Size": size},
            "Instance": {"Plugin": "instance-file", "Properties": instance_properties},
            "Flavor": {"Plugin": "flavor-vanilla"}
        }}))
        .expect("a group spec");
        let valid = spec::parse(&spec, Origin::Commit).expect("parses");
        Planned {
            spec,
            valid,
            role: None,
        }
    }

    /// A real group controller (file store, instance-file, flavor-vanilla) in place of the
    /// swarm's: the groups get a commit's checks, which a write into the store skipped.
    #[tokio::test]
    async fn groups_get_every_check_of_a_commit_and_existing_ones_are_kept() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let files = FileInstancePlugin::new(tmp.path().join("instances")).expect("instance-file");
        let resolver = LocalResolver::new(None)
            .with_instance("instance-file", Arc::new(files))
            .with_flavor("flavor-vanilla", Arc::new(VanillaFlavor::new()));
        let store = FileStore::open(tmp.path().join("store")).expect("store");
        let controller = GroupController::start(
            Arc::new(resolver),
            Box::new(store),
            Arc::new(Always::new()),
            Options::default(),
        )
        .await
        .expect("controller");
        let deadline = Instant::now() + Duration::from_secs(30);
        let none = BTreeSet::new();

        // Parses as a spec, but instance-file refuses the properties: refused, named, not stored.
        let bad = planned("bad", 1, serde_json::json!([1]));
        let e = commit_groups(&controller, &none, &[bad], deadline)
            .await
            .expect_err("refused by instance-file");
        let e = e.to_string();
        assert!(
            e.contains("group 'bad'") && e.contains("refused") && e.contains("JSON object"),
            "{e}"
        );
        assert!(controller
            .inspect_groups()
            .await
            .expect("inspect")
            .is_empty());

        let good = planned("good", 1, serde_json::json!({"Note": "bootstrap"}));
        commit_groups(&controller, &none, &[good], deadline)
            .await
            .expect("committed");
        assert_eq!(controller.size("good").await.expect("size"), 1);

        // Bootstrap run again with another size: the swarm's group is kept as it is.
        let managed: BTreeSet<String> = ["good".to_string()].into();
        let bigger = planned("good", 3, serde_json::json!({"Note": "bootstrap"}));
        commit_groups(&controller, &managed, &[bigger], deadline)
            .await
            .expect("kept");
        assert_eq!(controller.size("good").await.expect("size"), 1);
    }
}
