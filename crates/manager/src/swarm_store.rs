//! Group records in the swarm's replicated store (swarm configs), so that any manager can commit
//! and a newly elected leader finds every group where the old one left it.
//!
//! A config's data cannot change, its name is unique, and its labels can be updated only
//! compare-and-swap (`POST /configs/{id}/update?version=N`; a stale version is refused as "update
//! out of sequence", through any manager). So each group has:
//! - a **head** config `infrakit-group.<ID>` (empty data) whose label `infrakit.current` names the
//!   data config holding the current record; its swarm version index is the record's
//!   [`Revision`];
//! - **data** configs `infrakit-group.<ID>.<n>`, one per write, holding the record as JSON.
//!
//! A write creates the next data config, then moves the head's label with the revision it read: a
//! writer whose revision is stale (another manager wrote since) is refused and removes its data
//! config. A manager without quorum can create nothing, which is the fence a deposed leader runs
//! into. The previous data config is removed after the head moved; one left by a crash between the
//! two steps is swept at the next load.
//!
//! Limits (docs/swarm-notes.md, Docker 20.10): a config's data must be under 1,024,000 bytes. A
//! group spec is at most 448 KiB (`infrakit_group::spec::MAX_SPEC_BYTES`); the rest of a record is
//! the core's memory, a few hundred bytes per instance. A record that does not fit is refused with a clear
//! error, and nothing changes.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use base64::Engine as _;
use infrakit_controller::record::GroupRecord;
use infrakit_controller::store::{GroupStore, Loaded, Revision, Stored, Unusable};
use infrakit_docker::bollard::models::{Config, ConfigSpec};
use infrakit_docker::bollard::query_parameters::{ListConfigsOptions, UpdateConfigOptions};
use infrakit_group::spec::check_group_id;
use infrakit_sdk::{Error, ErrorKind, Result};

use infrakit_docker::Engine;

/// Every config of ours carries it (value: `head` or `data`).
pub const STORE_LABEL: &str = "infrakit.store";
/// The group a config belongs to.
pub const GROUP_LABEL: &str = "infrakit.group";
/// On a head: the name of the data config holding the current record.
pub const CURRENT_LABEL: &str = "infrakit.current";
/// The largest config data the engine accepts (docs/swarm-notes.md: 1,023,999 bytes accepted,
/// 1,024,000 not).
pub const MAX_CONFIG_BYTES: usize = 1_023_999;

const PREFIX: &str = "infrakit-group.";

pub struct SwarmStore {
    engine: Engine,
}

impl SwarmStore {
    pub fn new(engine: Engine) -> SwarmStore {
        SwarmStore { engine }
    }

    fn head_name(id: &str) -> String {
        format!("{PREFIX}{id}")
    }

    async fn ours(&self) -> Result<Vec<Config>> {
        let docker = self.engine.docker()?;
        let filters: HashMap<String, Vec<String>> =
            [("label".to_string(), vec![STORE_LABEL.to_string()])].into();
        docker
            .list_configs(Some(ListConfigsOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.engine.error("listing the swarm's group configs", e))
    }

    async fn head(&self, id: &str) -> Result<Option<Config>> {
        let docker = self.engine.docker()?;
        match docker.inspect_config(&Self::head_name(id)).await {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                let e = self
                    .engine
                    .error(&format!("reading group '{id}' from the swarm"), e);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn remove(&self, name: &str) {
        if let Ok(docker) = self.engine.docker() {
            if let Err(e) = docker.delete_config(name).await {
                let e = self.engine.error("removing an old group config", e);
                // Another manager's load swept it first: what we wanted.
                if e.kind != ErrorKind::NotFound {
                    tracing::warn!(config = name, "{e}");
                }
            }
        }
    }
}

fn label<'a>(c: &'a Config, key: &str) -> Option<&'a str> {
    c.spec
        .as_ref()
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn name(c: &Config) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .unwrap_or_default()
}

fn version(c: &Config) -> Revision {
    c.version.as_ref().and_then(|v| v.index).unwrap_or(0)
}

/// The revision a data config was written for: `<prefix><id>.<revision>-<writer's own part>`
/// (or `.<revision>` alone, as the first releases named them).
fn revision_in_name(name: &str) -> Option<Revision> {
    let (_, last) = name.rsplit_once('.')?;
    last.split('-').next()?.parse().ok()
}

fn data(c: &Config) -> std::result::Result<Vec<u8>, String> {
    let text = c
        .spec
        .as_ref()
        .and_then(|s| s.data.as_deref())
        .unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("its data is not base64: {e}"))
}

#[async_trait]
impl GroupStore for SwarmStore {
    fn describe(&self) -> String {
        format!("swarm configs through {}", self.engine.address())
    }

