//! A committed group as stored, and how its JSON becomes the core's desired state.

use std::collections::BTreeMap;

use infrakit_group::core::{config_hash, Allocation, Desired, Memory, Policy};
use infrakit_sdk::spi::group::{GroupProperties, GroupSpec, PluginSpec};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};

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

/// A group spec, checked and turned into what the core needs.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub props: GroupProperties,
    pub hash: String,
    pub desired: Desired,
}

/// Parses and checks a group spec without touching anything; every error names the group and the
/// field to fix.
pub fn parse(spec: &GroupSpec) -> Result<Parsed> {
    parse_with(spec, false)
}

/// As [`parse`]; with `stored`, an empty allocation is a cattle group scaled to zero (that is how
/// `SetSize(0)` is written down, since `Size` is omitted when zero, as in InfraKit's files).
pub fn parse_with(spec: &GroupSpec, stored: bool) -> Result<Parsed> {
    crate::store::validate_group_id(&spec.id)?;
    let id = &spec.id;
    let raw = spec.properties.clone().ok_or_else(|| {
        Error::invalid(format!(
            "group '{id}' has no Properties: it needs Allocation, Instance and Flavor"
        ))
    })?;
    let props: GroupProperties =
        serde_json::from_value(raw).map_err(|e| Error::invalid(format!("group '{id}': {e}")))?;
    let allocation = match (props.allocation.size, props.allocation.logical_ids.is_empty()) {
        (0, true) if stored => Allocation::Size(0),
        (0, true) => {
            return Err(Error::invalid(format!(
                "group '{id}': Allocation needs either Size (cattle) or LogicalIDs (pets) \
                 (to scale a group to zero, use `infrakit group scale {id} 0`)"
            )))
        }
        (n, true) => Allocation::Size(n),
        (0, false) => {
            let ids = &props.allocation.logical_ids;
            let mut seen = std::collections::BTreeSet::new();
            for l in ids {
                if l.is_empty() {
                    return Err(Error::invalid(format!("group '{id}': Allocation.LogicalIDs has an empty ID")));
                }
                if !seen.insert(l) {
                    return Err(Error::invalid(format!(
                        "group '{id}': Allocation.LogicalIDs lists '{l}' twice"
                    )));
                }
            }
            Allocation::Pets(ids.clone())
        }
        (_, false) => {
            return Err(Error::invalid(format!(
                "group '{id}': Allocation has both Size and LogicalIDs; use one (Size for cattle, LogicalIDs for pets)"
            )))
        }
    };
    if props.instance.plugin.is_empty() {
        return Err(Error::invalid(format!(
            "group '{id}': Instance.Plugin is empty"
        )));
    }
    if props.flavor.plugin.is_empty() {
        return Err(Error::invalid(format!(
            "group '{id}': Flavor.Plugin is empty"
        )));
    }
    let policy = Policy::from_json(props.policies.as_ref())
        .map_err(|e| Error::invalid(format!("group '{id}': Policies: {e}")))?;
    let hash = hash_of(&props);
    Ok(Parsed {
        desired: Desired {
            group: id.clone(),
            allocation,
            config_hash: hash.clone(),
            policy,
        },
        hash,
        props,
    })
}

/// The config hash: over the canonical JSON of the Instance and Flavor blocks only, so a size
/// change or a policy change never rolls instances.
pub fn hash_of(props: &GroupProperties) -> String {
    let instance = serde_json::to_value(&props.instance).unwrap_or_default();
    let flavor = serde_json::to_value(&props.flavor).unwrap_or_default();
    config_hash(&instance, &flavor)
}

impl GroupRecord {
    pub fn new(spec: GroupSpec, parsed: &Parsed) -> GroupRecord {
        let mut r = GroupRecord {
            spec,
            versions: BTreeMap::new(),
            memory: Memory::default(),
            deleting: false,
            sequence: 0,
        };
        r.remember_version(parsed);
        r
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// A copy without the core's memory (which is per instance and large).
    pub fn config_only(&self) -> GroupRecord {
        GroupRecord {
            spec: self.spec.clone(),
            versions: self.versions.clone(),
            memory: Memory::default(),
            deleting: self.deleting,
            sequence: self.sequence,
        }
    }

    /// Keeps the blocks of `parsed` and of the version the core may roll back to; older ones go.
    pub fn remember_version(&mut self, parsed: &Parsed) {
        self.versions.insert(
            parsed.hash.clone(),
            Blocks {
                instance: parsed.props.instance.clone(),
                flavor: parsed.props.flavor.clone(),
            },
        );
        let keep: Vec<String> = [
            Some(parsed.hash.clone()),
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

    /// The desired state the core reconciles toward.
    pub fn desired(&self) -> Result<Desired> {
        let mut parsed = parse_with(&self.spec, true)?;
        if self.deleting {
            parsed.desired.allocation = match parsed.desired.allocation {
                Allocation::Size(_) => Allocation::Size(0),
                Allocation::Pets(_) => Allocation::Pets(Vec::new()),
            };
        }
        Ok(parsed.desired)
    }

    /// Sets the cattle size in the stored spec.
    pub fn set_size(&mut self, size: u64) -> Result<()> {
        let parsed = parse_with(&self.spec, true)?;
        if let Allocation::Pets(_) = parsed.desired.allocation {
            return Err(Error::invalid(format!(
                "group '{}' allocates by LogicalIDs; change the list and commit instead of setting a size",
                self.spec.id
            )));
        }
        let mut props = parsed.props;
        props.allocation.size = size;
        self.spec.properties = Some(
            serde_json::to_value(&props)
                .map_err(|e| Error::internal(format!("cannot encode group: {e}")))?,
        );
        Ok(())
    }
}
