//! InfraKit and the Docker Engine.
//!
//! - [`engine`]: where the engine is, a bollard client for it pinned to API 1.41, and its failures
//!   as InfraKit errors. bollard is re-exported ([`bollard`]) so that users of this crate (the
//!   `instance-docker` plugin) make typed requests with the same version.
//! - [`plugins`]: the engine's plugin list, with our own request and types (bollard's refuse the
//!   `null`s a 20.10 engine sends).
//! - [`create`]: a plugin context as an in-memory tar and `POST /plugins/create` (`infrakit plugin create`).
//! - [`swarm`]: nodes, join tokens, the bundle as plugin services. (The group controller's store and
//!   leadership on a swarm are in `infrakit-manager`.)
//! - [`source`]: [`EngineSource`], a discovery source finding InfraKit's managed plugins through the
//!   engine. Callers add it with `Discovery::insert(1, ...)` (after the plugins directory, before the
//!   legacy locations); the SDK itself never talks to the engine.

pub use bollard;

pub mod create;
pub mod engine;
pub mod plugins;
pub mod raw;
pub mod source;
pub mod swarm;

pub use engine::Engine;
pub use source::{EngineSource, ENGINE_PLUGINS_DIR_ENV};

use std::sync::Arc;

use infrakit_sdk::discovery::Discovery;

/// The discovery every `infrakit` command and plugin uses: the plugins directory, the engine's
/// managed plugins, the legacy locations.
pub fn discovery_from_env() -> Discovery {
    let mut d = Discovery::from_env();
    d.insert(1, Arc::new(EngineSource::from_env()));
    d
}
