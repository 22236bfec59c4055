//! A simulation harness for the decision core: a simulated backend with seeded faults, a simulated
//! executor (with restarts that lose its in-memory state and may restore a stale store), operators
//! who change specs and pause, resume or roll back, and invariants checked after every step.
//!
//! Each run has a faulty phase (provisions that fail, hang or finish late; instances that die or
//! flap; planted duplicates; restarts; spec, size and logical ID changes; commands) and then a quiet
//! phase with no faults, in which every group must converge — every update completed (resumed by
//! the operator when its policy paused it) — within a bounded number of steps.
//!
//! `run(seed, &SimConfig::default())` is deterministic: a failing seed is reproduced by its number
//! (`SIM_SEED=123 cargo test -p infrakit-group --test simulation`).

mod checks;
mod rng;
mod world;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use infrakit_spi::flavor::Health;

pub use rng::Rng;
use world::{Del, Exec, GroupSim, Prov, World};

use crate::core::policy::{CountOrPercent, FailureAction, Policy, ScaleDownOrder};
use crate::core::{
    command, decide, Action, Allocation, Command, Decision, Desired, Memory, Observed,
    ObservedInstance, UpdateState,
};

/// How long a run is.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Steps with faults, spec changes, commands and restarts.
    pub fault_steps: u64,
    /// Steps without faults in which every group must converge.
    pub quiet_steps: u64,
    /// Simulated time per step.
    pub step_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fault_steps: 200,
            quiet_steps: 300,
            step_ms: 1000,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub decisions: u64,
    pub actions: u64,
    /// Invariants a fault made impossible, by reason (steps or decisions affected).
    pub tolerated: BTreeMap<String, u64>,
    pub updates_completed: u64,
    pub updates_paused: u64,
    pub updates_rolled_back: u64,
    pub restarts: u64,
    pub commands: u64,
    pub spec_changes: u64,
    /// Steps the quiet phase needed until every group converged.
    pub converge_steps: u64,
}

impl Report {
    /// Adds another run's counts.
    pub fn merge(&mut self, other: &Report) {
        self.steps += other.steps;
        self.decisions += other.decisions;
        self.actions += other.actions;
        for (k, v) in &other.tolerated {
            *self.tolerated.entry(k.clone()).or_default() += v;
        }
        self.updates_completed += other.updates_completed;
        self.updates_paused += other.updates_paused;
        self.updates_rolled_back += other.updates_rolled_back;
        self.restarts += other.restarts;
        self.commands += other.commands;
        self.spec_changes += other.spec_changes;
        self.converge_steps = self.converge_steps.max(other.converge_steps);
    }
}

/// A broken invariant, with what led to it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub message: String,
    pub log: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(
            f,
            "reproduce with: SIM_SEED={} cargo test -p infrakit-group --test simulation",
            self.seed
        )?;
        writeln!(f, "last events:")?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// The function under test (the real [`decide`], or a deliberately broken one to prove the checks).
pub type Decider<'a> = &'a dyn Fn(&Desired, &Observed, &Memory, u64) -> Decision;

/// Runs one seed against the real core.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<Report, Failure> {
    run_with(seed, cfg, &decide)
}

pub fn run_with(seed: u64, cfg: &SimConfig, decider: Decider) -> Result<Report, Failure> {
    let mut sim = Sim::new(seed, cfg);
    match sim.run(cfg, decider) {
        Ok(()) => Ok(sim.report),
        Err(message) => Err(Failure {
            seed,
            step: sim.w.step,
            message,
            log: sim.w.log.iter().cloned().collect(),
        }),
    }
}

struct Sim {
    w: World,
    report: Report,
}

const PET_POOL: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];

