//! The simulated world: a backend (instances, provisions and destroys that take time, fail, hang),
//! and per group the executor's in-memory state and its store.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use infrakit_spi::flavor::Health;

use super::rng::Rng;
use crate::core::{Cause, Desired, Memory, PendingProvision, Status};

/// How an instance of a broken configuration misbehaves once booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// The flavor can never tell (the health endpoint never answers).
    Unknown,
    /// It boots and is reported unhealthy.
    Unhealthy,
}

#[derive(Debug, Clone)]
pub(crate) struct Inst {
    pub group: String,
    pub lid: Option<String>,
    pub hash: String,
    pub boot_at: u64,
    pub broken: Option<Broken>,
    /// Permanently unhealthy (until the quiet phase heals the world).
    pub sick: bool,
    pub flap_until: u64,
    pub glitch_until: u64,
    /// Put there by "someone else" (a planted duplicate or stray), not by the controller.
    pub planted: bool,
    /// Made by a provision started before a controller restart that the new controller could not
    /// know about (its memory was restored stale) or had to give up on (it arrived after its
    /// healthy deadline): an excusable extra.
    pub orphan: bool,
    /// Made by any provision started before a restart.
    pub from_orphan: bool,
    pub health: Health,
    /// Continuously healthy since (the truth the checker judges availability by).
    pub healthy_since: Option<u64>,
}

/// A provision running in the backend.
#[derive(Debug, Clone)]
pub(crate) struct Prov {
    pub token: u64,
    pub group: String,
    pub lid: Option<String>,
    pub hash: String,
    pub finish_at: u64,
    pub fails: bool,
    /// Started by a controller that has since restarted: its executor forgot it.
    pub orphan: bool,
    /// An orphan that never shows up (the backend lost the request).
    pub vanishes: bool,
    pub started_at: u64,
    /// Orphaned by a restart whose restored memory missed the latest writes.
    pub stale: bool,
}

impl Prov {
    /// An orphan the restarted controller cannot be expected to wait for.
    pub fn excusable(&self, now: u64, deadline_ms: u64) -> bool {
        self.orphan && (self.stale || now >= self.started_at + deadline_ms)
    }
}

/// A destroy running in the backend.
#[derive(Debug, Clone)]
pub(crate) struct Del {
    pub id: String,
    pub finish_at: u64,
    pub fails: bool,
    pub orphan: bool,
    pub cause: Cause,
}

/// The executor of one group: what a real one keeps in memory, plus its store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Exec {
    pub pending: Vec<PendingProvision>,
    pub destroying: BTreeSet<String>,
    pub memory: Memory,
    /// Persisted copies, newest last (JSON, as a file store would hold them).
    pub store: Vec<String>,
    pub status: Option<Status>,
}

pub(crate) struct GroupSim {
    pub desired: Desired,
    pub exec: Exec,
    /// The larger target a shrink started from, while instances are still above the new one.
    pub shrink_from: Option<u64>,
    /// Instances above the bound that faults put there (late pre-restart provisions, planted ones).
    pub excess_credit: u64,
    /// Consecutive steps a logical ID had two live instances.
    pub dup_steps: BTreeMap<String, u32>,
    pub quiet_resumes: u32,
}

pub(crate) struct World {
    pub rng: Rng,
    pub now: u64,
    pub step: u64,
    pub step_ms: u64,
    pub faults: bool,
    pub groups: Vec<GroupSim>,
    pub insts: BTreeMap<String, Inst>,
    pub provs: Vec<Prov>,
    pub dels: Vec<Del>,
    /// Every configuration ever committed, and whether its instances can be healthy.
    pub specs: BTreeMap<String, bool>,
    pub next_id: u64,
    pub next_token: u64,
    pub last_restart_step: Option<u64>,
    pub last_restart_at: Option<u64>,
    /// (group, logical ID) of instances planted since the last restart.
    pub planted_since_restart: BTreeSet<(String, String)>,
    pub log: VecDeque<String>,
}

const LOG_LINES: usize = 80;

impl World {
    pub fn note(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(format!(
            "[step {} t={}s] {line}",
            self.step,
            self.now / 1000
        ));
    }

    pub fn new_instance(
        &mut self,
        group: &str,
        lid: Option<String>,
        hash: &str,
        planted: bool,
        orphan: bool,
    ) -> String {
        self.next_id += 1;
        let id = format!("i{}", self.next_id);
        let good = self.specs.get(hash).copied().unwrap_or(true);
        let broken = if good {
            None
        } else if self.rng.chance(0.5) {
            Some(Broken::Unknown)
        } else {
            Some(Broken::Unhealthy)
        };
        let boot_at = self.now + self.rng.range(1, 3) * self.step_ms;
        let inst = Inst {
            group: group.to_string(),
            lid,
            hash: hash.to_string(),
            boot_at,
            broken,
            sick: false,
            flap_until: 0,
            glitch_until: 0,
            planted,
            orphan,
            from_orphan: false,
            health: Health::Unknown,
            healthy_since: None,
        };
        self.insts.insert(id.clone(), inst);
        id
    }

