//! The swarm lab (`scripts/swarm-lab.sh`, `make swarm-lab`): four engines on this machine, each in
//! namespaces of its own, forming a swarm of 3 managers and 1 worker, with a registry every node
//! reaches; then torn down without a trace. Needs root (network namespaces, mounts, a bridge):
//! skipped loudly elsewhere, a failure under CI=true.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::engine::{prerequisites, static_bin_missing, text, wait_until, STATIC_BIN};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-lab.sh");
const LAB_RUN: &str = "/run/infrakit-lab";
const LAB_DATA: &str = "/var/lib/infrakit-lab";
const PREFIX: &str = "infrakit-lab";
/// Per condition; the lab settles in a few seconds, a loaded 2-core machine is slower.
const DEADLINE: Duration = Duration::from_secs(90);

/// Why the lab cannot be made here, if it cannot.
fn lab_missing() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some(
            "not root: the lab makes network namespaces, mounts and a bridge (run the tests as root; CI does)"
                .into(),
        );
    }
    let missing: Vec<&str> = [
        "dockerd",
        "docker-registry",
        "ip",
        "iptables",
        "nsenter",
        "unshare",
        "busybox",
    ]
    .into_iter()
    .filter(|tool| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {}: run scripts/docker-engine.sh and apt-get install docker-registry iproute2 iptables util-linux busybox-static",
            missing.join(", ")
        )
    })
}

fn lab(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .env("NODES", "4")
        .env("MANAGERS", "3")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/swarm-lab.sh")
}

fn lab_ok(args: &[&str]) -> String {
    let o = lab(args);
    assert!(
        o.status.success(),
        "swarm-lab.sh {args:?} failed: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `docker -H HOST ARGS` with the node's engine; Err(what it said) on failure.
fn node_docker(host: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new("timeout")
        .arg("20")
        .args(["docker", "-H", host])
        .args(args)
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(text(&o))
    }
}

/// Tears the lab down when the test ends, failed or not.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let o = lab(&["down"]);
        if !o.status.success() {
            eprintln!("swarm-lab.sh down failed: {}", text(&o));
        }
    }
}

struct Node {
    name: String,
    role: String,
    host: String,
}

fn nodes(lab: &Value) -> Vec<Node> {
    lab["Nodes"]
        .as_array()
        .expect("lab.json: Nodes")
        .iter()
        .map(|n| Node {
            name: n["Name"].as_str().expect("Name").to_string(),
            role: n["Role"].as_str().expect("Role").to_string(),
            host: n["DockerHost"].as_str().expect("DockerHost").to_string(),
        })
        .collect()
}

/// (hostname, status, manager status) of every node, as the manager at `host` sees the swarm.
fn node_list(host: &str) -> Result<Vec<(String, String, String)>, String> {
    let out = node_docker(
        host,
        &[
            "node",
            "ls",
            "--format",
            "{{.Hostname}}\t{{.Status}}\t{{.ManagerStatus}}",
        ],
    )?;
    Ok(out
        .lines()
        .map(|l| {
            let mut f = l.split('\t').map(str::to_string);
            (
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
            )
        })
        .collect())
}

/// What node `host` says is wrong with the swarm, or None when it has 3 Ready managers (one
/// Leader, the others Reachable) and 1 Ready worker, named as the lab says.
fn swarm_problem(host: &str, want: &[Node]) -> Option<String> {
    let list = match node_list(host) {
        Ok(list) => list,
        Err(e) => return Some(e),
    };
    let mut names = BTreeSet::new();
    let (mut leaders, mut reachable, mut workers) = (0, 0, 0);
    for (name, status, manager) in &list {
        if status != "Ready" {
            return Some(format!("{name} is {status}: {list:?}"));
        }
        match manager.as_str() {
            "Leader" => leaders += 1,
            "Reachable" => reachable += 1,
            "" => workers += 1,
            other => return Some(format!("{name} is a manager {other}: {list:?}")),
        }
        let role = if manager.is_empty() {
            "worker"
        } else {
            "manager"
        };
        if !want.iter().any(|n| &n.name == name && n.role == role) {
            return Some(format!("{name} as {role} is not in lab.json: {list:?}"));
        }
        names.insert(name.clone());
    }
    (names.len() != 4 || leaders != 1 || reachable != 2 || workers != 1)
        .then(|| format!("want 1 Leader, 2 Reachable, 1 worker: {list:?}"))
}

