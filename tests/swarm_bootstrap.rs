//! A swarm grown from one seed node and managing itself (issue 12), on this machine: the nodes
//! are Docker-in-Docker containers of the swarm-node image (`make node-image`) made by
//! instance-docker on the host's engine, on a network of the test's own.
//!
//! One test, in phases (each needs the swarm the previous one left): `infrakit bootstrap` from
//! nothing to 3 managers + 2 workers; a worker's container removed by hand is replaced and its
//! dead node leaves the node list; the leader's container killed: a new leader's controller
//! replaces it with the same address; workers scaled 2 → 4 → 1 under a replicated service that
//! loses no task; a rolling update of the managers, one at a time and the leader last, with a
//! probe counting Reachable managers every 200 ms.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::engine::{docker, static_bin_missing, text, STATIC_BIN};
use common::lab::wait_until;
use serde_json::{json, Value};

/// Everything the test makes is named from these, and swept by them.
const NETWORK: &str = "infrakit-selftest-bootstrap";
const SUBNET: &str = "10.97.0.0/24";
const REGISTRY: &str = "10.97.0.1:5000";
const MANAGER_IPS: [&str; 3] = ["10.97.0.11", "10.97.0.12", "10.97.0.13"];
const MANAGERS: &str = "iktb-managers";
const WORKERS: &str = "iktb-workers";
const BUNDLE: &str = "iktb";
/// Where each node's engine socket appears on the host (`<dir>/<ip>/docker.sock`).
const SOCKETS: &str = "/var/lib/infrakit-selftest/bootstrap-nodes";
const REGISTRY_DIR: &str = "/var/lib/infrakit-selftest/bootstrap-registry";
const NODE_IMAGE: &str = "infrakit/swarm-node:20.10";
const SERVICE: &str = "iktb-probe";

/// Why the node image cannot be used: missing, or made by another recipe than the one in this
/// tree (the label scripts/lib/debian-image.sh sets: the hash of the script and the library).
fn node_image_missing() -> Option<String> {
    use sha2::{Digest, Sha256};
    let o = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"infrakit.image.recipe\"}}",
        NODE_IMAGE,
    ]);
    if !o.status.success() {
        return Some(format!(
            "no {NODE_IMAGE} image: run make node-image (CI does)"
        ));
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let mut h = Sha256::new();
    for f in ["scripts/node-image.sh", "scripts/lib/debian-image.sh"] {
        h.update(std::fs::read(format!("{root}/{f}")).unwrap_or_default());
    }
    let want = &hex::encode(h.finalize())[..16];
    let have = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (have != want).then(|| {
        format!(
            "{NODE_IMAGE} was made by another recipe ({have:?}, this tree's is {want}): run make \
             node-image (CI does)"
        )
    })
}

fn registry_missing() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v docker-registry"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| "no docker-registry (Debian's docker-registry package)".to_string())
}

/// The node containers of our groups, running or not.
fn our_containers() -> Vec<String> {
    let mut all = Vec::new();
    for g in [MANAGERS, WORKERS] {
        let o = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=infrakit.group={g}"),
        ]);
        all.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    all
}

fn stop_registry() {
    let _ = Command::new("pkill")
        .args([
            "-f",
            &format!("docker-registry serve {REGISTRY_DIR}/config.yml"),
        ])
        .status();
}

/// Removes whatever a previous run (or this one) left: node containers and their volumes, the
/// network, the registry, the socket directories.
fn sweep() {
    let ids = our_containers();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
    let _ = docker(&["network", "rm", NETWORK]);
    stop_registry();
    let _ = std::fs::remove_dir_all(SOCKETS);
    let _ = std::fs::remove_dir_all(REGISTRY_DIR);
}

/// Stops what the test started, whatever way it ends.
struct Teardown {
    registry: Option<std::process::Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        sweep();
    }
}