    /// An instance is gone: every destroy of it ends, every executor forgets it.
    pub fn remove_instance(&mut self, id: &str) {
        self.insts.remove(id);
        self.dels.retain(|d| d.id != id);
        for g in &mut self.groups {
            g.exec.destroying.remove(id);
        }
    }

    /// How long the core waits for a provision from before a restart (its ghost).
    pub fn deadline_ms(&self, gi: usize) -> u64 {
        self.groups[gi].desired.policy.ghost_ms()
    }

    fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.desired.group == name)
    }

    /// Provisions and destroys whose time has come finish (or fail).
    pub fn backend_progress(&mut self) {
        let now = self.now;
        let (due, rest): (Vec<Prov>, Vec<Prov>) = std::mem::take(&mut self.provs)
            .into_iter()
            .partition(|p| p.finish_at <= now);
        self.provs = rest;
        for p in due {
            let gi = self.group_index(&p.group);
            if let Some(gi) = gi {
                // Leaves pending in the same snapshot the instance appears in (the executor contract).
                self.groups[gi].exec.pending.retain(|x| x.token != p.token);
            }
            if p.vanishes {
                self.note(format!(
                    "{}: pre-restart provision {} never arrives",
                    p.group, p.token
                ));
                continue;
            }
            if p.fails {
                self.note(format!("{}: provision {} failed", p.group, p.token));
                continue;
            }
            let excusable = gi.is_some_and(|gi| p.excusable(now, self.deadline_ms(gi)));
            let id = self.new_instance(&p.group, p.lid.clone(), &p.hash, false, excusable);
            if let Some(inst) = self.insts.get_mut(&id) {
                inst.from_orphan = p.orphan;
            }
            if p.orphan {
                if let (Some(gi), true) = (gi, excusable) {
                    self.groups[gi].excess_credit += 1;
                }
                self.note(format!(
                    "{}: pre-restart provision {} arrived late as {id}",
                    p.group, p.token
                ));
            } else {
                self.note(format!(
                    "{}: provisioned {id} ({:?}, {})",
                    p.group, p.lid, p.hash
                ));
            }
        }
        let (due, rest): (Vec<Del>, Vec<Del>) = std::mem::take(&mut self.dels)
            .into_iter()
            .partition(|d| d.finish_at <= now);
        self.dels = rest;
        for d in due {
            if !self.insts.contains_key(&d.id) {
                continue;
            }
            if d.fails {
                if !d.orphan {
                    for g in &mut self.groups {
                        g.exec.destroying.remove(&d.id);
                    }
                }
                self.note(format!("destroy of {} failed", d.id));
            } else {
                self.remove_instance(&d.id);
                self.note(format!("destroyed {}", d.id));
            }
        }
    }

    /// Boots, flaps, sickness and deaths; then every instance's health.
    pub fn health_progress(&mut self) {
        let now = self.now;
        let ids: Vec<String> = self.insts.keys().cloned().collect();
        for id in ids {
            if self.faults {
                if self.rng.chance(0.004) {
                    self.remove_instance(&id);
                    self.note(format!("{id} died"));
                    continue;
                }
                let flap = self
                    .rng
                    .chance(0.015)
                    .then(|| now + self.rng.range(1, 5) * self.step_ms);
                let glitch = self.rng.chance(0.01);
                let sick = self.rng.chance(0.002);
                if let Some(inst) = self.insts.get_mut(&id) {
                    if let Some(until) = flap {
                        inst.flap_until = until;
                    }
                    if glitch {
                        inst.glitch_until = now + self.step_ms;
                    }
                    inst.sick |= sick;
                }
            }
            if let Some(inst) = self.insts.get_mut(&id) {
                inst.health = if now < inst.boot_at {
                    Health::Unknown
                } else if let Some(b) = inst.broken {
                    match b {
                        Broken::Unknown => Health::Unknown,
                        Broken::Unhealthy => Health::Unhealthy,
                    }
                } else if inst.sick || now < inst.flap_until {
                    Health::Unhealthy
                } else if now < inst.glitch_until {
                    Health::Unknown
                } else {
                    Health::Healthy
                };
                if inst.health == Health::Healthy {
                    inst.healthy_since.get_or_insert(now);
                } else {
                    inst.healthy_since = None;
                }
            }
        }
    }

    /// Whether a destroy of the instance is under way (from this controller or a previous one).
    pub fn being_destroyed(&self, id: &str) -> bool {
        self.dels.iter().any(|d| d.id == id)
            || self.groups.iter().any(|g| g.exec.destroying.contains(id))
    }
}
