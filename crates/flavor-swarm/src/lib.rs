//! `flavor-swarm`: each instance is a Docker host in a swarm, as a manager
//! (`flavor-swarm/manager`) or a worker (`flavor-swarm/worker`).
//!
//! Managers are pets: `Allocation.LogicalIDs` lists their IPv4 addresses (what each advertises to
//! the swarm), an odd number of them (a raft of an even size tolerates no more failures than the
//! odd size below it). Workers are cattle (`Allocation.Size`), or pets if a group wants that.
//!
//! The flavor talks to its own node's engine (`Docker`, default `/var/run/docker.sock`): in a
//! swarm that InfraKit manages, the flavor runs on every manager, and the leader's controller
//! calls the flavor on the leader's node. Properties, all optional (unknown fields are refused):
//!
//! ```json
//! {"Docker": "/var/run/docker.sock", "DownFor": "20s", "JoinFor": "5m",
//!  "DrainFor": "60s", "EngineLabels": {"zone": "a"}}
//! ```
//!
//! - **Prepare** asks the engine for the join tokens and the reachable managers' addresses, and
//!   makes the instance's `Init` a boot script: the engine's labels (`INFRAKIT_NODE_LABELS`, read
//!   by the swarm-node image's entrypoint) link the node to its instance, then, in the background
//!   once the local engine answers, `docker swarm join` (each manager in turn, retried for
//!   `JoinFor`). An engine not in a swarm can only start one: the first manager
//!   (`LogicalIDs[0]`) then gets `docker swarm init`; any other node is refused until a swarm
//!   exists. A pet's earlier node with the same logical ID that is not Ready (the node this
//!   instance replaces) is removed from the swarm first, so the raft never counts a ghost.
//! - **Healthy**: the node linked to the instance (engine label `infrakit.link`) is Ready (and,
//!   for a manager, Reachable in the raft) → healthy; not in the swarm yet → unknown, until
//!   `JoinFor` after Prepare, then unhealthy; down or unreachable for `DownFor` → unhealthy; a
//!   node whose container the instance plugin reports exited or dead → unhealthy at once.
//!   The flavor on the swarm leader's node also removes this group's nodes that have been down
//!   for `DownFor` and belong to no instance it is asked about (a node container removed by hand
//!   leaves such a ghost behind).
//! - **Leading**: the member whose node leads the raft: the controller replaces it last.
//! - **Drain**: a manager is demoted first (refused, with the reason, if the managers left
//!   reachable would be fewer than a majority), then any node is drained (tasks move, for at most
//!   `DrainFor`) and removed from the swarm. The flavor never drains the node it runs on while
//!   another manager can: it demotes it, which hands the raft's leadership over, and refuses, so
//!   the new leader's controller (on another node) finishes the job.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use infrakit_docker::swarm::nodes::{self, JoinInfo, NodeHealth, SwarmNode};
use infrakit_docker::Engine;
use infrakit_sdk::spi::backend::BackendState;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use infrakit_sdk::spi::instance::{Description, InstanceId, Spec};
use infrakit_sdk::spi::tags::GROUP;
use infrakit_sdk::{Error, ErrorKind, Result};
use serde::Deserialize;
use serde_json::Value;

/// Instance tag and engine label linking a node to its instance.
pub const LINK: &str = "infrakit.link";
/// Engine label naming the node's group.
pub const LABEL_GROUP: &str = "infrakit.group";
/// Engine label holding a pet's logical ID.
pub const LABEL_LOGICAL_ID: &str = "infrakit.logical-id";
/// Instance tag: the node's role (`manager` or `worker`).
pub const TAG_ROLE: &str = "infrakit.swarm.role";
/// Instance tag: when Prepare made the instance's boot script (Unix seconds), for `JoinFor`.
pub const TAG_PREPARED: &str = "infrakit.swarm.prepared";

