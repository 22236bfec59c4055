//! What the plugin keeps of each VM, in its state directory: one directory per VM,
//! `<state>/<ID>/`, holding
//!
//! - `record.json`: the ID, LogicalID, tags, the spec's properties, the tap's name, the accelerator
//!   (written atomically: a temporary file renamed over it);
//! - `qmp.sock`: QEMU's QMP socket; `qemu.pid`: QEMU's pid file;
//! - `disk.qcow2`: the VM's overlay of the base image; `console.log`: its serial console;
//! - `meta`, `init`, `tags.json`: what the guest reads over fw_cfg.
//!
//! The directory is made before QEMU starts and removed after it is gone, so a restarted plugin
//! finds every VM it started (and the leftovers of one it was starting when it died).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use infrakit_sdk::spi::instance::{LogicalId, Tags};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const RECORD: &str = "record.json";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const PID_FILE: &str = "qemu.pid";
pub const DISK: &str = "disk.qcow2";
pub const CONSOLE: &str = "console.log";
pub const META: &str = "meta";
pub const INIT: &str = "init";
pub const TAGS: &str = "tags.json";

/// The longest path a unix socket can have (`sun_path` less its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// One VM as the plugin keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Record {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<LogicalId>,
    #[serde(default)]
    pub tags: Tags,
    /// The properties it was provisioned with, as given.
    #[serde(default)]
    pub properties: Value,
    /// The tap QEMU made for it, if it has a network card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The guest's static address, from an IPv4 LogicalID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub accel: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// A VM's directory and the paths in it.
#[derive(Debug, Clone)]
pub struct VmDir(pub PathBuf);

impl VmDir {
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path(QMP_SOCKET)
    }

    /// Makes the directory (private: it holds the boot script).
    pub fn create(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.0)
            .map_err(|e| {
                Error::internal(format!(
                    "cannot create VM directory {}: {e}",
                    self.0.display()
                ))
            })
    }

    /// Writes `bytes` to `name` atomically (temporary file, then rename), readable by us only.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let target = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            std::fs::rename(&tmp, &target)
        };
        write().map_err(|e| Error::internal(format!("cannot write {}: {e}", target.display())))
    }

    pub fn write_record(&self, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::internal(format!("cannot encode the record: {e}")))?;
        self.write(RECORD, &bytes)
    }

    pub fn read_record(&self) -> std::result::Result<Record, String> {
        let path = self.path(RECORD);
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The pid QEMU wrote, if any.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Removes the directory and everything in it; a directory already gone is fine.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::internal(format!(
                "cannot remove {}: {e}",
                self.0.display()
            ))),
        }
    }
}

/// True when `pid` is a QEMU started for the VM in `dir`: its command line names that VM's QMP
/// socket (so a pid reused by another process after QEMU died is never taken for the VM).
pub fn is_our_qemu(pid: i32, dir: &VmDir) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let socket = dir.socket();
    let needle = socket.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// A fresh VM ID.
pub fn new_id() -> String {
    format!("vm-{:016x}", fastrand::u64(..))
}

/// True when `name` looks like an ID this plugin made (so other files in the state directory
/// are left alone).
pub fn is_vm_id(name: &str) -> bool {
    name.len() == 19 && name.starts_with("vm-") && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks that the state directory leaves room for the socket path.
pub fn check_state_dir(state: &Path) -> Result<()> {
    let longest = state.join(new_id()).join(QMP_SOCKET);
    if longest.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "the state directory {} is too long: a VM's QMP socket {} would exceed the {MAX_SOCKET_PATH} \
             bytes a unix socket path may have; choose a shorter --state-dir",
            state.display(),
            longest.display()
        )));
    }
    Ok(())
}
