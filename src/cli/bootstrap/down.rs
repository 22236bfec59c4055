//! `infrakit bootstrap --down FILE`: removes what `bootstrap FILE` made, and nothing else.
//!
//! Bootstrap made the seed, and the swarm's own controller made the other nodes: containers that
//! instance-docker created on the infrastructure engine ($DOCKER_HOST), each labelled with its
//! group. The bundle (plugin services) and the groups (the swarm's store) live inside the swarm,
//! which lives inside those containers. So: first the bundle is removed through a manager that
//! answers, which stops every group controller (one left running would make the nodes again as
//! they go), then every container of the file's groups is destroyed, in passes until a pass finds
//! none. Containers of other groups, images, networks and the registry are left alone.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use infrakit_docker::swarm::nodes;
use infrakit_docker::Engine;
use infrakit_instance_docker::DockerInstancePlugin;
use infrakit_sdk::spi::instance::{DestroyContext, InstancePlugin, Tags};
use infrakit_sdk::spi::tags;

use super::Planned;
use crate::output::outln;

/// How long the passes over the nodes may take in all (a controller that was still stopping may
/// make a node meanwhile; the next pass removes it).
const NODES_DEADLINE: Duration = Duration::from_secs(120);

/// Removes the bundle through the first manager (of `manager_ids`) whose engine answers at
/// `seed_engine` (`{ip}` replaced), then every node of `groups`. With `pretend`, says what it
/// would remove and removes nothing.
pub async fn down(
    groups: &[Planned],
    manager_ids: &[String],
    seed_engine: &str,
    bundle: &str,
    pretend: bool,
) -> Result<()> {
    let started = Instant::now();
    // 1. The bundle, through a manager: no controller may make nodes while they go.
    let mut tried = Vec::new();
    let mut through = None;
    for ip in manager_ids {
        let socket = seed_engine.replace("{ip}", ip);
        let engine =
            Engine::new(&socket).with_timeouts(Duration::from_secs(2), Duration::from_secs(60));
        match nodes::local(&engine).await {
            Ok(l) if l.active() && l.manager => {
                through = Some((ip.clone(), engine));
                break;
            }
            Ok(l) => tried.push(format!("{socket}: not a swarm manager (state {})", l.state)),
            Err(e) => tried.push(format!("{socket}: {}", e.message)),
        }
    }
    match through {
        Some((ip, engine)) if pretend => outln!(
            "bootstrap --down would remove bundle '{bundle}' through {ip}'s engine ({})",
            engine.address()
        ),
        Some((ip, engine)) => {
            outln!("removing bundle '{bundle}' through {ip}'s engine");
            super::super::swarm::remove(&engine, bundle).await?;
        }
        None => outln!(
            "no manager's engine answers ({}): no bundle to remove; the nodes go below",
            tried.join("; ")
        ),
    }

    // 2. The nodes: the managers first (their controllers go with them), then the rest.
    let instances = DockerInstancePlugin::from_env()?;
    let mut order: Vec<&Planned> = groups.iter().collect();
    order.sort_by_key(|g| g.role != Some(infrakit_flavor_swarm::Role::Manager));
    let mut removed = 0usize;
    loop {
        // A pass that starts after the deadline and still finds nodes is one too many.
        let late = started.elapsed() > NODES_DEADLINE;
        let mut found = 0usize;
        for g in &order {
            let group_tags: Tags = [(tags::GROUP.to_string(), g.valid.id.clone())].into();
            let nodes = instances
                .describe_instances(&group_tags, false)
                .await
                .map_err(|e| anyhow!("listing the nodes of group '{}': {e}", g.valid.id))?;
            found += nodes.len();
            for n in nodes {
                let name = n
                    .logical_id
                    .clone()
                    .or_else(|| n.tags.get(tags::LOGICAL_ID).cloned())
                    .unwrap_or_default();
                if pretend {
                    outln!(
                        "bootstrap --down would remove node {} {name} (group '{}')",
                        n.id,
                        g.valid.id
                    );
                    continue;
                }
                match instances.destroy(&n.id, DestroyContext::default()).await {
                    Ok(()) => {
                        removed += 1;
                        outln!("removed node {} {name} (group '{}')", n.id, g.valid.id);
                    }
                    // Gone meanwhile: what was wanted.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(anyhow!("removing node {}: {e}", n.id)),
                }
            }
        }
        if found == 0 || pretend {
            break;
        }
        if late {
            return Err(anyhow!(
                "nodes of the file's groups keep appearing after {NODES_DEADLINE:?} (a group \
                 controller still runs somewhere: remove the bundle with `infrakit swarm remove` \
                 on a manager's engine), then run bootstrap --down again"
            ));
        }
    }
    if !pretend {
        outln!(
            "bootstrap --down: removed {removed} node(s) of {} group(s) in {:.1} s (images, \
             networks and the registry are left as they are)",
            groups.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
