//! Service provider interface: what a plugin of each kind is, in InfraKit's own terms.

pub mod backend;
pub mod changes;
pub mod error;
pub mod flavor;
pub mod group;
pub mod instance;
pub(crate) mod serde_util;
pub mod shared_tags;
pub mod tags;
mod version;

pub use version::{InterfaceSpec, FLAVOR, GROUP, INSTANCE};