/// Which kind of swarm node the sub-type makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Properties {
    #[serde(default)]
    docker: Option<String>,
    #[serde(default = "default_down_for", with = "humantime_serde_lite")]
    down_for: Duration,
    #[serde(default = "default_join_for", with = "humantime_serde_lite")]
    join_for: Duration,
    #[serde(default = "default_drain_for", with = "humantime_serde_lite")]
    drain_for: Duration,
    #[serde(default)]
    engine_labels: BTreeMap<String, String>,
}

fn default_down_for() -> Duration {
    Duration::from_secs(20)
}
fn default_join_for() -> Duration {
    Duration::from_secs(300)
}
fn default_drain_for() -> Duration {
    Duration::from_secs(60)
}

/// Durations as people write them ("20s", "5m").
mod humantime_serde_lite {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration ({e}); write e.g. \"20s\" or \"5m\""
            ))
        })
    }
}

impl Properties {
    fn parse(v: &Value) -> Result<Properties> {
        let v = infrakit_sdk::spi::flavor::properties_or_empty(v);
        let p: Properties = serde_json::from_value(v).map_err(|e| {
            Error::invalid(format!(
                "flavor-swarm properties: {e} (known: Docker, DownFor, JoinFor, DrainFor, EngineLabels)"
            ))
        })?;
        for (k, v) in &p.engine_labels {
            if k.contains([',', '=', '"']) || v.contains([',', '"']) || k.starts_with("infrakit.") {
                return Err(Error::invalid(format!(
                    "flavor-swarm EngineLabels: '{k}={v}' cannot be used: no ',', '\"' (nor '=' in \
                     the key), and infrakit.* labels are the flavor's own"
                )));
            }
        }
        Ok(p)
    }

    fn engine(&self) -> Engine {
        let engine = match &self.docker {
            Some(path) => Engine::new(path.strip_prefix("unix://").unwrap_or(path)),
            None => Engine::from_env()
                .unwrap_or_else(|| Engine::new(infrakit_docker::engine::DEFAULT_SOCKET)),
        };
        engine.with_timeouts(Duration::from_secs(2), nodes::CALL_TIMEOUT)
    }
}

/// `flavor-swarm/<role>`.
pub struct SwarmFlavor {
    role: Role,
}

impl SwarmFlavor {
    pub fn new(role: Role) -> SwarmFlavor {
        SwarmFlavor { role }
    }
}

fn link_of(d: &Description) -> Option<&str> {
    d.tags
        .get(LINK)
        .map(String::as_str)
        .filter(|l| !l.is_empty())
}

fn logical_id_of(d: &Description) -> Option<&str> {
    d.logical_id.as_deref().or_else(|| {
        d.tags
            .get(infrakit_sdk::spi::tags::LOGICAL_ID)
            .map(String::as_str)
    })
}

/// The node made for `d`: by its link label (a Ready one first: a node that left and rejoined
/// leaves its old record down), else, for a pet, by its address.
fn node_of<'n>(nodes: &'n [SwarmNode], d: &Description) -> Option<&'n SwarmNode> {
    let mut found: Vec<&SwarmNode> = match link_of(d) {
        Some(link) => nodes
            .iter()
            .filter(|n| n.engine_labels.get(LINK).map(String::as_str) == Some(link))
            .collect(),
        None => Vec::new(),
    };
    if found.is_empty() {
        if let Some(lid) = logical_id_of(d) {
            found = nodes.iter().filter(|n| n.addr == lid).collect();
        }
    }
    found.sort_by_key(|n| n.state != NodeHealth::Ready);
    found.first().copied()
}

fn since(t: Option<SystemTime>, now: SystemTime) -> Duration {
    t.and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default()
}

