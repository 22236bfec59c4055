//! Swarm mode on the lab swarm (scripts/swarm-lab.sh: 3 managers + 1 worker, each a dockerd in
//! its own namespaces): a group controller per manager, following the swarm's leadership and
//! keeping groups in the swarm's configs. A commit through a follower is acted on by the leader;
//! the leader's engine is killed in the middle of a rolling update, and the controller on the
//! newly elected leader resumes and completes it, while a probe outside the controllers checks
//! the group never went above target + surge nor below target.
//!
//! instance-file on one host directory stands in for a cloud API every manager can reach.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::engine::prerequisites;
use common::World;
use serde_json::{json, Value};

const LAB_JSON: &str = "/run/infrakit-lab/lab.json";
const LAB_DATA: &str = "/var/lib/infrakit-lab";

struct Node {
    name: String,
    manager: bool,
    host: String,
}

/// The lab, brought up for this test and torn down after it, however the test ends.
struct Lab {
    nodes: Vec<Node>,
}

fn lab_script(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-lab.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/swarm-lab.sh")
}

impl Lab {
    fn up() -> Lab {
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

    fn managers(&self) -> impl Iterator<Item = &Node> {
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
fn docker_on(host: &str, args: &[&str]) -> Option<String> {
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

fn leads(node: &Node) -> bool {
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

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// Instance files by config hash tag.
fn census(dir: &Path) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut by_hash = std::collections::BTreeMap::new();
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        total += 1;
        let hash = v["Tags"]["infrakit.config.hash"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *by_hash.entry(hash).or_default() += 1;
    }
    (total, by_hash)
}

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_controller(w: &World, node: &Node) -> Controller {
    let name = format!("group-{}", node.name);
    let log = w.path(&format!("{name}.log"));
    let child = w
        .cmd(&[
            "plugin",
            "serve",
            "group",
            "--name",
            &name,
            "--swarm",
            "on",
            "--poll-interval",
            "500ms",
            "--health-interval",
            "1s",
        ])
        .env("DOCKER_HOST", &node.host)
        .env("INFRAKIT_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn group controller");
    let controller = Controller { child, log };
    let socket = w.socket(&name);
    wait_until(
        "the group controller answers",
        Duration::from_secs(30),
        || common::post(&socket, "/Plugin.Activate", b"{}").is_ok_and(|r| r.status == 200),
    );
    controller
}

fn group_spec(note: &str) -> Value {
    json!({"ID": "fo", "Properties": {
        "Allocation": {"Size": 20},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": note}},
        "Flavor": {"Plugin": "flavor-vanilla"},
        "Policies": {"Update": {"MaxSurge": 2, "MaxUnavailable": 0, "MinReadySeconds": 1}}
    }})
}

/// How long after `since` the controller's log shows its first provision or destroy.
fn first_action_after(log: &str, since: std::time::SystemTime) -> Option<Duration> {
    log.lines()
        .filter(|l| l.contains("provisioned") || l.contains("destroyed"))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            humantime::parse_rfc3339(stamp).ok()
        })
        .filter_map(|t| t.duration_since(since).ok())
        .min()
}

#[test]
fn a_new_leader_resumes_a_rolling_update_after_the_leaders_engine_is_killed() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let Ok(_lock) = prerequisites("swarm failover tests", || {
        (!root).then(|| "the lab swarm needs root (network and mount namespaces)".to_string())
    }) else {
        return;
    };
    let lab = Lab::up();
    let w = World::new();
    let dir = w.path("instances");
    let _files = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().unwrap()],
    );
    let _vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let managers: Vec<&Node> = lab.managers().collect();
    assert_eq!(managers.len(), 3, "the lab has 3 managers");
    let controllers: Vec<Controller> = managers.iter().map(|n| start_controller(&w, n)).collect();
    let leader = managers
        .iter()
        .position(|n| leads(n))
        .expect("one manager leads");
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let via = |i: usize| format!("group-{}", managers[i].name);

    // Commit through a follower; the leader acts.
    let v1 = w.write("fo-v1.json", &group_spec("v1").to_string());
    w.ok(&[
        "group",
        "--name",
        &via(followers[0]),
        "commit",
        v1.to_str().unwrap(),
    ]);
    let first_action = wait_until("the leader provisions", Duration::from_secs(30), || {
        census(&dir).0 > 0
    });
    println!(
        "commit through a follower → first instance: {:.3} s",
        first_action.as_secs_f64()
    );
    wait_until("20 instances", Duration::from_secs(60), || {
        census(&dir).0 == 20
    });
    w.ok(&[
        "group",
        "--name",
        &via(leader),
        "watch",
        "fo",
        "--timeout",
        "60s",
        "--converged-only",
    ]);
    // Any manager describes the same instances.
    let described = |i: usize| -> usize {
        let out = w.run(&["group", "--name", &via(i), "describe", "fo", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    wait_until("a follower shows the 20", Duration::from_secs(20), || {
        described(followers[1]) == 20
    });

    // The probe: every 50 ms, outside the controllers.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((usize::MAX, 0usize)));
    let probe = {
        let (stop, seen, dir) = (stop.clone(), seen.clone(), dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (n, _) = census(&dir);
                let mut s = seen.lock().expect("probe");
                s.0 = s.0.min(n);
                s.1 = s.1.max(n);
                drop(s);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Roll v2 through the other follower; kill the leader's engine halfway.
    let old_hash = census(&dir).1.keys().next().cloned().unwrap_or_default();
    let v2 = w.write("fo-v2.json", &group_spec("v2").to_string());
    w.ok(&[
        "group",
        "--name",
        &via(followers[1]),
        "commit",
        v2.to_str().unwrap(),
    ]);
    wait_until("half the group replaced", Duration::from_secs(120), || {
        census(&dir).1.get(&old_hash).copied().unwrap_or(0) <= 10
    });
    let pid_file = format!("{LAB_DATA}/{}/dockerd.pid", managers[leader].name);
    let pid = std::fs::read_to_string(&pid_file).expect("dockerd.pid");
    let killed = std::time::SystemTime::now();
    assert!(Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill")
        .success());
    let election = wait_until("a new leader", Duration::from_secs(60), || {
        followers.iter().any(|i| leads(managers[*i]))
    });
    wait_until(
        "the update completes on the new leader",
        Duration::from_secs(180),
        || {
            let (n, by) = census(&dir);
            n == 20 && !by.contains_key(&old_hash)
        },
    );
    let new_leader = *followers
        .iter()
        .find(|i| leads(managers[**i]))
        .expect("a leader");
    let log = std::fs::read_to_string(&controllers[new_leader].log).unwrap_or_default();
    assert!(
        log.contains("elected: resuming"),
        "the new leader's controller resumed from the store:\n{log}"
    );
    let first_action = first_action_after(&log, killed).expect("the new leader acted");
    println!(
        "leader's engine killed → election seen: {:.1} s; → the new leader's first action: {:.1} s",
        election.as_secs_f64(),
        first_action.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    probe.join().expect("probe");
    let (low, high) = *seen.lock().expect("probe");
    println!("probe: between {low} and {high} instances throughout");
    assert!(high <= 22, "above target + surge: {high}");
    assert!(low >= 20, "below target: {low}");
    // The group is destroyed through the new leader, and nothing is left.
    w.ok(&[
        "group",
        "--name",
        &via(new_leader),
        "destroy",
        "fo",
        "--timeout",
        "60s",
    ]);
    assert_eq!(census(&dir).0, 0);
    drop(controllers);
}
