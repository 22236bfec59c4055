//! Rollout, remediation and scale-down policies (`Properties.Policies` of a group spec).
//!
//! Every field is optional. The defaults are InfraKit's own behaviour for updates (replace one instance
//! at a time, wait for it to be healthy, pause when it never is) plus conservative health remediation.
//!
//! ```json
//! {"Update": {"MaxSurge": 2, "MaxUnavailable": 0, "MinReadySeconds": 10,
//!             "HealthyDeadlineSeconds": 300, "FailureAction": "rollback", "MaxFailureRatio": 0.1},
//!  "Remediation": {"UnhealthySeconds": 60, "MaxInFlight": 1, "MaxUnhealthy": "50%",
//!                  "BackoffSeconds": 10, "MaxBackoffSeconds": 300},
//!  "ScaleDown": {"Order": "newest_first"}}
//! ```
//!
//! The types are read by serde (with the path of a bad field named through serde_path_to_error) and
//! their JSON Schema is derived from them (schemars), so the parser, the schema and the stored form
//! are one definition.

use std::fmt;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A count of instances, or a percentage of the group's target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOrPercent {
    Count(u64),
    /// Whole percent (`"25%"` is `Percent(25)`).
    Percent(u64),
}

/// How a percentage becomes a count: surge rounds up, unavailability rounds down (Kubernetes' rule),
/// so that "25%" of a small group still lets an update move without breaking the availability floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    Up,
    Down,
}

