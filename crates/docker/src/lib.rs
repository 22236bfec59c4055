//! InfraKit and the Docker Engine.
//!
//! - [`engine`]: a minimal client for the engine's API on its unix socket (`GET /plugins`, ...).
//! - [`create`]: a plugin context as an in-memory tar and `POST /plugins/create` (`infrakit plugin create`).
//! - [`source`]: [`EngineSource`], a discovery source finding InfraKit's managed plugins through the
//!   engine. Callers add it with `Discovery::insert(1, ...)` (after the plugins directory, before the
//!   legacy locations); the SDK itself never talks to the engine.

pub mod create;
pub mod engine;
pub mod source;

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