/// The verdict on one instance, from the swarm's node list: a pure function of what was seen.
fn judge(
    role: Role,
    node: Option<&SwarmNode>,
    prepared: Option<SystemTime>,
    props: &Properties,
    now: SystemTime,
) -> Health {
    let Some(n) = node else {
        // Not joined yet; one that never does within JoinFor never will.
        return match prepared {
            Some(p) if since(Some(p), now) > props.join_for => Health::Unhealthy,
            _ => Health::Unknown,
        };
    };
    match n.state {
        NodeHealth::Ready => match role {
            Role::Worker => Health::Healthy,
            Role::Manager if n.manager && n.reachable == Some(true) => Health::Healthy,
            // Joining the raft, or a manager cut off from it.
            Role::Manager if n.manager && since(n.updated_at, now) > props.down_for => {
                Health::Unhealthy
            }
            Role::Manager => Health::Unknown,
        },
        NodeHealth::Down | NodeHealth::Disconnected
            if since(n.updated_at, now) > props.down_for =>
        {
            Health::Unhealthy
        }
        _ => Health::Unknown,
    }
}

/// Whether the instance plugin says the node's machine has stopped (instance-docker's
/// backend state: a container exited or dead).
fn container_ended(d: &Description) -> bool {
    matches!(
        BackendState::read(d.properties.as_ref()).state,
        Some("exited" | "dead")
    )
}

