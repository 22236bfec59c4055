//! The group spec: one type, parsed and checked once at the boundary.
//!
//! A commit (`infrakit group commit`, `group validate`, a `CommitGroup` call) and a record loaded
//! from the store both go through [`parse`], which turns InfraKit's JSON into a [`ValidGroup`]:
//! the typed properties, the allocation, the policies and the config hash. Everything downstream
//! (the controller's passes, `DescribeGroup`, destroys) uses that value and never parses again.
//!
//! Every error names the path of the field to fix (`Properties.Allocation.Sise: unknown field`),
//! unknown fields are refused at every level, and the [limits](self#constants) keep a spec that
//! passes from ever hurting the controller later: a size that would exhaust memory, properties
//! nested so deep that a plugin's answer cannot be parsed back, IDs that are not file names.
//! The JSON Schema ([`schema`]) is derived from the same types.

use std::collections::BTreeSet;
use std::fmt;

use infrakit_spi::group::{GroupSpec, PluginSpec};
use infrakit_spi::instance::LogicalId;
use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::core::{config_hash, Allocation, Desired, Policy};

/// The largest cattle group: enough for the 100,000-instance aim, far below what would exhaust a
/// controller's memory (a typo'd `1000000000` is refused, not attempted).
pub const MAX_SIZE: u64 = 100_000;
/// The most logical IDs (pets) in one group.
pub const MAX_LOGICAL_IDS: usize = 10_000;
/// The longest logical ID, in bytes (a DNS name's limit; IPs and host names fit).
pub const MAX_LOGICAL_ID_LEN: usize = 253;
/// How deeply `Instance.Properties` and `Flavor.Properties` may nest. serde_json refuses documents
/// nested deeper than 128 levels, and a plugin's `DescribeInstances` answer wraps properties in a
/// few levels of its own: a spec accepted here must come back readable.
pub const MAX_PROPERTIES_DEPTH: usize = 64;
/// The largest group spec, as JSON. Specs live in the store (and, in swarm mode, in the swarm's
/// replicated store, whose objects are limited to 500 KB on some engines).
pub const MAX_SPEC_BYTES: usize = 448 * 1024;

/// A group's properties in InfraKit's format, plus our optional policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupProperties {
    /// Cattle (`Size`) or pets (`LogicalIDs`), not both.
    #[serde(rename = "Allocation")]
    pub allocation: AllocationSpec,
    /// The instance plugin and its properties.
    #[serde(rename = "Instance")]
    pub instance: PluginSpec,
    /// The flavor plugin and its properties.
    #[serde(rename = "Flavor")]
    pub flavor: PluginSpec,
    /// Rollout, remediation and scale-down policies; every field optional.
    #[serde(rename = "Policies", default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Policy>,
}

/// How many instances: `{"Size": N}` (cattle) or `{"LogicalIDs": [...]}` (pets), not both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationSpec {
    /// Cattle: this many identical instances.
    #[serde(rename = "Size", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100_000))]
    pub size: Option<u64>,
    /// Pets: exactly one instance per ID (often an IP address).
    #[serde(
        rename = "LogicalIDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 10_000), inner(length(min = 1, max = 253)))]
    pub logical_ids: Option<Vec<LogicalId>>,
}

// The derived form, reached only through a map (see `AllocationSpec`'s Deserialize).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationFields {
    #[serde(rename = "Size", default)]
    size: Option<u64>,
    #[serde(rename = "LogicalIDs", default)]
    logical_ids: Option<Vec<LogicalId>>,
}

// Only an object is accepted: serde's derive would also read `[3]` as a size of 3.
impl<'de> Deserialize<'de> for AllocationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AllocationSpec, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = AllocationSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an object: {"Size": N} (cattle) or {"LogicalIDs": [...]} (pets)"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AllocationSpec, A::Error> {
                let f = AllocationFields::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(AllocationSpec {
                    size: f.size,
                    logical_ids: f.logical_ids,
                })
            }
        }
        d.deserialize_map(ObjectOnly)
    }
}

