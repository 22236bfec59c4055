//! `instance-docker`'s instance properties: what a `docker run` user writes, as InfraKit JSON.
//!
//! Field names are PascalCase like the rest of InfraKit's JSON; unknown fields are refused (a typo
//! must not silently run a container without its port or its memory limit).

use std::collections::BTreeMap;

use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One instance's container. Only `Image` is required.
///
/// ```json
/// {"Image": "busybox:local", "Cmd": ["sleep", "3600"], "Network": "zk",
///  "Env": {"ZOO_LOG_DIR": "/logs"}, "Ports": ["2181"], "Memory": "256m", "Cpus": 0.5,
///  "RestartPolicy": "unless-stopped", "StopTimeout": 2}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Properties {
    /// The image, which must exist on the engine (this plugin never pulls: build or pull first).
    pub image: String,
    /// The command (`docker run IMAGE CMD...`); the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The entrypoint (`--entrypoint`, but a list); the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment: `["K=v", ...]` or `{"K": "v"}` (`-e`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Env>,
    /// `--workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `--user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `--network`: a network's name. A logical ID that is an IP address becomes the container's
    /// static address on it, which needs a user-defined network with a subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Extra DNS names on `Network` (`--network-alias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_aliases: Vec<String>,
    /// `-p`: `"80"` (random host port), `"8080:80"`, `"127.0.0.1:8080:80/tcp"`, `"53:53/udp"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `-v`: `"/host/dir:/in/container[:ro]"` or `"volume-name:/data"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    /// `--mount`, in the engine's own shape (`{"Type": "volume", "Source": "v", "Target": "/d"}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `--tmpfs`: path → options (`{"/run": "size=64m"}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tmpfs: BTreeMap<String, String>,
    /// `--hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `--memory`: bytes, or a string with a unit (`"256m"`, `"1g"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// `--cpus`: CPUs as a fraction (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// `--restart`: `no`, `always`, `unless-stopped`, `on-failure[:N]`. Absent is `no`, as with
    /// `docker run`: the group controller replaces what disappears, the engine restarts what
    /// exits when asked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// `--label`: labels of the user's own, beside the instance's tags (tags win on a clash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `--stop-timeout`: seconds between SIGTERM and SIGKILL on destroy (engine default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// `--stop-signal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `--health-cmd` and friends; the state shows up as `Health` in described properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `--cap-add` / `--cap-drop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `--add-host`: `"name:ip"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// `--dns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// `--privileged`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// `--security-opt`: e.g. `seccomp=unconfined`, `apparmor=unconfined`,
    /// `systempaths=unconfined` (what a Docker-in-Docker node needs where `--privileged` is not
    /// allowed: scripts/node-image.sh).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// `--device-cgroup-rule`: e.g. `a *:* rwm`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// `--read-only`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `--init`: the engine's tiny init as PID 1 (reaps zombies, forwards signals). Named so it
    /// is not confused with the instance's `Init` script.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_process: bool,
    /// `--tty`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// The shell that runs a non-empty `Init` (see the module docs of `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// `Env` as a list (`["K=v"]`, docker's own form) or a map (`{"K": "v"}`, easier to write).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Env {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

impl Env {
    pub fn to_list(&self) -> Vec<String> {
        match self {
            Env::List(l) => l.clone(),
            Env::Map(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        }
    }
}

/// Bytes as a number or a string with a unit (b, k, m, g; powers of 1024 like `docker run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| {
        Error::invalid(format!(
            "Memory '{text}' is not a size; write bytes or a number with a unit like 256m or 1g"
        ))
    })?;
    if !(n.is_finite() && n > 0.0) {
        return Err(Error::invalid(format!("Memory '{text}' must be positive")));
    }
    Ok((n * mult as f64) as u64)
}

/// A `--mount`, as the engine's API takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Mount {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// `--health-*`. Durations are strings with a unit (`"500ms"`, `"5s"`, `"1m"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", "prog", "arg"]`, `["CMD-SHELL", "command"]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"` → nanoseconds (what the engine's API wants).
pub fn parse_duration_ns(what: &str, text: &str) -> Result<i64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let per: f64 = match unit {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => {
            return Err(Error::invalid(format!(
                "{what} '{text}' is not a duration; write e.g. 500ms, 5s or 1m"
            )))
        }
    };
    let n: f64 = num.parse().map_err(|_| {
        Error::invalid(format!(
            "{what} '{text}' is not a duration; write e.g. 500ms, 5s or 1m"
        ))
    })?;
    Ok((n * per) as i64)
}

/// `no`, `always`, `unless-stopped`, `on-failure[:N]` → (name, maximum retry count).
pub fn parse_restart_policy(text: &str) -> Result<(String, u32)> {
    let (name, count) = match text.split_once(':') {
        Some((n, c)) => (n, Some(c)),
        None => (text, None),
    };
    match (name, count) {
        ("no" | "always" | "unless-stopped", None) => Ok((name.to_string(), 0)),
        ("on-failure", None) => Ok((name.to_string(), 0)),
        ("on-failure", Some(c)) => c.parse().map(|n| (name.to_string(), n)).map_err(|_| {
            Error::invalid(format!(
                "RestartPolicy '{text}': the retry count must be a number"
            ))
        }),
        _ => Err(Error::invalid(format!(
            "RestartPolicy '{text}' is not one of no, always, unless-stopped, on-failure[:N]"
        ))),
    }
}