fn random_policy(rng: &mut Rng) -> Policy {
    let mut p = Policy::default();
    let counts = [
        CountOrPercent::Count(0),
        CountOrPercent::Count(1),
        CountOrPercent::Count(2),
        CountOrPercent::Percent(25),
    ];
    loop {
        p.update.max_surge = *rng.pick(&counts).unwrap_or(&CountOrPercent::Count(0));
        p.update.max_unavailable = *rng.pick(&counts).unwrap_or(&CountOrPercent::Count(1));
        if !(p.update.max_surge.is_zero() && p.update.max_unavailable.is_zero()) {
            break;
        }
    }
    if rng.chance(0.3) {
        p.update = Policy::default().update; // InfraKit's one at a time
    }
    p.update.min_ready_seconds = *rng.pick(&[0, 0, 2, 5]).unwrap_or(&0);
    p.update.healthy_deadline_seconds = *rng.pick(&[20, 30, 60]).unwrap_or(&30);
    p.update.failure_action = *rng
        .pick(&[
            FailureAction::Pause,
            FailureAction::Rollback,
            FailureAction::Continue,
        ])
        .unwrap_or(&FailureAction::Pause);
    p.update.max_failure_ratio = *rng.pick(&[0.0, 0.0, 0.2, 0.5]).unwrap_or(&0.0);
    p.remediation.unhealthy_seconds = *rng.pick(&[0, 5, 10, 20]).unwrap_or(&10);
    p.remediation.max_in_flight = rng.range(1, 3);
    p.remediation.max_unhealthy = *rng
        .pick(&[
            CountOrPercent::Percent(50),
            CountOrPercent::Count(1),
            CountOrPercent::Count(3),
        ])
        .unwrap_or(&CountOrPercent::Percent(50));
    p.remediation.backoff_seconds = rng.range(1, 3);
    p.remediation.max_backoff_seconds = rng.range(10, 30);
    p.scale_down.order = if rng.chance(0.5) {
        ScaleDownOrder::NewestFirst
    } else {
        ScaleDownOrder::OldestFirst
    };
    p
}