fn pid_of_file(path: &str) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What of the lab is still on the machine (nothing, after down).
/// `cgroups`: the names of cgroups the lab made outside its own tree (a plugin's is its ID).
fn leftovers(pids: &[u32], cgroups: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let sh = |c: &str| {
        let o = Command::new("sh").args(["-c", c]).output().expect("sh");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let netns = sh("ip netns list");
    if netns.contains(PREFIX) {
        left.push(format!("network namespaces: {netns}"));
    }
    if !sh("ip -br link | grep -E 'infrakit-lab0|ikl-'").is_empty() {
        left.push("the bridge or a veth".into());
    }
    if !sh(&format!("iptables -S FORWARD | grep -F {PREFIX}")).is_empty() {
        left.push("the FORWARD rule".into());
    }
    for dir in [LAB_RUN, LAB_DATA] {
        if Path::new(dir).exists() {
            left.push(dir.into());
        }
    }
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.is_empty() {
            left.push(format!(
                "process {pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    for registry in sh("pgrep -ax docker-registry").lines() {
        if registry.contains(LAB_DATA) {
            left.push(format!("the registry: {registry}"));
        }
    }
    for name in std::iter::once(format!("{PREFIX}*")).chain(cgroups.iter().cloned()) {
        let found = sh(&format!("find /sys/fs/cgroup -maxdepth 2 -name '{name}'"));
        if !found.is_empty() {
            left.push(format!("cgroups: {found}"));
        }
    }
    left
}

/// A managed plugin (flavor-vanilla, from the static binary) created and enabled in node2 through
/// the exec helper: its socket exists inside node2 and not on the host. Returns its cgroup's name
/// (the plugin's ID), which down must remove. Skipped, saying so, without the static binary.
fn managed_plugin_in_a_node() -> Vec<String> {
    if let Some(why) = static_bin_missing() {
        eprintln!("swarm lab test: not checking a managed plugin in a node: {why}");
        return Vec::new();
    }
    // Under the lab's data directory: visible inside the node, removed by down.
    let ctx = Path::new(LAB_DATA).join("test-plugin");
    for dir in ["run/docker/plugins", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(ctx.join("rootfs").join(dir)).expect("plugin rootfs");
    }
    std::fs::copy(STATIC_BIN, ctx.join("rootfs/infrakit")).expect("copy the static binary");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/plugins/flavor-vanilla/config.json"
        ),
        ctx.join("config.json"),
    )
    .expect("copy the plugin's config.json");
    let reference = "infrakit-lab-test/flavor-vanilla:1";
    let ctx = ctx.to_str().expect("utf-8 path");
    lab_ok(&[
        "exec", "node2", "--", "docker", "plugin", "create", reference, ctx,
    ]);
    lab_ok(&[
        "exec", "node2", "--", "docker", "plugin", "enable", reference,
    ]);
    let listed = lab_ok(&["exec", "node2", "--", "docker", "plugin", "ls"]);
    assert!(listed.contains(reference), "node2's plugins: {listed}");
    let id = lab_ok(&[
        "exec", "node2", "--", "docker", "plugin", "inspect", "-f", "{{.Id}}", reference,
    ]);
    let socket = format!("/run/docker/plugins/{}/vanilla.sock", id.trim());
    lab_ok(&["exec", "node2", "--", "test", "-S", &socket]);
    assert!(
        !Path::new(&socket).exists(),
        "{socket} is visible on the host: node2's /run is not private"
    );
    let id = id.trim().to_string();
    let cgroup = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "2", "-name", &id])
        .output()
        .expect("find");
    assert!(
        !cgroup.stdout.is_empty(),
        "the plugin's cgroup (named {id}) is not where down looks for it"
    );
    vec![id]
}

