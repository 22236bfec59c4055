//! Protocol and instance-file figures, against a real `infrakit plugin serve` process:
//! - empty-call (`Plugin.Activate`) round trips per second on one keep-alive connection, and with a
//!   new connection per call;
//! - `DescribeInstances` latency over 1,000 file instances.
//!
//! Run: `make bench` (or `cargo bench --bench rpc`). Go InfraKit v0.5 on this kind of machine: 0.39 ms
//! per empty keep-alive call, ~40 ms per DescribeInstances of 1,000 file instances.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use infrakit_sdk::rpc::client::{Endpoint, InstanceClient, RpcClient};
use infrakit_sdk::spi::instance::{InstancePlugin, Spec, Tags};
use infrakit_sdk::spi::INSTANCE;

const BIN: &str = env!("CARGO_BIN_EXE_infrakit");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn wait_ready(socket: &Path) {
    for _ in 0..500 {
        let c = RpcClient::new(Endpoint::new("bench", socket), INSTANCE);
        if c.activate().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("plugin never came up at {}", socket.display());
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("instance-file.sock");
    let dir = tmp.path().join("instances");
    let mut child = Command::new(BIN)
        .args(["plugin", "serve", "instance-file", "--socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(&dir)
        .env("INFRAKIT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start plugin");
    wait_ready(&socket).await;

    // 1. Empty calls on one keep-alive connection.
    let client = RpcClient::new(Endpoint::new("bench", &socket), INSTANCE);
    let n = 20_000;
    for _ in 0..500 {
        client.activate().await.expect("activate");
    }
    let start = Instant::now();
    for _ in 0..n {
        client.activate().await.expect("activate");
    }
    let keepalive = start.elapsed();
    println!(
        "empty call, keep-alive:        {:>9.0} calls/s  ({} per call; Go InfraKit v0.5: 0.390 ms)",
        n as f64 / keepalive.as_secs_f64(),
        ms(keepalive / n)
    );

    // 2. A new connection per call.
    let n2 = 5_000;
    let start = Instant::now();
    for _ in 0..n2 {
        let c = RpcClient::new(Endpoint::new("bench", &socket), INSTANCE);
        c.activate().await.expect("activate");
    }
    let fresh = start.elapsed();
    println!(
        "empty call, new connection:    {:>9.0} calls/s  ({} per call)",
        n2 as f64 / fresh.as_secs_f64(),
        ms(fresh / n2)
    );

    // 3. DescribeInstances over 1,000 file instances.
    let inst = InstanceClient::new(Endpoint::new("bench", &socket));
    let mut tags = Tags::new();
    tags.insert("infrakit.group".into(), "bench".into());
    tags.insert("infrakit.config.hash".into(), "0123456789abcdef".into());
    let t0 = Instant::now();
    for i in 0..1000 {
        let spec = Spec {
            tags: tags.clone(),
            init: format!("echo instance {i}"),
            properties: Some(serde_json::json!({"Note": "bench", "Index": i})),
            ..Spec::default()
        };
        inst.provision(spec).await.expect("provision");
    }
    let provision = t0.elapsed();
    println!(
        "provision 1,000 file instances: {} total ({} each)",
        ms(provision),
        ms(provision / 1000)
    );
    let filter: Tags = [("infrakit.group".to_string(), "bench".to_string())].into();
    // Files modified within the last second are re-read on every call (the plugin's "racily clean"
    // rule); measure the steady state a controller polling an established group sees.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let first = Instant::now();
    let got = inst
        .describe_instances(&filter, false)
        .await
        .expect("describe");
    let first = first.elapsed();
    assert_eq!(got.len(), 1000);
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let got = inst
            .describe_instances(&filter, false)
            .await
            .expect("describe");
        samples.push(t.elapsed());
        assert_eq!(got.len(), 1000);
    }
    samples.sort();
    println!(
        "DescribeInstances, 1,000 files: p50 {}  p99 {}  (first call {}; Go InfraKit v0.5: ~40 ms)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(first)
    );
    // Touch 10 files by hand: only those are re-read.
    let mut touched = 0;
    for entry in std::fs::read_dir(&dir).expect("dir").flatten().take(10) {
        let text = std::fs::read_to_string(entry.path()).expect("read");
        std::fs::write(entry.path(), text.replace("bench", "BENCH")).expect("write");
        touched += 1;
    }
    let t = Instant::now();
    inst.describe_instances(&filter, false)
        .await
        .expect("describe");
    println!(
        "DescribeInstances after {touched} files rewritten by hand: {}",
        ms(t.elapsed())
    );

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}