impl Sim {
    fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let cattle = Desired {
            group: "cattle".into(),
            allocation: Allocation::Size(rng.range(0, 10)),
            config_hash: "h0".into(),
            policy: random_policy(&mut rng),
        };
        let n = rng.range(1, 5) as usize;
        let pets = Desired {
            group: "pets".into(),
            allocation: Allocation::Pets(PET_POOL[..n].iter().map(|s| s.to_string()).collect()),
            config_hash: "h0".into(),
            policy: random_policy(&mut rng),
        };
        let group = |desired| GroupSim {
            desired,
            exec: Exec::default(),
            shrink_from: None,
            excess_credit: 0,
            dup_steps: BTreeMap::new(),
            quiet_resumes: 0,
        };
        let w = World {
            rng,
            now: 1_000_000,
            step: 0,
            step_ms: cfg.step_ms,
            faults: true,
            groups: vec![group(cattle), group(pets)],
            insts: BTreeMap::new(),
            provs: Vec::new(),
            dels: Vec::new(),
            specs: [("h0".to_string(), true)].into(),
            next_id: 0,
            next_token: 0,
            last_restart_step: None,
            last_restart_at: None,
            planted_since_restart: BTreeSet::new(),
            log: VecDeque::new(),
        };
        Sim {
            w,
            report: Report {
                seed,
                ..Report::default()
            },
        }
    }

    fn run(&mut self, cfg: &SimConfig, decider: Decider) -> Result<(), String> {
        for _ in 0..cfg.fault_steps {
            self.step(decider)?;
        }
        self.quiet_down();
        for quiet in 1..=cfg.quiet_steps {
            for gi in 0..self.w.groups.len() {
                self.resume_if_paused(gi)?;
            }
            self.step(decider)?;
            if self.converged() {
                self.report.converge_steps = quiet;
                // Converged means settled: a few more steps must change nothing.
                for _ in 0..5 {
                    let before = self.report.actions;
                    self.step(decider)?;
                    if self.report.actions != before {
                        return Err("actions after convergence, with nothing changing".into());
                    }
                }
                return Ok(());
            }
        }
        let states: Vec<String> = self
            .w
            .groups
            .iter()
            .map(|g| format!("{}: {:?}", g.desired.group, g.exec.status))
            .collect();
        Err(format!(
            "not converged {} steps after the faults stopped: {}",
            cfg.quiet_steps,
            states.join(" | ")
        ))
    }

    fn step(&mut self, decider: Decider) -> Result<(), String> {
        self.w.now += self.w.step_ms;
        self.w.step += 1;
        self.report.steps += 1;
        self.w.backend_progress();
        self.w.health_progress();
        if self.w.faults {
            self.operators()?;
        }
        for gi in 0..self.w.groups.len() {
            // Sometimes decide twice in a step (an event right after a decision): the second
            // decision sees the first one's actions in flight and must not repeat them.
            let times = if self.w.rng.chance(0.1) { 2 } else { 1 };
            for _ in 0..times {
                self.decide(gi, decider)?;
            }
        }
        checks::step(&mut self.w, &mut self.report)
    }

    fn observed(&self, gi: usize) -> Observed {
        let g = &self.w.groups[gi];
        Observed {
            instances: self
                .w
                .insts
                .iter()
                .filter(|(_, i)| i.group == g.desired.group)
                .map(|(id, i)| ObservedInstance {
                    id: id.clone(),
                    logical_id: i.lid.clone(),
                    config_hash: Some(i.hash.clone()),
                    health: i.health,
                    leads: false,
                })
                .collect(),
            pending: g.exec.pending.clone(),
            destroying: g.exec.destroying.clone(),
            recovered_ms: None,
        }
    }

    fn decide(&mut self, gi: usize, decider: Decider) -> Result<(), String> {
        let observed = self.observed(gi);
        let before = self.w.groups[gi].exec.memory.clone();
        let desired = self.w.groups[gi].desired.clone();
        let d = decider(&desired, &observed, &before, self.w.now);
        self.report.decisions += 1;
        checks::decision(&self.w, gi, &observed, &before, &d, &mut self.report)?;
        self.execute(gi, &d);
        self.follow_update(gi, &before, &d);
        let exec = &mut self.w.groups[gi].exec;
        if d.memory != before {
            let text = serde_json::to_string(&d.memory)
                .map_err(|e| format!("memory does not serialize: {e}"))?;
            exec.store.push(text);
            if exec.store.len() > 6 {
                exec.store.remove(0);
            }
        }
        exec.memory = d.memory;
        exec.status = Some(d.status);
        Ok(())
    }

    /// Starts the decision's actions in the backend, as an executor would.
    fn execute(&mut self, gi: usize, d: &Decision) {
        let w = &mut self.w;
        let faults = w.faults;
        let name = w.groups[gi].desired.group.clone();
        if !d.actions.is_empty() {
            let line: Vec<String> = d
                .actions
                .iter()
                .zip(&d.causes)
                .map(|(a, c)| match a {
                    Action::Provision {
                        logical_id,
                        config_hash,
                    } => format!("provision {logical_id:?} {config_hash} ({c:?})"),
                    Action::Destroy { id, .. } => format!("destroy {id} ({c:?})"),
                })
                .collect();
            w.note(format!("{name}: {}", line.join(", ")));
        }
        for (a, c) in d.actions.iter().zip(&d.causes) {
            self.report.actions += 1;
            match a {
                Action::Provision {
                    logical_id,
                    config_hash,
                } => {
                    w.next_token += 1;
                    let token = w.next_token;
                    let hang = faults && w.rng.chance(0.05);
                    let latency = if hang {
                        w.rng.range(10, 40)
                    } else {
                        w.rng.range(1, 3)
                    };
                    let fails = faults && w.rng.chance(0.1);
                    w.provs.push(Prov {
                        token,
                        group: name.clone(),
                        lid: logical_id.clone(),
                        hash: config_hash.clone(),
                        finish_at: w.now + latency * w.step_ms,
                        fails,
                        orphan: false,
                        vanishes: false,
                        started_at: w.now,
                        stale: false,
                    });
                    w.groups[gi]
                        .exec
                        .pending
                        .push(crate::core::PendingProvision {
                            token,
                            logical_id: logical_id.clone(),
                            config_hash: config_hash.clone(),
                            started_ms: w.now,
                        });
                }
                Action::Destroy { id, .. } => {
                    w.groups[gi].exec.destroying.insert(id.clone());
                    let fails = faults && w.rng.chance(0.05);
                    let finish_at = w.now + w.rng.range(1, 2) * w.step_ms;
                    w.dels.push(Del {
                        id: id.clone(),
                        finish_at,
                        fails,
                        orphan: false,
                        cause: *c,
                    });
                }
            }
        }
    }

    fn follow_update(&mut self, gi: usize, before: &Memory, d: &Decision) {
        let was = before.update.as_ref().map(|u| u.state);
        let now = d.memory.update.as_ref().map(|u| u.state);
        if was != now {
            match now {
                Some(UpdateState::Completed) => self.report.updates_completed += 1,
                Some(UpdateState::Paused) => self.report.updates_paused += 1,
                Some(UpdateState::RolledBack) => self.report.updates_rolled_back += 1,
                _ => {}
            }
            let msg = d
                .memory
                .update
                .as_ref()
                .map(|u| u.message.clone())
                .unwrap_or_default();
            let name = self.w.groups[gi].desired.group.clone();
            self.w
                .note(format!("{name}: update {was:?} -> {now:?}: {msg}"));
        }
    }

    /// Spec changes, planted instances, commands and controller restarts.
    fn operators(&mut self) -> Result<(), String> {
        for gi in 0..self.w.groups.len() {
            self.change_spec(gi);
            self.plant(gi);
            if self.w.rng.chance(0.01) {
                let cmd = *self
                    .w
                    .rng
                    .pick(&[Command::Pause, Command::Resume, Command::Rollback])
                    .unwrap_or(&Command::Pause);
                self.command(gi, cmd);
            }
        }
        if self.w.rng.chance(0.01) {
            self.restart()?;
        }
        Ok(())
    }

    fn change_spec(&mut self, gi: usize) {
        let w = &mut self.w;
        if w.rng.chance(0.02) {
            let hash = format!("h{}", w.specs.len());
            let good = w.rng.chance(0.8);
            w.specs.insert(hash.clone(), good);
            let g = &mut w.groups[gi];
            g.desired.config_hash = hash.clone();
            let name = g.desired.group.clone();
            w.note(format!(
                "{name}: commit {hash} ({})",
                if good { "good" } else { "broken" }
            ));
            self.report.spec_changes += 1;
        }
        if w.rng.chance(0.02) {
            let old = w.groups[gi].desired.allocation.target();
            let allocation = match &w.groups[gi].desired.allocation {
                Allocation::Size(_) => Allocation::Size(w.rng.range(0, 12)),
                Allocation::Pets(ids) => {
                    let mut ids = ids.clone();
                    let id = (*w.rng.pick(PET_POOL).unwrap_or(&"a")).to_string();
                    if let Some(pos) = ids.iter().position(|x| *x == id) {
                        ids.remove(pos);
                    } else {
                        ids.push(id);
                    }
                    Allocation::Pets(ids)
                }
            };
            let g = &mut w.groups[gi];
            g.desired.allocation = allocation;
            let new = g.desired.allocation.target();
            if new < old || g.desired.allocation.is_pets() {
                // A pet list change can remove members too: count against the larger target.
                g.shrink_from = Some(g.shrink_from.unwrap_or(0).max(old));
            }
            let name = g.desired.group.clone();
            let a = format!("{:?}", g.desired.allocation);
            w.note(format!("{name}: allocation {a}"));
            self.report.spec_changes += 1;
        }
    }

    /// Someone else's instances carrying the group's tag: a duplicate pet, a stray.
    fn plant(&mut self, gi: usize) {
        let w = &mut self.w;
        let name = w.groups[gi].desired.group.clone();
        let hash = w.groups[gi].desired.config_hash.clone();
        let lid = match &w.groups[gi].desired.allocation {
            Allocation::Pets(ids) if w.rng.chance(0.006) => w.rng.pick(ids).cloned().map(Some),
            Allocation::Pets(_) if w.rng.chance(0.003) => Some(Some("zz".to_string())),
            Allocation::Size(_) if w.rng.chance(0.003) => Some(None),
            _ => None,
        };
        if let Some(lid) = lid {
            let id = w.new_instance(&name, lid.clone(), &hash, true, false);
            if let (Some(l), Some(_)) = (&lid, w.last_restart_at) {
                w.planted_since_restart.insert((name.clone(), l.clone()));
            }
            w.groups[gi].excess_credit += 1;
            w.note(format!("{name}: planted {id} ({lid:?})"));
        }
    }

    fn command(&mut self, gi: usize, cmd: Command) {
        let g = &mut self.w.groups[gi];
        match command(&g.exec.memory, cmd, &g.desired, self.w.now) {
            Ok(m) => {
                let text = serde_json::to_string(&m).unwrap_or_default();
                g.exec.store.push(text);
                g.exec.memory = m;
                let name = g.desired.group.clone();
                self.w.note(format!("{name}: command {cmd:?} accepted"));
                self.report.commands += 1;
            }
            Err(e) => {
                let name = g.desired.group.clone();
                self.w.note(format!("{name}: command {cmd:?} refused: {e}"));
            }
        }
    }

    /// The controller process dies and starts again: its pending provisions and destroys keep
    /// running in the backend (or are lost), its memory comes back from the store, maybe stale.
    fn restart(&mut self) -> Result<(), String> {
        let w = &mut self.w;
        self.report.restarts += 1;
        w.last_restart_step = Some(w.step);
        w.last_restart_at = Some(w.now);
        w.planted_since_restart.clear();
        for gi in 0..w.groups.len() {
            // Usually the last write; sometimes a crash lost the last one or two.
            let back = if w.rng.chance(0.6) {
                0
            } else {
                w.rng.range(1, 2) as usize
            };
            let restored = w.groups[gi].exec.store.len().checked_sub(1 + back);
            let stale = back > 0 || restored.is_none();
            let pending: BTreeSet<u64> =
                w.groups[gi].exec.pending.iter().map(|p| p.token).collect();
            let name = w.groups[gi].desired.group.clone();
            for p in w.provs.iter_mut().filter(|p| p.group == name) {
                if pending.contains(&p.token) {
                    p.orphan = true;
                    p.vanishes = w.rng.chance(0.3);
                }
                // An orphan of an earlier restart is unknown to a memory restored stale now too.
                p.stale |= p.orphan && stale;
            }
            let destroying = std::mem::take(&mut w.groups[gi].exec.destroying);
            for d in w.dels.iter_mut().filter(|d| destroying.contains(&d.id)) {
                d.orphan = true;
            }
            let exec = &mut w.groups[gi].exec;
            exec.pending.clear();
            exec.status = None;
            let memory = match restored.and_then(|i| exec.store.get(i)) {
                Some(text) => serde_json::from_str::<Memory>(text)
                    .map_err(|e| format!("stored memory does not load: {e}"))?,
                None => Memory::default(),
            };
            exec.memory = memory;
            exec.memory.after_restart();
        }
        w.note("controller restarted (memory restored from the store)".to_string());
        Ok(())
    }

    /// The faults stop: hung work finishes as scheduled, sick instances recover, and a group whose
    /// committed (or rolled back to) configuration is broken gets a working one committed.
    fn quiet_down(&mut self) {
        let w = &mut self.w;
        w.faults = false;
        w.note("faults stop".into());
        for i in w.insts.values_mut() {
            i.sick = false;
            i.flap_until = 0;
            i.glitch_until = 0;
        }
        for p in &mut w.provs {
            p.fails = false;
        }
        for d in &mut w.dels {
            d.fails = false;
        }
        for gi in 0..w.groups.len() {
            let g = &w.groups[gi];
            let good = |h: &str| w.specs.get(h).copied().unwrap_or(true);
            let rolling_back = g
                .exec
                .memory
                .update
                .as_ref()
                .is_some_and(|u| u.rolling_back && u.target_hash == g.desired.config_hash);
            if !good(&g.desired.config_hash) || rolling_back {
                let hash = format!("h{}", w.specs.len());
                w.specs.insert(hash.clone(), true);
                let name = g.desired.group.clone();
                w.groups[gi].desired.config_hash = hash.clone();
                w.note(format!("{name}: commit {hash} (good) to recover"));
            }
        }
    }

    /// The operator resumes an update its policy paused or rolled back (at most a few times:
    /// without faults it must not keep failing).
    fn resume_if_paused(&mut self, gi: usize) -> Result<(), String> {
        let g = &self.w.groups[gi];
        // Paused, or rolled back by its policy because of a failure left over from the faults (a
        // provision that hung past its deadline): the operator sends it forward again.
        let paused = g.exec.memory.update.as_ref().is_some_and(|u| {
            matches!(u.state, UpdateState::Paused | UpdateState::RolledBack)
                && u.target_hash == g.desired.config_hash
        });
        if paused {
            self.w.groups[gi].quiet_resumes += 1;
            if self.w.groups[gi].quiet_resumes > 3 {
                let name = self.w.groups[gi].desired.group.clone();
                return Err(format!("{name}: the update keeps pausing without faults"));
            }
            self.command(gi, Command::Resume);
        }
        Ok(())
    }

    /// Every group converged, by its own status and by the truth.
    fn converged(&self) -> bool {
        let w = &self.w;
        w.groups.iter().all(|g| {
            let name = &g.desired.group;
            let status_ok = g.exec.status.as_ref().is_some_and(|s| s.converged);
            let update_ok = g
                .exec
                .memory
                .update
                .as_ref()
                .is_none_or(|u| u.state == UpdateState::Completed);
            let insts: Vec<&world::Inst> = w.insts.values().filter(|i| i.group == *name).collect();
            let all_good = insts
                .iter()
                .all(|i| i.hash == g.desired.config_hash && i.health == Health::Healthy);
            let count_ok = insts.len() as u64 == g.desired.allocation.target();
            let lids_ok = match &g.desired.allocation {
                Allocation::Size(_) => true,
                Allocation::Pets(_) => {
                    let have: BTreeSet<&str> =
                        insts.iter().filter_map(|i| i.lid.as_deref()).collect();
                    have == g.desired.allocation.logical_ids().into_iter().collect()
                }
            };
            let idle = !w.provs.iter().any(|p| p.group == *name);
            status_ok && update_ok && all_good && count_ok && lids_ok && idle
        })
    }
}
