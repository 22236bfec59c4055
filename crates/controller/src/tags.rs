//! The tags the controller owns on every instance: defined once, in the SDK.

pub use infrakit_sdk::spi::tags::{CONFIG_HASH, GROUP, LOGICAL_ID};
