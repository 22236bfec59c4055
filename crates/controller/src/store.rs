//! Where committed groups live, behind [`GroupStore`]: every write is compare-and-swap on a
//! revision, so a writer that lost its right to write (a second controller, a deposed swarm
//! leader, a task holding a stale copy) cannot overwrite what another wrote.
//!
//! [`FileStore`] is the default: one JSON file per group, written atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash at any point leaves either the old record or the
//! new one, never a torn file. The directory is private (0700, records 0600: specs carry tokens and
//! passwords) and is also the single-manager lock: a controller holds an exclusive lock on the
//! directory itself for its lifetime, so two controllers never reconcile the same groups, and
//! there is no lock file to delete from under a live controller.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use infrakit_group::spec::check_group_id;
use infrakit_sdk::spi::group::GroupSpec;
use infrakit_sdk::{Error, Result};

use crate::record::GroupRecord;

/// The environment variable naming the store directory.
pub const STORE_ENV: &str = "INFRAKIT_GROUP_STORE";

/// The largest record file read back: a spec is limited to a few hundred KB, memory grows by a
/// few hundred bytes per instance. A bigger file is not ours.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// A record's version in the store. 0 means "not stored"; every write makes a new one.
pub type Revision = u64;

/// A record as loaded, with the revision a write must name to replace it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: GroupRecord,
    pub revision: Revision,
}

/// Something in the store that cannot be managed, kept so that a person can be told and can fix
/// it (commit a corrected spec, or free it), never deleted on our own.
#[derive(Debug, Clone)]
pub struct Unusable {
    /// Where it is (a file name).
    pub source: String,
    /// The group it would be, when that much could be read and the ID is a valid one.
    pub id: Option<String>,
    /// The spec as stored, when it could be read.
    pub spec: Option<GroupSpec>,
    pub error: String,
    pub revision: Revision,
}

/// Everything a store holds.
#[derive(Debug, Default)]
pub struct Loaded {
    pub groups: Vec<Stored>,
    pub unusable: Vec<Unusable>,
}

/// A place for group records with compare-and-swap writes.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// For messages: "file store /var/lib/infrakit/groups".
    fn describe(&self) -> String;
    /// Every record, and what could not be read.
    async fn load(&self) -> Result<Loaded>;
    /// Writes `record` if the stored revision of its group is still `expected` (0: there must be
    /// none); returns the new revision. Refused with a Conflict otherwise.
    async fn put(&self, record: &GroupRecord, expected: Revision) -> Result<Revision>;
    /// Removes group `id` if its stored revision is still `expected`.
    async fn delete(&self, id: &str, expected: Revision) -> Result<()>;
    /// Calls `changed` whenever the store may have been written, by this controller or another,
    /// for as long as `changed` returns true. A store shared between controllers that can tell
    /// (the swarm's config events) does, so that a commit through another manager is acted on at
    /// once rather than at the next poll; the default does nothing (the file store has one
    /// writer, and a shared store is re-read every poll anyway).
    fn watch_changes(&self, changed: Box<dyn Fn() -> bool + Send + Sync>) {
        let _ = changed;
    }
}

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
    files: Arc<Files>,
}

/// What a [`FileStore`] shares with the blocking threads that write its records.
struct Files {
    dir: PathBuf,
    /// Held for the store's lifetime: the lock is released when the process exits, however it exits.
    _lock: File,
    revisions: Mutex<Revisions>,
}

/// The revision of every record this process knows. The directory lock makes this process the only
/// writer, so what it wrote last is what is on disk.
#[derive(Default)]
struct Revisions {
    by_id: HashMap<String, Revision>,
    last: Revision,
}

impl Revisions {
    fn next(&mut self) -> Revision {
        self.last += 1;
        self.last
    }
}

fn conflict(id: &str, stored: Revision, expected: Revision) -> Error {
    Error::conflict(format!(
        "group '{id}' changed in the store since it was read (revision {stored}, expected {expected}): \
         not overwriting; try again"
    ))
}

