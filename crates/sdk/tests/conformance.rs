//! The conformance kit judges plugins correctly: a plugin that keeps the contract passes every
//! check, and each kind of breakage fails the check named for it (and not the others). The
//! plugins here run in-process on real sockets; tests/conformance.rs at the workspace root runs
//! the kit against real plugin processes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use infrakit_sdk::conformance::{self, Outcome, Report};
use infrakit_sdk::prelude::*;
use infrakit_sdk::rpc::client::{Endpoint, FlavorClient, InstanceClient};
use infrakit_sdk::rpc::server::Server;
use infrakit_sdk::spi::changes::ChangeFeed;
use infrakit_sdk::spi::instance::Changes;
use tokio::sync::oneshot;

/// What a broken instance plugin gets wrong.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Destroy of a missing ID says OK instead of NotFound.
    DestroyAlwaysOk,
    /// DescribeInstances ignores the tags filter.
    IgnoresTagFilter,
    /// The LogicalID is not kept.
    ForgetsLogicalId,
    /// Label replaces the tags instead of merging.
    LabelReplaces,
    /// Changes never reports a change.
    ChangesSilent,
    /// Changes is not implemented (the SDK's default).
    NoChanges,
}

struct Memory {
    fault: Fault,
    instances: Mutex<BTreeMap<String, Description>>,
    feed: ChangeFeed,
}

impl Memory {
    fn new(fault: Fault) -> Memory {
        Memory {
            fault,
            instances: Mutex::new(BTreeMap::new()),
            feed: ChangeFeed::new(),
        }
    }
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Description>> {
        self.instances.lock().expect("not poisoned")
    }
}

#[async_trait]
impl InstancePlugin for Memory {
    async fn validate(&self, properties: &Value) -> Result<()> {
        if properties.is_object() {
            Ok(())
        } else {
            Err(Error::invalid("properties must be an object"))
        }
    }
    async fn provision(&self, spec: Spec) -> Result<InstanceId> {
        let mut map = self.map();
        let id = format!("i-{}", map.len() + 100);
        let logical_id = match self.fault {
            Fault::ForgetsLogicalId => None,
            _ => spec.logical_id,
        };
        let d = Description {
            id: id.clone(),
            logical_id,
            tags: spec.tags.into(),
            properties: spec.properties,
        };
        map.insert(id.clone(), d);
        self.changed();
        Ok(id)
    }
    async fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let mut map = self.map();
        let d = map
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("no {id}")))?;
        if self.fault == Fault::LabelReplaces {
            d.tags = labels.into();
        } else {
            d.tags.make_mut().extend(labels);
        }
        Ok(())
    }
    async fn destroy(&self, id: &str, _: DestroyContext) -> Result<()> {
        let removed = self.map().remove(id);
        if removed.is_some() {
            self.changed();
        }
        match (removed, self.fault) {
            (Some(_), _) | (None, Fault::DestroyAlwaysOk) => Ok(()),
            (None, _) => Err(Error::not_found(format!("no {id}"))),
        }
    }
    async fn describe_instances(&self, tags: &Tags, _: bool) -> Result<Vec<Description>> {
        let all = self.fault == Fault::IgnoresTagFilter;
        Ok(self
            .map()
            .values()
            .filter(|d| all || tags_match(&d.tags, tags))
            .cloned()
            .collect())
    }
    async fn changes(&self, cursor: &str, timeout: std::time::Duration) -> Result<Changes> {
        if self.fault == Fault::NoChanges {
            return Err(Error::unsupported("no Instance.Changes here"));
        }
        self.feed.wait(cursor, timeout).await
    }
}

impl Memory {
    fn changed(&self) {
        if self.fault != Fault::ChangesSilent {
            self.feed.changed();
        }
    }
}

/// A plugin served on a socket in a temp dir until dropped.
struct Served {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    fn start(plugins: Plugins) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("p.sock");
        let server = Server::bind(&socket).expect("bind");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            server.serve_until(plugins, stop).await.expect("serve");
        });
        Served {
            _dir: dir,
            socket,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

async fn instance_report(fault: Fault, options: conformance::instance::Options) -> Report {
    let served = Served::start(Plugins::new().instance(Memory::new(fault)));
    let client = InstanceClient::new(Endpoint::new("instance-test", &served.socket));
    let report = conformance::instance::run(&client, options).await;
    served.stop().await;
    report
}

fn options() -> conformance::instance::Options {
    let mut o = conformance::instance::Options::new(json!({"Size": "small"}));
    o.invalid_properties = Some(json!("not an object"));
    o.settle = std::time::Duration::from_millis(300);
    o
}

/// The names of the failed checks.
fn failed(report: &Report) -> Vec<&'static str> {
    report.failures().map(|c| c.name).collect()
}

