//! The simulated backend and invariant checker (see `tests/simulation.rs`).
