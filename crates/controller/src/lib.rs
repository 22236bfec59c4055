//! The group plugin: keeps groups of instances as their committed specs say.
//!
//! [`GroupController`] implements the Group interface. Each group gets a task ([`worker`]) that
//! observes through the instance and flavor plugins, asks the pure decision core
//! (`infrakit_group::core::decide`) what to do, persists what the core must remember in the
//! [`store`], and carries the actions out, bounded in parallel.

pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod record;
pub mod store;
mod sync;
pub mod tags;
pub mod worker;

pub use controller::GroupController;
pub use store::{FileStore, GroupStore};
pub use worker::Options;
