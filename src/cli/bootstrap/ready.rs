//! Step 5 of a bootstrap: every node of the file's groups Ready in the seed's swarm, reported as
//! the count changes; at the deadline, what was made of each group says where it stopped.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use infrakit_docker::swarm::nodes::{self, NodeHealth};
use infrakit_docker::Engine;
use infrakit_flavor_swarm::Role;
use infrakit_instance_docker::DockerInstancePlugin;
use infrakit_sdk::spi::instance::{InstancePlugin, Tags};
use infrakit_sdk::spi::tags;

use super::plan::Planned;
use crate::output::outln;

/// Waits until the swarm of `engine` has every manager of `managers` Ready and Reachable and
/// every worker of `groups` Ready, or `deadline` passes (then says what `instances` made).
pub(super) async fn wait_ready(
    engine: &Engine,
    instances: &DockerInstancePlugin,
    groups: &[Planned],
    managers: &Planned,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let want_managers = managers.count() as usize;
    let want_workers: usize = groups
        .iter()
        .filter(|g| g.role == Some(Role::Worker))
        .map(|g| g.count() as usize)
        .sum();
    let mut last = (usize::MAX, usize::MAX);
    loop {
        let (m, w) = match nodes::list(engine).await {
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
            bail!(
                "after {timeout:?}, {m} of {want_managers} managers and {w} of {want_workers} \
                 workers are Ready ({}). The controller on the leading manager says why (`infrakit \
                 group describe ID` there), `docker logs CONTAINER` shows a node's boot; running \
                 bootstrap again continues from here",
                made(instances, groups).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// "group 'a': 2 of 3 made; group 'b': ..." from what instance-docker finds of each group.
async fn made(instances: &DockerInstancePlugin, groups: &[Planned]) -> String {
    let mut made = Vec::new();
    for g in groups {
        let tags: Tags = [(tags::GROUP.to_string(), g.valid.id.clone())].into();
        let n = instances
            .describe_instances(&tags, false)
            .await
            .map(|d| d.len().to_string())
            .unwrap_or_else(|e| format!("? ({e})"));
        made.push(format!("group '{}': {n} of {} made", g.valid.id, g.count()));
    }
    made.join("; ")
}
