//! The swarm store (group records in swarm configs, crates/docker/src/swarm/store.rs) on the lab
//! swarm: the latency of one write — what the controller pays ahead of every action that changes
//! what it must remember — through the leader's engine and through a follower's, for records of
//! a few sizes; a load; and the largest record the store takes (and what happens above it).
//!
//! Run (root): `cargo bench --bench swarm_store` (brings the lab up when it is not, and down
//! again after). Figures are medians of `ROUNDS` writes.

use std::time::{Duration, Instant};

use infrakit_controller::record::GroupRecord;
use infrakit_controller::store::GroupStore;
use infrakit_docker::Engine;
use infrakit_group::spec::{parse, Origin};
use infrakit_manager::swarm_store::{SwarmStore, MAX_CONFIG_BYTES};
use infrakit_sdk::spi::group::GroupSpec;
use serde_json::{json, Value};

const ROUNDS: usize = 15;
const LAB_JSON: &str = "/run/infrakit-lab/lab.json";
const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-lab.sh");

fn lab(arg: &str) {
    let ok = std::process::Command::new("bash")
        .args([LAB, arg])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "scripts/swarm-lab.sh {arg} failed");
}

/// A group whose spec is about `bytes` long (the Note pads it), as committed.
fn record(id: &str, bytes: usize) -> GroupRecord {
    let spec = GroupSpec {
        id: id.to_string(),
        properties: Some(json!({
            "Allocation": {"Size": 3},
            "Instance": {"Plugin": "instance-file", "Properties": {"Note": "x".repeat(bytes)}},
            "Flavor": {"Plugin": "flavor-vanilla"}
        })),
    };
    let valid = parse(&spec, Origin::Commit).unwrap_or_else(|e| panic!("spec of {bytes} B: {e}"));
    GroupRecord::new(spec, &valid)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let brought_up = !std::path::Path::new(LAB_JSON).exists();
    if brought_up {
        lab("up");
    }
    let lab_json: Value =
        serde_json::from_slice(&std::fs::read(LAB_JSON).expect("lab.json")).expect("lab.json");
    let nodes = lab_json["Nodes"].as_array().expect("Nodes").clone();
    let socket = |n: &Value| {
        n["DockerHost"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("unix://")
            .to_string()
    };
    let mut leader = None;
    let mut follower = None;
    for n in nodes.iter().filter(|n| n["Role"] == "manager") {
        let engine =
            Engine::new(socket(n)).with_timeouts(Duration::from_secs(2), Duration::from_secs(30));
        let docker = engine.docker().expect("bollard");
        let info = docker.info().await.expect("info");
        let id = info.swarm.and_then(|s| s.node_id).unwrap_or_default();
        let node = docker.inspect_node(&id).await.expect("inspect node");
        let leads = node.manager_status.and_then(|m| m.leader) == Some(true);
        if leads {
            leader = Some((n["Name"].as_str().unwrap_or("?").to_string(), engine));
        } else if follower.is_none() {
            follower = Some((n["Name"].as_str().unwrap_or("?").to_string(), engine));
        }
    }
    let (leader, follower) = (leader.expect("a leader"), follower.expect("a follower"));

    // A crashed earlier run's groups.
    let sweep = SwarmStore::new(leader.1.clone());
    for g in sweep.load().await.expect("load").groups {
        if g.record.id().starts_with("bench-") {
            let _ = sweep.delete(g.record.id(), g.revision).await;
        }
    }

    println!("swarm store on the lab ({ROUNDS} writes each, median; a write = create the data config, move the head's label compare-and-swap, remove the previous data config)");
    println!(
        "{:<12} {:>12} {:>14} {:>14}",
        "through", "record", "first write", "next writes"
    );
    for (via, engine) in [&leader, &follower] {
        let store = SwarmStore::new(engine.clone());
        for size in [1_000usize, 100_000, 440_000] {
            let id = format!("bench-{via}-{size}");
            let rec = record(&id, size);
            let bytes = serde_json::to_vec(&rec).map(|v| v.len()).unwrap_or(0);
            let t = Instant::now();
            let mut rev = store.put(&rec, 0).await.expect("first write");
            let first = t.elapsed().as_secs_f64() * 1000.0;
            let mut times = Vec::new();
            for _ in 0..ROUNDS {
                let t = Instant::now();
                rev = store.put(&rec, rev).await.expect("write");
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            println!(
                "{:<12} {:>10} B {:>11.1} ms {:>11.1} ms",
                format!("{via}{}", if via == &leader.0 { " (leader)" } else { "" }),
                bytes,
                first,
                median(times)
            );
            store.delete(&id, rev).await.expect("delete");
        }
    }

    // A load of 20 groups (what a newly elected leader does first).
    let store = SwarmStore::new(leader.1.clone());
    let mut revs = Vec::new();
    for i in 0..20 {
        let id = format!("bench-load-{i}");
        revs.push((
            id.clone(),
            store.put(&record(&id, 2_000), 0).await.expect("write"),
        ));
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let loaded = store.load().await.expect("load");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(loaded.groups.len() >= 20);
    }
    println!(
        "load of 20 groups (2 kB specs) through the leader: {:.1} ms (median of 5)",
        median(times)
    );
    for (id, rev) in revs {
        store.delete(&id, rev).await.expect("delete");
    }

    // The largest record: a spec at the parser's limit is taken; a record over the engine's
    // limit is refused with a clear error and nothing changes.
    let big = record("bench-big", 440_000);
    let big_bytes = serde_json::to_vec(&big).map(|v| v.len()).unwrap_or(0);
    let rev = store
        .put(&big, 0)
        .await
        .expect("a spec near the parser's limit");
    let mut huge = big.clone();
    // Past the config limit through the record's versions (the Instance block of a second spec
    // version, as during a rolling update from one big spec to another).
    let pad = "y".repeat(440_000 + MAX_CONFIG_BYTES - big_bytes + 10);
    if let Some(v) = huge.versions.values_mut().next() {
        v.instance.properties = Some(json!({"Note": pad}));
    }
    let huge_bytes = serde_json::to_vec(&huge).map(|v| v.len()).unwrap_or(0);
    let refused = store.put(&huge, rev).await;
    let rev = match &refused {
        Ok(r) => *r,
        Err(_) => rev,
    };
    let kept = store
        .load()
        .await
        .expect("load")
        .groups
        .into_iter()
        .find(|g| g.record.id() == "bench-big");
    println!(
        "largest record: {big_bytes} B taken; {huge_bytes} B refused: {}; the stored record kept: {}",
        refused.as_ref().err().map(|e| e.message.clone()).unwrap_or_else(|| "ACCEPTED (unexpected)".into()),
        kept.is_some_and(|k| k.revision == rev)
    );
    store.delete("bench-big", rev).await.expect("delete");
    if brought_up {
        lab("down");
    }
}
