//! The pure decision core of the group controller.
//!
//! [`decide`] takes the committed spec ([`Desired`]), what the executor observes ([`Observed`]), what
//! the controller remembers ([`Memory`]) and the time, and returns the actions to take, the memory
//! to persist, when to decide again at the latest, and a status. It does no IO, reads no clock and
//! draws no random number, so it can be driven by a simulation for thousands of steps (see
//! `crate::sim` and `docs/group-core.md`).

mod backoff;
mod command;
mod decide;
mod hash;
mod memory;
mod observe;
pub mod policy;
mod preview;
mod remediate;
mod rollout;
pub mod rules;
mod scale;
mod types;
mod view;

pub use command::command;
pub use decide::decide;
pub use hash::{config_hash, write_canonical};
pub use memory::{
    slot_key, Backoff, Doom, InflightProvision, InstanceMemory, Memory, OwedReplacement,
    UpdateProgress, MEMORY_FORMAT,
};
pub use policy::Policy;
pub use preview::preview;
pub use types::{
    Action, Allocation, Cause, Command, Decision, Desired, Observed, ObservedInstance,
    PendingProvision, Status, UpdateState, UpdateStatus,
};

#[cfg(test)]
mod tests;