/// A whole group spec as a user writes it: `{"ID": ..., "Properties": {...}}` (for the schema).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GroupSpecSchema {
    /// The group's name: letters, digits, '-', '_' and '.', at most 128, not starting with '.'.
    #[serde(rename = "ID")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"))]
    id: String,
    #[serde(rename = "Properties")]
    properties: GroupProperties,
}

/// The JSON Schema of a group spec (`infrakit group schema`), derived from the types [`parse`]
/// reads, so the two cannot disagree.
pub fn schema() -> Value {
    // Inlined: one self-contained document a person can read top to bottom.
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<GroupSpecSchema>())
        .unwrap_or(Value::Null);
    if let Value::Object(m) = &mut schema {
        m.insert("title".into(), Value::String("InfraKit group spec".into()));
        m.insert(
            "description".into(),
            Value::String(
                "What `infrakit group commit` takes: InfraKit's group format, plus optional Policies."
                    .into(),
            ),
        );
    }
    schema
}

/// A group spec that passed every check: what the controller keeps and acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGroup {
    pub id: String,
    pub properties: GroupProperties,
    pub allocation: Allocation,
    pub policy: Policy,
    /// [`config_hash`] of the Instance and Flavor blocks: a size or policy change never rolls
    /// instances.
    pub hash: String,
}

impl ValidGroup {
    /// The core's input: with `deleting`, a target of nothing.
    pub fn desired(&self, deleting: bool) -> Desired {
        let allocation = match (&self.allocation, deleting) {
            (a, false) => a.clone(),
            (Allocation::Size(_), true) => Allocation::Size(0),
            (Allocation::Pets(_), true) => Allocation::Pets(Vec::new()),
        };
        Desired {
            group: self.id.clone(),
            allocation,
            config_hash: self.hash.clone(),
            policy: self.policy.clone(),
        }
    }

    /// The target size (cattle) or number of logical IDs (pets).
    pub fn size(&self) -> u64 {
        self.allocation.target()
    }
}

/// Where a spec comes from: a commit must say how many instances it wants; a stored record may hold
/// a group scaled to zero (`SetSize(0)` is written as an empty allocation, as InfraKit writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Commit,
    Stored,
}

/// Group IDs become file names and store keys: letters, digits, '-', '_' and '.', at most 128,
/// not starting with '.'.
pub fn check_group_id(id: &str) -> Result<(), String> {
    if infrakit_spi::is_safe_file_name(id) {
        Ok(())
    } else {
        Err(format!(
            "invalid group ID '{}': use letters, digits, '-', '_' and '.' (at most 128, not starting with '.')",
            id.escape_debug()
        ))
    }
}

/// Parses and checks a group spec; every error starts with the group and names the field.
pub fn parse(spec: &GroupSpec, origin: Origin) -> Result<ValidGroup, String> {
    check_group_id(&spec.id)?;
    let id = &spec.id;
    let raw = spec.properties.as_ref().ok_or_else(|| {
        format!("group '{id}' has no Properties: it needs Allocation, Instance and Flavor")
    })?;
    parse_properties(id, raw, origin).map_err(|e| format!("group '{id}': {e}"))
}

fn parse_properties(id: &str, raw: &Value, origin: Origin) -> Result<ValidGroup, String> {
    let size = serde_json::to_vec(raw).map(|v| v.len()).unwrap_or(0);
    if size > MAX_SPEC_BYTES {
        return Err(format!(
            "the spec is {size} bytes, more than the {MAX_SPEC_BYTES} a group spec may have \
             (large data belongs in the plugins' own configuration, not in every instance's spec)"
        ));
    }
    let properties: GroupProperties = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("Properties: {inner}")
        } else {
            format!("Properties.{path}: {inner}")
        }
    })?;
    let allocation = allocation(id, &properties.allocation, origin)?;
    for (name, block) in [
        ("Instance", &properties.instance),
        ("Flavor", &properties.flavor),
    ] {
        if block.plugin.trim().is_empty() {
            return Err(format!(
                "{name}.Plugin is empty: name the {} plugin",
                name.to_lowercase()
            ));
        }
        if let Some(p) = &block.properties {
            if depth(p) > MAX_PROPERTIES_DEPTH {
                return Err(format!(
                    "{name}.Properties are nested more than {MAX_PROPERTIES_DEPTH} levels deep"
                ));
            }
        }
    }
    let policy = properties.policies.clone().unwrap_or_default();
    policy.validate()?;
    let hash = hash_of(&properties.instance, &properties.flavor);
    Ok(ValidGroup {
        id: id.to_string(),
        properties,
        allocation,
        policy,
        hash,
    })
}