#[tokio::test]
async fn a_plugin_that_keeps_the_contract_passes_every_instance_check() {
    let report = instance_report(Fault::None, options()).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.iter().all(|c| c.outcome == Outcome::Passed),
        "nothing skipped when an invalid example is given: {report}"
    );
    assert!(report.checks.len() >= 14, "{report}");
    assert!(report.to_string().contains("0 failed"), "{report}");
}

#[tokio::test]
async fn without_an_invalid_example_its_check_is_skipped_not_failed() {
    let mut o = options();
    o.invalid_properties = None;
    let report = instance_report(Fault::None, o).await;
    assert!(report.passed(), "{report}");
    assert!(matches!(
        report.outcome("validate refuses the invalid example"),
        Some(Outcome::Skipped(_))
    ));
}

#[tokio::test]
async fn a_destroy_that_never_says_not_found_fails_the_not_found_checks() {
    let report = instance_report(Fault::DestroyAlwaysOk, options()).await;
    assert_eq!(
        failed(&report),
        [
            "a second destroy is NotFound (404)",
            "destroy of an unknown ID is NotFound (404)"
        ],
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("expected a NotFound error (status 404)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_describe_that_ignores_tags_fails_the_tag_filter_check() {
    let report = instance_report(Fault::IgnoresTagFilter, options()).await;
    assert!(
        failed(&report).contains(&"describe selects by tags"),
        "{report}"
    );
}

#[tokio::test]
async fn a_lost_logical_id_fails_its_check_only() {
    let report = instance_report(Fault::ForgetsLogicalId, options()).await;
    assert_eq!(
        failed(&report),
        ["describe keeps the LogicalID"],
        "{report}"
    );
}

#[tokio::test]
async fn a_label_that_replaces_tags_fails_the_label_check() {
    let report = instance_report(Fault::LabelReplaces, options()).await;
    assert!(failed(&report).contains(&"label merges tags"), "{report}");
}

#[tokio::test]
async fn changes_that_never_report_a_change_fail_the_changes_check() {
    let report = instance_report(Fault::ChangesSilent, options()).await;
    assert_eq!(
        failed(&report),
        ["changes: a cursor from before the provisions answers Changed"],
        "{report}"
    );
}

#[tokio::test]
async fn a_plugin_without_changes_has_those_checks_skipped_not_failed() {
    let report = instance_report(Fault::NoChanges, options()).await;
    assert!(report.passed(), "{report}");
    for name in [
        "changes: an empty or unknown cursor answers Resync",
        "changes: a cursor from before the provisions answers Changed",
    ] {
        assert!(
            matches!(report.outcome(name), Some(Outcome::Skipped(_))),
            "{name}: {report}"
        );
    }
}

#[tokio::test]
async fn a_plugin_that_relabels_fails_when_told_it_cannot() {
    let mut o = options();
    o.relabel = false;
    let report = instance_report(Fault::None, o).await;
    assert_eq!(
        failed(&report),
        ["label keeps tags and refuses a change"],
        "{report}"
    );
}

#[tokio::test]
async fn a_dead_socket_fails_every_check_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = InstanceClient::new(Endpoint::new("gone", dir.path().join("gone.sock")));
    let report = conformance::instance::run(&client, options()).await;
    assert!(!report.passed());
    assert!(matches!(
        report.outcome("describe keeps the LogicalID"),
        Some(Outcome::Skipped(_))
    ));
    assert!(
        report.to_string().contains("is the plugin running?"),
        "{report}"
    );
}

/// A flavor that may drop the controller's tags, and may judge one instance per call only (as a
/// plugin from before `Flavor.HealthyMany`).
struct Hello {
    drops_tags: bool,
    one_at_a_time: bool,
}

#[async_trait]
impl FlavorPlugin for Hello {
    async fn validate(&self, _: &Value, _: &AllocationMethod) -> Result<()> {
        Ok(())
    }
    async fn prepare(
        &self,
        _: &Value,
        mut spec: Spec,
        _: &AllocationMethod,
        _: &Index,
    ) -> Result<Spec> {
        if self.drops_tags {
            spec.tags.clear();
        }
        spec.tags.insert("hello".into(), "world".into());
        spec.init.push_str("\necho hello");
        Ok(spec)
    }
    async fn healthy(&self, _: &Value, _: &Description) -> Result<Health> {
        Ok(Health::Healthy)
    }
    async fn healthy_many(&self, p: &Value, instances: &[Description]) -> Result<Vec<Health>> {
        if self.one_at_a_time {
            return Err(infrakit_sdk::Error::unsupported("one at a time"));
        }
        let mut verdicts = Vec::new();
        for d in instances {
            verdicts.push(self.healthy(p, d).await?);
        }
        Ok(verdicts)
    }
    async fn drain(&self, _: &Value, _: &Description) -> Result<()> {
        Ok(())
    }
}

async fn flavor_report(drops_tags: bool) -> Report {
    flavor_report_of(Hello {
        drops_tags,
        one_at_a_time: false,
    })
    .await
}

async fn flavor_report_of(flavor: Hello) -> Report {
    let served = Served::start(Plugins::new().flavor(flavor));
    let client = FlavorClient::new(Endpoint::new("flavor-test", &served.socket));
    let options = conformance::flavor::Options::new(json!({}));
    let report = conformance::flavor::run(&client, options).await;
    served.stop().await;
    report
}

#[tokio::test]
async fn a_flavor_that_keeps_the_contract_passes() {
    let report = flavor_report(false).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.checks.len(), 7, "{report}");
}

