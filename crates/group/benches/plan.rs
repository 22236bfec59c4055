//! Planning cost of the pure group core.
//!
//! 1. `decide` over 100,000 instances in 100 groups of 1,000 (a third converged cattle, a third
//!    cattle in the middle of a rolling update with unhealthy and pending instances, a third pets):
//!    p50/p99 per group decision and the time for all 100.
//! 2. Decisions per second against the simulated backend (the fault-injection simulation).
//!
//! `cargo bench -p infrakit-group --bench plan` (optionally `-- --quick`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use infrakit_group::core::{
    decide, Allocation, Desired, Memory, Observed, ObservedInstance, PendingProvision, Policy,
};
use infrakit_group::sim::{run, Report, SimConfig};
use infrakit_spi::flavor::Health;

const GROUPS: usize = 100;
const PER_GROUP: usize = 1000;

struct Group {
    desired: Desired,
    observed: Observed,
    memory: Memory,
}

fn group(g: usize, now: u64) -> Group {
    let kind = g % 3;
    let name = format!("g{g}");
    let allocation = if kind == 2 {
        Allocation::Pets(
            (0..PER_GROUP)
                .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
                .collect(),
        )
    } else {
        Allocation::Size(PER_GROUP as u64)
    };
    let mut policy = Policy::default();
    policy.update.max_surge = infrakit_group::policy::CountOrPercent::Percent(10);
    let desired = Desired {
        group: name.clone(),
        allocation,
        config_hash: "new".into(),
        policy,
    };
    let instances = (0..PER_GROUP)
        .map(|i| {
            let outdated = kind == 1 && i % 2 == 0;
            let health = match i % 50 {
                0 if kind == 1 => Health::Unhealthy,
                1 => Health::Unknown,
                _ => Health::Healthy,
            };
            ObservedInstance {
                id: format!("{name}-i{i:05}"),
                logical_id: (kind == 2).then(|| format!("10.0.{}.{}", i / 250, i % 250)),
                config_hash: Some(if outdated { "old" } else { "new" }.to_string()),
                health,
                leads: false,
            }
        })
        .collect();
    let pending = if kind == 1 {
        (0..20)
            .map(|t| PendingProvision {
                token: t,
                logical_id: None,
                config_hash: "new".into(),
                started_ms: now,
            })
            .collect()
    } else {
        Vec::new()
    };
    let destroying: BTreeSet<String> = if kind == 1 {
        (0..10).map(|i| format!("{name}-i{:05}", i * 2)).collect()
    } else {
        BTreeSet::new()
    };
    let observed = Observed {
        instances,
        pending,
        destroying,
        recovered_ms: None,
    };
    // Steady state: memory already knows every instance (first seen, health streaks).
    let memory = decide(&desired, &observed, &Memory::default(), now - 120_000).memory;
    Group {
        desired,
        observed,
        memory,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let now = 10_000_000;
    let groups: Vec<Group> = (0..GROUPS).map(|g| group(g, now)).collect();
    let rounds = if quick { 3 } else { 20 };
    let mut samples = Vec::with_capacity(rounds * GROUPS);
    let mut totals = Vec::with_capacity(rounds);
    let mut actions = 0usize;
    for r in 0..rounds {
        let round_start = Instant::now();
        for g in &groups {
            let t = Instant::now();
            let d = decide(&g.desired, &g.observed, &g.memory, now + r as u64 * 1000);
            samples.push(t.elapsed());
            actions += d.actions.len();
            std::hint::black_box(&d);
        }
        totals.push(round_start.elapsed());
    }
    samples.sort();
    totals.sort();
    println!(
        "planning: {GROUPS} groups x {PER_GROUP} instances ({} instances), {rounds} rounds",
        GROUPS * PER_GROUP
    );
    println!(
        "  per group decide: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
    println!(
        "  all {GROUPS} groups: p50 {:.2?}  max {:.2?}  ({} actions per round)",
        percentile(&totals, 0.5),
        totals.last().copied().unwrap_or_default(),
        actions / rounds
    );

    let seeds = if quick { 20 } else { 200 };
    let cfg = SimConfig::default();
    let started = Instant::now();
    let mut total = Report::default();
    for seed in 0..seeds {
        match run(seed, &cfg) {
            Ok(r) => total.merge(&r),
            Err(f) => {
                eprintln!("{f}");
                std::process::exit(1);
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "simulation: {seeds} seeds, {} steps, {} decisions in {:.2?}: {:.0} decisions/s (backend simulation \
         and invariant checks included)",
        total.steps,
        total.decisions,
        elapsed,
        total.decisions as f64 / elapsed.as_secs_f64()
    );
}