fn start_registry() -> std::process::Child {
    std::fs::create_dir_all(format!("{REGISTRY_DIR}/data")).expect("registry dir");
    std::fs::write(
        format!("{REGISTRY_DIR}/config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: \
             {REGISTRY_DIR}/data\n  delete:\n    enabled: true\nhttp:\n  addr: {REGISTRY}\n"
        ),
    )
    .expect("registry config");
    let child = Command::new("setsid")
        .args([
            "docker-registry",
            "serve",
            &format!("{REGISTRY_DIR}/config.yml"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    wait_until("the registry listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(REGISTRY).is_ok()
    });
    child
}

fn node_spec(
    group: &str,
    allocation: Value,
    flavor: &str,
    flavor_props: Value,
    managers: bool,
) -> Value {
    let mut binds = vec![
        "/sys/fs/cgroup:/sys/fs/cgroup:rw".to_string(),
        format!("{SOCKETS}:/run/infrakit-nodes"),
    ];
    if managers {
        binds.push("/var/run/docker.sock:/run/docker/infrastructure.sock".into());
    }
    json!({"ID": group, "Properties": {
        "Allocation": allocation,
        "Instance": {"Plugin": "instance-docker", "Properties": {
            "Image": NODE_IMAGE,
            "Network": NETWORK,
            "CapAdd": ["ALL"],
            "CapDrop": ["SYS_RESOURCE"],
            "SecurityOpt": ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"],
            "DeviceCgroupRules": ["a *:* rwm"],
            "Binds": binds,
            "Env": {
                "INFRAKIT_NODE_INSECURE_REGISTRIES": REGISTRY,
                "INFRAKIT_NODE_SOCKET_DIR": "/run/infrakit-nodes/{ip}"
            },
            "StopTimeout": 5
        }},
        "Flavor": {"Plugin": flavor, "Properties": flavor_props},
        "Policies": {"Remediation": {"UnhealthySeconds": 5}}
    }})
}

fn managers_spec(rev: &str) -> Value {
    node_spec(
        MANAGERS,
        json!({"LogicalIDs": MANAGER_IPS}),
        "flavor-swarm/manager",
        json!({"DownFor": "10s", "EngineLabels": {"iktb.rev": rev}}),
        true,
    )
}

fn workers_spec() -> Value {
    node_spec(
        WORKERS,
        json!({"Size": 2}),
        "flavor-swarm/worker",
        json!({"DownFor": "10s", "DrainFor": "30s"}),
        false,
    )
}

fn socket_of(ip: &str) -> String {
    format!("unix://{SOCKETS}/{ip}/docker.sock")
}

/// `docker ARGS` against the first manager's engine that answers within 3 s.
fn on_swarm(args: &[&str]) -> Option<String> {
    for ip in MANAGER_IPS {
        let o = Command::new("timeout")
            .args(["3", "docker", "-H", &socket_of(ip)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if o.status.success() {
            return Some(String::from_utf8_lossy(&o.stdout).to_string());
        }
    }
    None
}

#[derive(Debug, Clone)]
struct SwarmNode {
    id: String,
    addr: String,
    hostname: String,
    ready: bool,
    manager: bool,
    reachable: bool,
    leader: bool,
    labels: BTreeMap<String, String>,
}

/// The swarm's nodes, through any manager.
fn nodes() -> Option<Vec<SwarmNode>> {
    let out = on_swarm(&["node", "ls", "-q"])?;
    let ids: Vec<&str> = out.split_whitespace().collect();
    if ids.is_empty() {
        return Some(vec![]);
    }
    let mut args = vec!["node", "inspect"];
    args.extend(ids);
    let all: Vec<Value> = serde_json::from_str(&on_swarm(&args)?).ok()?;
    Some(
        all.iter()
            .map(|n| SwarmNode {
                id: n["ID"].as_str().unwrap_or_default().into(),
                addr: n["Status"]["Addr"].as_str().unwrap_or_default().into(),
                hostname: n["Description"]["Hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                ready: n["Status"]["State"] == "ready",
                manager: n["Spec"]["Role"] == "manager",
                reachable: n["ManagerStatus"]["Reachability"] == "reachable",
                leader: n["ManagerStatus"]["Leader"] == true,
                labels: n["Description"]["Engine"]["Labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
    )
}

/// (Ready+Reachable managers, Ready workers, nodes that are neither).
fn census(all: &[SwarmNode]) -> (usize, usize, usize) {
    let m = all
        .iter()
        .filter(|n| n.manager && n.ready && n.reachable)
        .count();
    let w = all.iter().filter(|n| !n.manager && n.ready).count();
    (m, w, all.len() - m - w)
}

fn settled(managers: usize, workers: usize) -> impl FnMut() -> bool {
    move || nodes().is_some_and(|all| census(&all) == (managers, workers, 0))
}

/// `infrakit ARGS` on a running manager, as a person there would run it (the plugins' sockets
/// are inside the node). The static binary is copied in first.
fn infrakit_on_manager(args: &[&str], input: Option<(&str, &Value)>) -> Output {
    for ip in MANAGER_IPS {
        let name = format!("{MANAGERS}-{ip}");
        if docker(&["exec", &name, "true"]).status.success() {
            if !docker(&["exec", &name, "test", "-x", "/usr/local/bin/infrakit"])
                .status
                .success()
            {
                let c = docker(&["cp", STATIC_BIN, &format!("{name}:/usr/local/bin/infrakit")]);
                assert!(c.status.success(), "docker cp: {}", text(&c));
            }
            if let Some((path, value)) = input {
                let tmp = std::env::temp_dir().join(format!("iktb-{}.json", std::process::id()));
                std::fs::write(&tmp, value.to_string()).expect("write spec");
                let c = docker(&[
                    "cp",
                    tmp.to_str().expect("utf-8"),
                    &format!("{name}:{path}"),
                ]);
                assert!(c.status.success(), "docker cp: {}", text(&c));
            }
            let mut all = vec!["exec", &name, "infrakit"];
            all.extend(args);
            return docker(&all);
        }
    }
    panic!("no manager container is running");
}

fn describe(group: &str) -> Option<Value> {
    let o = infrakit_on_manager(&["group", "describe", group, "--json"], None);
    serde_json::from_slice(&o.stdout).ok()
}

fn converged(group: &str) -> bool {
    describe(group).is_some_and(|d| d["Converged"] == true)
}

/// Reachable managers every 200 ms through whichever manager answers; `None` while none does
/// (an election).
struct Probe {
    samples: Arc<Mutex<Vec<Option<usize>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start() -> Probe {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let n = on_swarm(&["node", "ls", "--format", "{{.ManagerStatus}}"]).map(|out| {
                    out.lines()
                        .filter(|l| *l == "Reachable" || *l == "Leader")
                        .count()
                });
                s.lock().expect("probe").push(n);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Probe {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// (samples, fewest Reachable among the answers, samples with no answer).
    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = self.samples.lock().expect("probe");
        let answered: Vec<usize> = s.iter().flatten().copied().collect();
        (
            s.len(),
            answered.iter().copied().min().unwrap_or(0),
            s.len() - answered.len(),
        )
    }
}

#[test]
fn a_seed_grows_into_a_swarm_that_manages_itself() {
    let Some(_lock) = common::lab::prerequisites("swarm bootstrap test", None) else {
        return;
    };
    let missing = [
        static_bin_missing(),
        node_image_missing(),
        registry_missing(),
    ]
    .into_iter()
    .flatten()
    .next();
    if let Some(missing) = missing {
        common::skip::skip("swarm bootstrap test", &missing);
        return;
    }
    sweep();
    let mut teardown = Teardown { registry: None };
    let net = docker(&["network", "create", "--subnet", SUBNET, NETWORK]);
    assert!(net.status.success(), "network: {}", text(&net));
    teardown.registry = Some(start_registry());
    std::fs::create_dir_all(SOCKETS).expect("sockets dir");

    // 1. Bootstrap from nothing.
    let file = std::env::temp_dir().join(format!("iktb-bootstrap-{}.json", std::process::id()));
    let groups = json!([
        {"Plugin": "group", "Properties": managers_spec("1")},
        {"Plugin": "group", "Properties": workers_spec()}
    ]);
    std::fs::write(&file, groups.to_string()).expect("write file");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_infrakit"))
        .args(["bootstrap", file.to_str().expect("utf-8")])
        .args([
            "--registry",
            &format!("{REGISTRY}/{BUNDLE}"),
            "--bundle",
            BUNDLE,
        ])
        .args(["--push", "--binary", STATIC_BIN, "--ready-timeout", "4m"])
        .args(["--seed-engine", &format!("{SOCKETS}/{{ip}}/docker.sock")])
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .stdin(Stdio::null())
        .output()
        .expect("run bootstrap");
    let printed = text(&out);
    assert!(out.status.success(), "bootstrap failed:\n{printed}");
    println!("{printed}");
    println!(
        "bootstrap: 3 managers + 2 workers Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let seed_id = printed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("seed {}: made ", MANAGER_IPS[0])))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the seed's container ID")
        .to_string();
    wait_until(
        "3 managers and 2 workers Ready",
        Duration::from_secs(60),
        settled(3, 2),
    );
    wait_until("both groups converged", Duration::from_secs(60), || {
        converged(MANAGERS) && converged(WORKERS)
    });
    let seed_now = docker(&[
        "inspect",
        "-f",
        "{{.Id}}",
        &format!("{MANAGERS}-{}", MANAGER_IPS[0]),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&seed_now.stdout).trim(),
        seed_id,
        "the seed was adopted, not made again"
    );

    // 2. A worker's container removed by hand: replaced, joined, its dead node gone.
    let all = nodes().expect("nodes");
    let victim = all.iter().find(|n| !n.manager).expect("a worker").clone();
    let gone = docker(&["rm", "-f", "-v", &victim.hostname]);
    assert!(gone.status.success(), "rm: {}", text(&gone));
    let t = wait_until(
        "a replacement worker Ready and the dead node removed",
        Duration::from_secs(120),
        || {
            nodes().is_some_and(|all| {
                census(&all) == (3, 2, 0) && all.iter().all(|n| n.id != victim.id)
            })
        },
    );
    println!(
        "worker removed by hand: replaced and its node gone in {:.1} s",
        t.as_secs_f64()
    );

    // 3. The leader's container killed: a new leader replaces it, same address.
    let all = nodes().expect("nodes");
    let leader = all.iter().find(|n| n.leader).expect("a leader").clone();
    let probe = Probe::start();
    let killed = docker(&["kill", &leader.hostname]);
    assert!(killed.status.success(), "kill: {}", text(&killed));
    let t = wait_until(
        "the dead leader replaced at its address",
        Duration::from_secs(240),
        || {
            nodes().is_some_and(|all| {
                census(&all) == (3, 2, 0)
                    && all.iter().all(|n| n.id != leader.id)
                    && all.iter().any(|n| n.addr == leader.addr && n.manager)
            })
        },
    );
    let (samples, fewest, unanswered) = probe.finish();
    println!(
        "leader {} killed: replaced in {:.1} s; Reachable managers never below {fewest} in \
         {samples} samples ({unanswered} unanswered: the election)",
        leader.addr,
        t.as_secs_f64()
    );
    assert!(fewest >= 2, "quorum lost: {fewest} Reachable managers");

    // 4. Workers 2 -> 4 -> 1 under a replicated service: no task lost.
    common::engine::ensure_busybox();
    let image = format!("{REGISTRY}/{BUNDLE}/busybox:1");
    let pushed = MANAGER_IPS.iter().any(|ip| {
        let s = socket_of(ip);
        Command::new("sh")
            .args([
                "-c",
                &format!(
                    "docker save {bb} | timeout 60 docker -H {s} load >/dev/null && \
                     timeout 10 docker -H {s} tag {bb} {image} && \
                     timeout 60 docker -H {s} push {image} >/dev/null",
                    bb = common::engine::busybox()
                ),
            ])
            .status()
            .is_ok_and(|st| st.success())
    });
    assert!(pushed, "pushing busybox to the registry through a manager");
    let created = on_swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        SERVICE,
        "--replicas",
        "3",
        "--constraint",
        "node.role==worker",
        &image,
        "sleep",
        "86400",
    ]);
    assert!(created.is_some(), "service create");
    let running = || -> usize {
        on_swarm(&[
            "service",
            "ps",
            SERVICE,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ])
        .map(|o| o.lines().filter(|l| l.starts_with("Running")).count())
        .unwrap_or(0)
    };
    wait_until("3 replicas running", Duration::from_secs(60), || {
        running() == 3
    });
    let scale = |n: &str| {
        let o = infrakit_on_manager(&["group", "scale", WORKERS, n], None);
        assert!(o.status.success(), "scale {n}: {}", text(&o));
    };
    scale("4");
    let t = wait_until("4 workers Ready", Duration::from_secs(120), settled(3, 4));
    println!("workers 2 -> 4 in {:.1} s", t.as_secs_f64());
    scale("1");
    let t = wait_until(
        "1 worker left, drained nodes removed, 3 replicas running",
        Duration::from_secs(240),
        || settled(3, 1)() && running() == 3,
    );
    println!(
        "workers 4 -> 1 (drain, then remove) in {:.1} s",
        t.as_secs_f64()
    );
    let failed = on_swarm(&[
        "service",
        "ps",
        SERVICE,
        "--format",
        "{{.CurrentState}} {{.Error}}",
    ])
    .unwrap_or_default();
    assert!(
        !failed
            .lines()
            .any(|l| l.starts_with("Failed") || l.starts_with("Rejected")),
        "a task failed: {failed}"
    );

    // 5. A rolling update of the managers: one at a time, the leader last, quorum kept.
    let all = nodes().expect("nodes");
    let first_leader = all
        .iter()
        .find(|n| n.leader)
        .expect("a leader")
        .addr
        .clone();
    let before: BTreeMap<String, String> = all
        .iter()
        .filter(|n| n.manager)
        .map(|n| (n.addr.clone(), n.id.clone()))
        .collect();
    let probe = Probe::start();
    let commit = infrakit_on_manager(
        &["group", "commit", "/tmp/iktb-managers.json"],
        Some(("/tmp/iktb-managers.json", &managers_spec("2"))),
    );
    assert!(commit.status.success(), "commit: {}", text(&commit));
    let mut replaced: Vec<String> = Vec::new();
    let t = wait_until(
        "every manager replaced with the new labels",
        Duration::from_secs(400),
        || {
            let Some(all) = nodes() else { return false };
            for n in all.iter().filter(|n| n.manager) {
                if before.get(&n.addr).is_some_and(|old| *old != n.id)
                    && !replaced.contains(&n.addr)
                {
                    replaced.push(n.addr.clone());
                }
            }
            census(&all) == (3, 1, 0)
                && all
                    .iter()
                    .filter(|n| n.manager)
                    .all(|n| n.labels.get("iktb.rev").map(String::as_str) == Some("2"))
        },
    );
    let (samples, fewest, unanswered) = probe.finish();
    println!(
        "rolling update of the managers in {:.1} s, order {replaced:?} (leader was {first_leader}); \
         Reachable managers never below {fewest} in {samples} samples ({unanswered} unanswered)",
        t.as_secs_f64()
    );
    assert_eq!(replaced.len(), 3, "{replaced:?}");
    assert_eq!(
        replaced.last(),
        Some(&first_leader),
        "the leader goes last: {replaced:?}"
    );
    assert!(
        fewest >= 2,
        "quorum lost during the update: {fewest} Reachable managers"
    );

    // 6. bootstrap --down: the bundle removed through a manager (no controller makes nodes
    // again), every node of both groups gone; the network and the registry (not bootstrap's)
    // stay.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_infrakit"))
        .args(["bootstrap", "--down", file.to_str().expect("utf-8")])
        .args(["--bundle", BUNDLE])
        .args(["--seed-engine", &format!("{SOCKETS}/{{ip}}/docker.sock")])
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .stdin(Stdio::null())
        .output()
        .expect("run bootstrap --down");
    let printed = text(&out);
    assert!(out.status.success(), "bootstrap --down failed:\n{printed}");
    assert!(
        printed.contains(&format!("removing bundle '{BUNDLE}' through")),
        "{printed}"
    );
    for group in [MANAGERS, WORKERS] {
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=infrakit.group={group}"),
        ]);
        assert!(
            String::from_utf8_lossy(&left.stdout).trim().is_empty(),
            "{group}'s nodes left: {printed}"
        );
    }
    assert!(docker(&["network", "inspect", NETWORK]).status.success());
    println!(
        "bootstrap --down: bundle and nodes removed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
