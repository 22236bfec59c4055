//! `instance-qemu`: an InfraKit instance plugin whose instances are QEMU virtual machines.
//!
//! Each instance is one `qemu-system-x86_64` process, started daemonized so that it outlives the
//! plugin: a restarted or upgraded plugin adopts the VMs it finds in its state directory and
//! never starts a second QEMU for one. Guests boot a kernel directly (a guest made by
//! `make vm-image`) or a user's own disk image; each writes to its own qcow2 overlay. The boot
//! script (`Init`), the tags and the VM's identity reach the guest over QEMU's fw_cfg; a
//! `LogicalID` that is an IPv4 address becomes the guest's static address on the bridge named in
//! its properties. See docs/vm.md for how it works and its limits.
//!
//! What it is not: a VM manager with storage pools, live migration or consoles; it does what the
//! group controller needs (provision, describe, label, destroy, change notifications), with
//! nothing left behind.
//!
//! Depends on the SDK and small crates only (no controller, no Docker code): a plugin beside the
//! others, not above them.

pub mod accel;
pub mod launch;
pub mod plugin;
pub mod properties;
pub mod qmp;
pub mod record;

pub use plugin::{Config, QemuPlugin};
pub use properties::Properties;
