//! Where committed groups live: one JSON file per group, written atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash at any point leaves either the old record or the new
//! one, never a torn file.
//!
//! The store directory is also the single-manager lock: a controller holds an exclusive lock on
//! `<dir>/.lock` for its lifetime, so two controllers never reconcile the same groups.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use infrakit_sdk::{Error, Result};

use crate::record::GroupRecord;

/// The environment variable naming the store directory.
pub const STORE_ENV: &str = "INFRAKIT_GROUP_STORE";

/// `$INFRAKIT_GROUP_STORE`, else `~/.infrakit/groups`, else `/var/lib/infrakit/groups`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(STORE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".infrakit").join("groups"),
        None => PathBuf::from("/var/lib/infrakit/groups"),
    }
}

pub struct FileStore {
    dir: PathBuf,
    // Held for the store's lifetime: the lock is released when the process exits, however it exits.
    _lock: File,
}

/// Group IDs become file names: keep them to a safe alphabet.
pub fn validate_group_id(id: &str) -> Result<()> {
    if infrakit_sdk::discovery::is_safe_file_name(id) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid group ID '{id}': use letters, digits, '-', '_' and '.' (at most 128, not starting with '.')"
        )))
    }
}

impl FileStore {
    /// Opens (creating) `dir` and takes its lock; a second controller on the same store is refused.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::internal(format!(
                "cannot create the group store {}: {e}",
                dir.display()
            ))
        })?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))
            .map_err(|e| Error::internal(format!("cannot open {}/.lock: {e}", dir.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::conflict(format!(
                    "another group controller is using the store {}; only one may manage groups at a time",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::internal(format!("cannot lock {}/.lock: {e}", dir.display())))
            }
        }
        Ok(FileStore { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every stored group. A record that does not parse is reported and skipped, never deleted: a
    /// person may want it back.
    pub fn load_all(&self) -> Result<Vec<GroupRecord>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            Error::internal(format!(
                "cannot read the group store {}: {e}",
                self.dir.display()
            ))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<GroupRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(file = %path.display(), "skipping unreadable group record: {e}")
                }
            }
        }
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    pub fn save(&self, record: &GroupRecord) -> Result<()> {
        validate_group_id(&record.spec.id)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| {
            Error::internal(format!("cannot encode group '{}': {e}", record.spec.id))
        })?;
        let target = self.path(&record.spec.id);
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", record.spec.id, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::internal(format!(
                "cannot save group '{}' to {}: {e}",
                record.spec.id,
                target.display()
            ))
        })
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot remove group '{id}' from the store: {e}"
                )))
            }
        }
        let _ = File::open(&self.dir).and_then(|d| d.sync_all());
        Ok(())
    }
}