fn allocation(id: &str, a: &AllocationSpec, origin: Origin) -> Result<Allocation, String> {
    let pets = a.logical_ids.as_deref().unwrap_or_default();
    match (a.size.unwrap_or(0), pets.is_empty()) {
        (0, true) if origin == Origin::Stored => Ok(Allocation::Size(0)),
        (0, true) => Err(format!(
            "Allocation needs either Size (cattle) or LogicalIDs (pets) \
             (to scale a group to zero, use `infrakit group scale {id} 0`)"
        )),
        (n, true) if n > MAX_SIZE => Err(format!(
            "Allocation.Size: {n} is more than the {MAX_SIZE} instances a group may have"
        )),
        (n, true) => Ok(Allocation::Size(n)),
        (0, false) => {
            if pets.len() > MAX_LOGICAL_IDS {
                return Err(format!(
                    "Allocation.LogicalIDs: {} IDs, more than the {MAX_LOGICAL_IDS} a group may have",
                    pets.len()
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, l) in pets.iter().enumerate() {
                check_logical_id(l).map_err(|e| format!("Allocation.LogicalIDs[{i}]: {e}"))?;
                // Only new commits: a record stored by an earlier version must still load.
                if origin == Origin::Commit {
                    check_prints_as_itself(l)
                        .map_err(|e| format!("Allocation.LogicalIDs[{i}]: {e}"))?;
                }
                if !seen.insert(l) {
                    return Err(format!("Allocation.LogicalIDs lists '{l}' twice"));
                }
            }
            Ok(Allocation::Pets(pets.to_vec()))
        }
        (_, false) => Err(
            "Allocation has both Size and LogicalIDs; use one (Size for cattle, LogicalIDs for pets)"
                .into(),
        ),
    }
}

/// A logical ID names an instance in tags, labels and logs: printable, and not too long.
pub fn check_logical_id(l: &str) -> Result<(), String> {
    if l.is_empty() {
        return Err("an empty ID".into());
    }
    if l.len() > MAX_LOGICAL_ID_LEN {
        return Err(format!(
            "an ID of {} bytes, more than {MAX_LOGICAL_ID_LEN}",
            l.len()
        ));
    }
    if l.chars().any(char::is_control) {
        return Err(format!("'{}' holds a control character", l.escape_debug()));
    }
    Ok(())
}

/// Refuses an ID that does not print as what it is: `n1` and `n1<U+200B>` would be two pets that
/// `describe` shows as the same `n1`, and `<U+202E>gnp.exe` prints as `exe.png`. Refused are the
/// Unicode format characters (Cf: zero-width spaces and joiners U+200B..U+200D, the word joiner
/// U+2060, the byte-order mark U+FEFF, the bidi embeddings, overrides and isolates U+202A..U+202E
/// and U+2066..U+2069, soft hyphens, tag characters), control characters (Cc) and the line and
/// paragraph separators (Zl, Zp). The error names the code point, since the terminal cannot.
pub fn check_prints_as_itself(id: &str) -> Result<(), String> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    let hidden = id.chars().find(|c| {
        matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::Control
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    });
    match hidden {
        None => Ok(()),
        Some(c) => Err(format!(
            "'{}' holds U+{:04X}, an invisible or direction-changing character: \
             an ID must print as what it is (remove the character)",
            id.escape_debug(),
            c as u32
        )),
    }
}

/// The config hash: over the canonical JSON of the Instance and Flavor blocks only.
pub fn hash_of(instance: &PluginSpec, flavor: &PluginSpec) -> String {
    let instance = serde_json::to_value(instance).unwrap_or_default();
    let flavor = serde_json::to_value(flavor).unwrap_or_default();
    config_hash(&instance, &flavor)
}

/// How deeply a JSON value nests (a scalar is 0), without recursion.
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests;