#[tokio::test]
async fn a_flavor_without_healthy_many_has_that_check_skipped_not_failed() {
    let report = flavor_report_of(Hello {
        drops_tags: false,
        one_at_a_time: true,
    })
    .await;
    assert!(report.passed(), "{report}");
    assert!(
        report
            .to_string()
            .contains("skip  healthy many answers one verdict per instance"),
        "{report}"
    );
}

#[tokio::test]
async fn a_flavor_that_drops_the_controllers_tags_fails_prepare() {
    let report = flavor_report(true).await;
    assert_eq!(
        failed(&report),
        ["prepare keeps the controller's tags, properties, LogicalID and Init"],
        "{report}"
    );
    assert!(
        report.to_string().contains("tag infrakit.group="),
        "{report}"
    );
}

/// A flavor naming its second instance as the leader (`Flavor.Leading`).
struct Led;

#[async_trait]
impl FlavorPlugin for Led {
    async fn validate(&self, _: &Value, _: &AllocationMethod) -> Result<()> {
        Ok(())
    }
    async fn prepare(
        &self,
        _: &Value,
        spec: Spec,
        _: &AllocationMethod,
        _: &Index,
    ) -> Result<Spec> {
        Ok(spec)
    }
    async fn healthy(&self, _: &Value, _: &Description) -> Result<Health> {
        Ok(Health::Healthy)
    }
    async fn leading(&self, _: &Value, instances: &[Description]) -> Result<Vec<String>> {
        Ok(instances
            .iter()
            .skip(1)
            .take(1)
            .map(|d| d.id.clone())
            .collect())
    }
    async fn drain(&self, _: &Value, _: &Description) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn leading_goes_over_the_wire_and_defaults_to_none() {
    let instances: Vec<Description> = ["a", "b", "c"]
        .iter()
        .map(|id| Description {
            id: id.to_string(),
            ..Description::default()
        })
        .collect();
    let served = Served::start(Plugins::new().flavor(Led));
    let client = FlavorClient::new(Endpoint::new("led", &served.socket));
    let named = client
        .leading(&json!({}), &instances)
        .await
        .expect("leading");
    assert_eq!(named, vec!["b".to_string()]);
    served.stop().await;
    let served = Served::start(Plugins::new().flavor(Hello {
        drops_tags: false,
        one_at_a_time: false,
    }));
    let client = FlavorClient::new(Endpoint::new("hello", &served.socket));
    let named = client
        .leading(&json!({}), &instances)
        .await
        .expect("leading");
    assert!(named.is_empty(), "{named:?}");
    served.stop().await;
}
