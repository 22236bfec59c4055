//! The instance plugin conformance suite: what the group controller relies on.
//!
//! In order: `Plugin.Activate`; `Validate` (and, when given an invalid example, its refusal); two
//! provisions (one pet with a `LogicalID`, one cattle); `DescribeInstances` lists exactly them with
//! their tags and the pet's `LogicalID`, and selects by tags; `Label` (merging tags, or, for a
//! backend that cannot relabel, keeping what is there and refusing a change); `Destroy` removes an
//! instance and a second `Destroy` of it is `NotFound` (404), which the controller takes as done;
//! unknown IDs are `NotFound`; a malformed body and an unknown method get 4xx with `{"Err"}`.
//! When the plugin implements the optional `Instance.Changes`: an empty or unknown cursor answers
//! `Resync`, and a cursor taken before the provisions answers `Changed` after them (skipped, not
//! failed, for a plugin that does not report changes).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{expect_kind, implements, refused_with_err, unique_run_id, Report};
use crate::rpc::client::InstanceClient;
use crate::spi::instance::{DestroyContext, InstancePlugin, Spec, Tags};
use crate::ErrorKind;

/// The tag every instance of one run carries (value: unique to the run).
pub const RUN_TAG: &str = "conformance.run";
/// Tells the two instances of a run apart (`pet`, `cattle`).
pub const MEMBER_TAG: &str = "conformance.member";
/// The tag `Label` sets.
pub const LABEL_TAG: &str = "conformance.label";
/// The pet's logical ID.
pub const LOGICAL_ID: &str = "conformance-pet";

/// What the suite needs to know about the plugin under test.
#[derive(Debug, Clone)]
pub struct Options {
    /// Instance properties the plugin accepts and can provision with (e.g. an image that exists).
    pub properties: Value,
    /// Properties the plugin's `Validate` must refuse; the check is skipped without them.
    pub invalid_properties: Option<Value>,
    /// Tags added to every instance the suite provisions (e.g. `infrakit.group` so that a test
    /// can find and remove what a failed run left behind).
    pub tags: Tags,
    /// Whether `Label` can change tags. A backend that fixes them at creation (Docker's labels)
    /// sets false: then `Label` must accept tags already there and refuse a change with an error.
    pub relabel: bool,
    /// How long a change may take to show in `DescribeInstances` (an eventually consistent API).
    pub settle: Duration,
}

impl Options {
    pub fn new(properties: Value) -> Options {
        Options {
            properties,
            invalid_properties: None,
            tags: Tags::new(),
            relabel: true,
            settle: Duration::from_secs(5),
        }
    }
}

