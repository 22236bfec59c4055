//! The flavor plugin conformance suite: `Plugin.Activate`; `Validate` accepts the example;
//! `Prepare` keeps what the group controller put in the spec (its tags, the properties, the
//! `LogicalID`, the `Init` lines) while adding its own; `Healthy` answers one of the words
//! `healthy`, `unhealthy`, `unknown`; `Drain` answers; a malformed body gets 4xx with `{"Err"}`.

use serde_json::{json, Value};

use super::{implements, refused_with_err, unique_run_id, Report};
use crate::rpc::client::FlavorClient;
use crate::spi::flavor::{AllocationMethod, FlavorPlugin, Index};
use crate::spi::instance::{Description, Spec, Tags};

const HEALTHY_MANY: &str = "healthy many answers one verdict per instance";

/// What the suite needs to know about the flavor under test.
#[derive(Debug, Clone)]
pub struct Options {
    /// The flavor's properties (a group's `Flavor.Properties`) it accepts.
    pub properties: Value,
    /// The group's allocation; the first logical ID, if any, is the prepared instance's.
    pub allocation: AllocationMethod,
}

impl Options {
    /// Cattle of one (`{"Size": 1}`).
    pub fn new(properties: Value) -> Options {
        Options {
            properties,
            allocation: AllocationMethod {
                size: 1,
                logical_ids: Vec::new(),
            },
        }
    }
}

/// The tags the group controller puts on every instance, as a flavor receives them.
const CONTROLLER_TAGS: [&str; 2] = [crate::spi::tags::GROUP, crate::spi::tags::CONFIG_HASH];

/// Runs every check against the flavor behind `client` and reports each one.
pub async fn run(client: &FlavorClient, options: Options) -> Report {
    let mut report = Report::new(client.rpc().endpoint().full_name());
    let group = format!("conformance-{}", unique_run_id());
    let props = &options.properties;
    let alloc = &options.allocation;

    report
        .check(
            "activate lists infrakit.flavor/1",
            implements(client.rpc(), "infrakit.flavor/1."),
        )
        .await;
    report
        .check("validate accepts the example properties", async {
            client
                .validate(props, alloc)
                .await
                .map_err(|e| format!("Validate refused the example properties: {e}"))
        })
        .await;

    let mut tags = Tags::new();
    for k in CONTROLLER_TAGS {
        tags.insert(k.to_string(), format!("{group}-{k}"));
    }
    let given = Spec {
        properties: Some(json!({"Conformance": group})),
        tags,
        init: "echo conformance: the controller's line".into(),
        logical_id: alloc.logical_ids.first().cloned(),
        attachments: Vec::new(),
    };
    let index = Index {
        group: group.clone(),
        sequence: 0,
    };
    report
        .check(
            "prepare keeps the controller's tags, properties, LogicalID and Init",
            async {
                let got = client
                    .prepare(props, given.clone(), alloc, &index)
                    .await
                    .map_err(|e| format!("Prepare failed: {e}"))?;
                let mut wrong = Vec::new();
                for (k, v) in &given.tags {
                    if got.tags.get(k) != Some(v) {
                        wrong.push(format!("tag {k}={v} became {:?}", got.tags.get(k)));
                    }
                }
                if got.properties != given.properties {
                    wrong.push(format!(
                        "Properties {:?} became {:?}",
                        given.properties, got.properties
                    ));
                }
                if got.logical_id != given.logical_id {
                    wrong.push(format!(
                        "LogicalID {:?} became {:?}",
                        given.logical_id, got.logical_id
                    ));
                }
                if !got.init.contains(&given.init) {
                    wrong.push(format!(
                        "Init {:?} was dropped (got {:?}); add lines, keep the given ones",
                        given.init, got.init
                    ));
                }
                if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "Prepare changed what it must keep: {}",
                        wrong.join("; ")
                    ))
                }
            },
        )
        .await;

    let instance = Description {
        id: format!("{group}-instance"),
        logical_id: given.logical_id.clone(),
        tags: given.tags.clone().into(),
        properties: None,
    };
    let rpc = client.rpc();
    report
        .check("healthy answers healthy, unhealthy or unknown", async {
            // Raw, to see the word itself: the client also reads Go InfraKit's numbers.
            let body = json!({
                "Properties": props,
                "Instance": instance,
                "Type": rpc.endpoint().sub_type,
            });
            let (status, reply) = rpc
                .post_raw("Flavor.Healthy", body.to_string())
                .await
                .map_err(|e| format!("POST /Flavor.Healthy failed: {e}"))?;
            let text = String::from_utf8_lossy(&reply);
            if status != 200 {
                return Err(format!("Healthy answered {status}: {text}"));
            }
            let json: Value = serde_json::from_slice(&reply)
                .map_err(|e| format!("the reply to Healthy is not JSON ({e}): {text}"))?;
            match json.get("Health").and_then(Value::as_str) {
                Some("healthy" | "unhealthy" | "unknown") => Ok(()),
                _ => Err(format!(
                    "Healthy answered {json}; expected {{\"Health\": \"healthy\"|\"unhealthy\"|\"unknown\"}}"
                )),
            }
        })
        .await;
    // Our addition: several instances in one call. A plugin without it (404) is asked one at a
    // time by its callers: the check is skipped, not failed.
    let two = [instance.clone(), instance.clone()];
    match client.healthy_many(props, &two).await {
        Err(e) if e.kind == crate::ErrorKind::Unsupported => {
            report.skip(HEALTHY_MANY, &e.message);
        }
        answer => {
            report
                .check(HEALTHY_MANY, async move {
                    match answer {
                        Ok(verdicts) if verdicts.len() == two.len() => Ok(()),
                        Ok(verdicts) => Err(format!(
                            "HealthyMany of {} instances answered {} verdicts",
                            two.len(),
                            verdicts.len()
                        )),
                        Err(e) => Err(format!("HealthyMany failed: {e}")),
                    }
                })
                .await;
        }
    }
    report
        .check("drain answers", async {
            client
                .drain(props, &instance)
                .await
                .map_err(|e| format!("Drain failed: {e}"))
        })
        .await;
    report
        .check(
            "a malformed body gets 4xx with {\"Err\"}",
            refused_with_err(rpc, "Flavor.Prepare", b"{\"Spec\": ["),
        )
        .await;
    report
}
