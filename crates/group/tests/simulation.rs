//! Drives the decision core through seeded fault-injection simulations (see `infrakit_group::sim`).
//!
//! `SIM_SEED=N` runs one seed and prints its event log; `SIM_SEEDS=N` sets how many seeds the full
//! run covers (default 1000, from `SIM_FIRST`, default 0).

use std::time::Instant;

use infrakit_group::core::{decide, Action, Decision, Desired, Memory, Observed};
use infrakit_group::sim::{run, run_with, Report, SimConfig};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn simulation_seeds() {
    let cfg = SimConfig::default();
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("SIM_FIRST").unwrap_or(0);
            (first..first + env_u64("SIM_SEEDS").unwrap_or(1000)).collect()
        }
    };
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let results: Vec<(Report, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let cfg = cfg.clone();
                s.spawn(move || {
                    let mut total = Report::default();
                    let mut failures = Vec::new();
                    for &seed in chunk {
                        match run(seed, &cfg) {
                            Ok(r) => total.merge(&r),
                            Err(f) => failures.push(f.to_string()),
                        }
                    }
                    (total, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut total = Report::default();
    let mut failures = Vec::new();
    for (r, f) in results {
        total.merge(&r);
        failures.extend(f);
    }
    let elapsed = started.elapsed();
    println!(
        "simulation: {} seeds, {} steps, {} decisions, {} actions in {:.1?} ({:.0} decisions/s)",
        seeds.len(),
        total.steps,
        total.decisions,
        total.actions,
        elapsed,
        total.decisions as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  updates: {} completed, {} paused, {} rolled back; {} restarts, {} commands, {} spec changes; \
         slowest convergence after faults: {} steps",
        total.updates_completed,
        total.updates_paused,
        total.updates_rolled_back,
        total.restarts,
        total.commands,
        total.spec_changes,
        total.converge_steps
    );
    println!("  tolerated (a fault made the invariant impossible):");
    for (reason, n) in &total.tolerated {
        println!("    {n:>8}  {reason}");
    }
    if seeds.len() == 1 && failures.is_empty() {
        println!("seed {} passed", seeds[0]);
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    assert!(
        total.updates_completed > 0 && total.restarts > 0,
        "the simulation exercised too little"
    );
}

/// The harness can fail: a core that forgets pending provisions over-provisions, and one that
/// forgets destroys in flight destroys twice; both must be caught within a few seeds.
#[test]
fn the_harness_catches_broken_cores() {
    let cfg = SimConfig {
        fault_steps: 100,
        quiet_steps: 200,
        ..SimConfig::default()
    };
    let forgets_pending = |d: &Desired, o: &Observed, m: &Memory, now: u64| -> Decision {
        let blind = Observed {
            pending: Vec::new(),
            ..o.clone()
        };
        decide(d, &blind, m, now)
    };
    let caught = (0..20).find_map(|seed| run_with(seed, &cfg, &forgets_pending).err());
    let f = caught.expect("ignoring pending provisions must break the upper bound");
    assert!(
        f.message.contains("above target") || f.message.contains("logical ID"),
        "{f}"
    );

    let forgets_destroys = |d: &Desired, o: &Observed, m: &Memory, now: u64| -> Decision {
        let blind = Observed {
            destroying: Default::default(),
            ..o.clone()
        };
        let mut dec = decide(d, &blind, m, now);
        // Without its memory of decided destroys too.
        for inst in dec.memory.instances.values_mut() {
            inst.doomed = None;
        }
        dec
    };
    let caught = (0..20).find_map(|seed| run_with(seed, &cfg, &forgets_destroys).err());
    assert!(
        caught.is_some(),
        "destroying twice / ignoring destroys in flight must be caught"
    );

    let greedy = |d: &Desired, o: &Observed, m: &Memory, now: u64| -> Decision {
        // Replaces every outdated instance at once, ignoring MaxUnavailable.
        let mut dec = decide(d, o, m, now);
        for i in &o.instances {
            let outdated = i.config_hash.as_deref() != Some(d.config_hash.as_str());
            let listed = dec
                .actions
                .iter()
                .any(|a| matches!(a, Action::Destroy { id, .. } if *id == i.id));
            if outdated && !listed && !o.destroying.contains(&i.id) {
                dec.actions.push(Action::Destroy {
                    id: i.id.clone(),
                    reason: Default::default(),
                });
                dec.causes.push(infrakit_group::core::Cause::Rollout);
            }
        }
        dec
    };
    let caught = (0..20).find_map(|seed| run_with(seed, &cfg, &greedy).err());
    let f = caught.expect("ignoring MaxUnavailable must break the availability floor");
    assert!(f.message.contains("below"), "{f}");
}
