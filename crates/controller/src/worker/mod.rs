//! One task per group: observe, ask the pure core what to do, persist what it must remember, carry
//! the actions out through the plugins, and sleep until the next event, deadline or poll.
//!
//! - [`state`]: what the controller and the tasks share, and the one way a record changes;
//! - [`task`]: the loop and one pass (observe, decide, write ahead, act);
//! - [`describe`]: the instance plugins' observations, one at a time per plugin, shared by groups;
//! - [`observe`]: the flavor's verdicts for the pass;
//! - [`execute`]: provisions and destroys through the plugins.
//!
//! Everything the core needs to know about work in progress (provisions started and not yet
//! observed, destroys under way) lives in `GroupState`, under one lock, and is registered in the
//! same critical section that takes the decision, so two passes never start the same work twice.
//! The rules applied between decisions (health trust, provision visibility, convergence) are the
//! core's (`infrakit_group::core::rules`); this module only does IO.

mod describe;
mod execute;
mod observe;
mod report;
mod state;
mod task;
mod watch;

pub(crate) use describe::{max_age, Observations};
pub(crate) use execute::destroy_now;
pub use state::Options;
pub(crate) use state::{now_ms, observe_instance, write_locked, Ctx, Group};
pub(crate) use task::run;
