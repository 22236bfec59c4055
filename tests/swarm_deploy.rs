//! The bundle deployed on the lab swarm as plugin services (`infrakit swarm deploy/ls/upgrade/
//! remove`): every plugin enabled on every node (the group controller on the 3 managers only),
//! found through each node's engine; a group committed through a follower's group plugin is made
//! by the leader's; an upgrade rolls a second version across the nodes while the group stays
//! managed and no instance is re-created; remove takes the plugins off every node.
//!
//! The plugins are the static binary (make static; make test builds it) pushed by
//! `infrakit swarm deploy --push` into the lab's registry. instance-file on a host directory the
//! nodes share stands in for a cloud API every node can reach.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::engine::{static_bin_missing, STATIC_BIN};
use common::lab::{self, docker_on, leads, wait_until, Lab, Node};
use serde_json::{json, Value};

const BUNDLE: &str = "iktest";
/// The host directories the bundle's plugins mount (the manifests' defaults): they must exist on
/// every node; the lab's nodes share the host's filesystem.
const MOUNT_SOURCES: [&str; 2] = ["/var/lib/infrakit/instances", "/var/lib/infrakit/groups"];
/// Our own directory under the instances mount (instance-file is pointed at it by --env).
const INSTANCES_SUBDIR: &str = "infrakit-swarm-deploy-test";

