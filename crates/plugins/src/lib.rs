//! InfraKit's built-in plugins, each usable in-process (as a trait object) or served on a socket
//! with `infrakit_sdk::rpc::server`:
//!
//! - [`instance_file`]: an instance plugin whose instances are JSON files in a directory. It is the
//!   backend for trying InfraKit out and for tests: deleting a file by hand "kills" an instance.
//! - [`instance_docker`]: an instance plugin whose instances are containers on the Docker engine
//!   (reached through `infrakit-docker`'s engine client).
//! - [`flavor_vanilla`]: a flavor that adds fixed init lines, tags and attachments, and calls an
//!   instance healthy unless its backend says otherwise (an exited container).
//! - [`flavor_combo`]: a flavor made of other flavors, applied in order, reached through the SDK's
//!   `PluginResolver` (plugin discovery in production, in-process flavors in `up` and tests).
//! - [`flavor_zookeeper`]: each instance a member of a ZooKeeper ensemble whose members are the
//!   group's logical IDs (IPv4 addresses); health from the member's `srvr` answer.
//! - [`flavor_swarm`]: each instance a Docker host in a swarm (managers as pets by address,
//!   workers as cattle): joins through its boot script, health from the swarm's node list, drain
//!   by demote/drain/remove within quorum.

pub mod flavor_combo;
pub mod flavor_swarm;
pub mod flavor_vanilla;
pub mod flavor_zookeeper;
pub mod instance_docker;
pub mod instance_file;
mod serde_util;
