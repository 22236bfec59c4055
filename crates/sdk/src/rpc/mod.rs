//! The wire protocol: Docker's plugin envelope with InfraKit's JSON.
//!
//! - `POST /Plugin.Activate` → `{"Implements": ["infrakit.instance/1.0"]}`
//! - `POST /<Interface>.<Method>` with a JSON body whose fields are InfraKit's (`Spec`, `Tags`, ...),
//!   plus `"Type"` naming a sub-type when the caller asked for `plugin/subtype`.
//! - 200 with the JSON result, or a 4xx/5xx status with `{"Err": "message"}`.
//!
//! InfraKit v0.5's JSON-RPC 2.0 (`POST /`) is answered on the same socket, and spoken to plugins
//! that do not answer `Plugin.Activate`: see [`v05`].

pub mod client;
pub mod connections;
pub mod long_polls;
pub use infrakit_spi::messages;
pub mod open_files;
pub mod server;
mod transport;
pub mod v05;

/// The content type of Docker's plugin protocol, sent on every request and reply.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Requests larger than this are refused with 413: no InfraKit request comes near it, and it keeps a
/// confused or hostile client from making a plugin allocate without bound.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// The longest an `Instance.Changes` long poll is held by the server, whatever the caller asked:
/// under the client's default call timeout (`client::DEFAULT_TIMEOUT`) and the server's idle
/// timeout, so neither side gives up on a connection that is merely waiting.
pub const MAX_CHANGES_WAIT: std::time::Duration = std::time::Duration::from_secs(55);

/// Replies larger than this are refused by the client (a describe of 100,000 instances fits).
pub const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;
