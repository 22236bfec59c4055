//! instance-qemu's figures, with real TCG guests (root; `make bench-vm`):
//! - one VM: Provision's own time, provision → guest up (its init's first line on the serial
//!   console) and → its static address answering a ping; the share of that which is the guest's
//!   own boot (the kernel's uptime when its init starts);
//! - N VMs provisioned at once (VM_BENCH_N, default 8): until all are up;
//! - host memory per VM (QEMU's RSS and PSS);
//! - the plugin's CPU and RSS while it watches the N VMs for VM_BENCH_WATCH seconds (default 20)
//!   with a caller that long-polls Instance.Changes and describes on every answer or each second.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Lab};
use infrakit_sdk::prelude::*;
use infrakit_sdk::rpc::client::InstanceClient;

const BOOT: Duration = Duration::from_secs(600);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(lab: &Lab, ip: &str) -> Spec {
    Spec {
        properties: Some(lab.properties()),
        tags: Tags::from([("bench".to_string(), "vm".to_string())]),
        init: "echo bench-ready".into(),
        logical_id: Some(ip.to_string()),
        attachments: vec![],
    }
}

/// The guest's uptime (seconds) when its init started, from its `infrakit-guest: up` line.
fn guest_uptime(console: &str) -> Option<f64> {
    console
        .lines()
        .find(|l| l.starts_with("infrakit-guest: up"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))?
        .parse()
        .ok()
}

/// A /proc/<pid>/status or smaps_rollup field in KiB.
fn kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of stat, counted from the state field (the 3rd).
    n(11) + n(12)
}

async fn destroy_all(client: &Arc<InstanceClient>) {
    let all = client
        .describe_instances(&Tags::new(), false)
        .await
        .unwrap_or_default();
    let mut jobs = tokio::task::JoinSet::new();
    for d in all {
        let c = client.clone();
        jobs.spawn(async move { c.destroy(&d.id, DestroyContext::default()).await });
    }
    while jobs.join_next().await.is_some() {}
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(_lock) = common::prerequisites("instance-qemu benchmark") else {
        return;
    };
    let n = env_num("VM_BENCH_N", 8) as usize;
    let watch_secs = env_num("VM_BENCH_WATCH", 20);
    let lab = Lab::new("bench");
    let plugin = lab.start_plugin();
    let plugin_pid = plugin.child.id();
    let client = Arc::new(plugin.client());
    println!(
        "instance-qemu benchmark: TCG, 128 MiB guests, {} cores",
        num_cpus()
    );

    // One VM.
    let t0 = Instant::now();
    let id = client
        .provision(spec(&lab, "10.231.0.10"))
        .await
        .expect("provision");
    let provisioned = t0.elapsed();
    let console = wait_until("the guest's init", BOOT, || {
        let c = lab.console(&id);
        c.contains("infrakit-guest: up").then_some(c)
    });
    let up = t0.elapsed();
    wait_until("a ping", BOOT, || lab.pings("10.231.0.10").then_some(()));
    let pinged = t0.elapsed();
    let own = guest_uptime(&console).unwrap_or(f64::NAN);
    println!("one VM: Provision answered in {:.2} s; guest up (init's first line) {:.2} s; address answers {:.2} s",
        provisioned.as_secs_f64(), up.as_secs_f64(), pinged.as_secs_f64());
    println!("        the guest's own boot (kernel uptime at init): {own:.2} s = {:.0} % of provision -> up",
        100.0 * own / up.as_secs_f64());
    destroy_all(&client).await;

    // N at once.
    let t0 = Instant::now();
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = client.clone();
        let s = spec(&lab, &format!("10.231.0.{}", 20 + i));
        jobs.spawn(async move { c.provision(s).await });
    }
    let mut ids = vec![];
    while let Some(r) = jobs.join_next().await {
        ids.push(r.expect("join").expect("provision"));
    }
    let all_provisioned = t0.elapsed();
    for id in &ids {
        wait_until("every guest's init", BOOT, || {
            lab.console(id).contains("infrakit-guest: up").then_some(())
        });
    }
    let all_up = t0.elapsed();
    println!(
        "{n} VMs at once: all provisioned in {:.2} s, all guests up in {:.2} s",
        all_provisioned.as_secs_f64(),
        all_up.as_secs_f64()
    );
    let qemus = lab.qemus();
    let rss: u64 = qemus
        .iter()
        .map(|p| kib(*p as u32, "status", "VmRSS:"))
        .sum();
    let pss: u64 = qemus
        .iter()
        .map(|p| kib(*p as u32, "smaps_rollup", "Pss:"))
        .sum();
    println!(
        "host memory per VM: RSS {:.0} MiB, PSS {:.0} MiB (mean of {})",
        rss as f64 / 1024.0 / qemus.len().max(1) as f64,
        pss as f64 / 1024.0 / qemus.len().max(1) as f64,
        qemus.len()
    );

    // The plugin watching them, with a caller like the group controller's.
    let ticks0 = cpu_ticks(plugin_pid);
    let watch_start = Instant::now();
    let mut cursor = String::new();
    let mut describes = 0u32;
    while watch_start.elapsed() < Duration::from_secs(watch_secs) {
        if let Ok(c) = client.changes(&cursor, Duration::from_secs(1)).await {
            cursor = c.cursor;
        }
        let _ = client.describe_instances(&Tags::new(), true).await;
        describes += 1;
    }
    let ticks = cpu_ticks(plugin_pid) - ticks0;
    let hz = 100.0;
    println!("plugin watching {n} VMs for {watch_secs} s ({describes} describes with QMP status): CPU {:.2} % of a core, RSS {:.1} MiB",
        100.0 * ticks as f64 / hz / watch_start.elapsed().as_secs_f64(),
        kib(plugin_pid, "status", "VmRSS:") as f64 / 1024.0);
    destroy_all(&client).await;
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
