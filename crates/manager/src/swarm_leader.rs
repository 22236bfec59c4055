//! The swarm's leadership as the controller's [`Leadership`]: this node's controller acts while
//! this node is the swarm's leader (`/info` → `Swarm.NodeID`, `/nodes/<id>` →
//! `ManagerStatus.Leader`), asked every [`POLL`].
//!
//! Anything short of a clear "yes, this node leads" within [`CALL_TIMEOUT`] is "follower":
//! an engine that hangs (as survivors' do during an election), no quorum, an unreachable engine.
//! That stops the controller at once; the store is the fence for the moment in between (see
//! docs/store-and-leadership.md).

use std::sync::Arc;
use std::time::Duration;

use infrakit_controller::leader::{Leadership, Role};
use infrakit_docker::bollard::models::LocalNodeState;
use tokio::sync::watch;

use infrakit_docker::swarm::CALL_TIMEOUT;
use infrakit_docker::Engine;

/// How often leadership is asked. An election here takes 10-12 s; a second of lag is small next to
/// it, and two cheap requests a second cost nothing.
pub const POLL: Duration = Duration::from_secs(1);

pub struct SwarmLeadership {
    tx: watch::Sender<Role>,
}

impl SwarmLeadership {
    /// Asks once (so the controller starts knowing its role), then keeps asking every `every` in
    /// a background task that ends when the returned value is dropped.
    pub async fn start(engine: Engine, every: Duration) -> Arc<SwarmLeadership> {
        let first = check(&engine).await;
        let this = Arc::new(SwarmLeadership {
            tx: watch::Sender::new(first),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let role = check(&engine).await;
                let Some(this) = weak.upgrade() else { break };
                this.tx.send_if_modified(|current| {
                    if *current == role {
                        return false;
                    }
                    match &role {
                        Role::Leader => tracing::info!("this node leads the swarm: acting"),
                        Role::Follower { reason } => tracing::info!("standing by: {reason}"),
                    }
                    *current = role;
                    true
                });
            }
        });
        this
    }
}

impl Leadership for SwarmLeadership {
    fn watch(&self) -> watch::Receiver<Role> {
        self.tx.subscribe()
    }
}

/// One look at the swarm: is this node its leader?
pub async fn check(engine: &Engine) -> Role {
    let follower = |reason: String| Role::Follower { reason };
    let docker = match engine.docker() {
        Ok(d) => d,
        Err(e) => return follower(format!("cannot reach the Docker engine: {e}")),
    };
    let info = match tokio::time::timeout(CALL_TIMEOUT, docker.info()).await {
        Err(_) => {
            return follower(format!(
                "the Docker engine did not answer within {CALL_TIMEOUT:?}: cannot confirm this node leads the swarm"
            ))
        }
        Ok(Err(e)) => return follower(engine.error("asking the engine for its swarm", e).message),
        Ok(Ok(info)) => info,
    };
    let swarm = info.swarm.unwrap_or_default();
    if swarm.local_node_state != Some(LocalNodeState::ACTIVE) {
        return follower(format!(
            "this engine is not an active swarm member (state {:?}{}); join it to the swarm, or run \
             the group plugin without swarm mode",
            swarm.local_node_state.unwrap_or_default(),
            swarm
                .error
                .filter(|e| !e.is_empty())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    if swarm.control_available != Some(true) {
        return follower(
            "this node is a swarm worker; only the leader manager's controller acts".into(),
        );
    }
    let Some(node_id) = swarm.node_id.filter(|n| !n.is_empty()) else {
        return follower("the engine does not say which swarm node it is".into());
    };
    match tokio::time::timeout(CALL_TIMEOUT, docker.inspect_node(&node_id)).await {
        Err(_) => follower(format!(
            "the swarm did not answer within {CALL_TIMEOUT:?} (an election may be under way, or \
             the managers lost quorum): standing by until this node is known to lead"
        )),
        Ok(Err(e)) => {
            let e = engine.error("asking the swarm who leads", e);
            if e.message.contains("does not have a leader") {
                follower(no_leader(&e.message))
            } else {
                follower(e.message)
            }
        }
        Ok(Ok(node)) => {
            let status = node.manager_status.unwrap_or_default();
            if status.leader == Some(true) {
                return Role::Leader;
            }
            // A follower's control requests are answered by the leader: one that fails or hangs
            // says the swarm has no leader this node can reach (no quorum), which an operator
            // must hear about, not "another manager acts".
            match tokio::time::timeout(CALL_TIMEOUT, docker.list_nodes(None)).await {
                Ok(Ok(_)) => follower(format!(
                    "this node ({node_id}) is a swarm manager but not the leader: the leader's \
                     controller acts; this one stands by"
                )),
                Ok(Err(e)) => follower(no_leader(
                    &engine.error("asking the swarm for its nodes", e).message,
                )),
                Err(_) => follower(no_leader(&format!(
                    "the swarm did not answer within {CALL_TIMEOUT:?}"
                ))),
            }
        }
    }
}

/// What an operator hears when the swarm has no leader this node can reach.
fn no_leader(detail: &str) -> String {
    format!(
        "the swarm has no leader this node can reach: too few managers may be online for a quorum, \
         so nothing is reconciled. Bring managers back (see `docker node ls` on a manager), or \
         recover the swarm with `docker swarm init --force-new-cluster` on a surviving manager \
         ({detail})"
    )
}
