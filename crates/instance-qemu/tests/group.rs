//! A group of VMs under the real group controller: the `infrakit` binary's `plugin serve group`
//! and `flavor-vanilla` as processes (found through a plugins directory, as in production), this
//! crate's plugin in the test's network namespace. Two pets at fixed addresses converge with their
//! boot scripts run; a killed QEMU is replaced at the same address; a memory change rolls across
//! the group one VM at a time; destroy leaves nothing.
//!
//! The `infrakit` binary is built by this test with the cargo that runs it (a no-op when it is up
//! to date): this crate does not depend on the controller, it only talks to it over its socket.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{prerequisites, wait_until, Lab, Plugin};
use infrakit_sdk::prelude::*;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(300);
const GROUP: &str = "ikq-vms";
const IPS: [&str; 2] = ["10.231.0.21", "10.231.0.22"];

/// The `infrakit` binary of this workspace, built if needed.
fn infrakit() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "-p",
            "infrakit",
            "--bin",
            "infrakit",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo to build the infrakit binary");
    assert!(out.status.success(), "cargo build --bin infrakit failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "infrakit")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo built no infrakit executable")
}

struct Cli {
    bin: PathBuf,
    plugins: PathBuf,
}

impl Cli {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("INFRAKIT_PLUGINS_DIR", &self.plugins)
            .env("INFRAKIT_LOG", "warn")
            .env_remove("INFRAKIT_PLUGIN_SOCKET")
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run infrakit");
        assert!(
            out.status.success(),
            "infrakit {args:?} failed: {}",
            common::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn serve(&self, name: &str, args: &[&str]) -> Plugin {
        let mut all = vec!["plugin", "serve"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--name", name]);
        let child = self
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn plugin");
        let socket = self.plugins.join(format!("{name}.sock"));
        wait_until(&format!("{name}'s socket"), Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(|_| ())
        });
        Plugin { child, socket }
    }
}

fn group_spec(lab: &Lab, memory: u32) -> Value {
    let mut props = lab.properties();
    props["Memory"] = json!(memory);
    json!({"ID": GROUP, "Properties": {
        "Allocation": {"LogicalIDs": IPS},
        "Instance": {"Plugin": "instance-qemu", "Properties": props},
        "Flavor": {"Plugin": "flavor-vanilla",
                   "Properties": {"Init": ["echo \"group-init ran on $(cat /run/infrakit/meta | grep INFRAKIT_IP)\""]}}
    }})
}

/// (ID, LogicalID, Memory) of the group's VMs.
async fn members(client: &impl InstancePlugin) -> Vec<(String, String, u64)> {
    let tags = Tags::from([("infrakit.group".to_string(), GROUP.to_string())]);
    let mut out: Vec<_> = client
        .describe_instances(&tags, true)
        .await
        .expect("describe")
        .into_iter()
        .map(|d| {
            let memory = d
                .properties
                .as_ref()
                .and_then(|p| p.pointer("/Spec/Memory"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            (d.id, d.logical_id.unwrap_or_default(), memory)
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Waits until the group is `n` VMs at IPS with `memory`, each with its boot script run.
async fn converged(
    lab: &Lab,
    client: &impl InstancePlugin,
    memory: u64,
    max_seen: &mut usize,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        let m = members(client).await;
        *max_seen = (*max_seen).max(m.len());
        let ready = m.len() == IPS.len()
            && m.iter().zip(IPS).all(|(v, ip)| v.1 == ip && v.2 == memory)
            && m.iter()
                .all(|v| lab.console(&v.0).contains("group-init ran on"));
        if ready {
            return m.into_iter().map(|v| v.0).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group did not converge to {} VMs of {memory} MiB: {m:?}",
            IPS.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_vms_converges_heals_rolls_and_is_destroyed() {
    let Ok(_lock) = prerequisites("instance-qemu group test") else {
        return;
    };
    let lab = Lab::new("group");
    let plugins = lab.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let cli = Cli {
        bin: infrakit(),
        plugins: plugins.clone(),
    };
    let qemu = lab.start_plugin_at(&plugins.join("instance-qemu.sock"));
    let client = qemu.client();
    let _vanilla = cli.serve("flavor-vanilla", &["flavor-vanilla"]);
    let store = lab.dir.path().join("store");
    let _group = cli.serve(
        "group",
        &[
            "group",
            "--store",
            store.to_str().expect("utf-8"),
            "--poll-interval",
            "2s",
            "--health-interval",
            "1s",
        ],
    );
    let mut max_seen = 0;

    let spec = lab.dir.path().join("group.json");
    std::fs::write(&spec, group_spec(&lab, 128).to_string()).expect("write spec");
    cli.ok(&["group", "commit", spec.to_str().expect("utf-8")]);
    let first = converged(&lab, &client, 128, &mut max_seen).await;
    for ip in IPS {
        wait_until(&format!("{ip} to answer"), BOOT, || {
            lab.pings(ip).then_some(())
        });
    }

    // Kill the first pet's QEMU: the controller hears of it and re-creates it at the same address.
    let pid =
        std::fs::read_to_string(lab.state_dir().join(&first[0]).join("qemu.pid")).expect("pid");
    common::run_ok("kill", &["-9", pid.trim()]);
    // The plugin notices the exit within a second or so; until then it still describes the VM,
    // and the group would look converged with the dead one in it.
    let deadline = std::time::Instant::now() + BOOT;
    while members(&client).await.iter().any(|m| m.0 == first[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed VM {} is still described after {BOOT:?}",
            first[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healed = converged(&lab, &client, 128, &mut max_seen).await;
    assert_ne!(healed[0], first[0], "the killed VM was not replaced");
    assert_eq!(healed[1], first[1], "the other VM was touched");
    wait_until(
        "the replacement to answer at the same address",
        BOOT,
        || lab.pings(IPS[0]).then_some(()),
    );

    // A rolling update: more memory for every VM, one at a time.
    std::fs::write(&spec, group_spec(&lab, 160).to_string()).expect("write spec");
    cli.ok(&["group", "commit", spec.to_str().expect("utf-8")]);
    let rolled = converged(&lab, &client, 160, &mut max_seen).await;
    assert!(
        rolled.iter().all(|id| !healed.contains(id)),
        "{rolled:?} / {healed:?}"
    );
    assert!(
        max_seen <= IPS.len() + 1,
        "the group had {max_seen} VMs at once (pets: at most one extra during a replacement)"
    );

    cli.ok(&["group", "destroy", GROUP, "--timeout", "120s"]);
    assert!(members(&client).await.is_empty());
    wait_until("every QEMU gone", Duration::from_secs(30), || {
        lab.qemus().is_empty().then_some(())
    });
    assert!(lab.taps().is_empty(), "taps left: {:?}", lab.taps());
    let left = lab.leftovers();
    assert!(
        left.is_empty(),
        "files left in the state directory: {left:?}"
    );
}
