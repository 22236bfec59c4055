//! Service provider interface: what a plugin of each kind is, in InfraKit's own terms.
//!
//! The types and traits live in `infrakit-spi` (no IO, no runtime); they are re-exported here so
//! a plugin needs this crate alone. [`changes`] is the runtime half of change notifications (a
//! feed that long polls wait on), so it lives here, beside tokio.

pub use infrakit_spi::{backend, error, flavor, group, instance, serde_util, shared_tags, tags};
pub use infrakit_spi::{InterfaceSpec, FLAVOR, GROUP, INSTANCE};

pub mod changes;
