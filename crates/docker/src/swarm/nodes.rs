//! A swarm's nodes as a flavor sees them: who is in the swarm, joined how, Ready or down, leading
//! or not; the tokens and addresses a new node joins with; and the changes a drain makes (demote,
//! drain, remove). Every call goes to one engine, a manager of the swarm (the flavor's own node's
//! engine), with a short deadline: during an election a manager's API hangs rather than failing.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::models::{
    LocalNodeState, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, Reachability,
    TaskState,
};
use bollard::query_parameters::{
    DeleteNodeOptions, ListNodesOptions, ListTasksOptions, UpdateNodeOptions,
};
use infrakit_sdk::{Error, Result};

use crate::Engine;

/// How long one question to a manager may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One node of the swarm.
#[derive(Debug, Clone, Default)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    /// The address the node is reached at (`Status.Addr`).
    pub addr: String,
    pub state: NodeHealth,
    /// When the node's record last changed (its state, among others): for a down node, about
    /// when it went down.
    pub updated_at: Option<SystemTime>,
    /// Its role as the swarm means it to be (a demoted manager is a worker at once).
    pub manager: bool,
    /// Manager in the raft, reachable (None for a worker).
    pub reachable: Option<bool>,
    pub leader: bool,
    pub drained: bool,
    /// The engine's own labels (`dockerd --label`, daemon.json `labels`): how a flavor finds the
    /// node it made.
    pub engine_labels: HashMap<String, String>,
}

/// A node's state as the swarm reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeHealth {
    Ready,
    Down,
    Disconnected,
    #[default]
    Unknown,
}

/// What the engine says of its own swarm membership (`/info`).
#[derive(Debug, Clone, Default)]
pub struct LocalSwarm {
    /// `inactive`, `pending`, `active`, `error`, `locked`.
    pub state: String,
    pub manager: bool,
    pub node_id: String,
}

impl LocalSwarm {
    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

/// How a new node joins: the tokens and the managers' addresses (leader first).
#[derive(Debug, Clone, Default)]
pub struct JoinInfo {
    pub worker_token: String,
    pub manager_token: String,
    pub managers: Vec<String>,
}

async fn within<T>(
    engine: &Engine,
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, bollard::errors::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Err(_) => Err(Error::unavailable(format!(
            "{what}: the Docker engine at {} did not answer within {CALL_TIMEOUT:?} (an election \
             may be under way, or the managers lost quorum)",
            engine.address()
        ))),
        Ok(r) => r.map_err(|e| engine.error(what, e)),
    }
}

/// The engine's own view of its swarm membership.
pub async fn local(engine: &Engine) -> Result<LocalSwarm> {
    let docker = engine.docker()?;
    let info = within(engine, "asking the engine for its swarm", docker.info()).await?;
    let swarm = info.swarm.unwrap_or_default();
    let state = match swarm.local_node_state.unwrap_or_default() {
        LocalNodeState::EMPTY => "inactive".to_string(),
        s => s.to_string(),
    };
    Ok(LocalSwarm {
        state,
        manager: swarm.control_available == Some(true),
        node_id: swarm.node_id.unwrap_or_default(),
    })
}

