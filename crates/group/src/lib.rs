//! The group controller.
//!
//! - [`core`]: the pure decision core (no IO, no clock): what to provision and destroy, when.
//! - [`spec`]: the group spec, parsed and checked once ([`spec::parse`]), and its JSON Schema.
//! - [`policy`]: rollout, remediation and scale-down policies of a group spec.
//! - `sim` (feature `sim`, off by default): a simulated backend and invariant checker that drives
//!   the core with seeded faults, for tests and benchmarks only.

pub mod core;
#[cfg(feature = "sim")]
pub mod sim;
pub mod spec;

pub use crate::core::policy;