/// Runs every check against the plugin behind `client` and reports each one.
pub async fn run(client: &InstanceClient, options: Options) -> Report {
    let mut report = Report::new(client.rpc().endpoint().full_name());
    let run_id = unique_run_id();
    let mut base = options.tags.clone();
    base.insert(RUN_TAG.into(), run_id);
    let t = Tester {
        client,
        options: &options,
        base,
    };

    report
        .check(
            "activate lists infrakit.instance/1",
            implements(client.rpc(), "infrakit.instance/1."),
        )
        .await;
    report
        .check("validate accepts the example properties", async {
            client
                .validate(&options.properties)
                .await
                .map_err(|e| format!("Validate refused the example properties: {e}"))
        })
        .await;
    match &options.invalid_properties {
        Some(bad) => {
            report
                .check("validate refuses the invalid example", async {
                    expect_kind(
                        "Validate of the invalid example",
                        client.validate(bad).await,
                        ErrorKind::Invalid,
                    )
                })
                .await;
        }
        None => report.skip(
            "validate refuses the invalid example",
            "no invalid example given (Options::invalid_properties)",
        ),
    }

    // Taken before anything is provisioned: the provisions and the destroy below are changes.
    let mut changes_cursor = None;
    match client.changes("", Duration::ZERO).await {
        Err(e) if e.kind == ErrorKind::Unsupported => {
            for name in CHANGES_CHECKS {
                report.skip(
                    name,
                    "the plugin does not implement the optional Instance.Changes",
                );
            }
        }
        first => {
            report
                .check(CHANGES_RESYNC, async {
                    let first = first.map_err(|e| format!("Changes with an empty cursor: {e}"))?;
                    if !first.resync || first.cursor.is_empty() {
                        return Err(format!(
                            "Changes with an empty cursor must answer Resync and a cursor, not {first:?}"
                        ));
                    }
                    let unknown = client
                        .changes("conformance-unknown-cursor", Duration::ZERO)
                        .await
                        .map_err(|e| format!("Changes with an unknown cursor: {e}"))?;
                    if !unknown.resync {
                        return Err(format!(
                            "Changes with an unknown cursor must answer Resync, not {unknown:?}"
                        ));
                    }
                    changes_cursor = Some(first.cursor);
                    Ok(())
                })
                .await;
        }
    }

    let pet = t.spec("pet", Some(LOGICAL_ID));
    let cattle = t.spec("cattle", None);
    let mut ids = (None, None);
    report
        .check("provision returns an ID", async {
            let a = t.provision(pet.clone()).await?;
            ids.0 = Some(a);
            let b = t.provision(cattle.clone()).await?;
            ids.1 = Some(b);
            Ok(())
        })
        .await;
    let label_check = if options.relabel {
        LABEL_MERGES
    } else {
        LABEL_FIXED
    };
    let (Some(pet_id), Some(cattle_id)) = ids.clone() else {
        for name in DEPENDENT.into_iter().chain([label_check]) {
            report.skip(name, "no instance was provisioned");
        }
        t.clean_up(&mut report, [ids.0, ids.1].into_iter().flatten().collect())
            .await;
        return report;
    };

    report
        .check("describe lists exactly what was provisioned, with its tags", async {
            let found = t.settled(&t.base, &[&pet_id, &cattle_id]).await?;
            for (id, spec) in [(&pet_id, &pet), (&cattle_id, &cattle)] {
                let d = found.iter().find(|d| &d.id == id).ok_or("listed above")?;
                let missing: Vec<String> = spec
                    .tags
                    .iter()
                    .filter(|(k, v)| d.tags.get(*k) != Some(*v))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "instance {id} is described without the tags it was provisioned with: {} (described tags: {:?})",
                        missing.join(", "),
                        d.tags
                    ));
                }
            }
            Ok(())
        })
        .await;
    report
        .check("describe keeps the LogicalID", async {
            let found = t.describe(&t.base, false).await?;
            match found.iter().find(|d| d.id == pet_id) {
                Some(d) if d.logical_id.as_deref() == Some(LOGICAL_ID) => Ok(()),
                Some(d) => Err(format!(
                    "instance {pet_id} was provisioned with LogicalID '{LOGICAL_ID}' but is described with {:?}",
                    d.logical_id
                )),
                None => Err(format!("instance {pet_id} is not described")),
            }
        })
        .await;
    report
        .check("describe selects by tags", async {
            let only_pet = t.with(&[(MEMBER_TAG, "pet")]);
            t.settled(&only_pet, &[&pet_id]).await?;
            let nobody = t.with(&[(MEMBER_TAG, "nobody")]);
            t.settled(&nobody, &[]).await?;
            Ok(())
        })
        .await;
    report
        .check("describe with properties lists the same instances", async {
            let found = t.describe(&t.base, true).await?;
            ids_are(
                &found,
                &[&pet_id, &cattle_id],
                "DescribeInstances with Properties=true",
            )
        })
        .await;
    report
        .check(DESCRIBE_BY_ID, async {
            // A plugin that does not know `IDs` answers every instance, which callers allow for:
            // it passes, as it works with every caller. What is asked for and exists must be
            // there; what does not exist must not.
            let ids = [pet_id.clone(), t.unknown_id()];
            let found = t
                .client
                .describe_instances_by_id(&t.base, true, &ids)
                .await
                .map_err(|e| format!("DescribeInstances with IDs {ids:?} failed: {e}"))?;
            let listed: Vec<&str> = found.iter().map(|d| d.id.as_str()).collect();
            if !listed.contains(&pet_id.as_str()) || listed.contains(&ids[1].as_str()) {
                return Err(format!(
                    "DescribeInstances with IDs {ids:?} listed {listed:?}: it must list {pet_id} \
                     and not {}",
                    ids[1]
                ));
            }
            Ok(())
        })
        .await;

    if options.relabel {
        report
            .check(LABEL_MERGES, async {
                for value in ["1", "2"] {
                    t.client
                        .label(&pet_id, t.pairs(&[(LABEL_TAG, value)]))
                        .await
                        .map_err(|e| format!("Label {pet_id} with {LABEL_TAG}={value}: {e}"))?;
                }
                let found = t.settled(&t.with(&[(LABEL_TAG, "2")]), &[&pet_id]).await?;
                let d = &found[0];
                if d.tags.get(MEMBER_TAG).map(String::as_str) != Some("pet") {
                    return Err(format!(
                        "after Label, instance {pet_id} lost its other tags: {:?}",
                        d.tags
                    ));
                }
                Ok(())
            })
            .await;
    } else {
        report
            .check(LABEL_FIXED, async {
                t.client
                    .label(&pet_id, t.pairs(&[(MEMBER_TAG, "pet")]))
                    .await
                    .map_err(|e| format!("Label with the tags it already has should succeed: {e}"))?;
                match t.client.label(&pet_id, t.pairs(&[(LABEL_TAG, "1")])).await {
                    Err(e) if !e.message.trim().is_empty() => Ok(()),
                    Err(_) => Err("Label refused a change with an empty message".into()),
                    Ok(()) => Err(
                        "Label of a new tag succeeded although Options::relabel is false; set it to true"
                            .into(),
                    ),
                }
            })
            .await;
    }
    report
        .check("label of an unknown ID is NotFound", async {
            let r = t
                .client
                .label(&t.unknown_id(), t.pairs(&[(LABEL_TAG, "1")]))
                .await;
            expect_kind("Label of an unknown ID", r, ErrorKind::NotFound)
        })
        .await;

    let destroyed = report
        .check("destroy removes the instance", async {
            t.client
                .destroy(&pet_id, DestroyContext::default())
                .await
                .map_err(|e| format!("Destroy {pet_id}: {e}"))?;
            t.settled(&t.base, &[&cattle_id]).await.map(|_| ())
        })
        .await;
    if destroyed {
        report
            .check("a second destroy is NotFound (404)", async {
                let r = t.client.destroy(&pet_id, DestroyContext::default()).await;
                expect_kind("A second Destroy of the same ID", r, ErrorKind::NotFound)
            })
            .await;
    } else {
        report.skip(
            "a second destroy is NotFound (404)",
            "the first destroy failed",
        );
    }
    report
        .check("destroy of an unknown ID is NotFound (404)", async {
            let r = t
                .client
                .destroy(&t.unknown_id(), DestroyContext::default())
                .await;
            expect_kind("Destroy of an unknown ID", r, ErrorKind::NotFound)
        })
        .await;
    if let Some(cursor) = changes_cursor {
        report
            .check(CHANGES_CHANGED, async {
                let c = client
                    .changes(&cursor, options.settle)
                    .await
                    .map_err(|e| format!("Changes after provisions and a destroy: {e}"))?;
                if c.changed || c.resync {
                    Ok(())
                } else {
                    Err(format!(
                        "Changes with a cursor taken before two provisions and a destroy answered \
                         nothing changed within {:?}: {c:?}",
                        options.settle
                    ))
                }
            })
            .await;
    } else if report.outcome(CHANGES_CHANGED).is_none() {
        report.skip(CHANGES_CHANGED, "no cursor to start from");
    }
    let rpc = client.rpc();
    report
        .check(
            "a malformed body gets 4xx with {\"Err\"}",
            refused_with_err(rpc, "Instance.Provision", b"{\"Spec\": ["),
        )
        .await;
    report
        .check(
            "an unknown method gets 4xx with {\"Err\"}",
            refused_with_err(rpc, "Instance.NoSuchMethod", b"{}"),
        )
        .await;

    let left = if destroyed {
        vec![cattle_id]
    } else {
        vec![pet_id, cattle_id]
    };
    t.clean_up(&mut report, left).await;
    report
}