impl FileStore {
    /// Opens (creating, private) `dir` and takes its lock; a second controller on the same store is
    /// refused.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore> {
        let dir = dir.into();
        let shown = dir.display().to_string();
        // Created private; an existing directory keeps its mode (it may be one a person chose,
        // such as a mount point): the records in it are private either way.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::internal(format!("cannot create the group store {shown}: {e}")))?;
        // The directory itself is locked: a lock file could be deleted by hand, and a second
        // controller would then lock a new one and start.
        let lock = File::open(&dir)
            .map_err(|e| Error::internal(format!("cannot open the group store {shown}: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::conflict(format!(
                    "another group controller is using the store {shown}; only one may manage groups at a time"
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::internal(format!("cannot lock the group store {shown}: {e}")))
            }
        }
        Ok(FileStore {
            files: Arc::new(Files {
                dir,
                _lock: lock,
                revisions: Mutex::new(Revisions::default()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    fn revisions(&self) -> std::sync::MutexGuard<'_, Revisions> {
        self.files.revisions()
    }

    fn read(&self, path: &Path, name: &str) -> std::result::Result<GroupRecord, Box<Unusable>> {
        let unusable = |id: Option<String>, spec: Option<GroupSpec>, error: String| {
            Box::new(Unusable {
                source: path.display().to_string(),
                id,
                spec,
                error,
                revision: 0,
            })
        };
        let stem = name.strip_suffix(".json").unwrap_or(name);
        let named = check_group_id(stem).ok().map(|()| stem.to_string());
        let bytes =
            read_limited(path, MAX_RECORD_BYTES).map_err(|e| unusable(named.clone(), None, e))?;
        let (record, warning) = GroupRecord::decode(&bytes)
            .map_err(|e| unusable(named.clone(), None, format!("not a group record: {e}")))?;
        if record.id() != stem {
            // A record renamed by hand (b.json moved to c.json) whose group has no file of its
            // own is moved back under its own name and managed: left where it was, its group
            // would go unmanaged and a commit of group `c` could not be told from it.
            if let Some(own) = restore_misnamed(&self.files.dir, path, record.id()) {
                tracing::warn!(
                    file = %path.display(),
                    "the file holds group '{}': moved back to {}, where its record belongs; \
                     managing it",
                    record.id(),
                    own.display()
                );
                return Ok(record);
            }
            // A copy under another name would be a second controller for the same group; an ID
            // that is not a file name ("../x") would make `free` delete outside the store.
            return Err(unusable(
                named,
                None,
                format!(
                    "the file holds group '{}', but a record's file must be named after its group ID \
                     ({}.json); rename or remove it",
                    record.id().escape_debug(),
                    record.id().escape_debug()
                ),
            ));
        }
        if let Some(w) = warning {
            tracing::warn!(file = %path.display(), "{w}");
        }
        Ok(record)
    }
}

impl Files {
    fn revisions(&self) -> std::sync::MutexGuard<'_, Revisions> {
        self.revisions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        check_group_id(id).map_err(Error::invalid)?;
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Writes a record's bytes if its revision is still `expected`: temp file, fsync, rename,
    /// fsync of the directory. Blocking: runs on tokio's blocking pool.
    fn put(&self, id: &str, bytes: &[u8], expected: Revision) -> Result<Revision> {
        let target = self.path(id)?;
        let mut revisions = self.revisions();
        let stored = revisions.by_id.get(id).copied().unwrap_or(0);
        if stored != expected {
            return Err(conflict(id, stored, expected));
        }
        if expected == 0 {
            // Nothing of this group was loaded or written by this controller, so a file under its
            // name was put there by hand meanwhile (another group's record renamed to it, say):
            // replacing it would silently drop that group.
            refuse_unknown_file(id, &target)?;
        }
        let tmp = self.dir.join(format!(".{id}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::internal(format!(
                "cannot save group '{id}' to {}: {e}",
                target.display()
            ))
        })?;
        let revision = revisions.next();
        revisions.by_id.insert(id.to_string(), revision);
        Ok(revision)
    }
}

/// Reads a whole regular file, refusing one larger than `limit` instead of growing without bound.
///
/// Opened without blocking and checked to be a regular file before anything is read: a FIFO
/// named `x.json` would otherwise block the open (and with it the load, every `group ls`, and the
/// shutdown) until something writes to it.
fn read_limited(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{NOT_REGULAR} ({})", kind_of(&meta.file_type())));
    }
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("it is larger than {limit} bytes"));
    }
    Ok(bytes)
}

