//! Steps 1 and 2 of a bootstrap: the seed (the manager group's first logical ID), made with the
//! built-in instance-docker on this machine's engine unless it exists, then its engine leading a
//! swarm.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use infrakit_docker::swarm::nodes;
use infrakit_docker::Engine;
use infrakit_flavor_swarm::{Role, SwarmFlavor};
use infrakit_instance_docker::DockerInstancePlugin;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Index};
use infrakit_sdk::spi::instance::{InstancePlugin, Spec, Tags};
use infrakit_sdk::spi::tags;
use serde_json::Value;

use super::plan::Planned;
use crate::output::outln;

/// The seed as the file describes it, checked as the manager group's flavor and instance plugin
/// would check it.
pub(super) struct Seed<'a> {
    pub managers: &'a Planned,
    /// The seed's logical ID (its address).
    pub id: String,
    /// Where this machine reaches the seed's engine.
    pub socket: String,
    flavor: SwarmFlavor,
    flavor_props: Value,
}

impl<'a> Seed<'a> {
    /// Checks the manager group's flavor properties (flavor-swarm/manager's own validation) and
    /// that its nodes are made with instance-docker, which bootstrap runs itself for the seed.
    pub async fn new(managers: &'a Planned, ids: &[String], seed_engine: &str) -> Result<Seed<'a>> {
        let id = ids
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("group '{}': no logical ID", managers.valid.id))?;
        let flavor = SwarmFlavor::new(Role::Manager);
        let flavor_props = managers
            .valid
            .properties
            .flavor
            .properties
            .clone()
            .unwrap_or_default();
        let allocation = AllocationMethod {
            size: 0,
            logical_ids: ids.to_vec(),
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
        let socket = seed_engine.replace("{ip}", &id);
        Ok(Seed {
            managers,
            id,
            socket,
            flavor,
            flavor_props,
        })
    }

    /// Step 1: makes the seed unless a container of the manager group has its logical ID already.
    /// Returns the seed's container ID on this machine's engine.
    pub async fn make(&self, instances: &DockerInstancePlugin, started: Instant) -> Result<String> {
        let group = &self.managers.valid;
        let seed = &self.id;
        let group_tags: Tags = [(tags::GROUP.to_string(), group.id.clone())].into();
        let existing = instances.describe_instances(&group_tags, false).await?;
        if let Some(d) = existing.iter().find(|d| {
            d.logical_id.as_deref() == Some(seed.as_str())
                || d.tags.get(tags::LOGICAL_ID) == Some(seed)
        }) {
            outln!("seed {seed}: exists ({}), kept", d.id);
            return Ok(d.id.clone());
        }
        // Tagged as the controller tags a member of the group (group, config hash, logical ID),
        // so the swarm's controller adopts the seed instead of making it again.
        let mut owned = group_tags;
        owned.insert(tags::CONFIG_HASH.to_string(), group.hash.clone());
        owned.insert(tags::LOGICAL_ID.to_string(), seed.clone());
        let spec = Spec {
            properties: group.properties.instance.properties.clone(),
            tags: owned.clone(),
            logical_id: Some(seed.clone()),
            ..Spec::default()
        };
        let index = Index {
            group: group.id.clone(),
            sequence: 0,
        };
        let mut spec = self.flavor.prepare_seed(&self.flavor_props, spec, &index)?;
        spec.tags.extend(owned);
        let id = instances
            .provision(spec)
            .await
            .map_err(|e| anyhow!("making the seed {seed}: {e}"))?;
        outln!(
            "seed {seed}: made {id} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        Ok(id)
    }

    /// Step 2: waits (until `deadline`) for the seed's engine to lead a swarm; returns that engine.
    pub async fn wait_for_swarm(
        &self,
        started: Instant,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Engine> {
        let seed = &self.id;
        let socket = &self.socket;
        let engine =
            Engine::new(socket).with_timeouts(Duration::from_secs(2), Duration::from_secs(300));
        loop {
            match nodes::local(&engine).await {
                Ok(l) if l.active() && l.manager => {
                    outln!(
                        "seed {seed}: swarm running, node {} ({:.1} s)",
                        l.node_id,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(engine);
                }
                Ok(l) if Instant::now() > deadline => bail!(
                    "the seed's engine at {socket} answers but is not a swarm manager (state {}) \
                     after {timeout:?}: see the seed container's log (docker logs)",
                    l.state,
                ),
                Err(e) if Instant::now() > deadline => bail!(
                    "the seed's engine did not answer at {socket} within {timeout:?} ({e}): is the \
                     socket directory bound as the example does (INFRAKIT_NODE_SOCKET_DIR), and did \
                     the seed start (docker logs)?",
                ),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}
