//! The InfraKit plugin SDK.
//!
//! Three layers, each usable on its own:
//! - [`spi`]: the types (InfraKit's JSON field names) and the async traits a plugin implements.
//! - [`rpc`]: the wire protocol — Docker's plugin envelope (`POST /<Interface>.<Method>` with JSON on a
//!   unix socket) — as a server that serves trait objects and clients that implement the same traits,
//!   so a caller cannot tell a local plugin from a remote one.
//! - [`discovery`]: a plugin name (`flavor-swarm/manager`) to a socket.
//!
//! A plugin author writes `use infrakit_sdk::prelude::*;`, implements e.g.
//! [`spi::instance::InstancePlugin`] and calls [`run::instance`] from `main` (see
//! `crates/sdk/examples/`), then checks the plugin with [`conformance`].
//!
//! Feature `run` (default): [`run`] and [`logging`], which bring in `tracing-subscriber`; without
//! it the crate is a library for talking to plugins and serving them inside another program.

pub mod conformance;
pub mod discovery;
#[cfg(feature = "run")]
pub mod logging;
pub mod metrics;
pub mod prelude;
pub mod resolve;
pub mod rpc;
#[cfg(feature = "run")]
pub mod run;
pub mod spi;

// Re-exported so a plugin depends on this crate alone: the traits use `async_trait` and
// `serde_json::Value`, `run` is built on tokio, and the logs `run` sets up are tracing's.
pub use async_trait;
pub use serde_json;
pub use tokio;
pub use tracing;

pub use spi::error::{Error, ErrorKind, Result};