    /// Follows the engine's config events (a manager sees every manager's writes: `scope: swarm`)
    /// and calls `changed` on each of ours; reopens the stream a second after it ends or fails.
    fn watch_changes(&self, changed: Box<dyn Fn() -> bool + Send + Sync>) {
        tokio::spawn(follow_config_events(self.engine.clone(), changed));
    }

    async fn load(&self) -> Result<Loaded> {
        let configs = self.ours().await?;
        let by_name: BTreeMap<&str, &Config> = configs.iter().map(|c| (name(c), c)).collect();
        let mut loaded = Loaded::default();
        for head in configs
            .iter()
            .filter(|c| label(c, STORE_LABEL) == Some("head"))
        {
            let id = label(head, GROUP_LABEL).unwrap_or_default().to_string();
            let unusable = |error: String| Unusable {
                source: format!("swarm config {}", name(head)),
                id: check_group_id(&id).ok().map(|()| id.clone()),
                spec: None,
                error,
                revision: version(head),
            };
            let Some(current) = label(head, CURRENT_LABEL) else {
                loaded
                    .unusable
                    .push(unusable("the head names no current record".into()));
                continue;
            };
            let Some(data_config) = by_name.get(current) else {
                loaded.unusable.push(unusable(format!(
                    "its current record {current} is missing from the swarm"
                )));
                continue;
            };
            let record = data(data_config).and_then(|bytes| {
                GroupRecord::decode(&bytes).map_err(|e| format!("not a group record: {e}"))
            });
            match record {
                Ok((record, warning)) if record.id() == id => {
                    if let Some(w) = warning {
                        tracing::warn!("{w}");
                    }
                    loaded.groups.push(Stored {
                        record,
                        revision: version(head),
                    });
                }
                Ok((record, _)) => loaded.unusable.push(unusable(format!(
                    "its record holds group '{}'",
                    record.id().escape_debug()
                ))),
                Err(e) => loaded.unusable.push(unusable(e)),
            }
        }
        // Data configs left by a writer that lost its compare-and-swap or crashed between its two
        // steps: older than their group's head and not its current record. A data config newer
        // than the head may be a write in flight (created, head not yet moved): left alone.
        let heads: HashMap<&str, (Revision, &str)> = configs
            .iter()
            .filter(|c| label(c, STORE_LABEL) == Some("head"))
            .filter_map(|h| {
                Some((
                    label(h, GROUP_LABEL)?,
                    (version(h), label(h, CURRENT_LABEL).unwrap_or_default()),
                ))
            })
            .collect();
        for c in configs
            .iter()
            .filter(|c| label(c, STORE_LABEL) == Some("data"))
        {
            let Some(id) = label(c, GROUP_LABEL) else {
                continue;
            };
            let written_at = revision_in_name(name(c));
            let stale = match (heads.get(id), written_at) {
                (Some((head, current)), Some(n)) => n <= *head && name(c) != *current,
                _ => false,
            };
            if stale {
                self.remove(name(c)).await;
            }
        }
        loaded
            .groups
            .sort_by(|a, b| a.record.id().cmp(b.record.id()));
        Ok(loaded)
    }

