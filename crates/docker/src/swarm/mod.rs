//! The swarm through the engine: its nodes ([`nodes`]), InfraKit's bundle deployed as plugin
//! services ([`bundle`], [`services`]), and whether this engine manages one ([`is_manager`]).
//! The group controller's store and leadership on a swarm are in `infrakit-manager`, which joins
//! this crate to the controller (so the plugins that use this crate never link the controller).

pub mod bundle;
pub mod nodes;
pub mod services;

use std::time::Duration;

use bollard::models::LocalNodeState;
use infrakit_sdk::Result;

use crate::Engine;

/// How long one question to the engine may take. During an election a survivor's
/// `GET /nodes/<self>` hangs rather than failing (docs/swarm-notes.md): a timeout means "cannot
/// confirm".
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `engine` is a manager of an active swarm (so the controller should follow the swarm's
/// leadership and keep its groups in the swarm's store).
pub async fn is_manager(engine: &Engine) -> Result<bool> {
    let docker = engine.docker()?;
    let info = tokio::time::timeout(CALL_TIMEOUT, docker.info())
        .await
        .map_err(|_| {
            infrakit_sdk::Error::unavailable(format!(
                "the Docker engine at {} did not answer /info within {CALL_TIMEOUT:?}",
                engine.address()
            ))
        })?
        .map_err(|e| engine.error("asking the engine whether it is in a swarm", e))?;
    let swarm = info.swarm.unwrap_or_default();
    Ok(swarm.local_node_state == Some(LocalNodeState::ACTIVE)
        && swarm.control_available == Some(true))
}
