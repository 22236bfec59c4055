//! The tags the group controller owns on every instance it makes. Instance plugins store them as
//! their backend's labels; flavors may read them. One definition, imported everywhere.

/// The group an instance belongs to: `DescribeInstances` filters on it.
pub const GROUP: &str = "infrakit.group";
/// The config hash of the Instance and Flavor blocks the instance was made from: an instance
/// carrying another one is outdated and is replaced by a rolling update.
pub const CONFIG_HASH: &str = "infrakit.config.hash";
/// The logical ID (pets): at most one instance carries each.
pub const LOGICAL_ID: &str = "infrakit.logical_id";

/// Set by the SDK's client, never stored: the description of this instance could not be read
/// whole (its properties were nested too deep to parse, say), so it carries only its ID, logical
/// ID and tags; the value says why. The controller reports it and counts the instance as usual.
pub const UNREADABLE: &str = "infrakit.unreadable";

/// Every tag the controller owns; a flavor's Prepare cannot change them.
pub const CONTROLLER_TAGS: [&str; 3] = [GROUP, CONFIG_HASH, LOGICAL_ID];