impl CountOrPercent {
    /// The count this stands for in a group of `target` instances.
    pub fn resolve(&self, target: u64, rounding: Rounding) -> u64 {
        match *self {
            CountOrPercent::Count(n) => n,
            CountOrPercent::Percent(p) => {
                let scaled = u128::from(target) * u128::from(p);
                let n = match rounding {
                    Rounding::Up => scaled.div_ceil(100),
                    Rounding::Down => scaled / 100,
                };
                u64::try_from(n).unwrap_or(u64::MAX)
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        matches!(self, CountOrPercent::Count(0) | CountOrPercent::Percent(0))
    }

    fn parse(v: &Value) -> Result<CountOrPercent, String> {
        let bad = || format!("expected a count (2) or a percentage (\"25%\"), got {v}");
        match v {
            Value::Number(n) => n.as_u64().map(CountOrPercent::Count).ok_or_else(bad),
            Value::String(s) => {
                let s = s.trim();
                if let Some(p) = s.strip_suffix('%') {
                    p.trim()
                        .parse::<u64>()
                        .map(CountOrPercent::Percent)
                        .map_err(|_| bad())
                } else {
                    s.parse::<u64>()
                        .map(CountOrPercent::Count)
                        .map_err(|_| bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CountOrPercent::Count(n) => write!(f, "{n}"),
            CountOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

// On the wire a count is a number and a percentage a string ("25%"), as users write them.
impl Serialize for CountOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CountOrPercent::Count(n) => s.serialize_u64(*n),
            CountOrPercent::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl JsonSchema for CountOrPercent {
    fn schema_name() -> Cow<'static, str> {
        "CountOrPercent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A count (2) or a percentage of the target size (\"25%\").",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*%?\\s*$"}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CountOrPercent, D::Error> {
        let v = Value::deserialize(d)?;
        CountOrPercent::parse(&v).map_err(serde::de::Error::custom)
    }
}

/// What an update does once more replacements failed than `MaxFailureRatio` allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop replacing and say why; the group still heals. `infrakit group resume` continues.
    #[default]
    Pause,
    /// Replace the new instances with the previous configuration.
    Rollback,
    /// Record the failure and keep going (failed replacements are destroyed and retried).
    Continue,
}

/// Which instances a scale-down removes first once outdated and unhealthy ones are gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleDownOrder {
    /// Keep the instances that have proven themselves longest (Kubernetes' ReplicaSet rule).
    #[default]
    NewestFirst,
    OldestFirst,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct UpdatePolicy {
    /// Extra instances allowed above the target during an update. Default 0.
    pub max_surge: CountOrPercent,
    /// Instances allowed below the target's availability during an update. Default 1.
    pub max_unavailable: CountOrPercent,
    /// How long a new instance must stay healthy before it counts as available. Default 0.
    pub min_ready_seconds: u64,
    /// A replacement not available this long after it appeared is a failed replacement; a provision
    /// pending this long is one too. 0 waits forever. Default 300.
    pub healthy_deadline_seconds: u64,
    /// Default pause.
    pub failure_action: FailureAction,
    /// Failures tolerated, as a fraction of the instances the update replaces, before
    /// `FailureAction` applies. Default 0 (the first failure acts).
    pub max_failure_ratio: f64,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_surge: CountOrPercent::Count(0),
            max_unavailable: CountOrPercent::Count(1),
            min_ready_seconds: 0,
            healthy_deadline_seconds: 300,
            failure_action: FailureAction::Pause,
            max_failure_ratio: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct RemediationPolicy {
    /// Replace an instance reported unhealthy for at least this long. 0 disables remediation.
    /// Default 60.
    pub unhealthy_seconds: u64,
    /// Remediations at once: from choosing an instance until its replacement is available. Default 1.
    pub max_in_flight: u64,
    /// Above this many unhealthy instances the group stops remediating: a meltdown (a network
    /// partition, a broken health check) must not destroy the group. Default "50%".
    pub max_unhealthy: CountOrPercent,
    /// First delay for a logical ID (or a cattle group) whose replacements keep failing. Default 10.
    pub backoff_seconds: u64,
    /// The delay doubles per consecutive failure up to this. Default 300.
    pub max_backoff_seconds: u64,
}

impl Default for RemediationPolicy {
    fn default() -> Self {
        RemediationPolicy {
            unhealthy_seconds: 60,
            max_in_flight: 1,
            max_unhealthy: CountOrPercent::Percent(50),
            backoff_seconds: 10,
            max_backoff_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct ScaleDownPolicy {
    pub order: ScaleDownOrder,
}

/// All the policies of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Policy {
    pub update: UpdatePolicy,
    pub remediation: RemediationPolicy,
    pub scale_down: ScaleDownPolicy,
}

/// The resolved surge and unavailability for one target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub surge: u64,
    pub unavailable: u64,
}

const SECOND_MS: u64 = 1000;
const GHOST_MAX_MS: u64 = 30 * SECOND_MS;

impl Policy {
    /// Parses `Properties.Policies` on its own (absent or `null` means every default) and validates
    /// it; errors name the field's path. A whole group spec is parsed by `crate::spec::parse`.
    pub fn from_json(v: Option<&Value>) -> Result<Policy, String> {
        let policy = match v {
            None | Some(Value::Null) => Policy::default(),
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    format!("Policies: {inner}")
                } else {
                    format!("Policies.{path}: {inner}")
                }
            })?,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.update;
        if u.max_surge.is_zero() && u.max_unavailable.is_zero() {
            return Err("Policies.Update: MaxSurge and MaxUnavailable cannot both be zero: an update \
                        could then never replace an instance (set MaxUnavailable to 1, or MaxSurge to 1)"
                .into());
        }
        if let CountOrPercent::Percent(p) = u.max_unavailable {
            if p > 100 {
                return Err(format!(
                    "Policies.Update.MaxUnavailable: {p}% is more than the whole group"
                ));
            }
        }
        if !(0.0..=1.0).contains(&u.max_failure_ratio) {
            return Err(format!(
                "Policies.Update.MaxFailureRatio: {} is not a fraction between 0 and 1",
                u.max_failure_ratio
            ));
        }
        if u.healthy_deadline_seconds != 0 && u.healthy_deadline_seconds <= u.min_ready_seconds {
            return Err(format!(
                "Policies.Update.HealthyDeadlineSeconds: {} must be greater than MinReadySeconds ({}), \
                 or 0 to wait forever: a new instance cannot become available before it has soaked",
                u.healthy_deadline_seconds, u.min_ready_seconds
            ));
        }
        let r = &self.remediation;
        if r.max_in_flight == 0 {
            return Err(
                "Policies.Remediation.MaxInFlight: must be at least 1 (to turn remediation \
                        off, set UnhealthySeconds to 0)"
                    .into(),
            );
        }
        if let CountOrPercent::Percent(p) = r.max_unhealthy {
            if p > 100 {
                return Err(format!(
                    "Policies.Remediation.MaxUnhealthy: {p}% is more than the whole group"
                ));
            }
        }
        if r.max_backoff_seconds < r.backoff_seconds {
            return Err(format!(
                "Policies.Remediation.MaxBackoffSeconds: {} is less than BackoffSeconds ({})",
                r.max_backoff_seconds, r.backoff_seconds
            ));
        }
        Ok(())
    }

    /// Surge and unavailability for a group of `target` instances. A percentage can round both to
    /// zero on a small group; then one instance may be unavailable, or no update could move.
    pub fn budget(&self, target: u64) -> Budget {
        let surge = self.update.max_surge.resolve(target, Rounding::Up);
        let mut unavailable = self
            .update
            .max_unavailable
            .resolve(target, Rounding::Down)
            .min(target);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        Budget { surge, unavailable }
    }

    /// The most unhealthy instances a group of `target` may have while it still remediates. Rounds
    /// up so that a group of one can still be remediated with the default 50%.
    pub fn max_unhealthy(&self, target: u64) -> u64 {
        self.remediation.max_unhealthy.resolve(target, Rounding::Up)
    }

    pub fn min_ready_ms(&self) -> u64 {
        self.update.min_ready_seconds.saturating_mul(SECOND_MS)
    }

    /// `None` when there is no deadline.
    pub fn healthy_deadline_ms(&self) -> Option<u64> {
        match self.update.healthy_deadline_seconds {
            0 => None,
            s => Some(s.saturating_mul(SECOND_MS)),
        }
    }

    /// How long a provision asked for by a previous process (a *ghost*, see
    /// `Memory::after_restart`) is waited for: the healthy deadline, at most 30 s. A provision request
    /// still unanswered half a minute after its controller died is taken as lost (an instance plugin
    /// in the dead process took it along); one that still lands later is one too many and is
    /// removed like any extra instance.
    pub fn ghost_ms(&self) -> u64 {
        self.healthy_deadline_ms()
            .unwrap_or(GHOST_MAX_MS)
            .min(GHOST_MAX_MS)
    }

    /// `None` when remediation is off.
    pub fn unhealthy_ms(&self) -> Option<u64> {
        match self.remediation.unhealthy_seconds {
            0 => None,
            s => Some(s.saturating_mul(SECOND_MS)),
        }
    }

    /// The wait before the next provision in a slot that failed `failures` times in a row: none after
    /// the first failure (an instance that dies once is simply replaced), then `BackoffSeconds`
    /// doubling up to `MaxBackoffSeconds`.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        if failures < 2 {
            return 0;
        }
        let r = &self.remediation;
        let doublings = (failures - 2).min(32);
        let delay = r.backoff_seconds.saturating_mul(1u64 << doublings);
        delay.min(r.max_backoff_seconds).saturating_mul(SECOND_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_means_defaults_equal_to_one_at_a_time() {
        let p = Policy::from_json(None).expect("defaults");
        assert_eq!(p, Policy::default());
        assert_eq!(
            p.budget(5),
            Budget {
                surge: 0,
                unavailable: 1
            }
        );
        assert_eq!(
            Policy::from_json(Some(&Value::Null)).expect("null"),
            Policy::default()
        );
    }

    #[test]
    fn parses_every_field() {
        let v = json!({
            "Update": {"MaxSurge": "25%", "MaxUnavailable": 0, "MinReadySeconds": 5,
                       "HealthyDeadlineSeconds": 60, "FailureAction": "rollback", "MaxFailureRatio": 0.2},
            "Remediation": {"UnhealthySeconds": 0, "MaxInFlight": 2, "MaxUnhealthy": 3,
                            "BackoffSeconds": 1, "MaxBackoffSeconds": 8},
            "ScaleDown": {"Order": "oldest_first"}
        });
        let p = Policy::from_json(Some(&v)).expect("valid");
        assert_eq!(p.update.max_surge, CountOrPercent::Percent(25));
        assert_eq!(p.update.failure_action, FailureAction::Rollback);
        assert_eq!(p.remediation.max_unhealthy, CountOrPercent::Count(3));
        assert_eq!(p.scale_down.order, ScaleDownOrder::OldestFirst);
        assert_eq!(
            p.budget(10),
            Budget {
                surge: 3,
                unavailable: 0
            }
        );
        assert_eq!(p.unhealthy_ms(), None);
        // The serde form round-trips through the hand parser.
        let back = serde_json::to_value(&p).expect("serialize");
        assert_eq!(Policy::from_json(Some(&back)).expect("round trip"), p);
        let de: Policy = serde_json::from_value(back).expect("serde");
        assert_eq!(de, p);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"Update": {"MaxSurg": 1}}),
                "Policies.Update.MaxSurg: unknown field",
            ),
            (json!({"Updates": {}}), "Policies.Updates: unknown field"),
            (
                json!({"Update": {"MinReadySeconds": "x"}}),
                "Policies.Update.MinReadySeconds",
            ),
            (
                json!({"Update": {"MaxSurge": "abc"}}),
                "Policies.Update.MaxSurge",
            ),
            (
                json!({"Update": {"MaxSurge": -1}}),
                "Policies.Update.MaxSurge",
            ),
            (
                json!({"Update": {"FailureAction": "explode"}}),
                "Policies.Update.FailureAction",
            ),
            (
                json!({"Update": {"MaxSurge": 0, "MaxUnavailable": "0%"}}),
                "cannot both be zero",
            ),
            (
                json!({"Update": {"MaxFailureRatio": 2}}),
                "Policies.Update.MaxFailureRatio",
            ),
            (
                json!({"Update": {"MinReadySeconds": 30, "HealthyDeadlineSeconds": 30}}),
                "HealthyDeadlineSeconds",
            ),
            (
                json!({"Remediation": {"MaxInFlight": 0}}),
                "Policies.Remediation.MaxInFlight",
            ),
            (
                json!({"Remediation": {"MaxUnhealthy": "150%"}}),
                "Policies.Remediation.MaxUnhealthy",
            ),
            (
                json!({"ScaleDown": {"Order": "random"}}),
                "Policies.ScaleDown.Order",
            ),
            (json!([1]), "Policies"),
        ];
        for (v, want) in cases {
            let err = Policy::from_json(Some(&v)).expect_err("must be refused");
            assert!(err.contains(want), "{v}: {err} (wanted {want})");
        }
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        let surge = CountOrPercent::Percent(25);
        assert_eq!(surge.resolve(3, Rounding::Up), 1);
        assert_eq!(surge.resolve(3, Rounding::Down), 0);
        let p = Policy {
            update: UpdatePolicy {
                max_surge: CountOrPercent::Percent(10),
                max_unavailable: CountOrPercent::Percent(10),
                ..UpdatePolicy::default()
            },
            ..Policy::default()
        };
        // 10% of 5 is one surge (up) and zero unavailable (down).
        assert_eq!(
            p.budget(5),
            Budget {
                surge: 1,
                unavailable: 0
            }
        );
        // 10% of 0 rounds both to zero: one may be unavailable so updates still move.
        assert_eq!(
            p.budget(0),
            Budget {
                surge: 0,
                unavailable: 1
            }
        );
        assert_eq!(Policy::default().max_unhealthy(1), 1);
        assert_eq!(Policy::default().max_unhealthy(10), 5);
    }

    #[test]
    fn backoff_doubles_after_the_second_failure() {
        let p = Policy::default();
        assert_eq!(p.backoff_ms(1), 0);
        assert_eq!(p.backoff_ms(2), 10_000);
        assert_eq!(p.backoff_ms(3), 20_000);
        assert_eq!(p.backoff_ms(40), 300_000);
    }
}
