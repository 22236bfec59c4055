//! Classification: which observed instances are members of the group, which must go, and the counts
//! every rule works from.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use infrakit_spi::flavor::Health;
use infrakit_spi::instance::DestroyReason;

use super::memory::Memory;
use super::policy::ScaleDownOrder;
use super::types::{Cause, Desired, Observed, ObservedInstance, PendingProvision};

/// One present instance with what the controller knows about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inst<'a> {
    pub obs: &'a ObservedInstance,
    /// Carries the applied configuration.
    pub current: bool,
    /// Healthy for at least MinReadySeconds.
    pub ready: bool,
    pub first_seen: u64,
    /// When its provision started (if known), else when first seen: healthy deadlines run from here.
    pub born: u64,
    pub unhealthy_since: Option<u64>,
}

impl<'a> Inst<'a> {
    pub fn id(&self) -> &'a str {
        &self.obs.id
    }

    pub fn lid(&self) -> Option<&'a str> {
        self.obs.logical_id.as_deref()
    }

    pub fn healthy(&self) -> bool {
        self.obs.health == Health::Healthy
    }

    /// Whether destroying it may cost availability. Healthy but not yet soaked counts too: the
    /// controller's soak clock may be younger than the truth (after a restart), so it never treats a
    /// healthy instance as free to destroy.
    pub fn may_serve(&self) -> bool {
        self.ready || self.healthy()
    }
}

/// Worst first: unhealthy, then unknown, then healthy.
pub(crate) fn health_rank(h: Health) -> u8 {
    match h {
        Health::Unhealthy => 0,
        Health::Unknown => 1,
        Health::Healthy => 2,
    }
}

/// Up to `limit` of `candidates` to give up, in [`removal_order`]. An instance that may serve
/// takes one of `spare` (how many serving ones can go without breaking the availability floor);
/// when none is left, only instances that serve nobody can still be chosen.
pub(crate) fn pick_removals<'v, 'a>(
    mut candidates: Vec<&'v Inst<'a>>,
    order: ScaleDownOrder,
    limit: u64,
    mut spare: u64,
) -> Vec<&'v Inst<'a>> {
    candidates.sort_by(|a, b| removal_order(a, b, order));
    let mut chosen = Vec::new();
    for m in candidates {
        if chosen.len() as u64 == limit {
            break;
        }
        if m.may_serve() {
            if spare == 0 {
                continue;
            }
            spare -= 1;
        }
        chosen.push(m);
    }
    chosen
}

/// The order in which instances are given up, first to go first: outdated, then (among equals)
/// the members that do not lead their cluster, then unhealthy, then not yet available, then by age
/// as the policy says.
pub(crate) fn removal_order(a: &Inst, b: &Inst, order: ScaleDownOrder) -> Ordering {
    a.current
        .cmp(&b.current)
        .then(a.obs.leads.cmp(&b.obs.leads))
        .then(health_rank(a.obs.health).cmp(&health_rank(b.obs.health)))
        .then(a.ready.cmp(&b.ready))
        .then(match order {
            ScaleDownOrder::NewestFirst => b.first_seen.cmp(&a.first_seen),
            ScaleDownOrder::OldestFirst => a.first_seen.cmp(&b.first_seen),
        })
        .then(a.id().cmp(b.id()))
}

/// Which of a pet's instances stays: an available one first (destroying the only serving instance to
/// keep an unproven one would break the availability floor; an outdated survivor is then rolled),
/// then the current one, the healthiest, the oldest.
fn keeper_order(a: &Inst, b: &Inst) -> Ordering {
    b.ready
        .cmp(&a.ready)
        .then(b.current.cmp(&a.current))
        .then(health_rank(b.obs.health).cmp(&health_rank(a.obs.health)))
        .then(a.first_seen.cmp(&b.first_seen))
        .then(a.id().cmp(b.id()))
}

