//! Operator commands on an update: pause, resume, rollback.

use super::memory::Memory;
use super::types::{Command, Desired, UpdateState};

/// Applies `cmd` to the group's update and returns the memory to persist (then decide again). The
/// error says why the command does not apply, in words for the person who typed it.
pub fn command(
    memory: &Memory,
    cmd: Command,
    desired: &Desired,
    now_ms: u64,
) -> Result<Memory, String> {
    let group = &desired.group;
    let mut mem = memory.clone();
    let Some(u) = mem.update.as_mut() else {
        return Err(format!(
            "group {group} has no update to {}: it has never been updated",
            verb(cmd)
        ));
    };
    if u.target_hash != desired.config_hash {
        return Err(format!(
            "group {group} was just committed with a new configuration that the controller has not acted on \
             yet; try again in a moment"
        ));
    }
    match (cmd, u.state) {
        (Command::Pause, UpdateState::Updating | UpdateState::RollingBack) => {
            u.state = UpdateState::Paused;
            u.message = format!(
                "{} paused by command; `infrakit group resume {group}` continues",
                if u.rolling_back { "rollback" } else { "update" }
            );
        }
        (Command::Pause, UpdateState::Paused) => return Err(format!("the update of group {group} is already paused")),
        (Command::Pause, UpdateState::Completed | UpdateState::RolledBack) => {
            return Err(format!("group {group} has no running update to pause: {}", u.message))
        }
        (Command::Resume, UpdateState::Paused) => {
            let (state, what) = if u.rolling_back {
                (UpdateState::RollingBack, "rollback")
            } else {
                (UpdateState::Updating, "update")
            };
            let back = u.rolling_back;
            u.new_phase(state, back, now_ms, format!("{what} resumed by command"));
        }
        (Command::Resume, UpdateState::RolledBack) => {
            // Rolled back on failure, the operator fixed the cause: roll forward again.
            u.new_phase(UpdateState::Updating, false, now_ms, "rolling forward again by command".into());
        }
        (Command::Resume, UpdateState::Updating | UpdateState::RollingBack) => {
            return Err(format!("the update of group {group} is not paused"))
        }
        (Command::Resume, UpdateState::Completed) => {
            return Err(format!("group {group} has nothing to resume: {}", u.message))
        }
        (Command::Rollback, _) if u.rolling_back => {
            return Err(format!("group {group} is already rolling back (or rolled back): {}", u.message))
        }
        (Command::Rollback, _) => match u.previous_hash.clone() {
            Some(prev) if prev != u.target_hash => {
                let msg = format!("rolling back to {} by command", prev.get(..12).unwrap_or(&prev));
                u.new_phase(UpdateState::RollingBack, true, now_ms, msg);
            }
            _ => {
                return Err(format!(
                    "group {group} has no previous configuration to roll back to (it was adopted, or never \
                     converged before this update); commit the spec you want instead"
                ))
            }
        },
    }
    Ok(mem)
}

fn verb(cmd: Command) -> &'static str {
    match cmd {
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Rollback => "roll back",
    }
}
