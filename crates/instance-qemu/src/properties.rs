//! The instance properties: what one VM looks like, as InfraKit JSON.
//!
//! Field names are PascalCase like the rest of InfraKit's JSON; unknown fields are refused (a typo
//! must not silently boot a VM without its memory or its network). [`Properties::parse`] checks
//! everything that can be checked without starting QEMU (paths exist, sizes are sane), so a
//! group commit is refused with a message that names the field instead of failing at provision.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use infrakit_sdk::{Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most memory one VM may ask for, in MiB (a typo such as 1280000 must not reach QEMU).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The most virtual CPUs one VM may ask for.
pub const MAX_CPUS: u32 = 64;
/// How long Destroy waits for the guest to power down after the ACPI button, by default.
pub const DEFAULT_POWERDOWN_TIMEOUT_SECS: u64 = 20;

/// One VM. A guest made by `make vm-image` needs only `ImageDir`:
///
/// ```json
/// {"ImageDir": "/var/lib/infrakit/vm-image/current",
///  "CPUs": 1, "Memory": 128,
///  "Network": {"Bridge": "br-infrakit", "Prefix": 24, "Gateway": "10.123.0.1"}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Properties {
    /// A directory made by `make vm-image`: `Kernel`, `Initrd` and `Image` default to its
    /// `vmlinux`, `initrd.gz` and `rootfs.raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_dir: Option<PathBuf>,
    /// The guest kernel (direct kernel boot: an uncompressed `vmlinux` or a `bzImage`). Without a
    /// kernel, the VM boots `Image` through its firmware like a PC (a user's own bootable disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The initramfs given with `Kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The base disk image (raw or qcow2), never written: each VM writes to its own qcow2 overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// The overlay's size (`qemu-img` syntax: `2G`, `512M`); the base image's size by default.
    /// The guest's file system is not grown with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<String>,
    /// Virtual CPUs (default 1).
    #[serde(default = "one", rename = "CPUs")]
    pub cpus: u32,
    /// Memory in MiB (default 128).
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// The network the VM's tap joins; none (no network card) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Extra kernel command line arguments (only with `Kernel`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_args: String,
    /// `auto` (default: KVM when it can run a guest here, else TCG), `kvm` or `tcg`.
    #[serde(default)]
    pub accel: AccelChoice,
    /// Seconds Destroy waits for the guest to power down after the ACPI button before it kills
    /// QEMU (default 20).
    #[serde(default = "default_powerdown_timeout")]
    pub powerdown_timeout: u64,
}

/// Where the VM's network card is plugged in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Network {
    /// A Linux bridge in the plugin's network namespace; the VM's tap is made a port of it.
    pub bridge: String,
    /// The prefix length of the guest's static address (from an IPv4 `LogicalID`), default 24.
    #[serde(default = "default_prefix")]
    pub prefix: u8,
    /// The guest's default route, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The first three bytes of every MAC address (default `52:54:00`, QEMU's); the last three are
    /// derived from the `LogicalID` (a pet keeps its MAC across re-creation) or else the ID.
    #[serde(default = "default_mac_prefix")]
    pub mac_prefix: String,
}

/// Which accelerator runs the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

fn one() -> u32 {
    1
}
fn default_memory() -> u32 {
    128
}
fn default_prefix() -> u8 {
    24
}
fn default_powerdown_timeout() -> u64 {
    DEFAULT_POWERDOWN_TIMEOUT_SECS
}
fn default_mac_prefix() -> String {
    "52:54:00".into()
}

/// The files a VM boots from, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub image: PathBuf,
}

impl Properties {
    /// Parses and checks `value`; the error names the field and says what to write instead.
    pub fn parse(value: &Value) -> Result<Properties> {
        let value = match value {
            Value::Null => return Err(Error::invalid(
                "instance-qemu needs properties: at least {\"ImageDir\": \"/var/lib/infrakit/vm-image/current\"} \
                 (a guest made by `make vm-image`) or Kernel/Initrd/Image",
            )),
            v => v,
        };
        let props: Properties = serde_json::from_value(value.clone()).map_err(|e| {
            Error::invalid(format!(
                "invalid instance-qemu properties: {e}; the fields are ImageDir, Kernel, Initrd, \
                 Image, DiskSize, CPUs, Memory, Network {{Bridge, Prefix, Gateway, MacPrefix}}, \
                 KernelArgs, Accel, PowerdownTimeout (see docs/vm.md)"
            ))
        })?;
        props.check()?;
        Ok(props)
    }

