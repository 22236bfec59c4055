//! The group controller on a swarm: the swarm's leader's controller acts, the others stand by.
//!
//! - [`swarm_leader`]: [`SwarmLeadership`], the controller's `Leadership` from the engine's own
//!   view of the swarm (this node is the raft leader, or it is not).
//! - [`swarm_store`]: [`SwarmStore`], the controller's `GroupStore` in the swarm's replicated
//!   store (one config per group record revision).
//!
//! The swarm's own raft elects and replicates; nothing here is a consensus of ours. This crate is
//! what joins the controller (which knows nothing of Docker) to the engine library (which knows
//! nothing of the controller).

pub mod swarm_leader;
pub mod swarm_store;

pub use swarm_leader::SwarmLeadership;
pub use swarm_store::SwarmStore;
