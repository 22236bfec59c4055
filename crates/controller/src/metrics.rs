//! The group controller's Prometheus metrics (docs/metrics.md lists them), registered once per
//! process in the SDK's registry and served on `GET /metrics` with the protocol's own.
//! Gauges are set from each pass's status (on followers too, which judge but do not act), so a
//! scrape reads what `infrakit group describe` would say.

use std::sync::OnceLock;
use std::time::Duration;

use infrakit_group::core::Status;
use infrakit_sdk::metrics::{label, latency_histogram, register, Labels};
use infrakit_sdk::spi::flavor::Health;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

pub struct Metrics {
    instances: Family<Labels, Gauge>,
    health: Family<Labels, Gauge>,
    target: Family<Labels, Gauge>,
    converged: Family<Labels, Gauge>,
    leading: Family<Labels, Gauge>,
    update_total: Family<Labels, Gauge>,
    update_done: Family<Labels, Gauge>,
    update_state: Family<Labels, Gauge>,
    remediation_stopped: Family<Labels, Gauge>,
    actions: Family<Labels, Counter>,
    action_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pass_seconds: Histogram,
    errors: Family<Labels, Counter>,
}

const UPDATE_STATES: [&str; 5] = [
    "updating",
    "paused",
    "completed",
    "rolling_back",
    "rolled_back",
];

fn group(id: &str) -> Labels {
    vec![label("group", id)]
}

fn with(mut labels: Labels, name: &str, value: &str) -> Labels {
    labels.push(label(name, value));
    labels
}

/// The process's controller metrics (registered on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            instances: Family::default(),
            health: Family::default(),
            target: Family::default(),
            converged: Family::default(),
            leading: Family::default(),
            update_total: Family::default(),
            update_done: Family::default(),
            update_state: Family::default(),
            remediation_stopped: Family::default(),
            actions: Family::default(),
            action_seconds: Family::new_with_constructor(latency_histogram),
            pass_seconds: latency_histogram(),
            errors: Family::default(),
        };
        register("group_instances", "Instances of a group by state: present (members), pending (provisions on their way), destroying, current (carrying the applied configuration), available (healthy for MinReadySeconds)", m.instances.clone());
        register("group_instances_health", "Members of a group by the flavor's last verdict: healthy, unhealthy, unknown", m.health.clone());
        register("group_target", "The group's target size", m.target.clone());
        register("group_converged", "1 when the group has converged (all present, current, nothing pending), else 0", m.converged.clone());
        register("group_leading", "1 when this controller acts on the group (the leader), 0 when it stands by", m.leading.clone());
        register("group_update_instances", "Instances the group's current update (or rollback) replaces", m.update_total.clone());
        register("group_update_done", "Instances the group's current update (or rollback) has replaced", m.update_done.clone());
        register("group_update_state", "1 for the state the group's last update is in (updating, paused, completed, rolling_back, rolled_back)", m.update_state.clone());
        register("group_remediation_stopped", "1 while remediation of unhealthy instances is held back by MaxUnhealthy", m.remediation_stopped.clone());
        register("group_actions", "Actions carried out, by group, kind (provision, destroy) and outcome (ok, failed)", m.actions.clone());
        register("group_action_duration_seconds", "How long an action took, from its start (waiting for a parallelism slot included) to its outcome, by kind", m.action_seconds.clone());
        register("group_pass_duration_seconds", "How long one reconcile pass took (observe, judge, decide, write ahead, start the actions)", m.pass_seconds.clone());
        register("group_errors", "Passes that ended in an error (a plugin unreachable, a store write refused, ...), by group", m.errors.clone());
        m
    })
}

impl Metrics {
    /// Sets the group's gauges from a pass's status.
    pub fn observe(&self, id: &str, status: &Status, health: &[Health], leading: bool) {
        let g = group(id);
        for (state, n) in [
            ("present", status.present),
            ("pending", status.pending),
            ("destroying", status.destroying),
            ("current", status.current),
            ("available", status.available),
        ] {
            self.instances
                .get_or_create(&with(g.clone(), "state", state))
                .set(n as i64);
        }
        let (mut healthy, mut unhealthy, mut unknown) = (0i64, 0i64, 0i64);
        for verdict in health {
            match verdict {
                Health::Healthy => healthy += 1,
                Health::Unhealthy => unhealthy += 1,
                _ => unknown += 1,
            }
        }
        for (h, n) in [
            ("healthy", healthy),
            ("unhealthy", unhealthy),
            ("unknown", unknown),
        ] {
            self.health
                .get_or_create(&with(g.clone(), "health", h))
                .set(n);
        }
        self.target.get_or_create(&g).set(status.target as i64);
        self.converged
            .get_or_create(&g)
            .set(i64::from(status.converged));
        self.leading.get_or_create(&g).set(i64::from(leading));
        let update = status.update.as_ref();
        self.update_total
            .get_or_create(&g)
            .set(update.map_or(0, |u| u.total as i64));
        self.update_done
            .get_or_create(&g)
            .set(update.map_or(0, |u| u.done as i64));
        let state = update.map(|u| u.state.as_str());
        for s in UPDATE_STATES {
            self.update_state
                .get_or_create(&with(g.clone(), "state", s))
                .set(i64::from(state == Some(s)));
        }
        self.remediation_stopped
            .get_or_create(&g)
            .set(i64::from(status.remediation_stopped.is_some()));
    }

    /// An action's outcome.
    pub fn action(&self, id: &str, kind: &str, ok: bool, took: Duration) {
        let labels = with(
            with(group(id), "kind", kind),
            "outcome",
            if ok { "ok" } else { "failed" },
        );
        self.actions.get_or_create(&labels).inc();
        self.action_seconds
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .observe(took.as_secs_f64());
    }

    pub fn pass(&self, took: Duration) {
        self.pass_seconds.observe(took.as_secs_f64());
    }

    pub fn error(&self, id: &str) {
        self.errors.get_or_create(&group(id)).inc();
    }

    /// A group no longer managed here: its gauges go (counters stay, as Prometheus expects).
    pub fn forget(&self, id: &str) {
        let g = group(id);
        for family in [
            &self.target,
            &self.converged,
            &self.leading,
            &self.update_total,
            &self.update_done,
            &self.remediation_stopped,
        ] {
            family.remove(&g);
        }
        for s in ["present", "pending", "destroying", "current", "available"] {
            self.instances.remove(&with(g.clone(), "state", s));
        }
        for h in ["healthy", "unhealthy", "unknown"] {
            self.health.remove(&with(g.clone(), "health", h));
        }
        for s in UPDATE_STATES {
            self.update_state.remove(&with(g.clone(), "state", s));
        }
    }
}