    fn check(&self) -> Result<()> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(Error::invalid(format!(
                "CPUs is {}: give 1 to {MAX_CPUS}",
                self.cpus
            )));
        }
        if self.memory < 32 || self.memory > MAX_MEMORY_MIB {
            return Err(Error::invalid(format!(
                "Memory is {} MiB: give 32 to {MAX_MEMORY_MIB} (MiB, e.g. 128)",
                self.memory
            )));
        }
        if let Some(size) = &self.disk_size {
            parse_size(size)?;
        }
        if let Some(net) = &self.network {
            if !is_interface_name(&net.bridge) {
                return Err(Error::invalid(format!(
                    "Network.Bridge '{}' is not an interface name (1-15 characters: letters, \
                     digits, '-', '_', '.')",
                    net.bridge
                )));
            }
            if net.prefix == 0 || net.prefix > 32 {
                return Err(Error::invalid(format!(
                    "Network.Prefix is {}: give 1 to 32 (e.g. 24)",
                    net.prefix
                )));
            }
            mac_prefix_bytes(&net.mac_prefix)?;
        }
        if self.kernel.is_none()
            && self.image_dir.is_none()
            && (self.initrd.is_some() || !self.kernel_args.is_empty())
        {
            return Err(Error::invalid(
                "Initrd and KernelArgs need a Kernel (or an ImageDir that has one)",
            ));
        }
        self.boot_files()?;
        Ok(())
    }

    /// `Kernel`, `Initrd` and `Image`, from `ImageDir` where not given, each checked to be a
    /// readable file.
    pub fn boot_files(&self) -> Result<BootFiles> {
        let from_dir = |name: &str| self.image_dir.as_ref().map(|d| d.join(name));
        let kernel = self.kernel.clone().or_else(|| from_dir("vmlinux"));
        let initrd = self.initrd.clone().or_else(|| from_dir("initrd.gz"));
        let image = self.image.clone().or_else(|| from_dir("rootfs.raw"));
        if let Some(dir) = &self.image_dir {
            if !dir.is_dir() {
                return Err(Error::invalid(format!(
                    "ImageDir {} is not a directory; build the guest with `make vm-image` \
                     (it lands in /var/lib/infrakit/vm-image/current) or give Kernel/Initrd/Image",
                    dir.display()
                )));
            }
        }
        let Some(image) = image else {
            return Err(Error::invalid(
                "no disk image: give Image (a raw or qcow2 file) or ImageDir (made by `make vm-image`)",
            ));
        };
        for (field, path) in [
            ("Kernel", kernel.as_deref()),
            ("Initrd", initrd.as_deref()),
            ("Image", Some(image.as_path())),
        ] {
            if let Some(path) = path {
                check_file(field, path)?;
            }
        }
        Ok(BootFiles {
            kernel,
            initrd,
            image,
        })
    }
}

fn check_file(field: &str, path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::invalid(format!(
            "{field} {} is a relative path: give an absolute one",
            path.display()
        )));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::invalid(format!(
            "{field} {} is not a regular file",
            path.display()
        ))),
        Err(e) => Err(Error::invalid(format!(
            "{field} {} cannot be read ({e}); build the guest with `make vm-image` or fix the path",
            path.display()
        ))),
    }
}

/// `2G`, `512M`, `1048576` (bytes) to bytes.
pub fn parse_size(size: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "DiskSize '{size}' is not a size: write e.g. 2G, 512M or 1024K"
        ))
    };
    let s = size.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).filter(|b| *b > 0).ok_or_else(bad)
}

/// Linux's rule for interface names, kept to characters that need no quoting anywhere.
pub fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `52:54:00` to three bytes; a multicast first byte is refused (a NIC address must be unicast).
pub fn mac_prefix_bytes(prefix: &str) -> Result<[u8; 3]> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "Network.MacPrefix '{prefix}' {why}: write three hex bytes such as 52:54:00"
        ))
    };
    let parts: Vec<&str> = prefix.split(':').collect();
    if parts.len() != 3 {
        return Err(bad("is not three bytes"));
    }
    let mut out = [0u8; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad("is not three bytes"));
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad("is not hex"))?;
    }
    if out[0] & 1 == 1 {
        return Err(bad("is a multicast address"));
    }
    Ok(out)
}

/// The JSON Schema of [`Properties`] (`infrakit-instance-qemu --schema` prints it).
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Properties)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = Properties::parse(&json!({"Memroy": 128})).unwrap_err();
        assert!(e.message.contains("Memroy"), "{e}");
        let e = Properties::parse(&json!({"Network": {"Bridge": "br0", "Mask": 1}})).unwrap_err();
        assert!(e.message.contains("Mask"), "{e}");
    }

    #[test]
    fn a_missing_image_is_named() {
        let e = Properties::parse(&json!({"Image": "/nonexistent/disk.raw"})).unwrap_err();
        assert!(
            e.message
                .contains("Image /nonexistent/disk.raw cannot be read"),
            "{e}"
        );
        let e = Properties::parse(&json!({"ImageDir": "/nonexistent"})).unwrap_err();
        assert!(e.message.contains("make vm-image"), "{e}");
        let e = Properties::parse(&json!({})).unwrap_err();
        assert!(e.message.contains("no disk image"), "{e}");
    }

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert!(parse_size("2GB").is_err());
        assert!(parse_size("0").is_err());
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.raw");
        std::fs::write(&img, b"x").unwrap();
        let ok = json!({"Image": img, "Memory": 64});
        assert_eq!(Properties::parse(&ok).unwrap().cpus, 1);
        let e = Properties::parse(&json!({"Image": img, "Memory": 4})).unwrap_err();
        assert!(e.message.contains("Memory is 4"), "{e}");
        let e = Properties::parse(&json!({"Image": img, "CPUs": 0})).unwrap_err();
        assert!(e.message.contains("CPUs"), "{e}");
        let e =
            Properties::parse(&json!({"Image": img, "Network": {"Bridge": "a b"}})).unwrap_err();
        assert!(e.message.contains("Bridge"), "{e}");
        let e = Properties::parse(
            &json!({"Image": img, "Network": {"Bridge": "br0", "MacPrefix": "01:00:00"}}),
        )
        .unwrap_err();
        assert!(e.message.contains("multicast"), "{e}");
    }

    #[test]
    fn the_schema_names_the_fields() {
        let s = schema().to_string();
        for field in [
            "ImageDir",
            "CPUs",
            "Memory",
            "Bridge",
            "MacPrefix",
            "PowerdownTimeout",
        ] {
            assert!(s.contains(field), "{field} missing from {s}");
        }
    }
}
