//! `flavor-combo`: a flavor made of other flavors, applied in order.
//!
//! Properties:
//!
//! ```json
//! {"Flavors": [
//!   {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo base"]}},
//!   {"Plugin": "flavor-swarm/worker", "Properties": {...}}]}
//! ```
//!
//! At least one flavor is required; unknown fields are refused. Children are reached through the
//! SDK's [`PluginResolver`], as the group controller reaches its plugins: `DiscoveryResolver` finds
//! them by name (one client per socket, so a child restarted elsewhere gets a new one), and
//! `LocalResolver` maps names to flavors in this process.
//!
//! Errors from a child name it by its 1-based position and plugin name:
//! `flavor-combo child 2 (flavor-vanilla): ...`.
//!
//! The rules:
//! - **Validate**: the properties must parse, then every child validates its own properties. All
//!   children are checked and every failure is reported (joined by `; `), so one round of fixes is
//!   enough.
//! - **Prepare**: children run in order. Each gets a clone of the *input* spec with `Init` and
//!   `Attachments` cleared (so nothing is duplicated when the results are merged) and with tags,
//!   properties and logical ID kept (a child may read them). The results are merged into the input:
//!   tags, later child wins on a shared key; `Init` is the non-empty inits (the input's own first,
//!   then each child's in order) joined by `"\n"`; attachments are appended in order. A child's
//!   changes to `Properties` or `LogicalID` are not carried over: those belong to the group.
//! - **Healthy**: children are asked in order; the first whose answer is not `Healthy` decides
//!   (`Unhealthy` or `Unknown`) and later children are not asked. All healthy is `Healthy`. A child
//!   that fails to answer fails the call.
//! - **Drain**: every child drains, in order, even after one fails, so no child is skipped just
//!   because an earlier one had trouble; the first error (naming its child) is returned.

use std::sync::Arc;

use async_trait::async_trait;
use infrakit_sdk::resolve::PluginResolver;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use infrakit_sdk::spi::group::PluginSpec;
use infrakit_sdk::spi::instance::{Description, InstanceId, Spec};
use infrakit_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The combo flavor's properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComboProperties {
    #[serde(rename = "Flavors")]
    pub flavors: Vec<PluginSpec>,
}

const EXAMPLE: &str = r#"{"Flavors": [{"Plugin": "flavor-vanilla", "Properties": {...}}]}"#;

impl ComboProperties {
    /// Parses a group's `Flavor.Properties`: at least one child, each naming a plugin.
    pub fn parse(properties: &Value) -> Result<ComboProperties> {
        if properties.is_null() {
            return Err(Error::invalid(format!(
                "flavor-combo properties are missing: list the flavors to combine, e.g. {EXAMPLE}"
            )));
        }
        let parsed = ComboProperties::deserialize(properties)
            .map_err(|e| Error::invalid(format!("flavor-combo properties: {e}")))?;
        if parsed.flavors.is_empty() {
            return Err(Error::invalid(format!(
                "flavor-combo properties: \"Flavors\" is empty: list at least one flavor, e.g. {EXAMPLE}"
            )));
        }
        for (i, child) in parsed.flavors.iter().enumerate() {
            if child.plugin.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "flavor-combo child {}: \"Plugin\" is empty: name a flavor plugin such as flavor-vanilla",
                    i + 1
                )));
            }
        }
        Ok(parsed)
    }
}

/// One child, resolved: its position (1-based), its spec and the plugin.
struct Child<'a> {
    position: usize,
    spec: &'a PluginSpec,
    properties: Value,
    plugin: Arc<dyn FlavorPlugin>,
}

impl Child<'_> {
    /// `flavor-combo child 2 (flavor-vanilla)`, the prefix of every error about this child.
    fn label(&self) -> String {
        child_label(self.position, &self.spec.plugin)
    }
}

fn child_label(position: usize, plugin: &str) -> String {
    format!("flavor-combo child {position} ({plugin})")
}

/// The combo flavor.
pub struct ComboFlavor {
    resolver: Arc<dyn PluginResolver>,
}

impl ComboFlavor {
    pub fn new(resolver: Arc<dyn PluginResolver>) -> ComboFlavor {
        ComboFlavor { resolver }
    }

    /// Resolves every child in order; the first that cannot be found fails the call.
    async fn children<'a>(&self, props: &'a ComboProperties) -> Result<Vec<Child<'a>>> {
        let mut out = Vec::with_capacity(props.flavors.len());
        for (i, spec) in props.flavors.iter().enumerate() {
            out.push(self.child(i + 1, spec).await?);
        }
        Ok(out)
    }

    async fn child<'a>(&self, position: usize, spec: &'a PluginSpec) -> Result<Child<'a>> {
        let plugin = self
            .resolver
            .flavor(&spec.plugin)
            .await
            .map_err(|e| e.context(child_label(position, &spec.plugin)))?;
        Ok(Child {
            position,
            spec,
            properties: spec.properties.clone().unwrap_or(Value::Null),
            plugin,
        })
    }

    /// Names the child in `err`.
    fn child_error(&self, child: &Child<'_>, err: Error) -> Error {
        err.context(child.label())
    }
}

