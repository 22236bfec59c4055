//! What the plugin must remember across a restart, in a directory of its own
//! (`INFRAKIT_AWS_STATE_DIR`, default `~/.infrakit/instance-aws`):
//!
//! - `locations.json`: every location (region, endpoint) instances were ever launched in. A
//!   `DescribeInstances` call carries only tags, so after a restart this is how the plugin knows
//!   where to look; forgetting one would answer "no instances" and the group controller would
//!   launch a second set. Written before the first launch in a location.
//! - `pending/<token>.json`: a launch that was sent and whose answer has not been handed back yet.
//!   Written (and synced) before `RunInstances`, removed after. One left over at start-up is a
//!   launch a crash interrupted: its instances, found by the token's tag, are handed to the next
//!   provisions of the same spec instead of launching more (see `launch.rs`).
//!
//! Every write goes to a temporary file, is synced, then renamed: a crash leaves the old content
//! or the new one, never half of either.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::properties::Location;

/// The environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "INFRAKIT_AWS_STATE_DIR";

/// A launch in flight: enough to find its instances again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pending {
    /// The provision tag's value (and the ClientToken) of the launch.
    pub token: String,
    /// The key of the spec it launched (see `launch::spec_key`).
    pub spec_key: String,
    pub location: Location,
}

pub struct State {
    dir: PathBuf,
    locations: Mutex<BTreeSet<Location>>,
}

impl State {
    /// The state directory from the environment (made if missing).
    pub fn from_env() -> Result<State> {
        let dir = match std::env::var_os(STATE_DIR_ENV) {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("HOME") {
                Some(h) => Path::new(&h).join(".infrakit").join("instance-aws"),
                None => {
                    return Err(Error::invalid(format!(
                        "instance-aws needs a state directory: set {STATE_DIR_ENV} (or HOME)"
                    )))
                }
            },
        };
        State::open(dir)
    }

    pub fn open(dir: PathBuf) -> Result<State> {
        let pending = dir.join("pending");
        std::fs::create_dir_all(&pending).map_err(|e| {
            Error::invalid(format!(
                "instance-aws cannot make its state directory {}: {e}; set {STATE_DIR_ENV} to a \
                 writable directory",
                pending.display()
            ))
        })?;
        let path = dir.join("locations.json");
        let locations = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!(
                    "instance-aws: {} is not a JSON list of {{\"Region\", \"Endpoint\"}}: {e}; fix \
                     or remove it (then the plugin looks only where its specs send it)",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                return Err(Error::internal(format!(
                    "instance-aws cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(State {
            dir,
            locations: Mutex::new(locations),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every location remembered.
    pub fn locations(&self) -> BTreeSet<Location> {
        self.locations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remembers `location` (on disk before this returns).
    pub fn remember(&self, location: &Location) -> Result<()> {
        let mut locations = self.locations.lock().unwrap_or_else(|p| p.into_inner());
        if locations.contains(location) {
            return Ok(());
        }
        let mut next = locations.clone();
        next.insert(location.clone());
        let json = serde_json::to_vec_pretty(&next)
            .map_err(|e| Error::internal(format!("encoding the locations: {e}")))?;
        write_atomic(&self.dir.join("locations.json"), &json)?;
        *locations = next;
        Ok(())
    }

    fn pending_path(&self, token: &str) -> PathBuf {
        self.dir.join("pending").join(format!("{token}.json"))
    }

    /// Records a launch about to be sent.
    pub fn begin(&self, pending: &Pending) -> Result<()> {
        let json = serde_json::to_vec(pending)
            .map_err(|e| Error::internal(format!("encoding a pending launch: {e}")))?;
        write_atomic(&self.pending_path(&pending.token), &json)
    }

    /// Forgets a launch whose outcome was handed back (or whose instances were adopted).
    pub fn finish(&self, token: &str) {
        if let Err(e) = std::fs::remove_file(self.pending_path(token)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%token, "cannot remove a finished launch's record: {e}");
            }
        }
    }

    /// The launches a previous process left unfinished.
    pub fn unfinished(&self) -> Vec<Pending> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("pending")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
            {
                Some(p) => out.push(p),
                None => {
                    tracing::warn!(path = %path.display(), "ignoring an unreadable launch record");
                }
            }
        }
        out
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        Error::unavailable(format!(
            "instance-aws cannot write {}: {e}; check the state directory ({STATE_DIR_ENV})",
            path.display()
        ))
    })
}