/// `infrakit ARGS` on the host with DOCKER_HOST = `host`.
fn infrakit(host: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infrakit"))
        .args(args)
        .env("DOCKER_HOST", host)
        .stdin(Stdio::null())
        .output()
        .expect("run infrakit")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `infrakit ARGS` inside `node`'s namespaces (its own /run/docker/plugins, where the plugins'
/// sockets are), as a person on that node would run it.
fn infrakit_in(node: &Node, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(lab::LAB_SCRIPT)
        .args(["exec", &node.name, "--", env!("CARGO_BIN_EXE_infrakit")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run infrakit in a node")
}

/// `NAME -> (enabled, reference)` of our bundle's plugins installed on `node`.
fn plugins_on(node: &Node) -> Vec<(String, bool, String)> {
    let Some(out) = docker_on(
        &node.host,
        &[
            "plugin",
            "ls",
            "--format",
            "{{.Name}} {{.Enabled}} {{.PluginReference}}",
        ],
    ) else {
        return vec![];
    };
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let enabled = f.next()? == "true";
            let reference = f.next().unwrap_or_default().to_string();
            name.starts_with(&format!("{BUNDLE}/"))
                .then_some((name, enabled, reference))
        })
        .collect()
}

/// Every node runs every plugin of the bundle at `version` (the group only on managers).
fn bundle_runs_everywhere(lab: &Lab, version: &str) -> Result<(), String> {
    for node in &lab.nodes {
        let have = plugins_on(node);
        let mut want: BTreeSet<&str> = [
            "instance-file",
            "instance-docker",
            "flavor-vanilla",
            "flavor-zookeeper",
            "flavor-swarm",
            "flavor-combo",
        ]
        .into();
        if node.manager {
            want.insert("group");
        }
        for p in &want {
            let name = format!("{BUNDLE}/{p}:latest");
            match have.iter().find(|(n, _, _)| *n == name) {
                Some((_, true, reference)) if reference.ends_with(&format!(":{version}")) => {}
                other => return Err(format!("{}: {name}: {other:?}", node.name)),
            }
        }
        if !node.manager && have.iter().any(|(n, _, _)| n.contains("/group")) {
            return Err(format!("{}: a worker runs the group plugin", node.name));
        }
    }
    Ok(())
}

/// Instance files of the test's group (file names are instance IDs).
fn instance_ids(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect()
}

/// Host directories this test had to create, removed again (when empty) however it ends.
struct MadeDirs(Vec<PathBuf>);

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn make_dir(made: &mut MadeDirs, dir: &Path) {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    made.0.extend(missing.into_iter().rev());
}

#[test]
fn the_bundle_deploys_upgrades_and_goes_across_the_swarm() {
    let Some(_lock) = lab::prerequisites("swarm deploy test", None) else {
        return;
    };
    if let Some(why) = static_bin_missing() {
        common::skip::skip("swarm deploy test", &why);
        return;
    }
    let test_start = Instant::now();
    let lab = Lab::up();
    let mut made = MadeDirs(Vec::new());
    for dir in MOUNT_SOURCES {
        make_dir(&mut made, Path::new(dir));
    }
    let instances = Path::new(MOUNT_SOURCES[0]).join(INSTANCES_SUBDIR);
    // A crashed earlier run's instances would be adopted by nobody: start empty.
    let _ = std::fs::remove_dir_all(&instances);
    make_dir(&mut made, &instances);
    struct RemoveAll(PathBuf);
    impl Drop for RemoveAll {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _instances_guard = RemoveAll(instances.clone());

    let lab_json: Value =
        serde_json::from_slice(&std::fs::read(lab::LAB_JSON).expect("lab.json")).expect("lab.json");
    let registry = format!(
        "{}/{BUNDLE}",
        lab_json["Registry"].as_str().unwrap_or("10.99.0.1:5000")
    );
    let leader = lab
        .managers()
        .find(|n| leads(n))
        .expect("the lab has a leader");
    let follower = lab
        .managers()
        .find(|n| n.name != leader.name)
        .expect("a follower");
    let other = lab
        .managers()
        .find(|n| n.name != leader.name && n.name != follower.name)
        .expect("a third manager");

    // Without --push, plugins the registry lacks are named before anything is made, in seconds.
    let t = Instant::now();
    let out = infrakit(
        &follower.host,
        &[
            "swarm",
            "deploy",
            "--bundle",
            BUNDLE,
            "--registry",
            &registry,
            "--version",
            "t0-never-pushed",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        err.contains("plugins are not in the registry")
            && err.contains(&format!("{registry}/group:t0-never-pushed"))
            && err.contains("--push"),
        "{err}"
    );
    // (`docker service ls` hides plugin services; `swarm ls` lists them.)
    let ls = ok(
        infrakit(
            &follower.host,
            &["swarm", "--bundle", BUNDLE, "ls", "--json"],
        ),
        "swarm ls",
    );
    let rows: Vec<Value> = serde_json::from_str(&ls).expect("ls --json");
    assert!(rows.is_empty(), "nothing made: {ls}");

    // Deploy through a follower's engine (any manager will do).
    let t = Instant::now();
    let out = ok(
        infrakit(
            &follower.host,
            &[
                "swarm",
                "deploy",
                "--bundle",
                BUNDLE,
                "--registry",
                &registry,
                "--version",
                "t1",
                "--push",
                "--binary",
                STATIC_BIN,
                "--env",
                &format!("instance-file:INFRAKIT_INSTANCE_FILE_DIR=/instances/{INSTANCES_SUBDIR}"),
                "--env",
                "group:INFRAKIT_POLL_INTERVAL=1s",
                "--timeout",
                "3m",
            ],
        ),
        "swarm deploy",
    );
    let deploy_time = t.elapsed();
    assert!(out.contains("bundle deployed"), "{out}");
    wait_until(
        "every plugin enabled on every node",
        Duration::from_secs(30),
        || bundle_runs_everywhere(&lab, "t1").is_ok(),
    );
    let ls = ok(
        infrakit(&other.host, &["swarm", "--bundle", BUNDLE, "ls", "--json"]),
        "swarm ls",
    );
    let rows: Vec<Value> = serde_json::from_str(&ls).expect("ls --json");
    // 5 plugins on 4 nodes + the group on 3 managers, all running t1.
    assert_eq!(rows.len(), 6 * 4 + 3, "{ls}");
    assert!(
        rows.iter()
            .all(|r| r["State"] == "running" && r["Version"] == "t1"),
        "{ls}"
    );

    // A group committed through a follower's group plugin; the leader's makes it.
    let spec = json!({"ID": "deployed", "Properties": {
        "Allocation": {"Size": 3},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "swarm"}},
        "Flavor": {"Plugin": "flavor-vanilla"}
    }});
    let file =
        std::env::temp_dir().join(format!("infrakit-swarm-deploy-{}.json", std::process::id()));
    std::fs::write(&file, spec.to_string()).expect("write the group file");
    let file_arg = file.display().to_string();
    // The plugins just came up: the follower's group plugin answers once it found its peers.
    let t = Instant::now();
    wait_until(
        "commit through a follower's group plugin",
        Duration::from_secs(60),
        || {
            infrakit_in(follower, &["group", "commit", &file_arg])
                .status
                .success()
        },
    );
    wait_until("3 instances made", Duration::from_secs(60), || {
        instance_ids(&instances).len() == 3
    });
    let commit_to_three = t.elapsed();
    let before = instance_ids(&instances);
    // Describe through the third manager (a follower): the same group, converged, as on the
    // leader (a follower observes and judges too; it only does not act).
    wait_until(
        "describe through another manager",
        Duration::from_secs(30),
        || {
            let out = infrakit_in(other, &["group", "--json", "describe", "deployed"]);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout)
                    .map(|d| {
                        d["Instances"].as_array().map(Vec::len) == Some(3)
                            && d["Converged"] == true
                            && d["Target"] == 3
                    })
                    .unwrap_or(false)
        },
    );

    // Upgrade to t2 through the leader's engine.
    let t = Instant::now();
    let out = ok(
        infrakit(
            &leader.host,
            &[
                "swarm",
                "--bundle",
                BUNDLE,
                "upgrade",
                "--version",
                "t2",
                "--push",
                "--binary",
                STATIC_BIN,
                "--timeout",
                "4m",
            ],
        ),
        "swarm upgrade",
    );
    let upgrade_time = t.elapsed();
    assert!(out.contains("bundle upgraded"), "{out}");
    wait_until("every node runs t2", Duration::from_secs(30), || {
        bundle_runs_everywhere(&lab, "t2").is_ok()
    });
    assert_eq!(
        instance_ids(&instances),
        before,
        "the upgrade re-created instances"
    );
    // Still managed after the upgrade: a deleted instance is replaced.
    let victim = before.iter().next().expect("an instance").clone();
    std::fs::remove_file(instances.join(&victim)).expect("delete an instance file");
    wait_until(
        "the deleted instance replaced after the upgrade",
        Duration::from_secs(60),
        || {
            let now = instance_ids(&instances);
            now.len() == 3 && !now.contains(&victim)
        },
    );

    // Free the group through a follower (its instances stay): every manager stops showing it,
    // also when it was the store's last group.
    ok(
        infrakit_in(follower, &["group", "free", "deployed"]),
        "group free through a follower",
    );
    for node in [leader, other] {
        wait_until(
            &format!("{} no longer lists the freed group", node.name),
            Duration::from_secs(30),
            || {
                let out = infrakit_in(node, &["group", "ls", "-q"]);
                out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("deployed")
            },
        );
    }
    let t = Instant::now();
    ok(
        infrakit(&other.host, &["swarm", "--bundle", BUNDLE, "remove"]),
        "swarm remove",
    );
    wait_until(
        "the plugins gone from every node",
        Duration::from_secs(60),
        || lab.nodes.iter().all(|n| plugins_on(n).is_empty()),
    );
    let remove_time = t.elapsed();
    let _ = std::fs::remove_file(&file);
    eprintln!(
        "swarm deploy: deploy (push 6 + services on 4 nodes) {:.1} s, commit via a follower -> 3 instances {:.1} s, \
         upgrade {:.1} s, remove {:.1} s, whole test {:.1} s",
        deploy_time.as_secs_f64(),
        commit_to_three.as_secs_f64(),
        upgrade_time.as_secs_f64(),
        remove_time.as_secs_f64(),
        test_start.elapsed().as_secs_f64()
    );
}

#[test]
fn deploy_refuses_an_engine_that_is_not_a_swarm_manager_and_bad_input() {
    // The host's engine, when one answers, is not in swarm mode (tests leave it so).
    if common::engine::engine_missing().is_none() {
        let out = infrakit(
            "unix:///var/run/docker.sock",
            &["swarm", "deploy", "--registry", "r:5000/x"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("is not a swarm manager"),
            "{err}"
        );
    }
    // No engine at all is refused, naming where it looked.
    let out = infrakit(
        "unix:///nonexistent/docker.sock",
        &["swarm", "deploy", "--registry", "r:5000/x"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nonexistent/docker.sock"), "{err}");
    let out = infrakit(
        "unix:///nonexistent/docker.sock",
        &["swarm", "deploy", "--registry", "http://r:5000/x"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("without a scheme"),
        "{err}"
    );
    let out = infrakit(
        "unix:///nonexistent/docker.sock",
        &[
            "swarm",
            "deploy",
            "--registry",
            "r:5000/x",
            "--env",
            "nope:A=b",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no plugin 'nope'"),
        "{err}"
    );
}