/// Every node of the swarm.
pub async fn list(engine: &Engine) -> Result<Vec<SwarmNode>> {
    let docker = engine.docker()?;
    let nodes = within(
        engine,
        "listing the swarm's nodes",
        docker.list_nodes(None::<ListNodesOptions>),
    )
    .await?;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let spec = n.spec.unwrap_or_default();
            let status = n.status.unwrap_or_default();
            let description = n.description.unwrap_or_default();
            let ms = n.manager_status;
            SwarmNode {
                id: n.id.unwrap_or_default(),
                hostname: description.hostname.unwrap_or_default(),
                addr: status.addr.unwrap_or_default(),
                state: match status.state {
                    Some(NodeState::READY) => NodeHealth::Ready,
                    Some(NodeState::DOWN) => NodeHealth::Down,
                    Some(NodeState::DISCONNECTED) => NodeHealth::Disconnected,
                    _ => NodeHealth::Unknown,
                },
                updated_at: n
                    .updated_at
                    .and_then(|t| humantime::parse_rfc3339_weak(&t).ok()),
                manager: spec.role == Some(NodeSpecRoleEnum::MANAGER),
                reachable: ms
                    .as_ref()
                    .map(|m| m.reachability == Some(Reachability::REACHABLE)),
                leader: ms.as_ref().and_then(|m| m.leader) == Some(true),
                drained: spec.availability == Some(NodeSpecAvailabilityEnum::DRAIN),
                engine_labels: description
                    .engine
                    .and_then(|e| e.labels)
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// The join tokens and the reachable managers' addresses, the leader's first.
pub async fn join_info(engine: &Engine, nodes: &[SwarmNode]) -> Result<JoinInfo> {
    let docker = engine.docker()?;
    let swarm = within(
        engine,
        "reading the swarm's join tokens",
        docker.inspect_swarm(),
    )
    .await?;
    let tokens = swarm.join_tokens.unwrap_or_default();
    let mut managers: Vec<&SwarmNode> = nodes
        .iter()
        .filter(|n| n.manager && n.reachable == Some(true) && n.state == NodeHealth::Ready)
        .collect();
    managers.sort_by_key(|n| !n.leader);
    Ok(JoinInfo {
        worker_token: tokens.worker.unwrap_or_default(),
        manager_token: tokens.manager.unwrap_or_default(),
        managers: managers
            .iter()
            .map(|n| manager_address(&n.addr))
            .filter(|a| !a.is_empty())
            .collect(),
    })
}

/// A manager's swarm address (`ip:2377`): `Status.Addr` is the IP alone.
fn manager_address(addr: &str) -> String {
    if addr.is_empty() || addr == "0.0.0.0" {
        String::new()
    } else if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:2377")
    }
}

/// Changes a node's spec with `change`, from its current version: an update based on a version
/// the swarm has since moved past (a node's record changes as its role and status settle) is
/// refused "out of sequence", and is then made again on a fresh read, a few times.
async fn update(
    engine: &Engine,
    id: &str,
    what: &str,
    change: impl Fn(&mut NodeSpec),
) -> Result<()> {
    let docker = engine.docker()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = within(engine, what, docker.inspect_node(id)).await?;
        let version = node
            .version
            .and_then(|v| v.index)
            .and_then(|i| i64::try_from(i).ok())
            .unwrap_or_default();
        let mut spec = node.spec.unwrap_or_default();
        change(&mut spec);
        match within(
            engine,
            what,
            docker.update_node(id, spec, UpdateNodeOptions { version }),
        )
        .await
        {
            Err(e) if attempt < 5 && e.message.contains("out of sequence") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Makes a manager a worker: it leaves the raft (a leader hands leadership over first).
pub async fn demote(engine: &Engine, node: &SwarmNode) -> Result<()> {
    update(
        engine,
        &node.id,
        &format!("demoting node {} ({})", node.id, node.addr),
        |spec| spec.role = Some(NodeSpecRoleEnum::WORKER),
    )
    .await
}

/// Sets a node's availability to `drain` (the swarm moves its tasks elsewhere), and makes it a
/// worker if it was a manager: one update, so a manager leaves the raft and its tasks at once.
pub async fn drain(engine: &Engine, node: &SwarmNode) -> Result<()> {
    update(
        engine,
        &node.id,
        &format!("draining node {} ({})", node.id, node.addr),
        |spec| {
            spec.availability = Some(NodeSpecAvailabilityEnum::DRAIN);
            spec.role = Some(NodeSpecRoleEnum::WORKER);
        },
    )
    .await
}

/// Whether node `id` is out of the raft (a worker with no manager status), or gone.
pub async fn left_raft(engine: &Engine, id: &str) -> Result<bool> {
    Ok(list(engine)
        .await?
        .iter()
        .find(|n| n.id == id)
        .is_none_or(|n| !n.manager && n.reachable.is_none()))
}

/// Removes a node from the swarm's node list, down or not (`docker node rm --force`).
pub async fn remove(engine: &Engine, id: &str) -> Result<()> {
    let docker = engine.docker()?;
    match within(
        engine,
        &format!("removing node {id} from the swarm"),
        docker.delete_node(id, Some(DeleteNodeOptions { force: true })),
    )
    .await
    {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// How many of the node's container tasks are still running or about to (drained tasks move).
pub async fn busy_tasks(engine: &Engine, node_id: &str) -> Result<usize> {
    let docker = engine.docker()?;
    let filters = HashMap::from([
        ("node".to_string(), vec![node_id.to_string()]),
        ("desired-state".to_string(), vec!["running".to_string()]),
    ]);
    let tasks = within(
        engine,
        "listing the tasks on a node",
        docker.list_tasks(Some(ListTasksOptions {
            filters: Some(filters),
        })),
    )
    .await?;
    Ok(tasks
        .iter()
        .filter(|t| {
            matches!(
                t.status.as_ref().and_then(|s| s.state),
                Some(TaskState::RUNNING | TaskState::STARTING | TaskState::PREPARING)
            )
        })
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_addresses_get_the_swarm_port() {
        assert_eq!(manager_address("10.0.0.1"), "10.0.0.1:2377");
        assert_eq!(manager_address("10.0.0.1:4000"), "10.0.0.1:4000");
        assert_eq!(manager_address("0.0.0.0"), "");
        assert_eq!(manager_address(""), "");
    }
}