fn prepared_at(d: &Description) -> Option<SystemTime> {
    let secs: u64 = d.tags.get(TAG_PREPARED)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What a node's boot script does with the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `docker swarm init`: the first manager of a swarm that does not exist yet.
    Init { advertise: String },
    Join {
        token: String,
        managers: Vec<String>,
        advertise: Option<String>,
    },
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The boot script: labels for the engine, then (in the background, once the engine answers)
/// init or join, unless the engine is in a swarm already (a restarted node keeps its membership).
fn boot_script(
    role: Role,
    labels: &[(String, String)],
    entry: &Entry,
    join_for: Duration,
) -> String {
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let attempts = (join_for.as_secs() / 3).max(1);
    let act = match entry {
        Entry::Init { advertise } => format!(
            "  docker swarm init --advertise-addr {a} && exit 0\n  say 'swarm init failed'; exit 1\n",
            a = quote(advertise)
        ),
        Entry::Join {
            token,
            managers,
            advertise,
        } => {
            let advertise = advertise
                .as_ref()
                .map(|a| format!(" --advertise-addr {}", quote(a)))
                .unwrap_or_default();
            let managers = managers.iter().map(|m| quote(m)).collect::<Vec<_>>().join(" ");
            format!(
                "  n=0\n  while [ $n -lt {attempts} ]; do\n    for m in {managers}; do\n      \
                 docker swarm join --token \"$token\"{advertise} \"$m\" && exit 0\n    done\n    \
                 n=$((n+1)); sleep 3\n  done\n  say 'could not join the swarm'; exit 1\n"
            )
            .replace("\"$token\"", &quote(token))
        }
    };
    format!(
        "# infrakit flavor-swarm: this host becomes a swarm {role}\n\
         export INFRAKIT_NODE_LABELS=\"${{INFRAKIT_NODE_LABELS:+$INFRAKIT_NODE_LABELS,}}{labels}\"\n\
         (\n  say() {{ echo \"infrakit flavor-swarm: $*\" >&2; }}\n  \
         i=0\n  until docker info >/dev/null 2>&1; do\n    i=$((i+1)); [ $i -gt 600 ] && {{ say 'no engine after 120 s'; exit 1; }}\n    sleep 0.2\n  done\n  \
         case \"$(docker info --format '{{{{.Swarm.LocalNodeState}}}}')\" in active|pending|locked) exit 0;; esac\n\
         {act}) &\n",
        role = role.as_str()
    )
}

/// Whether removing `node` (a manager) leaves a majority of the remaining managers reachable.
/// `Err` says why not.
fn quorum_after_removal(all: &[SwarmNode], node: &SwarmNode) -> std::result::Result<(), String> {
    let managers: Vec<&SwarmNode> = all.iter().filter(|n| n.manager).collect();
    let left = managers.iter().filter(|n| n.id != node.id).count();
    let reachable = managers
        .iter()
        .filter(|n| n.id != node.id && n.reachable == Some(true))
        .count();
    if left == 0 {
        return Err(format!(
            "node {} ({}) is the swarm's last manager: a swarm without managers is lost",
            node.id, node.addr
        ));
    }
    let majority = left / 2 + 1;
    if reachable < majority {
        return Err(format!(
            "removing manager {} ({}) would leave {reachable} of {left} managers reachable, fewer \
             than the {majority} a quorum needs; it is kept until more managers are Ready",
            node.id, node.addr
        ));
    }
    Ok(())
}

/// Why `addr` cannot be a node's advertised address, if it cannot: the other nodes dial it, so it
/// must name one host that they can reach.
fn not_unicast(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() || addr.octets()[0] == 0 {
        Some("the unspecified address ('this host' on 0.0.0.0/8)")
    } else if addr.is_broadcast() {
        Some("the broadcast address")
    } else if addr.is_loopback() {
        Some("a loopback address (127.0.0.0/8: every host's own)")
    } else if addr.is_multicast() {
        Some("a multicast address (224.0.0.0/4)")
    } else if addr.octets()[0] >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else {
        None
    }
}

impl SwarmFlavor {
    async fn entry(
        &self,
        engine: &Engine,
        all: Option<&[SwarmNode]>,
        logical_id: Option<&str>,
        allocation: &AllocationMethod,
    ) -> Result<Entry> {
        let advertise = logical_id
            .filter(|l| l.parse::<Ipv4Addr>().is_ok())
            .map(str::to_string);
        let Some(all) = all else {
            // No swarm yet: only the first manager may start one.
            let first = allocation.logical_ids.first().map(String::as_str);
            return match (self.role, logical_id, first) {
                (Role::Manager, Some(l), Some(f)) if l == f => Ok(Entry::Init {
                    advertise: l.to_string(),
                }),
                _ => Err(Error::unavailable(format!(
                    "the engine at {} is not a manager of a swarm, so there is no join token yet: \
                     the first manager ({}) starts the swarm; this node joins once it has",
                    engine.address(),
                    first.unwrap_or("LogicalIDs[0] of the manager group")
                ))),
            };
        };
        let join = nodes::join_info(engine, all).await?;
        let JoinInfo {
            worker_token,
            manager_token,
            managers,
        } = join;
        let token = match self.role {
            Role::Manager => manager_token,
            Role::Worker => worker_token,
        };
        if token.is_empty() || managers.is_empty() {
            return Err(Error::unavailable(
                "the swarm named no join token or no reachable manager: retrying",
            ));
        }
        Ok(Entry::Join {
            token,
            managers,
            advertise,
        })
    }

    /// The seed of a new swarm (`infrakit bootstrap`): the first manager, whose boot script
    /// starts the swarm whatever the local engine is part of.
    pub fn prepare_seed(&self, properties: &Value, spec: Spec, index: &Index) -> Result<Spec> {
        let props = Properties::parse(properties)?;
        let Some(advertise) = spec.logical_id.clone() else {
            return Err(Error::invalid(
                "the seed of a swarm needs a logical ID: its IPv4 address",
            ));
        };
        Ok(self.boot(&props, spec, &Entry::Init { advertise }, index))
    }

    /// `spec` with the boot script for `entry` and the tags that link the node to it.
    fn boot(&self, props: &Properties, mut spec: Spec, entry: &Entry, index: &Index) -> Spec {
        let lid = spec.logical_id.clone();
        let link = format!("{:016x}", fastrand::u64(..));
        let mut labels: Vec<(String, String)> = vec![
            (LINK.to_string(), link.clone()),
            (LABEL_GROUP.to_string(), index.group.clone()),
        ];
        if let Some(l) = &lid {
            labels.push((LABEL_LOGICAL_ID.to_string(), l.clone()));
        }
        labels.extend(props.engine_labels.clone());
        let script = boot_script(self.role, &labels, entry, props.join_for);
        spec.init = if spec.init.trim().is_empty() {
            script
        } else {
            format!("{script}{}", spec.init)
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        spec.tags.insert(LINK.to_string(), link);
        spec.tags
            .insert(TAG_ROLE.to_string(), self.role.as_str().to_string());
        spec.tags.insert(TAG_PREPARED.to_string(), now.to_string());
        spec
    }

    /// A pet's earlier node (same logical ID) goes before its successor joins. Prepare is asked
    /// for a logical ID only when no instance holds it, so such a node is a leftover, even when
    /// the swarm has not noticed yet that its machine is gone (it still says Ready for a while).
    async fn remove_predecessor(
        &self,
        engine: &Engine,
        all: &[SwarmNode],
        lid: &str,
    ) -> Result<()> {
        for n in all.iter().filter(|n| {
            n.engine_labels.get(LABEL_LOGICAL_ID).map(String::as_str) == Some(lid) || n.addr == lid
        }) {
            self.forget(engine, all, n).await?;
        }
        Ok(())
    }

    /// Takes a node whose machine is gone out of the swarm: a manager leaves the raft first
    /// (refused below quorum), then the node is removed from the node list.
    async fn forget(&self, engine: &Engine, all: &[SwarmNode], n: &SwarmNode) -> Result<()> {
        if n.manager || n.reachable.is_some() {
            quorum_after_removal(all, n).map_err(|why| Error::new(ErrorKind::Conflict, why))?;
            tracing::info!(node = %n.id, addr = %n.addr, "demoting a manager whose machine is gone");
            nodes::demote(engine, n).await?;
            leave_raft(engine, n).await?;
        }
        tracing::info!(node = %n.id, addr = %n.addr, "removing a node whose machine is gone from the swarm");
        nodes::remove(engine, &n.id).await
    }

    /// On the swarm leader only: removes this group's nodes that are down for `DownFor` and are
    /// none of `instances`'.
    async fn sweep_ghosts(&self, engine: &Engine, props: &Properties, instances: &[Description]) {
        let Some(group) = instances.iter().find_map(|d| d.tags.get(GROUP)) else {
            return;
        };
        let Ok(local) = nodes::local(engine).await else {
            return;
        };
        let Ok(all) = nodes::list(engine).await else {
            return;
        };
        if !all.iter().any(|n| n.id == local.node_id && n.leader) {
            return;
        }
        let links: HashSet<&str> = instances.iter().filter_map(link_of).collect();
        let now = SystemTime::now();
        for n in &all {
            let ours = n.engine_labels.get(LABEL_GROUP) == Some(group);
            let linked = n
                .engine_labels
                .get(LINK)
                .is_some_and(|l| links.contains(l.as_str()));
            let gone = matches!(n.state, NodeHealth::Down | NodeHealth::Disconnected)
                && since(n.updated_at, now) > props.down_for;
            if ours && !linked && gone && n.id != local.node_id {
                if let Err(e) = self.forget(engine, &all, n).await {
                    tracing::warn!(node = %n.id, "could not remove a node that is gone: {e}");
                }
            }
        }
    }
}

#[async_trait]
impl FlavorPlugin for SwarmFlavor {
    async fn validate(&self, properties: &Value, allocation: &AllocationMethod) -> Result<()> {
        Properties::parse(properties)?;
        if self.role == Role::Manager {
            let ids = &allocation.logical_ids;
            if ids.is_empty() || allocation.size != 0 {
                return Err(Error::invalid(
                    "flavor-swarm/manager: managers are pets: give Allocation.LogicalIDs (their \
                     IPv4 addresses), not a Size",
                ));
            }
            if ids.len().is_multiple_of(2) {
                return Err(Error::invalid(format!(
                    "flavor-swarm/manager: {} managers is an even number; a raft of {} tolerates \
                     as many failures as one of {} and needs more for a quorum: use 1, 3, 5 or 7",
                    ids.len(),
                    ids.len(),
                    ids.len() - 1
                )));
            }
            for l in ids {
                let Ok(addr) = l.parse::<Ipv4Addr>() else {
                    return Err(Error::invalid(format!(
                        "flavor-swarm/manager: logical ID '{}' is not an IPv4 address; a manager's \
                         logical ID is the address it advertises to the swarm",
                        l.escape_debug()
                    )));
                };
                if let Some(why) = not_unicast(addr) {
                    return Err(Error::invalid(format!(
                        "flavor-swarm/manager: logical ID '{addr}' is {why}, which no other node \
                         can reach; a manager's logical ID is the address it advertises to the \
                         swarm (`docker swarm init --advertise-addr`): give each manager's own \
                         unicast address"
                    )));
                }
            }
        }
        Ok(())
    }

    async fn prepare(
        &self,
        properties: &Value,
        spec: Spec,
        allocation: &AllocationMethod,
        index: &Index,
    ) -> Result<Spec> {
        let props = Properties::parse(properties)?;
        let engine = props.engine();
        let local = nodes::local(&engine).await?;
        let lid = spec.logical_id.clone();
        let all = if local.active() && local.manager {
            let all = nodes::list(&engine).await?;
            if let Some(l) = &lid {
                self.remove_predecessor(&engine, &all, l).await?;
            }
            Some(nodes::list(&engine).await?)
        } else if local.active() {
            return Err(Error::invalid(format!(
                "the engine at {} is a swarm worker: flavor-swarm needs a manager's engine to read \
                 the join tokens (run it on a manager, or set Docker to a manager's socket)",
                engine.address()
            )));
        } else {
            None
        };
        let entry = self
            .entry(&engine, all.as_deref(), lid.as_deref(), allocation)
            .await?;
        Ok(self.boot(&props, spec, &entry, index))
    }

    async fn healthy(&self, properties: &Value, instance: &Description) -> Result<Health> {
        Ok(self
            .healthy_many(properties, std::slice::from_ref(instance))
            .await?
            .pop()
            .unwrap_or_default())
    }

    async fn healthy_many(
        &self,
        properties: &Value,
        instances: &[Description],
    ) -> Result<Vec<Health>> {
        let props = Properties::parse(properties)?;
        let engine = props.engine();
        let all = nodes::list(&engine).await?;
        let now = SystemTime::now();
        let verdicts = instances
            .iter()
            .map(|d| {
                if container_ended(d) {
                    // A node whose container has stopped never comes back by itself.
                    return Health::Unhealthy;
                }
                judge(self.role, node_of(&all, d), prepared_at(d), &props, now)
            })
            .collect();
        self.sweep_ghosts(&engine, &props, instances).await;
        Ok(verdicts)
    }

    async fn leading(
        &self,
        properties: &Value,
        instances: &[Description],
    ) -> Result<Vec<InstanceId>> {
        let props = Properties::parse(properties)?;
        let all = nodes::list(&props.engine()).await?;
        Ok(instances
            .iter()
            .filter(|d| node_of(&all, d).is_some_and(|n| n.leader))
            .map(|d| d.id.clone())
            .collect())
    }

    async fn drain(&self, properties: &Value, instance: &Description) -> Result<()> {
        let props = Properties::parse(properties)?;
        let engine = props.engine();
        let local = nodes::local(&engine).await?;
        let all = nodes::list(&engine).await?;
        let Some(node) = node_of(&all, instance).cloned() else {
            return Ok(()); // never joined, or already gone
        };
        let in_raft = node.manager || node.reachable.is_some();
        if in_raft {
            quorum_after_removal(&all, &node)
                .map_err(|why| Error::new(ErrorKind::Conflict, why))?;
        }
        if node.id == local.node_id {
            if !in_raft {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "node {} ({}) is the one this flavor runs on: it cannot remove itself",
                        node.id, node.addr
                    ),
                ));
            }
            // Leadership moves with the demotion; the new leader's controller finishes.
            nodes::drain(&engine, &node).await?;
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "node {} ({}) is this controller's own: demoted it, which hands the swarm's \
                     leadership to another manager, whose controller replaces it",
                    node.id, node.addr
                ),
            ));
        }
        // One update: a manager leaves the raft and its tasks move at once.
        nodes::drain(&engine, &node).await?;
        if in_raft {
            leave_raft(&engine, &node).await?;
        }
        if node.state == NodeHealth::Ready {
            let drained = wait_until(props.drain_for, || async {
                nodes::busy_tasks(&engine, &node.id)
                    .await
                    .map(|n| n == 0)
                    .unwrap_or(false)
            })
            .await;
            if !drained {
                tracing::warn!(node = %node.id, "tasks still running after {:?}; removing the node anyway", props.drain_for);
            }
        }
        nodes::remove(&engine, &node.id).await
    }
}