const LABEL_MERGES: &str = "label merges tags";
const DESCRIBE_BY_ID: &str = "describe with IDs lists those named that exist";
const CHANGES_RESYNC: &str = "changes: an empty or unknown cursor answers Resync";
const CHANGES_CHANGED: &str = "changes: a cursor from before the provisions answers Changed";
const CHANGES_CHECKS: [&str; 2] = [CHANGES_RESYNC, CHANGES_CHANGED];
const LABEL_FIXED: &str = "label keeps tags and refuses a change";

/// The other checks that need provisioned instances (skipped when provisioning failed).
const DEPENDENT: [&str; 9] = [
    "describe lists exactly what was provisioned, with its tags",
    "describe keeps the LogicalID",
    "describe selects by tags",
    "describe with properties lists the same instances",
    DESCRIBE_BY_ID,
    "label of an unknown ID is NotFound",
    "destroy removes the instance",
    "a second destroy is NotFound (404)",
    "destroy of an unknown ID is NotFound (404)",
];

struct Tester<'a> {
    client: &'a InstanceClient,
    options: &'a Options,
    /// The options' tags and this run's tag: on every instance, in every describe.
    base: Tags,
}

impl Tester<'_> {
    fn spec(&self, member: &str, logical_id: Option<&str>) -> Spec {
        Spec {
            properties: Some(self.options.properties.clone()),
            tags: self.with(&[(MEMBER_TAG, member)]),
            init: String::new(),
            logical_id: logical_id.map(str::to_string),
            attachments: Vec::new(),
        }
    }

    fn pairs(&self, pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The base tags plus `pairs`.
    fn with(&self, pairs: &[(&str, &str)]) -> Tags {
        let mut t = self.base.clone();
        t.extend(self.pairs(pairs));
        t
    }

    fn unknown_id(&self) -> String {
        format!("conformance-no-such-instance-{}", self.base[RUN_TAG])
    }

    async fn provision(&self, spec: Spec) -> Result<String, String> {
        let what = spec.tags[MEMBER_TAG].clone();
        match self.client.provision(spec).await {
            Ok(id) if !id.trim().is_empty() => Ok(id),
            Ok(_) => Err(format!("Provision of the {what} returned an empty ID")),
            Err(e) => Err(format!("Provision of the {what} failed: {e}")),
        }
    }

    async fn describe(
        &self,
        tags: &Tags,
        properties: bool,
    ) -> Result<Vec<crate::spi::instance::Description>, String> {
        self.client
            .describe_instances(tags, properties)
            .await
            .map_err(|e| format!("DescribeInstances {tags:?} failed: {e}"))
    }

    /// Describes `tags` until exactly `want` are listed, for up to the settle time.
    async fn settled(
        &self,
        tags: &Tags,
        want: &[&String],
    ) -> Result<Vec<crate::spi::instance::Description>, String> {
        let deadline = Instant::now() + self.options.settle;
        loop {
            let found = self.describe(tags, false).await?;
            match ids_are(&found, want, &format!("DescribeInstances {tags:?}")) {
                Ok(()) => return Ok(found),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{e} (waited {:?})", self.options.settle))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Destroys what the run left and checks that nothing with its tag remains.
    async fn clean_up(&self, report: &mut Report, left: Vec<String>) {
        report
            .check("clean up: nothing of this run is left", async {
                let mut errors = Vec::new();
                for id in &left {
                    if let Err(e) = self.client.destroy(id, DestroyContext::default()).await {
                        errors.push(format!("Destroy {id}: {e}"));
                    }
                }
                if !errors.is_empty() {
                    return Err(errors.join("; "));
                }
                self.settled(&self.base, &[]).await.map(|_| ())
            })
            .await;
    }
}

fn ids_are(
    found: &[crate::spi::instance::Description],
    want: &[&String],
    what: &str,
) -> Result<(), String> {
    let got: BTreeSet<&str> = found.iter().map(|d| d.id.as_str()).collect();
    let want: BTreeSet<&str> = want.iter().map(|s| s.as_str()).collect();
    if got == want && got.len() == found.len() {
        Ok(())
    } else {
        Err(format!("{what} listed {got:?}; expected exactly {want:?}"))
    }
}
