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

use common::lab::{self, leads, wait_until, Lab, Node};
use common::World;
use serde_json::{json, Value};

const LAB_DATA: &str = "/var/lib/infrakit-lab";

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
    let Some(_lock) = lab_prerequisites() else {
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
    let killed = std::time::SystemTime::now();
    kill_engine(&managers[leader].name);
    let election = wait_until("a new leader", Duration::from_secs(60), || {
        followers.iter().any(|i| leads(managers[*i]))
    });
    let done = Instant::now();
    loop {
        let (n, by) = census(&dir);
        if n == 20 && !by.contains_key(&old_hash) {
            break;
        }
        if done.elapsed() > Duration::from_secs(180) {
            for (i, c) in controllers.iter().enumerate() {
                let log = std::fs::read_to_string(&c.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "--- controller {} (last lines, newest first):\n{}",
                    via(i),
                    tail.join("\n")
                );
                let d = w.run(&["group", "--name", &via(i), "describe", "fo", "--json"]);
                eprintln!(
                    "--- its describe: {}{}",
                    String::from_utf8_lossy(&d.stdout),
                    String::from_utf8_lossy(&d.stderr)
                );
            }
            panic!(
                "the update did not complete on the new leader within 180 s: {n} instances, {by:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// In `make test` (and CI) like every lab test; `make test-swarm` runs these alone.
fn lab_prerequisites() -> Option<std::fs::File> {
    lab::prerequisites("swarm failover tests", None)
}

/// The lab, instance-file and flavor-vanilla on the host, a controller per manager, and a group of
/// `size` committed through the leader's controller and converged.
struct Swarm {
    w: World,
    dir: PathBuf,
    controllers: Vec<Controller>,
    managers: Vec<(String, String)>,
    _files: common::Plugin,
    _vanilla: common::Plugin,
    _lab: Lab,
}

impl Swarm {
    fn new(size: u64) -> Swarm {
        let lab = Lab::up();
        let w = World::new();
        let dir = w.path("instances");
        let files = w.serve(
            "instance-file",
            &["instance-file", "--dir", dir.to_str().unwrap()],
        );
        let vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
        let nodes: Vec<&Node> = lab.managers().collect();
        let controllers = nodes.iter().map(|n| start_controller(&w, n)).collect();
        let managers = nodes
            .iter()
            .map(|n| (n.name.clone(), n.host.clone()))
            .collect();
        let s = Swarm {
            w,
            dir,
            controllers,
            managers,
            _files: files,
            _vanilla: vanilla,
            _lab: lab,
        };
        let leader = s.leader().expect("a leader");
        let mut spec = group_spec("v1");
        spec["Properties"]["Allocation"]["Size"] = json!(size);
        let f = s.w.write("g.json", &spec.to_string());
        s.w.ok(&[
            "group",
            "--name",
            &s.via(leader),
            "commit",
            f.to_str().unwrap(),
        ]);
        wait_until("the group converges", Duration::from_secs(60), || {
            census(&s.dir).0 == size as usize
        });
        // Every manager's controller has read the group from the swarm's store.
        for i in 0..s.managers.len() {
            wait_until(
                "every manager knows the group",
                Duration::from_secs(30),
                || !s.message(i).starts_with("(describe failed"),
            );
        }
        s
    }

    fn node(&self, i: usize) -> Node {
        Node {
            name: self.managers[i].0.clone(),
            manager: true,
            host: self.managers[i].1.clone(),
        }
    }

    fn leader(&self) -> Option<usize> {
        (0..self.managers.len()).find(|i| leads(&self.node(*i)))
    }

    fn via(&self, i: usize) -> String {
        format!("group-{}", self.managers[i].0)
    }

    fn message(&self, i: usize) -> String {
        let out = self
            .w
            .run(&["group", "--name", &self.via(i), "describe", "fo", "--json"]);
        if !out.status.success() {
            return format!(
                "(describe failed: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .map(|d| d["Message"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.controllers[i].log).unwrap_or_default()
    }

    /// Deletes `n` instance files; returns when they are gone.
    fn delete_instances(&self, n: usize) {
        let victims: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .take(n)
            .collect();
        for v in victims {
            std::fs::remove_file(v).expect("rm");
        }
    }
}

fn dockerd_pid(node: &str) -> String {
    std::fs::read_to_string(format!("{LAB_DATA}/{node}/dockerd.pid"))
        .expect("dockerd.pid")
        .trim()
        .to_string()
}

fn kill_engine(node: &str) {
    assert!(Command::new("kill")
        .args(["-9", &dockerd_pid(node)])
        .status()
        .expect("kill")
        .success());
}

/// Starts a node's dockerd again in its namespaces (through the lab's holder process). It outlives
/// this call on purpose: `swarm-lab.sh down` (the lab's Drop) kills it with its node.
#[allow(clippy::zombie_processes)]
fn start_engine(node: &str) {
    let data = format!("{LAB_DATA}/{node}");
    let holder = std::fs::read_to_string(format!("{data}/holder.pid")).expect("holder.pid");
    let log = std::fs::File::create(format!("{data}/dockerd-restart.log")).expect("log");
    let child = Command::new("setsid")
        .args(["nsenter", "-t", holder.trim(), "--net", "--mount", "--uts"])
        .args(["dockerd", "--config-file", &format!("{data}/daemon.json")])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start dockerd");
    std::fs::write(format!("{data}/dockerd.pid"), child.id().to_string()).expect("pid");
}

#[test]
fn without_quorum_no_controller_acts_and_each_says_why_then_it_resumes() {
    let Some(_lock) = lab_prerequisites() else {
        return;
    };
    let s = Swarm::new(5);
    // Two of three managers down: the survivor has no quorum.
    let survivor = 2;
    for i in 0..2 {
        kill_engine(&s.managers[i].0);
    }
    wait_until(
        "the survivor's controller says why it stands by",
        Duration::from_secs(90),
        || {
            let m = s.message(survivor);
            m.contains("no leader") || m.contains("cannot confirm") || m.contains("did not answer")
        },
    );
    println!("survivor says: {}", s.message(survivor));
    let quiet_since = std::time::SystemTime::now();
    s.delete_instances(2);
    // Positive proof the survivor's controller is alive and looking while it does nothing: its
    // describe answers with the reason throughout, and no instance comes back.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(8) {
        assert_eq!(census(&s.dir).0, 3, "something acted without quorum");
        assert!(
            !s.message(survivor).is_empty(),
            "the survivor still explains itself"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        first_action_after(&s.log(survivor), quiet_since).is_none(),
        "the survivor acted without quorum"
    );
    for i in 0..2 {
        start_engine(&s.managers[i].0);
    }
    let healed = wait_until(
        "quorum back and the group healed",
        Duration::from_secs(120),
        || census(&s.dir).0 == 5,
    );
    println!(
        "managers restarted → group healed: {:.1} s",
        healed.as_secs_f64()
    );
}

#[test]
fn a_partitioned_leader_stops_acting_and_the_majority_heals_the_group() {
    let Some(_lock) = lab_prerequisites() else {
        return;
    };
    let s = Swarm::new(5);
    let old = s.leader().expect("a leader");
    let veth = format!("ikl-{}", s.managers[old].0);
    let link = |state: &str| {
        assert!(Command::new("ip")
            .args(["link", "set", &veth, state])
            .status()
            .expect("ip")
            .success())
    };
    link("down");
    let cut = std::time::SystemTime::now();
    s.delete_instances(2);
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let healed = wait_until(
        "the majority heals the group",
        Duration::from_secs(120),
        || census(&s.dir).0 == 5,
    );
    println!(
        "leader cut off → the majority replaced 2 deleted instances: {:.1} s",
        healed.as_secs_f64()
    );
    let Some(new) = others
        .iter()
        .copied()
        .find(|i| first_action_after(&s.log(*i), cut).is_some())
    else {
        for i in 0..3 {
            let log = s.log(i);
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("provisioned")
                        || l.contains("destroyed")
                        || l.contains("WARN")
                        || l.contains("elected")
                        || l.contains("standing by")
                })
                .collect();
            eprintln!(
                "--- controller {} (cut off: {}), actions, warnings and elections:\n{}",
                s.via(i),
                i == old,
                lines.join("\n")
            );
        }
        panic!("no manager of the majority acted after the cut, yet the group healed");
    };
    link("up");
    // After the heal the old leader follows (a second election may happen): the group stays
    // whole, no instance is made twice, and the old leader never acted while cut off.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(20) {
        let n = census(&s.dir).0;
        assert!((5..=7).contains(&n), "{n} instances after the heal");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until("exactly 5 after the heal", Duration::from_secs(60), || {
        census(&s.dir).0 == 5
    });
    let old_log = s.log(old);
    let acted = old_log
        .lines()
        .filter(|l| l.contains("provisioned") || l.contains("destroyed"))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .filter(|t| t.duration_since(cut).is_ok())
        .count();
    assert_eq!(
        acted, 0,
        "the cut-off leader acted after the partition:\n{old_log}"
    );
    println!(
        "acted after the cut: old leader 0, new leader {}",
        s.via(new)
    );
}