/// One `-p` port: `(container port/proto, host ip, host port)`.
pub fn parse_port(text: &str) -> Result<(String, String, String)> {
    let bad = || {
        Error::invalid(format!(
            "port '{text}' is not [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp] or CONTAINERPORT[/proto]"
        ))
    };
    let (spec, proto) = match text.rsplit_once('/') {
        Some((s, p)) if matches!(p, "tcp" | "udp" | "sctp") => (s, p),
        Some(_) => return Err(bad()),
        None => (text, "tcp"),
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (container, host_port, host_ip) = match parts.as_slice() {
        [c] => (*c, "", ""),
        [c, h] => (*c, *h, ""),
        [c, h, ip] => (*c, *h, *ip),
        _ => return Err(bad()),
    };
    let is_port = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
    if !is_port(container) || !(host_port.is_empty() || is_port(host_port)) {
        return Err(bad());
    }
    Ok((
        format!("{container}/{proto}"),
        host_ip.to_string(),
        host_port.to_string(),
    ))
}

impl Properties {
    /// Parses and checks everything that can be checked without the engine.
    pub fn parse(v: &Value) -> Result<Properties> {
        let p: Properties = serde_json::from_value(v.clone()).map_err(|e| {
            Error::invalid(format!(
                "instance-docker properties: {e} (Image is required; docs/instance-docker.md lists the fields)"
            ))
        })?;
        if p.image.trim().is_empty() {
            return Err(Error::invalid("instance-docker properties: Image is empty"));
        }
        if p.image
            .contains(|c: char| c.is_whitespace() || "?#%".contains(c))
        {
            return Err(Error::invalid(format!(
                "instance-docker properties: Image '{}' is not an image reference",
                p.image
            )));
        }
        if let Some(m) = &p.memory {
            m.bytes()?;
        }
        if let Some(c) = p.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(format!("Cpus {c} must be positive")));
            }
        }
        if let Some(r) = &p.restart_policy {
            parse_restart_policy(r)?;
        }
        for port in &p.ports {
            parse_port(port)?;
        }
        if let Some(h) = &p.healthcheck {
            for (what, d) in [
                ("Healthcheck.Interval", &h.interval),
                ("Healthcheck.Timeout", &h.timeout),
                ("Healthcheck.StartPeriod", &h.start_period),
            ] {
                if let Some(d) = d {
                    parse_duration_ns(what, d)?;
                }
            }
        }
        if let Some(Env::List(l)) = &p.env {
            if let Some(bad) = l.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
                return Err(Error::invalid(format!(
                    "Env entry '{bad}' is not NAME=value"
                )));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_full_example_and_refuses_typos() {
        let p = Properties::parse(&json!({
            "Image": "busybox:local", "Cmd": ["sleep", "3600"], "Env": {"A": "b"},
            "Ports": ["8080:80", "127.0.0.1:53:53/udp", "9000"], "Memory": "256m", "Cpus": 0.5,
            "RestartPolicy": "on-failure:3", "Labels": {"x": "y"}, "StopTimeout": 1,
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": "1s"}
        }))
        .unwrap();
        assert_eq!(p.memory.unwrap().bytes().unwrap(), 256 << 20);
        assert_eq!(p.env.unwrap().to_list(), vec!["A=b"]);
        let e = Properties::parse(&json!({"Image": "x", "Memroy": "1g"})).unwrap_err();
        assert!(e.message.contains("Memroy"), "{e}");
        let e = Properties::parse(&json!({"Cmd": ["x"]})).unwrap_err();
        assert!(e.message.contains("Image"), "{e}");
        assert!(Properties::parse(&json!({"Image": "x", "Ports": ["80:http"]})).is_err());
        assert!(Properties::parse(&json!({"Image": "x", "RestartPolicy": "sometimes"})).is_err());
        assert!(Properties::parse(&json!({"Image": "x", "Memory": "lots"})).is_err());
        assert!(Properties::parse(&json!({"Image": "x", "Env": ["NOEQUALS"]})).is_err());
    }

    #[test]
    fn ports_durations_and_sizes() {
        assert_eq!(
            parse_port("127.0.0.1:8080:80/udp").unwrap(),
            ("80/udp".into(), "127.0.0.1".into(), "8080".into())
        );
        assert_eq!(
            parse_port("80").unwrap(),
            ("80/tcp".into(), String::new(), String::new())
        );
        assert_eq!(parse_duration_ns("x", "500ms").unwrap(), 500_000_000);
        assert_eq!(parse_duration_ns("x", "2m").unwrap(), 120_000_000_000);
        assert!(parse_duration_ns("x", "5").is_err());
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
    }
}
