//! Bookkeeping: folds one observation into memory (ages, health streaks, finished and failed
//! provisions) and reports the events the rules react to.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use infrakit_spi::flavor::Health;
use infrakit_spi::instance::LogicalId;

use super::memory::{InflightProvision, InstanceMemory, Memory, OwedReplacement};
use super::types::{Cause, Observed};

/// (logical ID, config hash): what a provision promises and an instance carries.
type SlotHash<'a> = (Option<&'a str>, Option<&'a str>);

/// What changed since the previous decision.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Provisions that left `pending` (or never entered it) without an instance to show for it.
    pub failed_provisions: Vec<InflightProvision>,
    /// Instances that became available for the first time (id, logical ID).
    pub newly_ready: Vec<(String, Option<LogicalId>)>,
}

pub(crate) fn record(
    mem: &mut Memory,
    observed: &Observed,
    now: u64,
    min_ready_ms: u64,
    ghost_ms: u64,
) -> Events {
    let mut events = Events::default();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for inst in &observed.instances {
        if !seen.insert(inst.id.as_str()) {
            continue; // a describe that lists an instance twice
        }
        let m = mem
            .instances
            .entry(inst.id.clone())
            .or_insert_with(|| InstanceMemory {
                first_seen_ms: now,
                ..InstanceMemory::default()
            });
        m.logical_id.clone_from(&inst.logical_id);
        match inst.health {
            Health::Healthy => {
                m.healthy_since_ms.get_or_insert(now);
                m.unhealthy_since_ms = None;
            }
            Health::Unhealthy => {
                m.healthy_since_ms = None;
                m.unhealthy_since_ms.get_or_insert(now);
            }
            // "Cannot tell": not available, but not evidence of sickness either.
            Health::Unknown => m.healthy_since_ms = None,
        }
        let ready = m
            .healthy_since_ms
            .is_some_and(|t| now >= t.saturating_add(min_ready_ms));
        if ready && !m.ever_ready {
            m.ever_ready = true;
            events
                .newly_ready
                .push((inst.id.clone(), inst.logical_id.clone()));
        }
    }

    // Forget instances that are gone. A remediated one leaves a debt until its replacement is up.
    let gone: Vec<String> = mem
        .instances
        .keys()
        .filter(|id| !seen.contains(id.as_str()) && !observed.destroying.contains(*id))
        .cloned()
        .collect();
    for id in gone {
        if let Some(m) = mem.instances.remove(&id) {
            if let Some(doom) = m.doomed.filter(|d| d.cause == Cause::Remediation) {
                mem.owed.push(OwedReplacement {
                    logical_id: m.logical_id,
                    since_ms: doom.at_ms,
                });
            }
        }
    }

    resolve_provisions(mem, observed, &mut events, now, ghost_ms);
    events
}

/// Matches the provisions remembered in flight to the pending ones observed: by token once known,
/// else (one asked for last round) by logical ID and hash. Those no longer pending finished (an
/// unclaimed instance with the same logical ID and hash, first seen since the provision started) or
/// failed.
fn resolve_provisions(
    mem: &mut Memory,
    observed: &Observed,
    events: &mut Events,
    now: u64,
    ghost_ms: u64,
) {
    let inflight = std::mem::take(&mut mem.inflight);
    let mut matched = vec![false; inflight.len()];
    let by_token: BTreeMap<(u64, u64), usize> = inflight
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.token.map(|t| ((t, p.started_ms), i)))
        .collect();
    let mut asked: BTreeMap<(Option<&str>, &str), VecDeque<usize>> = BTreeMap::new();
    for (i, p) in inflight
        .iter()
        .enumerate()
        .filter(|(_, p)| p.token.is_none() && !p.ghost)
    {
        asked
            .entry((p.logical_id.as_deref(), p.config_hash.as_str()))
            .or_default()
            .push_back(i);
    }
    let mut still = Vec::with_capacity(observed.pending.len());
    for p in &observed.pending {
        let found = match by_token.get(&(p.token, p.started_ms)) {
            Some(&i) => Some(i),
            None => asked
                .get_mut(&(p.logical_id.as_deref(), p.config_hash.as_str()))
                .and_then(VecDeque::pop_front),
        };
        let serial = match found {
            Some(i) => {
                matched[i] = true;
                inflight[i].serial
            }
            None => {
                // Not asked for by this memory (it is older than the executor's state).
                mem.next_serial += 1;
                mem.next_serial
            }
        };
        still.push(InflightProvision {
            serial,
            token: Some(p.token),
            logical_id: p.logical_id.clone(),
            config_hash: p.config_hash.clone(),
            started_ms: p.started_ms,
            ghost: false,
            expires_ms: None,
        });
    }
    let mut finished: Vec<&InflightProvision> = inflight
        .iter()
        .zip(&matched)
        .filter(|(_, m)| !**m)
        .map(|(p, _)| p)
        .collect();
    if !finished.is_empty() {
        // This process's provisions before ghosts (a ghost must not take the instance of a provision
        // that just finished, or that provision would look failed and the ghost's own instance,
        // arriving later, would be one too many); earliest first within each, so that an early
        // provision is not starved by a later one discarding the instances too old for it.
        finished.sort_by_key(|p| (p.ghost, p.started_ms, p.serial));
        // Unclaimed instances by (logical ID, hash), oldest last (pop() takes the oldest).
        let mut candidates: BTreeMap<SlotHash, Vec<(u64, &str)>> = BTreeMap::new();
        for inst in &observed.instances {
            if let Some(m) = mem.instances.get(&inst.id).filter(|m| !m.claimed) {
                candidates
                    .entry((inst.logical_id.as_deref(), inst.config_hash.as_deref()))
                    .or_default()
                    .push((m.first_seen_ms, inst.id.as_str()));
            }
        }
        for list in candidates.values_mut() {
            list.sort_unstable_by(|a, b| b.cmp(a));
        }
        let mut claims = Vec::new();
        for p in finished {
            let key = (p.logical_id.as_deref(), Some(p.config_hash.as_str()));
            let found = candidates.get_mut(&key).and_then(|list| {
                while let Some((first_seen, id)) = list.pop() {
                    if first_seen >= p.started_ms {
                        return Some(id);
                    }
                }
                None
            });
            match found {
                Some(id) => claims.push((id.to_string(), p.started_ms, p.failure_key())),
                // A ghost is waited for until its deadline, then forgotten: its fate is unknown.
                None if p.ghost => {
                    if now < p.ghost_expiry(ghost_ms) {
                        still.push(p.clone());
                    }
                }
                None => events.failed_provisions.push(p.clone()),
            }
        }
        for (id, started, key) in claims {
            if let Some(m) = mem.instances.get_mut(&id) {
                m.claimed = true;
                m.born_ms = Some(started);
                m.provision_key = Some(key);
            }
        }
    }
    mem.inflight = still;
}

/// Remembers the provisions a decision asks for, to follow them into `pending` and out of it.
pub(crate) fn asked(mem: &mut Memory, logical_id: Option<&str>, config_hash: &str, now: u64) {
    mem.next_serial += 1;
    mem.inflight.push(InflightProvision {
        serial: mem.next_serial,
        token: None,
        logical_id: logical_id.map(str::to_string),
        config_hash: config_hash.to_string(),
        started_ms: now,
        ghost: false,
        expires_ms: None,
    });
}