#[test]
fn a_swarm_lab_comes_up_healthy_and_goes_without_a_trace() {
    if common::skip::swarm_opted_out("swarm lab test") {
        return;
    }
    let waited = Instant::now();
    let Ok(_lock) = prerequisites("swarm lab test", lab_missing) else {
        return;
    };
    let waited = waited.elapsed();
    let test_started = Instant::now();
    let down = Down;

    let started = Instant::now();
    let out = lab_ok(&["up"]);
    let up_time = started.elapsed();
    for line in [
        "DOCKER_HOST=unix:///run/infrakit-lab/node2/docker.sock",
        "10.99.0.1:5000",
    ] {
        assert!(out.contains(line), "the summary lacks {line}: {out}");
    }
    let lab: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{LAB_RUN}/lab.json")).expect("lab.json"),
    )
    .expect("lab.json is JSON");
    let registry = lab["Registry"].as_str().expect("Registry").to_string();
    let nodes = nodes(&lab);
    assert_eq!(nodes.len(), 4, "{lab:#}");
    let env = std::fs::read_to_string(format!("{LAB_RUN}/lab.env")).expect("lab.env");
    assert!(env.contains("LAB_MANAGERS=\"node1 node2 node3\""), "{env}");
    assert!(env.contains("LAB_WORKERS=\"node4\""), "{env}");

    // The swarm, as every manager sees it.
    for n in nodes.iter().filter(|n| n.role == "manager") {
        wait_until(
            &format!("{}'s view of the swarm", n.name),
            DEADLINE,
            || swarm_problem(&n.host, &nodes),
            Option::is_none,
        );
    }

    // Each engine: experimental, its own engine ID, swarm node ID and hostname; managers control.
    let mut seen = BTreeSet::new();
    for n in &nodes {
        let info = node_docker(
            &n.host,
            &[
                "info",
                "--format",
                "{{.ExperimentalBuild}} {{.ID}} {{.Swarm.NodeID}} {{.Name}} {{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
            ],
        )
        .unwrap_or_else(|e| panic!("{}: docker info: {e}", n.name));
        let f: Vec<&str> = info.split(' ').collect();
        assert_eq!(f.len(), 6, "{}: {info}", n.name);
        assert_eq!(f[0], "true", "{} is not experimental: {info}", n.name);
        assert_eq!(f[3], n.name, "{}'s hostname: {info}", n.name);
        assert_eq!(f[4], "active", "{}'s swarm state: {info}", n.name);
        assert_eq!(f[5] == "true", n.role == "manager", "{}: {info}", n.name);
        for id in [f[1], f[2], f[3]] {
            assert!(seen.insert(id.to_string()), "{id} seen twice: {info}");
        }
    }

    // The registry from inside a node's namespaces, and through a node's engine (a pull of a
    // repository it does not have reaches it: "manifest unknown" comes from the registry).
    let v2 = lab_ok(&[
        "exec",
        "node2",
        "--",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{registry}/v2/"),
    ]);
    assert_eq!(v2.trim(), "{}", "the registry's /v2/ from node2");
    let worker = nodes.iter().find(|n| n.role == "worker").expect("a worker");
    let pull = node_docker(
        &worker.host,
        &["pull", &format!("{registry}/infrakit-lab-test/absent:none")],
    )
    .expect_err("a pull of an absent repository");
    assert!(pull.contains("manifest unknown"), "{}: {pull}", worker.name);

    let plugin_cgroups = managed_plugin_in_a_node();

    // Inside a node, its own engine answers on /var/run/docker.sock.
    let name = lab_ok(&[
        "exec",
        "node3",
        "--",
        "docker",
        "info",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(name.trim(), "node3");

    // up again keeps the healthy lab as it is.
    let holders: Vec<u32> = nodes
        .iter()
        .map(|n| pid_of_file(&format!("{LAB_DATA}/{}/holder.pid", n.name)))
        .collect();
    let again = lab_ok(&["up"]);
    assert!(again.contains("already up"), "{again}");
    let mut pids = holders.clone();
    for (n, holder) in nodes.iter().zip(&holders) {
        assert_eq!(
            pid_of_file(&format!("{LAB_DATA}/{}/holder.pid", n.name)),
            *holder,
            "{}'s holder changed on a second up",
            n.name
        );
        pids.push(pid_of_file(&format!("{LAB_DATA}/{}/dockerd.pid", n.name)));
    }

    // Down, twice: nothing of the lab is left.
    let started = Instant::now();
    lab_ok(&["down"]);
    let down_time = started.elapsed();
    let left = leftovers(&pids, &plugin_cgroups);
    assert!(left.is_empty(), "left after down: {left:#?}");
    lab_ok(&["down"]);
    drop(down);
    eprintln!(
        "swarm lab: up {:.1} s, down {:.1} s, whole test {:.1} s (after {:.1} s waiting for the engine tests' lock)",
        up_time.as_secs_f64(),
        down_time.as_secs_f64(),
        test_started.elapsed().as_secs_f64(),
        waited.as_secs_f64()
    );
}