/// What a child gets to prepare: the input without what the merge would otherwise duplicate.
fn child_input(input: &Spec) -> Spec {
    Spec {
        init: String::new(),
        attachments: Vec::new(),
        ..input.clone()
    }
}

/// Merges the children's results into the input (rules in the module documentation).
fn merge(mut input: Spec, results: Vec<Spec>) -> Spec {
    let mut inits: Vec<String> = Vec::with_capacity(results.len() + 1);
    inits.push(std::mem::take(&mut input.init));
    for result in results {
        input.tags.extend(result.tags);
        inits.push(result.init);
        input.attachments.extend(result.attachments);
    }
    inits.retain(|init| !init.is_empty());
    input.init = inits.join("\n");
    input
}

#[async_trait]
impl FlavorPlugin for ComboFlavor {
    async fn validate(&self, properties: &Value, allocation: &AllocationMethod) -> Result<()> {
        let props = ComboProperties::parse(properties)?;
        let mut failures: Vec<Error> = Vec::new();
        for (i, spec) in props.flavors.iter().enumerate() {
            let outcome = match self.child(i + 1, spec).await {
                Ok(child) => child
                    .plugin
                    .validate(&child.properties, allocation)
                    .await
                    .map_err(|e| self.child_error(&child, e)),
                Err(e) => Err(e),
            };
            failures.extend(outcome.err());
        }
        let Some(first) = failures.first() else {
            return Ok(());
        };
        let message = failures
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::new(first.kind, message))
    }

    async fn prepare(
        &self,
        properties: &Value,
        spec: Spec,
        allocation: &AllocationMethod,
        index: &Index,
    ) -> Result<Spec> {
        let props = ComboProperties::parse(properties)?;
        let children = self.children(&props).await?;
        let mut results = Vec::with_capacity(children.len());
        for child in &children {
            let prepared = child
                .plugin
                .prepare(&child.properties, child_input(&spec), allocation, index)
                .await
                .map_err(|e| self.child_error(child, e))?;
            results.push(prepared);
        }
        Ok(merge(spec, results))
    }

    async fn healthy(&self, properties: &Value, instance: &Description) -> Result<Health> {
        let props = ComboProperties::parse(properties)?;
        for (i, spec) in props.flavors.iter().enumerate() {
            let child = self.child(i + 1, spec).await?;
            let health = child
                .plugin
                .healthy(&child.properties, instance)
                .await
                .map_err(|e| self.child_error(&child, e))?;
            if health != Health::Healthy {
                tracing::debug!(instance = %instance.id, child = %child.label(), %health, "combo health decided");
                return Ok(health);
            }
        }
        Ok(Health::Healthy)
    }

    /// The members any child names as leading (a child that cannot answer names none).
    async fn leading(
        &self,
        properties: &Value,
        instances: &[Description],
    ) -> Result<Vec<InstanceId>> {
        let props = ComboProperties::parse(properties)?;
        let mut all: Vec<InstanceId> = Vec::new();
        for (i, spec) in props.flavors.iter().enumerate() {
            let named = match self.child(i + 1, spec).await {
                Ok(child) => child.plugin.leading(&child.properties, instances).await,
                Err(e) => Err(e),
            };
            match named {
                Ok(ids) => all.extend(ids),
                Err(e) => tracing::debug!("leading: child {}: {}", i + 1, e.message),
            }
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    async fn drain(&self, properties: &Value, instance: &Description) -> Result<()> {
        let props = ComboProperties::parse(properties)?;
        let mut first_error: Option<Error> = None;
        for (i, spec) in props.flavors.iter().enumerate() {
            let outcome = match self.child(i + 1, spec).await {
                Ok(child) => child
                    .plugin
                    .drain(&child.properties, instance)
                    .await
                    .map_err(|e| self.child_error(&child, e)),
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::warn!(instance = %instance.id, "drain: {}", e.message);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_flavor_vanilla::VanillaFlavor;
    use infrakit_sdk::discovery::{Discovery, PluginsDir};
    use infrakit_sdk::resolve::{DiscoveryResolver, LocalResolver};
    use infrakit_sdk::spi::instance::{Attachment, Tags};
    use infrakit_sdk::ErrorKind;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A child with a fixed health answer that counts its calls and can fail drain/validate.
    struct TestFlavor {
        health: Health,
        fail: bool,
        calls: AtomicUsize,
    }

    impl TestFlavor {
        fn new(health: Health, fail: bool) -> Arc<TestFlavor> {
            Arc::new(TestFlavor {
                health,
                fail,
                calls: AtomicUsize::new(0),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn outcome(&self) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                Err(Error::internal("boom"))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl FlavorPlugin for TestFlavor {
        async fn validate(&self, _: &Value, _: &AllocationMethod) -> Result<()> {
            self.outcome()
        }
        async fn prepare(
            &self,
            _: &Value,
            spec: Spec,
            _: &AllocationMethod,
            _: &Index,
        ) -> Result<Spec> {
            self.outcome().map(|_| spec)
        }
        async fn healthy(&self, _: &Value, _: &Description) -> Result<Health> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.health)
        }
        async fn drain(&self, _: &Value, _: &Description) -> Result<()> {
            self.outcome()
        }
    }

    fn combo(resolver: LocalResolver) -> ComboFlavor {
        ComboFlavor::new(Arc::new(resolver))
    }

    fn with_vanilla() -> LocalResolver {
        LocalResolver::new(None).with_flavor("flavor-vanilla", Arc::new(VanillaFlavor::new()))
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn two_vanillas_merge_in_order() {
        let props = json!({"Flavors": [
            {"Plugin": "flavor-vanilla", "Properties": {
                "Init": ["echo one"], "Tags": {"a": "1", "shared": "first"},
                "Attachments": [{"ID": "vol-1"}]}},
            {"Plugin": "flavor-vanilla", "Properties": {
                "Init": ["echo two", "echo three"], "Tags": {"b": "2", "shared": "second"},
                "Attachments": [{"ID": "vol-2"}]}}
        ]});
        let input = Spec {
            init: "echo base".into(),
            tags: tags(&[("infrakit.group", "g"), ("shared", "input")]),
            attachments: vec![Attachment {
                id: "vol-0".into(),
                kind: String::new(),
            }],
            properties: Some(json!({"Note": "v1"})),
            logical_id: Some("pet-1".into()),
        };
        let flavor = combo(with_vanilla());
        flavor
            .validate(&props, &AllocationMethod::default())
            .await
            .unwrap();
        let out = flavor
            .prepare(
                &props,
                input,
                &AllocationMethod::default(),
                &Index::default(),
            )
            .await
            .unwrap();
        assert_eq!(out.init, "echo base\necho one\necho two\necho three");
        assert_eq!(
            out.tags,
            tags(&[
                ("infrakit.group", "g"),
                ("a", "1"),
                ("b", "2"),
                ("shared", "second")
            ])
        );
        let ids: Vec<&str> = out.attachments.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["vol-0", "vol-1", "vol-2"]);
        assert_eq!(out.properties, Some(json!({"Note": "v1"})));
        assert_eq!(out.logical_id.as_deref(), Some("pet-1"));
    }

    #[tokio::test]
    async fn empty_inits_leave_no_blank_lines() {
        let props = json!({"Flavors": [
            {"Plugin": "flavor-vanilla"},
            {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo x"]}}
        ]});
        let out = combo(with_vanilla())
            .prepare(
                &props,
                Spec::default(),
                &AllocationMethod::default(),
                &Index::default(),
            )
            .await
            .unwrap();
        assert_eq!(out.init, "echo x");
    }

    #[tokio::test]
    async fn validate_names_the_failing_children() {
        let flavor = combo(with_vanilla());
        let alloc = AllocationMethod::default();
        let props = json!({"Flavors": [
            {"Plugin": "flavor-vanilla"},
            {"Plugin": "flavor-vanilla", "Properties": {"Bogus": 1}},
            {"Plugin": "flavor-missing"}
        ]});
        let err = flavor.validate(&props, &alloc).await.unwrap_err();
        assert!(
            err.message
                .starts_with("flavor-combo child 2 (flavor-vanilla): flavor-vanilla properties:"),
            "{err}"
        );
        assert!(err.message.contains("Bogus"), "{err}");
        assert!(
            err.message
                .contains("flavor-combo child 3 (flavor-missing)"),
            "{err}"
        );

        for (bad, hint) in [
            (Value::Null, "missing"),
            (json!({"Flavors": []}), "at least one"),
            (json!({"Flavor": []}), "Flavor"),
            (json!({"Flavors": [{"Plugin": ""}]}), "child 1"),
            (json!({"Flavors": [{"Plugin": "x", "Props": {}}]}), "Props"),
        ] {
            let err = flavor.validate(&bad, &alloc).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{bad}");
            assert!(err.message.contains(hint), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn first_unhealthy_or_unknown_child_decides() {
        let healthy = TestFlavor::new(Health::Healthy, false);
        let unknown = TestFlavor::new(Health::Unknown, false);
        let unhealthy = TestFlavor::new(Health::Unhealthy, false);
        let flavor = combo(
            LocalResolver::new(None)
                .with_flavor("ok", healthy.clone())
                .with_flavor("unknown", unknown.clone())
                .with_flavor("bad", unhealthy.clone()),
        );
        let d = Description::default();
        let health = |names: &[&str]| {
            let flavors: Vec<Value> = names.iter().map(|n| json!({"Plugin": n})).collect();
            json!({ "Flavors": flavors })
        };
        assert_eq!(
            flavor.healthy(&health(&["ok", "ok"]), &d).await.unwrap(),
            Health::Healthy
        );
        assert_eq!(
            flavor
                .healthy(&health(&["ok", "unknown", "bad"]), &d)
                .await
                .unwrap(),
            Health::Unknown
        );
        assert_eq!(
            unhealthy.calls(),
            0,
            "children after the deciding one are not asked"
        );
        assert_eq!(
            flavor
                .healthy(&health(&["bad", "unknown"]), &d)
                .await
                .unwrap(),
            Health::Unhealthy
        );
    }

    #[tokio::test]
    async fn drain_runs_every_child_and_returns_the_first_error() {
        let first = TestFlavor::new(Health::Healthy, false);
        let failing = TestFlavor::new(Health::Healthy, true);
        let last = TestFlavor::new(Health::Healthy, false);
        let flavor = combo(
            LocalResolver::new(None)
                .with_flavor("first", first.clone())
                .with_flavor("failing", failing.clone())
                .with_flavor("last", last.clone()),
        );
        let props = json!({"Flavors": [
            {"Plugin": "first"}, {"Plugin": "failing"}, {"Plugin": "missing"}, {"Plugin": "last"}
        ]});
        let err = flavor
            .drain(&props, &Description::default())
            .await
            .unwrap_err();
        assert_eq!(err.message, "flavor-combo child 2 (failing): boom");
        assert_eq!(err.kind, ErrorKind::Internal);
        assert_eq!((first.calls(), failing.calls(), last.calls()), (1, 1, 1));
    }

    #[tokio::test]
    async fn prepare_stops_at_a_failing_child_and_names_it() {
        let flavor =
            combo(with_vanilla().with_flavor("failing", TestFlavor::new(Health::Healthy, true)));
        let props = json!({"Flavors": [{"Plugin": "flavor-vanilla"}, {"Plugin": "failing"}]});
        let err = flavor
            .prepare(
                &props,
                Spec::default(),
                &AllocationMethod::default(),
                &Index::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.message, "flavor-combo child 2 (failing): boom");
    }

    /// Serves flavor-vanilla on `socket` until the sender is dropped or fired.
    fn serve_vanilla(
        socket: &std::path::Path,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<infrakit_sdk::Result<()>>,
    ) {
        use infrakit_sdk::rpc::server::{Plugins, Server};
        let server = Server::bind(socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve_until(
            Plugins::new().flavor(VanillaFlavor::new()),
            async move {
                let _ = stopped.await;
            },
        ));
        (stop, serving)
    }

    #[tokio::test]
    async fn discovery_resolver_reaches_a_served_child_and_keeps_its_client() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("flavor-vanilla.sock");
        let (stop, serving) = serve_vanilla(&socket);
        let resolver = Arc::new(DiscoveryResolver::new(Discovery::new(vec![Arc::new(
            PluginsDir::new(tmp.path()),
        )])));
        let flavor = ComboFlavor::new(resolver.clone());
        let props = json!({"Flavors": [
            {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo remote"]}}]});
        let (alloc, index) = (AllocationMethod::default(), Index::default());
        let prepare = || flavor.prepare(&props, Spec::default(), &alloc, &index);
        assert_eq!(prepare().await.unwrap().init, "echo remote");

        let first = resolver.flavor("flavor-vanilla").await.unwrap();
        let again = resolver.flavor("flavor-vanilla").await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the client is cached");

        // The child restarts (same socket): the combo reaches it again.
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        let (stop, serving) = serve_vanilla(&socket);
        assert_eq!(prepare().await.unwrap().init, "echo remote");

        let _ = stop.send(());
        serving.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn discovery_resolver_reports_a_missing_plugin() {
        let tmp = tempfile::tempdir().unwrap();
        let resolver =
            DiscoveryResolver::new(Discovery::new(vec![Arc::new(PluginsDir::new(tmp.path()))]));
        let err = match resolver.flavor("flavor-nowhere").await {
            Ok(_) => panic!("a plugin nobody serves was found"),
            Err(e) => e,
        };
        assert!(err.is_not_found(), "{err}");
        assert!(err.message.contains("flavor-nowhere"), "{err}");
    }
}
