//! The tags the controller owns on every instance.

pub const GROUP: &str = "infrakit.group";
pub const CONFIG_HASH: &str = "infrakit.config.hash";
pub const LOGICAL_ID: &str = "infrakit.logical_id";
