//! What committing a spec would do, in words and as a structured plan (`commit --pretend`).

use std::collections::BTreeSet;

use infrakit_spi::group::Plan;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::hash::write_canonical;
use super::memory::Memory;
use super::rollout;
use super::types::{Cause, Desired, Observed};
use super::view::{classify, removal_order, Inst};

/// The whole way from the observed state to the converged group, in InfraKit's order: remove what
/// does not belong, shrink, roll, grow. Unlike [`super::decide`] it ignores pacing (budgets, health,
/// backoff): it says where the group ends up, not how many steps it takes.
pub fn preview(desired: &Desired, observed: &Observed, memory: &Memory) -> (String, Plan) {
    let mut mem = memory.clone();
    // As if committed now: a new configuration supersedes the running update.
    rollout::follow_commit(&mut mem, desired, observed, 0);
    let applied = rollout::applied_hash(&mem, desired);
    // Far in the future: every healthy instance counts as soaked, which only matters for ordering.
    let view = classify(
        desired,
        observed,
        &mem,
        &applied,
        u64::MAX,
        desired.policy.min_ready_ms(),
    );
    let target = desired.allocation.target();

    let duplicates: Vec<String> = extras_of(&view.extras, Cause::Duplicate);
    let strays: Vec<String> = extras_of(&view.extras, Cause::Stray);
    let retry: Vec<String> = view.retry.iter().map(|(i, _)| i.id().to_string()).collect();

    let mut members: Vec<&Inst> = view.members.iter().collect();
    members.sort_by(|a, b| removal_order(a, b, desired.policy.scale_down.order));
    let excess = members
        .len()
        .saturating_sub(usize::try_from(target).unwrap_or(usize::MAX));
    let (shrunk, kept) = members.split_at(excess);
    let shrink: Vec<String> = shrunk.iter().map(|m| m.id().to_string()).collect();
    let replace: Vec<String> = kept
        .iter()
        .filter(|m| !m.current)
        .map(|m| m.id().to_string())
        .collect();
    let keep = kept.iter().filter(|m| m.current).count() as u64;

    let mut create_ids: Vec<String> = Vec::new();
    let create = if desired.allocation.is_pets() {
        let mut filled: BTreeSet<&str> = view.members.iter().filter_map(|m| m.lid()).collect();
        filled.extend(
            observed
                .pending
                .iter()
                .filter_map(|p| p.logical_id.as_deref()),
        );
        for id in desired.allocation.logical_ids() {
            if !filled.contains(id) {
                create_ids.push(id.to_string());
            }
        }
        create_ids.len() as u64
    } else {
        let pending = view.pending_new() + view.pending_outdated;
        target.saturating_sub(kept.len() as u64 + pending)
    };

    let mut clauses: Vec<String> = Vec::new();
    if !retry.is_empty() {
        clauses.push(format!(
            "finishing the destruction of {}",
            instances(retry.len())
        ));
    }
    if !duplicates.is_empty() {
        clauses.push(format!(
            "destroying {} claiming a logical ID twice",
            instances(duplicates.len())
        ));
    }
    if !strays.is_empty() {
        clauses.push(format!(
            "destroying {} whose logical ID is not in the list",
            instances(strays.len())
        ));
    }
    if !shrink.is_empty() {
        clauses.push(format!(
            "removing {} to reach {target}",
            instances(shrink.len())
        ));
    }
    if !replace.is_empty() {
        clauses.push(format!(
            "performing a rolling update on {}",
            instances(replace.len())
        ));
    }
    if !create_ids.is_empty() {
        clauses.push(format!(
            "adding {} for logical IDs {}",
            instances(create_ids.len()),
            create_ids.join(", ")
        ));
    } else if create > 0 {
        clauses.push(format!(
            "adding {} to reach {target}",
            instances(create as usize)
        ));
    }
    let text = match clauses.split_first() {
        None if target == 0 => "No changes: the group is empty".to_string(),
        None => format!(
            "No changes: {} present and current",
            instances(target as usize)
        ),
        Some((first, rest)) => {
            let mut s = capitalize(first);
            for c in rest {
                s.push_str(", then ");
                s.push_str(c);
            }
            s
        }
    };

    let mut destroy = retry;
    destroy.extend(duplicates);
    destroy.extend(strays);
    destroy.extend(shrink);
    let plan = Plan {
        version: plan_version(desired, observed),
        create,
        create_logical_ids: create_ids,
        replace,
        destroy,
        keep,
        target,
    };
    (text, plan)
}

fn extras_of(extras: &[(Inst, Cause)], cause: Cause) -> Vec<String> {
    extras
        .iter()
        .filter(|(_, c)| *c == cause)
        .map(|(i, _)| i.id().to_string())
        .collect()
}

fn instances(n: usize) -> String {
    if n == 1 {
        "1 instance".to_string()
    } else {
        format!("{n} instances")
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Changes whenever the spec or the observed instances (their IDs, logical IDs, configurations) or
/// pending provisions change; health is left out, it flaps without changing what a commit does.
/// `commit --expect VERSION` compares it to refuse a plan made from a state that is gone.
pub fn plan_version(desired: &Desired, observed: &Observed) -> String {
    let mut instances: Vec<_> = observed
        .instances
        .iter()
        .filter(|i| !observed.destroying.contains(&i.id))
        .map(|i| json!([i.id, i.logical_id, i.config_hash]))
        .collect();
    instances.sort_by_key(|v| v.to_string());
    let mut pending: Vec<_> = observed
        .pending
        .iter()
        .map(|p| json!([p.logical_id, p.config_hash]))
        .collect();
    pending.sort_by_key(|v| v.to_string());
    let state = json!({
        "group": desired.group,
        "allocation": serde_json::to_value(&desired.allocation).unwrap_or_default(),
        "hash": desired.config_hash,
        "policy": serde_json::to_value(&desired.policy).unwrap_or_default(),
        "instances": instances,
        "pending": pending,
    });
    let mut text = String::new();
    write_canonical(&state, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8])
}
