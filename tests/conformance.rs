//! The SDK's conformance kit against real plugin processes: our instance-file and instance-docker
//! (`infrakit plugin serve ...`), flavor-vanilla, and the SDK's example plugins as a third party
//! would build them (the compiled binaries of `crates/sdk/examples/`), which must also talk to our
//! CLI and exit cleanly on SIGTERM.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::engine::{self, busybox, docker, docker_ok, ensure_busybox, unique};
use common::{Plugin, World};
use infrakit_sdk::conformance::{self, Report};
use infrakit_sdk::rpc::client::{Endpoint, FlavorClient, InstanceClient};
use serde_json::json;

fn instance_client(w: &World, name: &str) -> InstanceClient {
    InstanceClient::new(Endpoint::new(name, w.socket(name)))
}

fn flavor_client(w: &World, name: &str) -> FlavorClient {
    FlavorClient::new(Endpoint::new(name, w.socket(name)))
}

/// Prints the report (visible with --nocapture, and with every failure) and insists it passed.
fn assert_passed(report: &Report) {
    eprintln!("{report}");
    assert!(report.passed(), "{report}");
}

/// The compiled SDK examples by name. `cargo test` of the root package does not build another
/// package's examples, so they are built here, once, with the cargo that runs the tests (a no-op
/// when they are up to date); cargo's JSON messages say where each binary is.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--locked", "-p", "infrakit-sdk", "--examples"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo to build the SDK examples");
        assert!(
            out.status.success(),
            "cargo build -p infrakit-sdk --examples failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .filter_map(|m| {
                let name = m["target"]["name"].as_str()?.to_string();
                let exe = m["executable"].as_str()?;
                Some((name, PathBuf::from(exe)))
            })
            .collect()
    });
    built
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| panic!("cargo built no example called {name}: {built:?}"))
}

/// Starts a compiled example as its own process, finding its socket the way discovery does
/// (`$INFRAKIT_PLUGINS_DIR/<name>.sock`), and waits until it answers.
fn start_example(w: &World, example_name: &str, plugin_name: &str) -> Plugin {
    let child = Command::new(example(example_name))
        .env("INFRAKIT_PLUGINS_DIR", w.plugins_dir())
        .env("INFRAKIT_LOG", "warn")
        .env_remove("INFRAKIT_PLUGIN_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the example");
    let p = Plugin {
        child,
        socket: w.socket(plugin_name),
    };
    p.wait_ready();
    p
}

/// SIGTERM: the process exits successfully within two seconds and removes its socket.
fn stops_cleanly(mut p: Plugin) {
    p.signal(15);
    assert!(
        p.wait_exit(Duration::from_secs(2)).is_some(),
        "still running 2 s after SIGTERM"
    );
    let status = p.child.wait().expect("exit status");
    assert!(status.success(), "exited with {status} after SIGTERM");
    assert!(!p.socket.exists(), "{} left behind", p.socket.display());
}

#[tokio::test]
async fn instance_file_passes_the_instance_conformance_suite() {
    let w = World::new();
    let dir = w.path("instances");
    let dir = dir.to_str().expect("utf-8 temp path");
    let _p = w.serve("instance-file", &["instance-file", "--dir", dir]);
    let mut options = conformance::instance::Options::new(json!({"Note": "conformance"}));
    options.invalid_properties = Some(json!(["not", "an", "object"]));
    let report = conformance::instance::run(&instance_client(&w, "instance-file"), options).await;
    assert_passed(&report);
    // instance-file reports changes, so those checks ran (and passed) rather than being skipped.
    for name in [
        "changes: an empty or unknown cursor answers Resync",
        "changes: a cursor from before the provisions answers Changed",
    ] {
        assert!(
            matches!(report.outcome(name), Some(conformance::Outcome::Passed)),
            "{name}: {:?}\n{report}",
            report.outcome(name)
        );
    }
}

#[tokio::test]
async fn the_example_memory_plugin_passes_talks_to_the_cli_and_stops_on_sigterm() {
    let w = World::new();
    let p = start_example(&w, "instance_memory", "instance-memory");
    let mut options = conformance::instance::Options::new(json!({"Size": "small"}));
    options.invalid_properties = Some(json!("small"));
    let report = conformance::instance::run(&instance_client(&w, "instance-memory"), options).await;
    assert_passed(&report);
    // The example keeps the SDK's default: no change notifications, which is not a failure.
    assert!(
        matches!(
            report.outcome("changes: an empty or unknown cursor answers Resync"),
            Some(conformance::Outcome::Skipped(_))
        ),
        "{report}"
    );

    // Our CLI finds it by name and round-trips an instance through it.
    let spec = w.write(
        "spec.json",
        r#"{"Properties": {"Size": "small"}, "Tags": {"tier": "web"}, "LogicalID": "pet-1"}"#,
    );
    let spec = spec.to_str().expect("utf-8 temp path");
    let id = w.ok(&["instance", "--name", "instance-memory", "provision", spec]);
    let id = id.trim();
    assert!(id.starts_with("mem-"), "provision printed {id:?}");
    let listed = w.ok(&[
        "instance",
        "-n",
        "instance-memory",
        "describe",
        "-t",
        "tier=web",
        "--json",
    ]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("describe --json");
    assert_eq!(listed[0]["ID"], id, "{listed}");
    assert_eq!(listed[0]["LogicalID"], "pet-1", "{listed}");
    w.ok(&["instance", "-n", "instance-memory", "destroy", id]);

    stops_cleanly(p);
}

#[tokio::test]
async fn the_example_hello_flavor_passes_the_flavor_suite() {
    let w = World::new();
    let p = start_example(&w, "flavor_hello", "flavor-hello");
    let options = conformance::flavor::Options::new(json!({"Greeting": "hi"}));
    let report = conformance::flavor::run(&flavor_client(&w, "flavor-hello"), options).await;
    assert_passed(&report);
    stops_cleanly(p);
}

#[tokio::test]
async fn flavor_vanilla_passes_the_flavor_suite() {
    let w = World::new();
    let _p = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let options = conformance::flavor::Options::new(
        json!({"Init": ["echo vanilla"], "Tags": {"tier": "web"}}),
    );
    let report = conformance::flavor::run(&flavor_client(&w, "flavor-vanilla"), options).await;
    assert_passed(&report);
}

/// Removes the containers of one group, even when the test fails half-way.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let label = format!("label=infrakit.group={}", self.0);
        let ids = docker_ok(&["ps", "-aq", "--no-trunc", "--filter", &label]);
        let ids: Vec<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            let _ = docker(&args);
        }
    }
}

#[tokio::test]
async fn instance_docker_passes_the_instance_conformance_suite() {
    let Ok(_lock) = engine::prerequisites("instance-docker conformance test", || None) else {
        return;
    };
    ensure_busybox();
    let group = unique("conform");
    let _containers = Containers(group.clone());
    let w = World::new();
    let _p = w.serve("instance-docker", &["instance-docker"]);
    let mut options = conformance::instance::Options::new(
        json!({"Image": busybox(), "Cmd": ["sleep", "600"], "StopTimeout": 1}),
    );
    options.invalid_properties = Some(json!({"Image": busybox(), "Memroy": "1g"}));
    // The engine fixes labels at creation: instance-docker refuses to relabel, by design.
    options.relabel = false;
    options.tags.insert("infrakit.group".into(), group.clone());
    let report = conformance::instance::run(&instance_client(&w, "instance-docker"), options).await;
    assert_passed(&report);
}
