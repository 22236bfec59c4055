//! A committed group as stored: the spec as committed, the versions its instances may carry, and
//! what the core must remember. The spec is parsed once ([`infrakit_group::spec::parse`]) when a
//! record is committed or loaded; the controller keeps the result beside the record.

use std::collections::BTreeMap;

use infrakit_group::core::Memory;
use infrakit_group::spec::{self, Origin, ValidGroup};
use infrakit_sdk::spi::group::{GroupSpec, PluginSpec};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Instance and Flavor blocks of one version of a group spec, kept by config hash so that
/// instances of a previous version can still be provisioned (rollback) or drained with the flavor
/// properties they were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocks {
    #[serde(rename = "Instance")]
    pub instance: PluginSpec,
    #[serde(rename = "Flavor")]
    pub flavor: PluginSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    /// As committed (with `Allocation.Size` as last set by `SetSize`).
    #[serde(rename = "Spec")]
    pub spec: GroupSpec,
    /// By config hash: the current version and the one before it.
    #[serde(rename = "Versions", default)]
    pub versions: BTreeMap<String, Blocks>,
    /// The core's memory: update progress, readiness, backoff.
    #[serde(rename = "Memory", default)]
    pub memory: Memory,
    /// `DestroyGroup` was called: converge to nothing, then forget the group.
    #[serde(rename = "Deleting", default)]
    pub deleting: bool,
    /// The next `Index.Sequence` handed to a flavor's Prepare.
    #[serde(rename = "Sequence", default)]
    pub sequence: u64,
}

/// A record as read, with the memory kept raw so that a memory that does not parse costs only
/// the memory (it refines decisions, counts always come from observation), not the group.
#[derive(Deserialize)]
struct RawRecord {
    #[serde(rename = "Spec")]
    spec: GroupSpec,
    #[serde(rename = "Versions", default)]
    versions: BTreeMap<String, Blocks>,
    #[serde(rename = "Memory", default)]
    memory: Value,
    #[serde(rename = "Deleting", default)]
    deleting: bool,
    #[serde(rename = "Sequence", default)]
    sequence: u64,
}

impl GroupRecord {
    pub fn new(spec: GroupSpec, valid: &ValidGroup) -> GroupRecord {
        let mut r = GroupRecord {
            spec,
            versions: BTreeMap::new(),
            memory: Memory::default(),
            deleting: false,
            sequence: 0,
        };
        r.remember_version(valid);
        r
    }

    /// Reads a stored record. A memory of the wrong shape is reset, with a warning to say so.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(GroupRecord, Option<String>), String> {
        let raw: RawRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let (memory, warning) = if raw.memory.is_null() {
            (Memory::default(), None)
        } else {
            match serde_json::from_value::<Memory>(raw.memory) {
                Ok(m) => (m, None),
                Err(e) => (
                    Memory::default(),
                    Some(format!(
                        "group '{}': its stored memory (update progress, readiness) is unreadable \
                         ({e}); starting from fresh memory: the group is re-observed, an update in \
                         progress starts its count again",
                        raw.spec.id
                    )),
                ),
            }
        };
        Ok((
            GroupRecord {
                spec: raw.spec,
                versions: raw.versions,
                memory,
                deleting: raw.deleting,
                sequence: raw.sequence,
            },
            warning,
        ))
    }

    /// This record with `memory` instead of its own (which is not copied: with 100,000 instances
    /// it is most of the record).
    pub fn with_memory(&self, memory: Memory) -> GroupRecord {
        GroupRecord {
            spec: self.spec.clone(),
            versions: self.versions.clone(),
            memory,
            deleting: self.deleting,
            sequence: self.sequence,
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Parses the stored spec (once, when the record is loaded).
    pub fn parse(&self) -> Result<ValidGroup> {
        spec::parse(&self.spec, Origin::Stored).map_err(Error::invalid)
    }

    /// Keeps the blocks of `valid` and of the version the core may roll back to; older ones go.
    pub fn remember_version(&mut self, valid: &ValidGroup) {
        self.versions.insert(
            valid.hash.clone(),
            Blocks {
                instance: valid.properties.instance.clone(),
                flavor: valid.properties.flavor.clone(),
            },
        );
        let keep: Vec<String> = [
            Some(valid.hash.clone()),
            self.memory
                .update
                .as_ref()
                .and_then(|u| u.previous_hash.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.versions.len() > 2 {
            // Keep the current one, the rollback target, and whatever instances still run (the
            // caller prunes by observation; here we only bound growth).
            let extra: Vec<String> = self
                .versions
                .keys()
                .filter(|h| !keep.contains(h))
                .cloned()
                .collect();
            for h in extra
                .into_iter()
                .take(self.versions.len().saturating_sub(4))
            {
                self.versions.remove(&h);
            }
        }
    }

    /// Sets the cattle size in the stored spec (only `Allocation` changes: the rest stays as the
    /// user wrote it) and returns the spec as now parsed.
    pub fn set_size(&mut self, valid: &ValidGroup, size: u64) -> Result<ValidGroup> {
        if valid.allocation.is_pets() {
            return Err(Error::invalid(format!(
                "group '{}' allocates by LogicalIDs; change the list and commit instead of setting a size",
                self.spec.id
            )));
        }
        if size > spec::MAX_SIZE {
            return Err(Error::invalid(format!(
                "group '{}': {size} is more than the {} instances a group may have",
                self.spec.id,
                spec::MAX_SIZE
            )));
        }
        let mut spec = self.spec.clone();
        let Some(Value::Object(props)) = spec.properties.as_mut() else {
            return Err(Error::internal(format!(
                "group '{}': the stored spec has no Properties object",
                self.spec.id
            )));
        };
        // Zero is written as an empty allocation, as InfraKit writes it.
        let allocation = if size == 0 {
            serde_json::json!({})
        } else {
            serde_json::json!({ "Size": size })
        };
        props.insert("Allocation".into(), allocation);
        let parsed = spec::parse(&spec, Origin::Stored).map_err(Error::invalid)?;
        self.spec = spec;
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_of_the_wrong_shape_is_reset_with_a_warning_not_silently() {
        let good = serde_json::json!({
            "Spec": {"ID": "g", "Properties": {"Allocation": {"Size": 1},
                     "Instance": {"Plugin": "i"}, "Flavor": {"Plugin": "f"}}},
            "Memory": {"next_serial": 7}
        });
        let (r, warning) = GroupRecord::decode(good.to_string().as_bytes()).expect("record");
        assert_eq!(r.memory.next_serial, 7);
        assert!(warning.is_none());

        let mut bad = good.clone();
        bad["Memory"] = serde_json::json!({"next_serial": "seven", "instances": [1]});
        let (r, warning) = GroupRecord::decode(bad.to_string().as_bytes()).expect("record");
        assert_eq!(r.memory, Memory::default());
        let warning = warning.expect("a warning says the memory was reset");
        assert!(
            warning.contains("group 'g'") && warning.contains("fresh memory"),
            "{warning}"
        );
        r.parse().expect("the spec itself is fine");
    }
}