    async fn put(&self, record: &GroupRecord, expected: Revision) -> Result<Revision> {
        let id = record.id();
        check_group_id(id).map_err(Error::invalid)?;
        let bytes = serde_json::to_vec(record)
            .map_err(|e| Error::internal(format!("cannot encode group '{id}': {e}")))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(Error::invalid(format!(
                "group '{id}' is {} bytes as stored, more than the {MAX_CONFIG_BYTES} a swarm \
                 config holds; make the spec smaller",
                bytes.len()
            )));
        }
        let docker = self.engine.docker()?;
        let head = self.head(id).await?;
        let stored = head.as_ref().map(version).unwrap_or(0);
        if stored != expected {
            return Err(conflict(id, stored, expected));
        }
        // The revision it is meant to become, and a part of its own: a writer that created its
        // data config but could not move the head (deposed mid-write, the engine hung) may also
        // have failed to remove it, and a name made of the revision alone would then be taken for
        // every later write at that revision (409, read as a conflict, forever).
        let data_name = format!("{PREFIX}{id}.{}-{:08x}", stored + 1, fastrand::u32(..));
        let labels = |kind: &str| -> HashMap<String, String> {
            [
                (STORE_LABEL.to_string(), kind.to_string()),
                (GROUP_LABEL.to_string(), id.to_string()),
            ]
            .into()
        };
        docker
            .create_config(ConfigSpec {
                name: Some(data_name.clone()),
                labels: Some(labels("data")),
                data: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                templating: None,
            })
            .await
            .map_err(|e| {
                let e = self
                    .engine
                    .error(&format!("writing group '{id}' to the swarm"), e);
                if e.kind == ErrorKind::Conflict {
                    conflict(id, stored + 1, expected)
                } else {
                    e
                }
            })?;
        let mut head_labels = labels("head");
        head_labels.insert(CURRENT_LABEL.to_string(), data_name.clone());
        let moved = match &head {
            None => docker
                .create_config(ConfigSpec {
                    name: Some(Self::head_name(id)),
                    labels: Some(head_labels),
                    data: Some(base64::engine::general_purpose::STANDARD.encode(b"{}")),
                    templating: None,
                })
                .await
                .map(|_| ()),
            Some(h) => {
                docker
                    .update_config(
                        h.id.as_deref().unwrap_or_default(),
                        ConfigSpec {
                            name: Some(Self::head_name(id)),
                            labels: Some(head_labels),
                            data: h.spec.as_ref().and_then(|s| s.data.clone()),
                            templating: None,
                        },
                        UpdateConfigOptions {
                            version: i64::try_from(stored).unwrap_or(i64::MAX),
                        },
                    )
                    .await
            }
        };
        if let Err(e) = moved {
            self.remove(&data_name).await;
            let e = self
                .engine
                .error(&format!("writing group '{id}' to the swarm"), e);
            // 409: another writer created the head first; "out of sequence": it moved it first.
            return Err(
                if e.kind == ErrorKind::Conflict || e.message.contains("out of sequence") {
                    conflict(id, stored, expected)
                } else {
                    e
                },
            );
        }
        if let Some(previous) = head.as_ref().and_then(|h| label(h, CURRENT_LABEL)) {
            self.remove(previous).await;
        }
        let now = self
            .head(id)
            .await?
            .map(|h| version(&h))
            .ok_or_else(|| Error::internal(format!("group '{id}' vanished from the swarm")))?;
        Ok(now)
    }

    async fn delete(&self, id: &str, expected: Revision) -> Result<()> {
        check_group_id(id).map_err(Error::invalid)?;
        let Some(head) = self.head(id).await? else {
            return Ok(());
        };
        let stored = version(&head);
        if stored != expected {
            return Err(conflict(id, stored, expected));
        }
        // Configs are removed without a version check: between the check above and this, only a
        // writer that got past its own check could move the head, and it would then find it gone.
        self.remove(name(&head)).await;
        if let Some(current) = label(&head, CURRENT_LABEL) {
            self.remove(current).await;
        }
        Ok(())
    }
}

fn conflict(id: &str, stored: Revision, expected: Revision) -> Error {
    Error::conflict(format!(
        "group '{id}' changed in the swarm's store since it was read (revision {stored}, expected \
         {expected}): not overwriting; try again"
    ))
}

/// See [`SwarmStore::watch_changes`].
async fn follow_config_events(engine: Engine, changed: Box<dyn Fn() -> bool + Send + Sync>) {
    use futures_util::StreamExt;
    use infrakit_docker::bollard::query_parameters::EventsOptions;
    const RECONNECT: std::time::Duration = std::time::Duration::from_secs(1);
    let filters =
        std::collections::HashMap::from([("type".to_string(), vec!["config".to_string()])]);
    loop {
        let problem = match engine.docker() {
            Err(e) => e.message,
            Ok(docker) => {
                let mut events = docker.events(Some(EventsOptions {
                    since: None,
                    until: None,
                    filters: Some(filters.clone()),
                }));
                // Whatever happened while the stream was closed is found by the poll's re-read;
                // one more now covers the moment it took to open.
                if !changed() {
                    return;
                }
                loop {
                    match events.next().await {
                        Some(Ok(event)) => {
                            let ours = event
                                .actor
                                .and_then(|a| a.attributes)
                                .and_then(|a| a.get("name").cloned())
                                .is_some_and(|n| n.starts_with(PREFIX));
                            if ours && !changed() {
                                return;
                            }
                        }
                        Some(Err(e)) => break engine.error("following config events", e).message,
                        None => break "the engine closed its event stream".to_string(),
                    }
                }
            }
        };
        tracing::debug!("swarm store: {problem}; following config events again in {RECONNECT:?}");
        tokio::time::sleep(RECONNECT).await;
        if !changed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_config_names_carry_their_revision() {
        assert_eq!(revision_in_name("infrakit-group.g.311-0a1b2c3d"), Some(311));
        assert_eq!(revision_in_name("infrakit-group.g.292"), Some(292));
        assert_eq!(revision_in_name("infrakit-group.my.group.12-ff"), Some(12));
        assert_eq!(revision_in_name("infrakit-group.g"), None);
    }
}
