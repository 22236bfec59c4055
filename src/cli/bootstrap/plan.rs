//! The multi-group file bootstrap reads, checked before anything is made: every entry a group
//! whose spec parses as a commit's would, no ID twice, exactly one manager group (its first
//! logical ID is the seed).

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Result};
use infrakit_flavor_swarm::Role;
use infrakit_group::core::Allocation;
use infrakit_group::spec::{self, Origin, ValidGroup};
use infrakit_sdk::spi::group::GroupSpec;
use serde::Deserialize;

use crate::cli::input::read_json;

pub(super) const MANAGER_FLAVOR: &str = "flavor-swarm/manager";
pub(super) const WORKER_FLAVOR: &str = "flavor-swarm/worker";

/// One entry of the multi-group file.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Plugin")]
    plugin: String,
    #[serde(rename = "Properties")]
    properties: GroupSpec,
}

/// A group of the file, checked.
pub struct Planned {
    /// The spec as the file gives it (what is committed).
    pub spec: GroupSpec,
    pub valid: ValidGroup,
    pub role: Option<Role>,
}

impl Planned {
    pub fn count(&self) -> u64 {
        match &self.valid.allocation {
            Allocation::Size(n) => *n,
            Allocation::Pets(ids) => ids.len() as u64,
        }
    }

    /// "pets" or "instances", as the plan says it.
    pub fn unit(&self) -> &'static str {
        match &self.valid.allocation {
            Allocation::Pets(_) => "pets",
            Allocation::Size(_) => "instances",
        }
    }
}

/// Reads and checks `file`.
pub(super) fn plan(file: &str) -> Result<Vec<Planned>> {
    let entries: Vec<Entry> = read_json(file, "multi-group")?;
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, e) in entries.into_iter().enumerate() {
        if e.plugin != "group" {
            bail!(
                "{file}: entry {} is for plugin '{}'; bootstrap commits groups only (\"Plugin\": \"group\")",
                i + 1,
                e.plugin
            );
        }
        let valid =
            spec::parse(&e.properties, Origin::Commit).map_err(|m| anyhow!("{file}: {m}"))?;
        if !ids.insert(valid.id.clone()) {
            bail!("{file}: group '{}' is given twice", valid.id);
        }
        let role = match valid.properties.flavor.plugin.as_str() {
            MANAGER_FLAVOR => Some(Role::Manager),
            WORKER_FLAVOR => Some(Role::Worker),
            _ => None,
        };
        out.push(Planned {
            spec: e.properties,
            valid,
            role,
        });
    }
    let managers = out.iter().filter(|p| p.role == Some(Role::Manager)).count();
    if managers != 1 {
        bail!(
            "{file}: {managers} groups have the flavor {MANAGER_FLAVOR}; exactly one must (its first \
             logical ID is the seed)"
        );
    }
    Ok(out)
}

/// The manager group of a checked plan and its logical IDs (the first is the seed).
pub(super) fn managers(groups: &[Planned]) -> Result<(&Planned, &[String])> {
    let managers = groups
        .iter()
        .find(|g| g.role == Some(Role::Manager))
        .ok_or_else(|| anyhow!("no manager group"))?;
    let Allocation::Pets(ids) = &managers.valid.allocation else {
        bail!(
            "group '{}': managers are pets: give Allocation.LogicalIDs",
            managers.valid.id
        );
    };
    if ids.is_empty() {
        bail!("group '{}': no logical ID", managers.valid.id);
    }
    Ok((managers, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), json).expect("write");
        f
    }

    fn group(id: &str, flavor: &str, alloc: &str) -> String {
        format!(
            r#"{{"Plugin": "group", "Properties": {{"ID": "{id}", "Properties": {{
                "Allocation": {alloc},
                "Instance": {{"Plugin": "instance-docker", "Properties": {{"Image": "x"}}}},
                "Flavor": {{"Plugin": "{flavor}"}}}}}}}}"#
        )
    }

    #[test]
    fn the_file_needs_exactly_one_manager_group() {
        let managers = group("m", MANAGER_FLAVOR, r#"{"LogicalIDs": ["10.0.0.1"]}"#);
        let workers = group("w", WORKER_FLAVOR, r#"{"Size": 2}"#);
        let ok = write(&format!("[{managers}, {workers}]"));
        let planned = plan(ok.path().to_str().expect("utf-8")).expect("valid");
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[1].count(), 2);
        let (m, ids) = super::managers(&planned).expect("a manager group");
        assert_eq!(
            (m.valid.id.as_str(), ids),
            ("m", &["10.0.0.1".to_string()][..])
        );
        let none = write(&format!("[{workers}]"));
        let e = plan(none.path().to_str().expect("utf-8"))
            .err()
            .expect("no managers");
        assert!(e.to_string().contains("exactly one"), "{e}");
        let twice = write(&format!("[{managers}, {managers}]"));
        let e = plan(twice.path().to_str().expect("utf-8"))
            .err()
            .expect("twice");
        assert!(e.to_string().contains("given twice"), "{e}");
        let other = write(r#"[{"Plugin": "instance", "Properties": {"ID": "x"}}]"#);
        let e = plan(other.path().to_str().expect("utf-8"))
            .err()
            .expect("not a group");
        assert!(e.to_string().contains("groups only"), "{e}");
    }
}