pub(crate) struct View<'a> {
    pub applied: String,
    /// Cattle: every present instance not being destroyed. Pets: the keeper of each listed ID.
    pub members: Vec<Inst<'a>>,
    /// Decided before, still present, not being destroyed now: destroy again.
    pub retry: Vec<(Inst<'a>, DestroyReason)>,
    /// Duplicates and strays (pets only).
    pub extras: Vec<(Inst<'a>, Cause)>,
    /// Pending provisions of the applied configuration (for listed IDs, with pets).
    pub pending_current: Vec<&'a PendingProvision>,
    /// Pending provisions of another configuration (for listed IDs, with pets), ghosts included.
    pub pending_outdated: u64,
    /// Provisions of the applied configuration asked for by a previous process (ghosts).
    pub ghosts_current: u64,
    /// Pets: logical IDs with anything at all (instance, pending provision, destroy in flight).
    pub busy_ids: BTreeSet<&'a str>,
    /// Everything that exists or will: instances (being destroyed or not) plus pending provisions.
    pub physical: u64,
    /// Instances being destroyed (in flight).
    pub destroying: u64,
}

impl View<'_> {
    /// Provisions of the applied configuration on their way (pending and ghosts).
    pub fn pending_new(&self) -> u64 {
        self.pending_current.len() as u64 + self.ghosts_current
    }

    pub fn outdated_members(&self) -> usize {
        self.members.iter().filter(|m| !m.current).count()
    }

    /// Nothing left to replace: no outdated member and no outdated provision on its way.
    pub fn all_current(&self) -> bool {
        self.pending_outdated == 0 && self.members.iter().all(|m| m.current)
    }
}

pub(crate) fn classify<'a>(
    desired: &'a Desired,
    observed: &'a Observed,
    mem: &Memory,
    applied: &str,
    now: u64,
    min_ready_ms: u64,
) -> View<'a> {
    let ids: BTreeSet<&str> = desired.allocation.logical_ids().into_iter().collect();
    let pets = desired.allocation.is_pets();
    let mut view = View {
        applied: applied.to_string(),
        members: Vec::new(),
        retry: Vec::new(),
        extras: Vec::new(),
        pending_current: Vec::new(),
        pending_outdated: 0,
        ghosts_current: 0,
        busy_ids: BTreeSet::new(),
        physical: 0,
        destroying: 0,
    };
    let mut slots: BTreeMap<&str, Vec<Inst>> = BTreeMap::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for obs in &observed.instances {
        if !seen.insert(obs.id.as_str()) {
            continue;
        }
        if let Some(id) = obs.logical_id.as_deref() {
            view.busy_ids.insert(id);
        }
        if observed.destroying.contains(&obs.id) {
            continue;
        }
        let m = mem.instances.get(&obs.id);
        let inst = Inst {
            obs,
            current: obs.config_hash.as_deref() == Some(applied),
            ready: m.and_then(|m| m.healthy_since_ms).is_some_and(|t| {
                obs.health == Health::Healthy && now >= t.saturating_add(min_ready_ms)
            }),
            first_seen: m.map_or(now, |m| m.first_seen_ms),
            born: m.map_or(now, |m| m.born_ms.unwrap_or(m.first_seen_ms)),
            unhealthy_since: m.and_then(|m| m.unhealthy_since_ms),
        };
        if let Some(doom) = m.and_then(|m| m.doomed) {
            view.retry.push((inst, doom.reason));
            continue;
        }
        if !pets {
            view.members.push(inst);
            continue;
        }
        match obs.logical_id.as_deref() {
            Some(id) if ids.contains(id) => slots.entry(id).or_default().push(inst),
            _ => view.extras.push((inst, Cause::Stray)),
        }
    }
    for (_, mut insts) in slots {
        insts.sort_by(keeper_order);
        let mut it = insts.into_iter();
        if let Some(keeper) = it.next() {
            view.members.push(keeper);
        }
        view.extras.extend(it.map(|d| (d, Cause::Duplicate)));
    }
    // Instances being destroyed that the describe no longer lists may still exist.
    let mut unlisted = 0u64;
    for id in &observed.destroying {
        if !seen.contains(id.as_str()) {
            unlisted += 1;
            if let Some(lid) = mem.instances.get(id).and_then(|m| m.logical_id.as_deref()) {
                if let Some(listed) = ids.get(lid) {
                    view.busy_ids.insert(listed);
                }
            }
        }
    }
    for p in &observed.pending {
        if let Some(id) = p.logical_id.as_deref() {
            view.busy_ids.insert(id);
        }
        let counts = !pets || p.logical_id.as_deref().is_some_and(|id| ids.contains(id));
        if !counts {
            continue; // will land as a stray
        }
        if p.config_hash == applied {
            view.pending_current.push(p);
        } else {
            view.pending_outdated += 1;
        }
    }
    let mut ghosts = 0u64;
    for p in mem.inflight.iter().filter(|p| p.ghost) {
        ghosts += 1;
        let listed = p.logical_id.as_deref().and_then(|l| ids.get(l).copied());
        if let Some(id) = listed {
            view.busy_ids.insert(id);
        }
        if pets && listed.is_none() {
            continue;
        }
        if p.config_hash == applied {
            view.ghosts_current += 1;
        } else {
            view.pending_outdated += 1;
        }
    }
    view.destroying = observed.destroying.len() as u64;
    view.physical = seen.len() as u64 + unlisted + observed.pending.len() as u64 + ghosts;
    view
}