/// What [`read_limited`] says of a FIFO, socket or device.
const NOT_REGULAR: &str = "it is not a regular file";

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Moves a record found under another name (`path`) to its own (`<id>.json`) when no file has
/// that name; never replaces one. Returns the new path, or `None` when it was not moved.
fn restore_misnamed(dir: &Path, path: &Path, id: &str) -> Option<PathBuf> {
    check_group_id(id).ok()?;
    let own = dir.join(format!("{id}.json"));
    // A hard link fails if the name exists: no window in which a record of the group written
    // meanwhile could be replaced (a plain rename would replace it).
    std::fs::hard_link(path, &own).ok()?;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(file = %path.display(), "cannot remove the old name after linking it to {}: {e}", own.display());
    }
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Some(own)
}

/// Refuses to create a record at `target` when a file is already there (see [`Files::put`]).
fn refuse_unknown_file(id: &str, target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!(
            "cannot check {} before creating group '{id}': {e}",
            target.display()
        ))),
        Ok(_) => {
            let holds = match read_limited(target, MAX_RECORD_BYTES)
                .and_then(|bytes| GroupRecord::decode(&bytes))
            {
                Ok((record, _)) if record.id() != id => format!(
                    "it holds group '{}', renamed by hand? Rename it back to {}.json",
                    record.id().escape_debug(),
                    record.id().escape_debug()
                ),
                Ok(_) => "it holds this group, copied in by hand?".to_string(),
                Err(e) => e,
            };
            Err(Error::conflict(format!(
                "not creating group '{id}': the store already has {}, which this controller \
                 neither loaded nor wrote ({holds}); move it out of the store (or restart the \
                 group plugin to load it), then commit again",
                target.display()
            )))
        }
    }
}

#[async_trait]
impl GroupStore for FileStore {
    fn describe(&self) -> String {
        format!("file store {}", self.files.dir.display())
    }

    async fn load(&self) -> Result<Loaded> {
        let entries = std::fs::read_dir(&self.files.dir).map_err(|e| {
            Error::internal(format!(
                "cannot read the group store {}: {e}",
                self.files.dir.display()
            ))
        })?;
        // Listed before anything is read: a record moved back under its own name while loading
        // (see `restore_misnamed`) must not be read twice.
        let mut names: Vec<(PathBuf, String)> = entries
            .flatten()
            .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
            .filter(|(_, name)| !name.starts_with('.') && name.ends_with(".json"))
            .collect();
        names.sort_by(|a, b| a.1.cmp(&b.1));
        let mut loaded = Loaded::default();
        let mut revisions = self.revisions();
        for (path, name) in names {
            let revision = revisions.next();
            match self.read(&path, &name) {
                Err(u) if u.error.starts_with(NOT_REGULAR) => {
                    // Not something a controller writes, nor something `free` should delete.
                    tracing::warn!(file = %u.source, "skipped: {}", u.error);
                }
                Ok(record) => {
                    revisions.by_id.insert(record.id().to_string(), revision);
                    loaded.groups.push(Stored { record, revision });
                }
                Err(u) => {
                    let mut u = *u;
                    tracing::error!(file = %u.source, "unusable group record: {}", u.error);
                    if let Some(id) = &u.id {
                        revisions.by_id.insert(id.clone(), revision);
                    }
                    u.revision = revision;
                    loaded.unusable.push(u);
                }
            }
        }
        loaded
            .groups
            .sort_by(|a, b| a.record.id().cmp(b.record.id()));
        Ok(loaded)
    }

