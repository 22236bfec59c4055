//! Change notifications (`Instance.Changes`), with real processes (instance-file, flavor-vanilla,
//! group) on sockets: for 1,000 instances at a 500 ms and a 30 s poll, with notifications on and
//! off,
//! - seconds from deleting 100 instance files to all 1,000 being there and observed again;
//! - CPU seconds of the whole stack while idle for `IDLE_SECS` (default 30).
//!
//! Run: `cargo bench --bench changes`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infrakit_sdk::rpc::client::{Endpoint, GroupClient};
use infrakit_sdk::spi::group::{GroupPlugin, GroupSpec};
use serde_json::json;

mod common;

use common::{cpu_seconds, serve, wait_socket};

fn instance_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn until_converged(g: &GroupClient, id: &str, size: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(d) = g.describe_group(id).await {
            if d.converged && d.instances.len() == size {
                return;
            }
        }
        assert!(
            start.elapsed() < limit,
            "group {id} did not converge within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One stack: commit 1,000, delete 100, time the replacement, then measure idle CPU.
async fn run(poll: &str, notifications: bool, idle: Duration) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plugins = tmp.path().join("plugins");
    let dir = tmp.path().join("instances");
    let store = tmp.path().join("store");
    let on = if notifications { "true" } else { "false" };
    let procs = [
        serve(
            &plugins,
            &["instance-file", "--dir", dir.to_str().unwrap_or_default()],
        ),
        serve(&plugins, &["flavor-vanilla"]),
        serve(
            &plugins,
            &[
                "group",
                "--store",
                store.to_str().unwrap_or_default(),
                "--poll-interval",
                poll,
                "--change-notifications",
                on,
            ],
        ),
    ];
    for name in ["group", "instance-file", "flavor-vanilla"] {
        wait_socket(&plugins.join(format!("{name}.sock"))).await;
    }
    let g = GroupClient::new(Endpoint::new("group", plugins.join("group.sock")));
    let spec: GroupSpec = serde_json::from_value(json!({"ID": "big", "Properties": {
        "Allocation": {"Size": 1000},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "changes"}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hi"]}}
    }}))
    .expect("spec");
    g.commit_group(spec, false).await.expect("commit");
    until_converged(&g, "big", 1000, Duration::from_secs(300)).await;

    let victims: Vec<PathBuf> = instance_files(&dir).into_iter().take(100).collect();
    let start = Instant::now();
    for v in &victims {
        std::fs::remove_file(v).expect("rm");
    }
    loop {
        let now = instance_files(&dir);
        if now.len() == 1000 && !victims.iter().any(|v| now.contains(v)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "100 deleted never replaced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until_converged(&g, "big", 1000, Duration::from_secs(120)).await;
    let replaced = start.elapsed();

    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    tokio::time::sleep(idle).await;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| cpu_seconds(*p) - c0)
        .collect();
    println!(
        "poll {poll:>5}, notifications {:<3}: replace 100 of 1,000 deleted {:>7.3} s; idle {} s: {:.2} CPU-s (instance-file {:.2}, vanilla {:.2}, group {:.2})",
        if notifications { "on" } else { "off" },
        replaced.as_secs_f64(),
        idle.as_secs(),
        cpu.iter().sum::<f64>(),
        cpu[0],
        cpu[1],
        cpu[2]
    );
    drop(procs);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let idle = Duration::from_secs(
        std::env::var("IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    for (poll, notifications) in [
        ("500ms", true),
        ("500ms", false),
        ("30s", true),
        ("30s", false),
    ] {
        run(poll, notifications, idle).await;
    }
}