/// Waits (at most 30 s) until a demoted manager has left the raft: it cannot be removed before.
async fn leave_raft(engine: &Engine, n: &SwarmNode) -> Result<()> {
    let left = wait_until(Duration::from_secs(30), || async {
        nodes::left_raft(engine, &n.id).await.unwrap_or(false)
    })
    .await;
    if left {
        Ok(())
    } else {
        Err(Error::unavailable(format!(
            "node {} ({}) was demoted but is still in the raft after 30 s; retrying",
            n.id, n.addr
        )))
    }
}

/// Polls `done` every 500 ms for at most `limit`; whether it came true.
async fn wait_until<F, Fut>(limit: Duration, done: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> Properties {
        Properties::parse(&Value::Null).expect("defaults")
    }

    fn node(id: &str, state: NodeHealth, manager: bool, reachable: Option<bool>) -> SwarmNode {
        SwarmNode {
            id: id.into(),
            addr: format!("10.0.0.{}", id.len()),
            state,
            manager,
            reachable,
            updated_at: Some(SystemTime::now() - Duration::from_secs(60)),
            ..SwarmNode::default()
        }
    }

    #[tokio::test]
    async fn managers_must_be_an_odd_number_of_addresses() {
        let f = SwarmFlavor::new(Role::Manager);
        let alloc = |ids: &[&str]| AllocationMethod {
            size: 0,
            logical_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f
            .validate(&Value::Null, &alloc(&["10.0.0.1"]))
            .await
            .is_ok());
        let even = f
            .validate(&Value::Null, &alloc(&["10.0.0.1", "10.0.0.2"]))
            .await;
        assert!(even.expect_err("even").message.contains("even number"));
        let name = f.validate(&Value::Null, &alloc(&["m1"])).await;
        assert!(name.expect_err("not an IP").message.contains("IPv4"));
        for (addr, why) in [
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.9", "reserved"),
        ] {
            let err = f
                .validate(&Value::Null, &alloc(&["10.0.0.1", "10.0.0.2", addr]))
                .await
                .expect_err(addr)
                .message;
            assert!(err.contains(addr) && err.contains(why), "{addr}: {err}");
        }
        let size = f
            .validate(
                &Value::Null,
                &AllocationMethod {
                    size: 3,
                    logical_ids: vec![],
                },
            )
            .await;
        assert!(size.expect_err("cattle").message.contains("pets"));
        let w = SwarmFlavor::new(Role::Worker);
        assert!(w
            .validate(
                &Value::Null,
                &AllocationMethod {
                    size: 2,
                    logical_ids: vec![]
                }
            )
            .await
            .is_ok());
        let typo = w
            .validate(
                &serde_json::json!({"DownFr": "1s"}),
                &AllocationMethod::default(),
            )
            .await;
        assert!(typo.expect_err("typo").message.contains("DownFr"));
    }

    #[test]
    fn health_from_the_node_list() {
        let p = props();
        let now = SystemTime::now();
        let m = Role::Manager;
        let ready = node("a", NodeHealth::Ready, true, Some(true));
        assert_eq!(judge(m, Some(&ready), None, &p, now), Health::Healthy);
        let joining = SwarmNode {
            updated_at: Some(now),
            ..node("a", NodeHealth::Ready, true, Some(false))
        };
        assert_eq!(judge(m, Some(&joining), None, &p, now), Health::Unknown);
        let cut_off = node("a", NodeHealth::Ready, true, Some(false));
        assert_eq!(judge(m, Some(&cut_off), None, &p, now), Health::Unhealthy);
        let down_long = node("a", NodeHealth::Down, true, Some(false));
        assert_eq!(judge(m, Some(&down_long), None, &p, now), Health::Unhealthy);
        let down_now = SwarmNode {
            updated_at: Some(now),
            ..node("a", NodeHealth::Down, false, None)
        };
        assert_eq!(
            judge(Role::Worker, Some(&down_now), None, &p, now),
            Health::Unknown
        );
        assert_eq!(
            judge(Role::Worker, None, Some(now), &p, now),
            Health::Unknown
        );
        let long_ago = now - Duration::from_secs(3600);
        assert_eq!(
            judge(Role::Worker, None, Some(long_ago), &p, now),
            Health::Unhealthy
        );
        let worker = node("w", NodeHealth::Ready, false, None);
        assert_eq!(
            judge(Role::Worker, Some(&worker), None, &p, now),
            Health::Healthy
        );
    }

    #[test]
    fn quorum_is_kept_when_a_manager_goes() {
        let a = node("a", NodeHealth::Ready, true, Some(true));
        let b = node("bb", NodeHealth::Ready, true, Some(true));
        let c = node("ccc", NodeHealth::Ready, true, Some(true));
        let down = node("ccc", NodeHealth::Down, true, Some(false));
        assert!(quorum_after_removal(&[a.clone(), b.clone(), c.clone()], &a).is_ok());
        // One already down: removing a live one leaves 1 of 2 reachable.
        let why =
            quorum_after_removal(&[a.clone(), b.clone(), down.clone()], &a).expect_err("quorum");
        assert!(why.contains("1 of 2"), "{why}");
        // Removing the down one is fine.
        assert!(quorum_after_removal(&[a.clone(), b, down.clone()], &down).is_ok());
        assert!(quorum_after_removal(std::slice::from_ref(&a), &a)
            .expect_err("last")
            .contains("last manager"));
    }

    #[test]
    fn the_boot_script_joins_in_the_background_and_labels_the_engine() {
        let labels = vec![(LINK.to_string(), "abc".to_string())];
        let join = Entry::Join {
            token: "SWMTKN-1-x".into(),
            managers: vec!["10.0.0.1:2377".into(), "10.0.0.2:2377".into()],
            advertise: Some("10.0.0.3".into()),
        };
        let s = boot_script(Role::Manager, &labels, &join, Duration::from_secs(300));
        assert!(
            s.contains("INFRAKIT_NODE_LABELS,}infrakit.link=abc\""),
            "{s}"
        );
        assert!(
            s.contains("docker swarm join --token 'SWMTKN-1-x' --advertise-addr '10.0.0.3' \"$m\""),
            "{s}"
        );
        assert!(
            s.contains("for m in '10.0.0.1:2377' '10.0.0.2:2377'"),
            "{s}"
        );
        assert!(s.contains("{{.Swarm.LocalNodeState}}"), "{s}");
        assert!(s.trim_end().ends_with(") &"), "{s}");
        let init = boot_script(
            Role::Manager,
            &labels,
            &Entry::Init {
                advertise: "10.0.0.1".into(),
            },
            Duration::from_secs(300),
        );
        assert!(
            init.contains("docker swarm init --advertise-addr '10.0.0.1'"),
            "{init}"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn a_node_is_found_by_its_link_ready_first() {
        let mut old = node("old", NodeHealth::Down, false, None);
        old.engine_labels.insert(LINK.into(), "l1".into());
        let mut new = node("new", NodeHealth::Ready, false, None);
        new.engine_labels.insert(LINK.into(), "l1".into());
        let mut d = Description::default();
        d.tags.make_mut().insert(LINK.into(), "l1".into());
        let all = [old, new];
        assert_eq!(node_of(&all, &d).map(|n| n.id.as_str()), Some("new"));
        let pet = Description {
            logical_id: Some("10.0.0.3".into()),
            ..Description::default()
        };
        assert_eq!(node_of(&all, &pet).map(|n| n.id.as_str()), Some("new"));
    }
}
