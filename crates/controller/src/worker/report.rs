//! Saying what a pass decided: events for the stream (`Group.Events`) and the group's gauges
//! (crate::metrics). Transitions are found by comparing the pass's status with the previous
//! pass's, so each is said once.

use infrakit_group::core::{Action, Decision, Status, UpdateState};
use infrakit_sdk::spi::flavor::Health;

use super::state::{Ctx, Group};
use crate::events::What;

/// The events of a leader's pass: what changed in the group's status, and the actions it starts.
pub(crate) fn decided(group: &Group, ctx: &Ctx, previous: Option<&Status>, decision: &Decision) {
    let events = &ctx.events;
    let id = group.id.as_str();
    let now = &decision.status;
    let before_update = previous.and_then(|p| p.update.as_ref());
    if let Some(u) = &now.update {
        let changed =
            before_update.is_none_or(|b| b.state != u.state || b.target_hash != u.target_hash);
        if changed {
            let kind = match u.state {
                UpdateState::Updating => "update-started",
                UpdateState::Paused => "update-paused",
                UpdateState::Completed => "update-completed",
                UpdateState::RollingBack => "rollback-started",
                UpdateState::RolledBack => "rolled-back",
            };
            let resumed = before_update.is_some_and(|b| b.state == UpdateState::Paused)
                && u.state.is_rolling();
            events.emit(
                id,
                What {
                    kind: if resumed { "update-resumed" } else { kind },
                    cause: "rollout",
                    ..What::default()
                },
                u.message.clone(),
            );
        }
    }
    match (
        previous.and_then(|p| p.remediation_stopped.as_ref()),
        &now.remediation_stopped,
    ) {
        (None, Some(why)) => events.emit(
            id,
            What {
                kind: "remediation-capped",
                cause: "remediation",
                ..What::default()
            },
            why.clone(),
        ),
        (Some(_), None) => events.emit(
            id,
            What {
                kind: "remediation-resumed",
                cause: "remediation",
                ..What::default()
            },
            "unhealthy instances are replaced again",
        ),
        _ => {}
    }
    for bad in &now.unhealthy {
        if !previous.is_some_and(|p| p.unhealthy.contains(bad)) {
            events.emit(
                id,
                What {
                    kind: "unhealthy",
                    instance: bad,
                    ..What::default()
                },
                "the flavor judges it unhealthy",
            );
        }
    }
    for (action, cause) in decision.actions.iter().zip(&decision.causes) {
        let cause = cause.as_str();
        match action {
            Action::Provision { logical_id, .. } => events.emit(
                id,
                What {
                    kind: "provision-started",
                    logical_id: logical_id.as_deref().unwrap_or_default(),
                    cause,
                    ..What::default()
                },
                match cause {
                    "fill" => format!("below target ({} of {})", now.present, now.target),
                    "rollout" => "a replacement for the update".to_string(),
                    _ => String::new(),
                },
            ),
            Action::Destroy {
                id: instance,
                reason,
            } => events.emit(
                id,
                What {
                    kind: "destroy-started",
                    instance,
                    cause,
                    ..What::default()
                },
                format!("reason: {reason}"),
            ),
        }
    }
}

/// Sets the group's gauges from a pass (a leader's, or a follower's judging without acting).
pub(crate) fn gauges(group: &Group, status: &Status, health: &[Health], leading: bool) {
    crate::metrics::metrics().observe(&group.id, status, health, leading);
}
