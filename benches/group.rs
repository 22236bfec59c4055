//! Group controller figures with real processes (instance-file, flavor-vanilla, group) on sockets:
//! - seconds to converge 1,000 instances from a commit;
//! - seconds to replace 100 deleted instances;
//! - CPU seconds and peak RSS while watching 1,000 instances for 60 s at a 500 ms poll;
//! - seconds for a one-at-a-time rolling update of 100 (no soak);
//! - pets: seconds to converge 2,000 and 10,000 logical IDs and the group plugin's peak RSS for each
//!   (memory must grow linearly with the pets; `PETS=0` skips it).
//!
//! Run: `make bench-group` (or `cargo bench --bench group`). `IDLE_SECS` shortens the idle phase.
//! Go InfraKit v0.5 on this kind of machine, 500 ms poll: 0.84 s, 0.50 s, 12.9 CPU-s for its whole
//! stack with 58 MB group RSS, and 54.9 s.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infrakit_sdk::rpc::client::{Endpoint, GroupClient};
use infrakit_sdk::spi::group::{GroupPlugin, GroupSpec};
use serde_json::json;

mod common;

use common::{cpu_seconds, serve, wait_socket, Proc};

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && n.ends_with(".json")
                })
                .count()
        })
        .unwrap_or(0)
}

fn spec(id: &str, size: u64, note: &str) -> GroupSpec {
    serde_json::from_value(json!({"ID": id, "Properties": {
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": note}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hi"]}}
    }}))
    .expect("spec")
}

async fn until_converged(g: &GroupClient, id: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(d) = g.describe_group(id).await {
            if d.converged {
                return start.elapsed();
            }
        }
        if start.elapsed() > limit {
            panic!("group {id} did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stack(tmp: &Path, poll: &str) -> (Vec<Proc>, PathBuf, PathBuf) {
    let plugins = tmp.join("plugins");
    let dir = tmp.join("instances");
    let store = tmp.join("store");
    let procs = vec![
        serve(
            &plugins,
            &[
                "group",
                "--store",
                store.to_str().unwrap_or_default(),
                "--poll-interval",
                poll,
            ],
        ),
        serve(
            &plugins,
            &["instance-file", "--dir", dir.to_str().unwrap_or_default()],
        ),
        serve(&plugins, &["flavor-vanilla"]),
    ];
    (procs, plugins, dir)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let idle_secs: u64 = std::env::var("IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (procs, plugins, dir) = stack(tmp.path(), "500ms");
    for name in ["group", "instance-file", "flavor-vanilla"] {
        wait_socket(&plugins.join(format!("{name}.sock"))).await;
    }
    let g = GroupClient::new(Endpoint::new("group", plugins.join("group.sock")));

    // 1. Converge 1,000 from a commit.
    let start = Instant::now();
    g.commit_group(spec("big", 1000, "v1"), false)
        .await
        .expect("commit");
    until_converged(&g, "big", Duration::from_secs(300)).await;
    let converge = start.elapsed();
    assert_eq!(count(&dir), 1000);
    println!(
        "converge 1,000 instances from a commit:   {:>8.3} s   (Go InfraKit v0.5: 0.84 s)",
        converge.as_secs_f64()
    );

    // 2. Replace 100 deleted.
    let victims: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .take(100)
        .collect();
    let start = Instant::now();
    for v in &victims {
        std::fs::remove_file(v).expect("rm");
    }
    loop {
        if count(&dir) == 1000 {
            if let Ok(d) = g.describe_group("big").await {
                if d.converged && d.instances.len() == 1000 {
                    break;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "100 deleted never replaced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "replace 100 deleted instances:            {:>8.3} s   (Go InfraKit v0.5: 0.50 s)",
        start.elapsed().as_secs_f64()
    );

    // 3. Idle: watching 1,000 instances at a 500 ms poll.
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    // Reset the peak RSS (VmHWM) of the group and instance-file plugins: the figure is the peak
    // while watching.
    let _ = std::fs::write(format!("/proc/{}/clear_refs", pids[0]), "5");
    let _ = std::fs::write(format!("/proc/{}/clear_refs", pids[1]), "5");
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    // RSS sampled every 100 ms: its median is what the controller holds, the peak what its
    // health passes (every health interval, with backend properties) add for a moment.
    let mut rss_kb = Vec::new();
    let idle_end = Instant::now() + Duration::from_secs(idle_secs);
    while Instant::now() < idle_end {
        rss_kb.push(status_kb(pids[0], "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rss_kb.sort_unstable();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| cpu_seconds(*p) - c0)
        .collect();
    let total: f64 = cpu.iter().sum();
    println!(
        "idle {idle_secs} s, 1,000 instances, 500 ms poll: {:.2} CPU-s whole stack (group {:.2}, instance-file {:.2}, vanilla {:.2})   (Go: 12.9 CPU-s / 60 s)",
        total, cpu[0], cpu[1], cpu[2]
    );
    println!(
        "group plugin RSS while watching 1,000: {:.1} MB median, {:.1} MB peak   (Go: 58 MB)",
        rss_kb.get(rss_kb.len() / 2).copied().unwrap_or_default() as f64 / 1024.0,
        status_kb(pids[0], "VmHWM:") as f64 / 1024.0
    );
    println!(
        "instance-file RSS while watching 1,000: {:.1} MB peak   (Go: 20-23 MB)",
        status_kb(pids[1], "VmHWM:") as f64 / 1024.0
    );

    // 4. A one-at-a-time rolling update of 100, no soak.
    g.destroy_group("big").await.expect("destroy");
    while g.describe_group("big").await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.commit_group(spec("roll", 100, "v1"), false)
        .await
        .expect("commit");
    until_converged(&g, "roll", Duration::from_secs(120)).await;
    let start = Instant::now();
    g.commit_group(spec("roll", 100, "v2"), false)
        .await
        .expect("commit v2");
    // Converged only once every instance carries the new hash and the update is done.
    tokio::time::sleep(Duration::from_millis(1)).await;
    until_converged(&g, "roll", Duration::from_secs(600)).await;
    println!(
        "rolling update of 100, one at a time:     {:>8.3} s   (Go InfraKit v0.5: 54.9 s)",
        start.elapsed().as_secs_f64()
    );
    g.destroy_group("roll").await.expect("destroy");
    while g.describe_group("roll").await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 5. Pets: memory linear in the number of logical IDs (each provision once carried a copy of
    // the whole list: 10,000 pets took over 3 GB).
    let pet_counts: Vec<u64> = match std::env::var("PETS").ok().as_deref() {
        Some("0") => Vec::new(),
        _ => vec![2_000, 10_000],
    };
    for n in pet_counts {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", pids[0]), "5");
        let ids: Vec<String> = (0..n).map(|i| format!("pet-{i:05}")).collect();
        let pets: GroupSpec = serde_json::from_value(json!({"ID": "pets", "Properties": {
            "Allocation": {"LogicalIDs": ids},
            "Instance": {"Plugin": "instance-file", "Properties": {"Note": "pet"}},
            "Flavor": {"Plugin": "flavor-vanilla"}
        }}))
        .expect("pets spec");
        let start = Instant::now();
        g.commit_group(pets, false).await.expect("commit pets");
        until_converged(&g, "pets", Duration::from_secs(600)).await;
        println!(
            "{n:>6} pets: converged in {:>7.3} s, group plugin peak RSS {:.1} MB",
            start.elapsed().as_secs_f64(),
            status_kb(pids[0], "VmHWM:") as f64 / 1024.0
        );
        g.destroy_group("pets").await.expect("destroy pets");
        while g.describe_group("pets").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(procs);
}
