//! What an instance plugin says about the backend's own view of an instance, in the properties
//! of a description (`DescribeInstances` with properties), and what flavors read to judge health.
//!
//! The names follow Docker's container state (`State`, `Running`, `ExitCode`, `Health`), which
//! instance-docker reports; any instance plugin may report them for its own backend (a VM's power
//! state as `State`/`Running`). All are optional: a plugin that says nothing leaves health to the
//! flavor's own checks.

use serde_json::Value;

/// `State`: `created`, `running`, `restarting`, `exited`, `paused`, `dead`.
pub const STATE: &str = "State";
/// `Running`: a boolean.
pub const RUNNING: &str = "Running";
/// `ExitCode`: the last exit code, an integer.
pub const EXIT_CODE: &str = "ExitCode";
/// `Health`: the backend's own health check, `none`, `starting`, `healthy` or `unhealthy`.
pub const HEALTH: &str = "Health";

/// The backend state read from a description's properties. Values of the wrong type read as
/// absent: a plugin that reports something else under these names is not misjudged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendState<'a> {
    pub state: Option<&'a str>,
    pub running: Option<bool>,
    pub exit_code: Option<i64>,
    pub health: Option<&'a str>,
}

impl<'a> BackendState<'a> {
    pub fn read(properties: Option<&'a Value>) -> BackendState<'a> {
        let Some(p) = properties else {
            return BackendState::default();
        };
        BackendState {
            state: p.get(STATE).and_then(Value::as_str),
            running: p.get(RUNNING).and_then(Value::as_bool),
            exit_code: p.get(EXIT_CODE).and_then(Value::as_i64),
            health: p.get(HEALTH).and_then(Value::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_docker_state_and_ignores_wrong_types() {
        let v = json!({"State": "exited", "Running": false, "ExitCode": 3, "Health": "none"});
        let s = BackendState::read(Some(&v));
        assert_eq!(s.state, Some("exited"));
        assert_eq!(s.running, Some(false));
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.health, Some("none"));
        let odd = json!({"State": {"exited": true}, "Running": "no", "Health": 0});
        assert_eq!(BackendState::read(Some(&odd)), BackendState::default());
        assert_eq!(BackendState::read(None), BackendState::default());
    }
}
