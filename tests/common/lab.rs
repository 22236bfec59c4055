//! The lab swarm (scripts/swarm-lab.sh: 3 managers + 1 worker by default, each a dockerd in its
//! own network and mount namespaces) for the tests that need several engines.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::engine::prerequisites as engine_prerequisites;

pub const LAB_JSON: &str = "/run/infrakit-lab/lab.json";
pub const LAB_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-lab.sh");

pub struct Node {
    pub name: String,
    pub manager: bool,
    /// `unix:///run/infrakit-lab/nodeK/docker.sock`.
    pub host: String,
}

/// The lab, brought up for a test and torn down after it, however the test ends.
pub struct Lab {
    pub nodes: Vec<Node>,
}

pub fn lab_script(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(LAB_SCRIPT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/swarm-lab.sh")
}

impl Lab {
    pub fn up() -> Lab {
        let out = lab_script(&["up"]);
        assert!(
            out.status.success(),
            "swarm-lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lab: Value = serde_json::from_slice(&std::fs::read(LAB_JSON).expect("lab.json"))
            .expect("lab.json parses");
        let nodes = lab["Nodes"]
            .as_array()
            .expect("Nodes")
            .iter()
            .map(|n| Node {
                name: n["Name"].as_str().unwrap_or_default().to_string(),
                manager: n["Role"].as_str() == Some("manager"),
                host: n["DockerHost"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        Lab { nodes }
    }

    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.manager)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = lab_script(&["down"]);
        if !out.status.success() {
            eprintln!(
                "swarm-lab down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `docker -H HOST ARGS` with a short deadline (a survivor's API hangs during an election).
pub fn docker_on(host: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("timeout")
        .arg("5")
        .arg("docker")
        .args(["-H", host])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn leads(node: &Node) -> bool {
    docker_on(
        &node.host,
        &[
            "node",
            "inspect",
            "self",
            "--format",
            "{{.ManagerStatus.Leader}}",
        ],
    )
    .as_deref()
        == Some("true")
}

/// Polls `ok` every 100 ms until it holds; fails the test after `limit`. How long it took.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Whether a lab test may run (root; opted in through `opt_in`=1 when one is named), after taking
/// the engine tests' machine-wide lock (held while the returned file lives). Skips loudly, or
/// fails under CI=true when the lab cannot run.
pub fn prerequisites(what: &str, opt_in: Option<&str>) -> Option<std::fs::File> {
    if super::skip::swarm_opted_out(what) {
        return None;
    }
    if let Some(var) = opt_in {
        if std::env::var(var).as_deref() != Ok("1") {
            super::skip::record(what, &format!("set {var}=1 to run them"));
            return None;
        }
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    engine_prerequisites(what, || {
        (!root).then(|| "the lab swarm needs root (network and mount namespaces)".to_string())
    })
    .ok()
}
