//! InfraKit's service provider interface: what a plugin of each kind is, in InfraKit's own terms.
//!
//! - The types with InfraKit's JSON field names ([`instance`], [`flavor`], [`group`]) and the async
//!   traits a plugin implements.
//! - The wire messages ([`messages`]): the request and reply bodies of every `POST /<Interface>.<Method>`.
//! - The one error type ([`Error`]), whose kind travels over the wire as the HTTP status.
//!
//! Not for: sockets, servers, clients, discovery, logging. Those are the runtime, `infrakit-sdk`,
//! which re-exports everything here under `infrakit_sdk::spi` and `infrakit_sdk::rpc::messages`.
//! This crate does no IO and pulls no runtime (no tokio, no hyper): the group controller's pure
//! decision core builds on it alone.

pub mod backend;
pub mod error;
pub mod flavor;
pub mod group;
pub mod instance;
pub mod messages;
pub mod serde_util;
pub mod shared_tags;
pub mod tags;
mod version;

pub use error::{Error, ErrorKind, Result};
pub use version::{InterfaceSpec, FLAVOR, GROUP, INSTANCE};

/// Whether `s` is safe as a file name: 1 to 128 of letters, digits, '-', '_' and '.', not
/// starting with '.'. Plugin names and group IDs both become file names (a socket, a record).
pub fn is_safe_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