    async fn put(&self, record: &GroupRecord, expected: Revision) -> Result<Revision> {
        let id = record.id().to_string();
        // Compact: a record of 100,000 instances is tens of megabytes, a third more when pretty.
        let bytes = serde_json::to_vec(record)
            .map_err(|e| Error::internal(format!("cannot encode group '{id}': {e}")))?;
        // The write and its fsyncs go to the blocking pool: on the plugin's one runtime thread
        // they would stop every call and completion for as long as the disk takes.
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || files.put(&id, &bytes, expected))
            .await
            .map_err(|e| Error::internal(format!("writing a group record did not finish: {e}")))?
    }

    async fn delete(&self, id: &str, expected: Revision) -> Result<()> {
        let path = self.files.path(id)?;
        let mut revisions = self.revisions();
        let stored = revisions.by_id.get(id).copied().unwrap_or(0);
        if stored != expected {
            return Err(conflict(id, stored, expected));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot remove group '{id}' from the store: {e}"
                )))
            }
        }
        let _ = File::open(&self.files.dir).and_then(|d| d.sync_all());
        revisions.by_id.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::spi::group::GroupSpec;
    use serde_json::json;

    fn record(id: &str, size: u64) -> GroupRecord {
        let spec = GroupSpec {
            id: id.into(),
            properties: Some(json!({
                "Allocation": {"Size": size},
                "Instance": {"Plugin": "instance-file"},
                "Flavor": {"Plugin": "flavor-vanilla"}
            })),
        };
        let valid = infrakit_group::spec::parse(&spec, infrakit_group::spec::Origin::Commit)
            .expect("valid");
        GroupRecord::new(spec, &valid)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn writes_are_compare_and_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path().join("s")).expect("open");
        block_on(async {
            let r1 = store.put(&record("a", 1), 0).await.expect("create");
            // A second create, or a write naming an old revision, is refused.
            let e = store.put(&record("a", 2), 0).await.expect_err("exists");
            assert!(e.to_string().contains("changed in the store"), "{e}");
            let r2 = store.put(&record("a", 2), r1).await.expect("update");
            assert!(store.put(&record("a", 3), r1).await.is_err());
            assert!(store.delete("a", r1).await.is_err());
            store.delete("a", r2).await.expect("delete");
            assert!(store.load().await.expect("load").groups.is_empty());
        });
    }

    #[test]
    fn the_store_is_private_and_locked_even_without_a_lock_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let store = FileStore::open(&path).expect("open");
        block_on(store.put(&record("a", 1), 0)).expect("put");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join("a.json")), 0o600);
        let e = FileStore::open(&path)
            .err()
            .expect("second controller refused");
        assert!(e.to_string().contains("another group controller"), "{e}");
        // Nothing to delete from under us: the lock is on the directory itself.
        assert!(!path.join(".lock").exists());
        drop(store);
        FileStore::open(&path).expect("free again once the first is gone");
    }

    #[test]
    fn a_record_under_another_name_or_escaping_id_is_unusable_not_managed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let store = FileStore::open(&path).expect("open");
        block_on(store.put(&record("a", 1), 0)).expect("put");
        std::fs::copy(path.join("a.json"), path.join("copy.json")).expect("copy");
        let mut escaping = serde_json::to_value(record("a", 1)).expect("json");
        escaping["Spec"]["ID"] = json!("../victim");
        std::fs::write(path.join("evil.json"), escaping.to_string()).expect("write");
        std::fs::write(path.join("torn.json"), b"{\"Spec\": ").expect("write");
        let loaded = block_on(store.load()).expect("load");
        assert_eq!(loaded.groups.len(), 1);
        assert_eq!(loaded.groups[0].record.id(), "a");
        let mut bad: Vec<_> = loaded
            .unusable
            .iter()
            .map(|u| (u.id.clone().unwrap_or_default(), u.error.clone()))
            .collect();
        bad.sort();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].1.contains("holds group 'a'"), "{bad:?}");
        assert!(bad[1].1.contains("../victim"), "{bad:?}");
        assert!(bad[2].1.contains("not a group record"), "{bad:?}");
        // An unusable record can be removed by name, never a path outside the store.
        let evil = loaded
            .unusable
            .iter()
            .find(|u| u.id.as_deref() == Some("evil"))
            .expect("evil");
        block_on(store.delete("evil", evil.revision)).expect("delete");
        assert!(block_on(store.delete("../victim", 0)).is_err());
    }

    #[test]
    fn a_fifo_or_directory_named_like_a_record_is_skipped_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let store = FileStore::open(&path).expect("open");
        block_on(store.put(&record("a", 1), 0)).expect("put");
        let fifo = std::ffi::CString::new(path.join("x.json").as_os_str().as_encoded_bytes())
            .expect("path");
        // SAFETY: a NUL-terminated path, and a mode.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        std::fs::create_dir(path.join("d.json")).expect("mkdir");
        // Before: the load blocked in open() on the FIFO, for as long as nothing wrote to it.
        let (tx, rx) = std::sync::mpsc::channel();
        let loader = std::thread::spawn(move || {
            let _ = tx.send(block_on(store.load()).map(|l| (l.groups.len(), l.unusable.len())));
        });
        let loaded = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the load finished")
            .expect("load");
        loader.join().expect("loader");
        assert_eq!(loaded, (1, 0), "a managed, x.json and d.json skipped");
    }

    #[test]
    fn a_create_never_replaces_a_file_put_there_by_hand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let store = FileStore::open(&path).expect("open");
        let b = block_on(store.put(&record("b", 1), 0)).expect("put b");
        // b's record renamed by hand while the controller runs, then a new group c committed.
        std::fs::rename(path.join("b.json"), path.join("c.json")).expect("rename");
        let e = block_on(store.put(&record("c", 2), 0)).expect_err("c.json holds b");
        assert_eq!(e.kind, infrakit_sdk::ErrorKind::Conflict);
        assert!(e.to_string().contains("holds group 'b'"), "{e}");
        let kept = GroupRecord::decode(&std::fs::read(path.join("c.json")).expect("read"))
            .expect("record");
        assert_eq!(kept.0.id(), "b", "b's record is intact");
        // b itself still saves (to its own name again).
        block_on(store.put(&record("b", 3), b)).expect("b saved");
    }

    #[test]
    fn a_renamed_record_is_moved_back_and_managed_unless_its_group_has_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let store = FileStore::open(&path).expect("open");
        block_on(store.put(&record("b", 1), 0)).expect("put b");
        block_on(store.put(&record("d", 1), 0)).expect("put d");
        std::fs::rename(path.join("b.json"), path.join("c.json")).expect("rename");
        std::fs::copy(path.join("d.json"), path.join("e.json")).expect("copy");
        drop(store);
        let store = FileStore::open(&path).expect("reopen");
        let loaded = block_on(store.load()).expect("load");
        let ids: Vec<&str> = loaded.groups.iter().map(|g| g.record.id()).collect();
        assert_eq!(ids, ["b", "d"]);
        assert!(path.join("b.json").exists() && !path.join("c.json").exists());
        // A copy of a group that has its own file is still not a second record of it.
        assert_eq!(loaded.unusable.len(), 1);
        assert!(loaded.unusable[0].error.contains("holds group 'd'"));
    }
}
