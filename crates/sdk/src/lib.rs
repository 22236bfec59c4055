//! The InfraKit plugin SDK.
//!
//! Three layers, each usable on its own:
//! - [`spi`]: the types (InfraKit's JSON field names) and the async traits a plugin implements.
//! - [`rpc`]: the wire protocol — Docker's plugin envelope (`POST /<Interface>.<Method>` with JSON on a
//!   unix socket) — as a server that serves trait objects and clients that implement the same traits,
//!   so a caller cannot tell a local plugin from a remote one.
//! - [`discovery`]: a plugin name (`flavor-swarm/manager`) to a socket.
//!
//! A plugin author implements e.g. [`spi::instance::InstancePlugin`] and calls
//! [`rpc::server::serve_instance`].

pub mod discovery;
pub mod resolve;
pub mod rpc;
pub mod spi;

pub use spi::error::{Error, ErrorKind, Result};
