//! A flavor plugin that says hello: the smallest complete flavor, to copy and turn into a real one.
//!
//! A flavor gives an instance its meaning. Before each instance is provisioned, the group
//! controller calls `Prepare` with the spec it built; the flavor adds what it needs (a line of the
//! boot script, a tag) and must keep what is already there. `Healthy` judges a running instance;
//! `Drain` runs before one is destroyed.
//!
//! Properties (the group's `Flavor.Properties`): `{"Greeting": "hello"}`, all optional.
//!
//! ```text
//! cargo run -p infrakit-sdk --example flavor_hello &
//! echo '{"Greeting": "hi"}' > hello.json
//! infrakit flavor --name flavor-hello prepare hello.json --group web
//! ```
//!
//! It listens on `$INFRAKIT_PLUGINS_DIR/flavor-hello.sock` (default `~/.infrakit/plugins`).

use std::process::ExitCode;

use infrakit_sdk::prelude::*;
use infrakit_sdk::tracing;

/// No state: everything a flavor needs arrives with each call.
struct HelloFlavor;

impl HelloFlavor {
    /// Reads the greeting from the properties (`null` when the group gives none).
    fn greeting(properties: &Value) -> Result<String> {
        match properties.get("Greeting") {
            None | Some(Value::Null) => Ok("hello".to_string()),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(other) => Err(Error::invalid(format!(
                "Greeting must be a non-empty string such as \"hello\", not {other}"
            ))),
        }
    }
}

#[async_trait]
impl FlavorPlugin for HelloFlavor {
    /// Called at `group commit`: refuse properties that can never work.
    async fn validate(&self, properties: &Value, _allocation: &AllocationMethod) -> Result<()> {
        Self::greeting(properties).map(|_| ())
    }

    /// Adds one boot-script line and one tag, keeping everything the controller put in the spec
    /// (its tags find the instance again; the Init may already hold other flavors' lines).
    async fn prepare(
        &self,
        properties: &Value,
        mut spec: Spec,
        _allocation: &AllocationMethod,
        index: &Index,
    ) -> Result<Spec> {
        let greeting = Self::greeting(properties)?;
        if !spec.init.is_empty() && !spec.init.ends_with('\n') {
            spec.init.push('\n');
        }
        spec.init
            .push_str(&format!("echo '{greeting} from group {}'", index.group));
        spec.tags.insert("hello".to_string(), greeting);
        Ok(spec)
    }

    /// A real flavor would look at the instance (its Properties from the instance plugin, or a
    /// probe); this one trusts every instance. Say `Unknown` when you cannot tell yet.
    async fn healthy(&self, _properties: &Value, _instance: &Description) -> Result<Health> {
        Ok(Health::Healthy)
    }

    /// Nothing to leave: a real flavor would e.g. take the instance out of a cluster here.
    async fn drain(&self, _properties: &Value, instance: &Description) -> Result<()> {
        tracing::info!(id = %instance.id, "drained");
        Ok(())
    }
}

fn main() -> ExitCode {
    infrakit_sdk::run::flavor(HelloFlavor, RunOptions::new("flavor-hello"))
}
