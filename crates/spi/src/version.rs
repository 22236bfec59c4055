//! Interface names and versions, as advertised by `Plugin.Activate`.

use std::fmt;

/// One interface a plugin implements, e.g. `infrakit.instance/1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// `infrakit.instance`, `infrakit.flavor`, `infrakit.group`.
    pub name: &'static str,
    /// The RPC path prefix: `Instance` in `/Instance.Provision`.
    pub rpc_prefix: &'static str,
    pub major: u32,
    pub minor: u32,
}

pub const INSTANCE: InterfaceSpec = InterfaceSpec {
    name: "infrakit.instance",
    rpc_prefix: "Instance",
    major: 1,
    minor: 0,
};
pub const FLAVOR: InterfaceSpec = InterfaceSpec {
    name: "infrakit.flavor",
    rpc_prefix: "Flavor",
    major: 1,
    minor: 0,
};
pub const GROUP: InterfaceSpec = InterfaceSpec {
    name: "infrakit.group",
    rpc_prefix: "Group",
    major: 1,
    minor: 0,
};

impl fmt::Display for InterfaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.name, self.major, self.minor)
    }
}

/// What an `Implements` entry such as `infrakit.flavor/1.2` says, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

impl Advertised {
    /// Parses `name/major.minor`; a missing or unparsable version reads as `None`.
    pub fn parse(s: &str) -> Option<Advertised> {
        let (name, version) = s.split_once('/')?;
        let (major, minor) = version.split_once('.').unwrap_or((version, "0"));
        Some(Advertised {
            name: name.to_string(),
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl InterfaceSpec {
    /// Checks a plugin's `Implements` list against this interface: the same name with the same major
    /// version is accepted (minor versions only add); anything else is refused with a message that
    /// names both sides.
    pub fn check(&self, plugin: &str, implements: &[String]) -> Result<(), String> {
        let mut same_name = Vec::new();
        for entry in implements {
            match Advertised::parse(entry) {
                Some(a) if a.name == self.name && a.major == self.major => return Ok(()),
                Some(a) if a.name == self.name => same_name.push(entry.clone()),
                _ => {}
            }
        }
        if let Some(theirs) = same_name.first() {
            Err(format!(
                "plugin '{plugin}' implements {theirs} but this client speaks {self}: major versions \
                 differ, so they cannot talk; upgrade whichever side is older"
            ))
        } else {
            Err(format!(
                "plugin '{plugin}' does not implement {} (it implements: {}); check the plugin name",
                self.name,
                if implements.is_empty() { "nothing".to_string() } else { implements.join(", ") }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_accepted_other_major_refused() {
        assert!(INSTANCE
            .check("p", &["infrakit.instance/1.7".into()])
            .is_ok());
        let err = INSTANCE
            .check("p", &["infrakit.instance/2.0".into()])
            .unwrap_err();
        assert!(
            err.contains("infrakit.instance/2.0") && err.contains("infrakit.instance/1.0"),
            "{err}"
        );
        let err = INSTANCE
            .check("p", &["infrakit.flavor/1.0".into()])
            .unwrap_err();
        assert!(
            err.contains("does not implement infrakit.instance"),
            "{err}"
        );
    }
}
