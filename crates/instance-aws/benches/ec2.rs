//! The EC2 plugin at scale against the emulator: one group of N (default 1,000) instances under
//! the real group controller, with the plugin's own binary on a socket beside it. Prints
//! - commit → N instances launched (the plugin's answered provisions, from its `GET /metrics`),
//!   and → the group converged (`DescribeGroup`; against moto this waits mostly on its
//!   `DescribeInstances`, which takes seconds for 1,000 instances);
//! - the EC2 requests the plugin sent, by operation (from its `GET /metrics`), against the
//!   one-request-per-instance baseline (N launches + N terminations);
//! - destroy → every instance terminated in EC2.
//!
//! Run: `make bench-ec2`, or
//! `cargo build --bin infrakit && cargo bench --profile dev -p infrakit-instance-aws --bench ec2`
//! (the emulator, moto, dominates the times; the plugin's build profile barely shows).
//! Environment: `N` (default 1000); `INFRAKIT_BIN` (the `infrakit` binary for the group
//! controller and flavor-vanilla; default `<target>/release/infrakit`, else `<target>/debug/...`);
//! `INFRAKIT_AWS_BIN` (the plugin; default the one cargo built for this bench); `INFRAKIT_MOTO`.

#[path = "../tests/emulator/mod.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emulator::{plugin_env, Moto, Plugin, AMI};
use infrakit_sdk::rpc::client::{Endpoint, GroupClient, InstanceClient};
use infrakit_sdk::spi::group::{GroupPlugin, GroupSpec};
use infrakit_sdk::spi::instance::{InstancePlugin, Tags};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(1800);

fn infrakit_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("INFRAKIT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("infrakit");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no infrakit binary under {}: `cargo build --bin infrakit` first, or set INFRAKIT_BIN",
        target.display()
    );
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(plugins: &Path, args: &[&str]) -> Proc {
    let child = Command::new(infrakit_bin())
        .args(["plugin", "serve"])
        .args(args)
        .env("INFRAKIT_PLUGINS_DIR", plugins)
        .env("INFRAKIT_LOG", "warn")
        .env_remove("INFRAKIT_PLUGIN_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start infrakit plugin serve");
    let socket = plugins.join(format!("{}.sock", args[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not answer",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

fn metrics(socket: &Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: plugin\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

/// Provisions the plugin has answered with an instance, from its `GET /metrics`.
fn provisioned(socket: &Path) -> usize {
    metrics(socket)
        .lines()
        .filter_map(|l| {
            l.strip_prefix(
                "infrakit_rpc_served_total{method=\"Instance.Provision\",outcome=\"ok\"} ",
            )
        })
        .find_map(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}

/// The plugin's EC2 requests by operation, from its `GET /metrics`.
fn requests(socket: &Path) -> BTreeMap<String, u64> {
    metrics(socket)
        .lines()
        .filter_map(|l| l.strip_prefix("infrakit_aws_requests_total{operation=\""))
        .filter_map(|r| r.split_once("\"} "))
        .filter_map(|(op, v)| Some((op.to_string(), v.trim().parse::<f64>().ok()? as u64)))
        .collect()
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn print_requests(phase: &str, calls: &BTreeMap<String, u64>, baseline: usize) {
    let total: u64 = calls.values().sum();
    let list: Vec<String> = calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "  {phase:<9} requests: {total:>5} ({}); one per instance would be {baseline}: {:.1}%",
        list.join(", "),
        100.0 * total as f64 / baseline.max(1) as f64
    );
}

async fn until(what: &str, start: Instant, mut f: impl AsyncFnMut() -> bool) -> Duration {
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < LIMIT, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let Some(moto) = Moto::start(&[]) else {
        eprintln!("no emulator: nothing measured");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let plugin = Plugin::start_on(
        tmp.path(),
        &plugins.join("instance-aws.sock"),
        // The change poll at its default interval (the tests' is shorter), as a user runs it.
        &plugin_env(tmp.path(), &moto.url())
            .into_iter()
            .filter(|(k, _)| k != "INFRAKIT_AWS_POLL_SECONDS")
            .collect::<Vec<_>>(),
    );
    let _vanilla = serve(&plugins, &["flavor-vanilla"]);
    let store = tmp.path().join("store");
    let _group = serve(
        &plugins,
        &["group", "--store", store.to_str().unwrap_or_default()],
    );
    let g = GroupClient::new(Endpoint::new("group", plugins.join("group.sock")));
    let aws = InstanceClient::new(Endpoint::new("instance-aws", &plugin.socket));
    let group_tags: Tags = [("infrakit.group".to_string(), "bench".to_string())].into();
    let spec: GroupSpec = serde_json::from_value(json!({"ID": "bench", "Properties": {
        "Allocation": {"Size": n},
        "Instance": {"Plugin": "instance-aws", "Properties": {"ImageId": AMI, "InstanceType": "t3.micro"}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hello"]}}
    }}))
    .expect("group spec");

    println!("EC2 plugin against moto, one group of {n} (group controller + flavor-vanilla + instance-aws)");
    // Progress is read from the controller's memory (DescribeGroup asks no plugin), so the
    // benchmark's own looking adds no EC2 request to what it counts.
    let before = requests(&plugin.socket);
    let start = Instant::now();
    g.commit_group(spec, false).await.expect("commit");
    let launched = until("N launched", start, async || {
        provisioned(&plugin.socket) >= n
    })
    .await;
    let converged = until("converged", start, async || {
        g.describe_group("bench")
            .await
            .map(|d| d.converged)
            .unwrap_or(false)
    })
    .await;
    let after_commit = requests(&plugin.socket);
    let running = aws
        .describe_instances(&group_tags, true)
        .await
        .expect("describe");
    assert_eq!(
        running.len(),
        n,
        "converged with {} instances",
        running.len()
    );
    let after_check = requests(&plugin.socket);
    println!("  commit → {n} launched: {:>7.2} s", launched.as_secs_f64());
    println!(
        "  commit → converged ({n} running): {:>7.2} s",
        converged.as_secs_f64()
    );
    print_requests("commit", &diff(&after_commit, &before), n);

    let start = Instant::now();
    g.destroy_group("bench").await.expect("destroy");
    let gone = until(
        "the group gone",
        start,
        async || matches!(g.describe_group("bench").await, Err(e) if e.is_not_found()),
    )
    .await;
    let after_destroy = requests(&plugin.socket);
    let left = aws
        .describe_instances(&group_tags, false)
        .await
        .expect("describe");
    assert!(
        left.is_empty(),
        "{} instances left after the destroy",
        left.len()
    );
    println!(
        "  destroy → all terminated:        {:>7.2} s",
        gone.as_secs_f64()
    );
    print_requests("destroy", &diff(&after_destroy, &after_check), n);
    let mut all = diff(&after_commit, &before);
    for (k, v) in diff(&after_destroy, &after_check) {
        *all.entry(k).or_default() += v;
    }
    print_requests("in all", &all, 2 * n);
}
