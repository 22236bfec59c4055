//! A conformance kit: checks that a plugin answers the way InfraKit's group controller expects,
//! through the same client the controller uses (and raw HTTP where a client would never send the
//! request). Run it against a plugin you wrote:
//!
//! ```no_run
//! # async fn demo() {
//! use infrakit_sdk::conformance::instance;
//! use infrakit_sdk::rpc::client::{Endpoint, InstanceClient};
//! use infrakit_sdk::serde_json::json;
//!
//! let client = InstanceClient::new(Endpoint::new("instance-mycloud", "/tmp/mycloud.sock"));
//! let report = instance::run(&client, instance::Options::new(json!({"Size": "small"}))).await;
//! println!("{report}");
//! assert!(report.passed(), "{report}");
//! # }
//! ```
//!
//! Every check has a name and, when it fails, a message saying what was expected and what came
//! back. Checks that need an instance the plugin could not provision are skipped, not failed twice.
//! The instance suite touches only instances it provisioned (tagged `conformance.run=<unique>`)
//! and destroys them at the end.

pub mod flavor;
pub mod instance;

use std::fmt;
use std::future::Future;

use serde_json::Value;

use crate::rpc::client::RpcClient;
use crate::{ErrorKind, Result};

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// What was expected and what the plugin did instead.
    Failed(String),
    /// Why the check could not run (e.g. no instance was provisioned).
    Skipped(String),
}

/// One named check and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// Every check of one run, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The plugin's name as the client knows it.
    pub plugin: String,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(plugin: String) -> Report {
        Report {
            plugin,
            checks: Vec::new(),
        }
    }

    /// True when no check failed (skipped checks do not count as failures).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
    }

    /// The outcome of the check called `name`.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.outcome)
    }

    /// Runs `check` and records it under `name`; returns whether it passed.
    async fn check(
        &mut self,
        name: &'static str,
        check: impl Future<Output = Result<(), String>>,
    ) -> bool {
        let outcome = match check.await {
            Ok(()) => Outcome::Passed,
            Err(why) => Outcome::Failed(why),
        };
        let passed = outcome == Outcome::Passed;
        self.checks.push(Check { name, outcome });
        passed
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.checks.push(Check {
            name,
            outcome: Outcome::Skipped(why.to_string()),
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |p: fn(&Outcome) -> bool| self.checks.iter().filter(|c| p(&c.outcome)).count();
        writeln!(
            f,
            "conformance of '{}': {} passed, {} failed, {} skipped",
            self.plugin,
            count(|o| *o == Outcome::Passed),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Skipped(_))),
        )?;
        for c in &self.checks {
            match &c.outcome {
                Outcome::Passed => writeln!(f, "  pass  {}", c.name)?,
                Outcome::Failed(why) => writeln!(f, "  FAIL  {}: {why}", c.name)?,
                Outcome::Skipped(why) => writeln!(f, "  skip  {}: {why}", c.name)?,
            }
        }
        Ok(())
    }
}

/// A value unique to this run, so that two runs (or a run and real instances) never mix.
fn unique_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// `Plugin.Activate` lists `interface` (e.g. `infrakit.instance/1.`) with our major version.
async fn implements(rpc: &RpcClient, prefix: &str) -> Result<(), String> {
    let implements = rpc
        .activate()
        .await
        .map_err(|e| format!("Plugin.Activate failed: {e}"))?;
    if implements.iter().any(|i| i.starts_with(prefix)) {
        Ok(())
    } else {
        Err(format!(
            "Plugin.Activate lists {implements:?}; expected an entry starting with '{prefix}'"
        ))
    }
}

/// A request no client would send gets a 4xx status and `{"Err": "<message>"}`.
async fn refused_with_err(rpc: &RpcClient, path: &str, body: &'static [u8]) -> Result<(), String> {
    let (status, reply) = rpc
        .post_raw(path, body)
        .await
        .map_err(|e| format!("POST /{path} failed: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    if !(400..500).contains(&status) {
        return Err(format!(
            "POST /{path} with body {:?} answered {status}; expected a 4xx status (the request is the caller's fault). Body: {text}",
            String::from_utf8_lossy(body)
        ));
    }
    let json: Value = serde_json::from_slice(&reply)
        .map_err(|e| format!("the {status} reply to /{path} is not JSON ({e}): {text}"))?;
    match json.get("Err").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => Ok(()),
        _ => Err(format!(
            "the {status} reply to /{path} should be {{\"Err\": \"<what is wrong>\"}}, not {json}"
        )),
    }
}

/// `result` is an error of `kind` (which travels as the HTTP status).
fn expect_kind<T: fmt::Debug>(
    what: &str,
    result: Result<T>,
    kind: ErrorKind,
) -> Result<(), String> {
    match result {
        Err(e) if e.kind == kind => Ok(()),
        Err(e) => Err(format!(
            "{what} failed as {:?} (status {}): {e}; expected {kind:?} (status {})",
            e.kind,
            e.kind.status(),
            kind.status()
        )),
        Ok(v) => Err(format!(
            "{what} succeeded ({v:?}); expected a {kind:?} error (status {})",
            kind.status()
        )),
    }
}
