use serde_json::json;

use super::*;
use crate::core::policy::CountOrPercent;

fn spec(properties: Value) -> GroupSpec {
    GroupSpec {
        id: "g".into(),
        properties: Some(properties),
    }
}

fn cattle() -> Value {
    json!({
        "Allocation": {"Size": 5},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "v1"}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hello"]}},
        "Policies": {"Update": {"MaxSurge": 1}}
    })
}

fn refused(properties: Value) -> String {
    parse(&spec(properties.clone()), Origin::Commit)
        .expect_err(&format!("must be refused: {properties}"))
}

#[test]
fn a_valid_spec_gives_allocation_policy_and_the_hash_of_instance_and_flavor() {
    let g = parse(&spec(cattle()), Origin::Commit).expect("valid");
    assert_eq!(g.allocation, Allocation::Size(5));
    assert_eq!(g.policy.update.max_surge, CountOrPercent::Count(1));
    let hash = config_hash(
        &json!({"Properties": {"Note": "v1"}, "Plugin": "instance-file"}),
        &json!({"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hello"]}}),
    );
    assert_eq!(g.hash, hash);
    let d = g.desired(false);
    assert_eq!(d.allocation, Allocation::Size(5));
    assert_eq!(g.desired(true).allocation, Allocation::Size(0));
}

#[test]
fn unknown_fields_are_refused_at_every_level_naming_the_path() {
    let cases = [
        (
            json!({"Allocation": {"Size": 3, "Sise": 4}}),
            "Properties.Allocation.Sise",
        ),
        (
            json!({"Allocation": {"Sise": 3}}),
            "Properties.Allocation.Sise",
        ),
        (json!({"Alocation": {"Size": 3}}), "Alocation"),
        (
            json!({"Instance": {"Plugin": "instance-file", "Propertys": {}}}),
            "Properties.Instance.Propertys",
        ),
        (
            json!({"Flavor": {"Plugin": "flavor-vanilla", "Plugn": "x"}}),
            "Properties.Flavor.Plugn",
        ),
        (
            json!({"Policies": {"Update": {"MaxSurg": 1}}}),
            "Properties.Policies.Update.MaxSurg",
        ),
        (
            json!({"Policies": {"Remediaton": {}}}),
            "Properties.Policies.Remediaton",
        ),
        (
            json!({"Policies": {"ScaleDown": {"Ordr": "oldest_first"}}}),
            "Properties.Policies.ScaleDown.Ordr",
        ),
    ];
    for (change, path) in cases {
        let mut props = cattle();
        for (k, v) in change.as_object().expect("object") {
            if k == "Alocation" {
                props.as_object_mut().expect("object").remove("Allocation");
            }
            props[k] = v.clone();
        }
        let err = refused(props);
        assert!(err.contains(path), "{err} (wanted {path})");
        assert!(err.starts_with("group 'g': "), "{err}");
    }
}

#[test]
fn wrong_types_are_named_by_path() {
    let cases = [
        (json!({"Allocation": [1]}), "Properties.Allocation"),
        (
            json!({"Allocation": {"Size": -3}}),
            "Properties.Allocation.Size",
        ),
        (
            json!({"Allocation": {"Size": "3"}}),
            "Properties.Allocation.Size",
        ),
        (
            json!({"Allocation": {"LogicalIDs": ["a", 2]}}),
            "Properties.Allocation.LogicalIDs[1]",
        ),
        (
            json!({"Policies": {"Update": {"MinReadySeconds": "x"}}}),
            "Properties.Policies.Update.MinReadySeconds",
        ),
        (
            json!({"Policies": {"Update": {"FailureAction": "explode"}}}),
            "Properties.Policies.Update.FailureAction",
        ),
    ];
    for (change, path) in cases {
        let mut props = cattle();
        for (k, v) in change.as_object().expect("object") {
            props[k] = v.clone();
        }
        let err = refused(props);
        assert!(err.contains(path), "{err} (wanted {path})");
    }
}

#[test]
fn limits_keep_a_spec_from_hurting_the_controller() {
    let with = |alloc: Value| {
        let mut p = cattle();
        p["Allocation"] = alloc;
        p
    };
    assert!(refused(with(json!({"Size": 1_000_000_000u64}))).contains("more than the 100000"));
    assert!(parse(&spec(with(json!({"Size": MAX_SIZE}))), Origin::Commit).is_ok());
    let many: Vec<String> = (0..=MAX_LOGICAL_IDS).map(|i| format!("p{i}")).collect();
    assert!(refused(with(json!({ "LogicalIDs": many }))).contains("more than the 10000"));
    assert!(refused(with(json!({"LogicalIDs": ["a\u{0}b"]}))).contains("control character"));
    let long = "x".repeat(MAX_LOGICAL_ID_LEN + 1);
    assert!(refused(with(json!({ "LogicalIDs": [long] }))).contains("more than 253"));
    assert!(refused(with(json!({"LogicalIDs": ["a", "a"]}))).contains("twice"));
    assert!(refused(with(json!({"LogicalIDs": [""]}))).contains("empty"));
    assert!(refused(with(json!({"Size": 2, "LogicalIDs": ["a"]}))).contains("both"));
    assert!(refused(with(json!({}))).contains("either Size"));

    let mut nested = json!("leaf");
    for _ in 0..=MAX_PROPERTIES_DEPTH {
        nested = json!({ "n": nested });
    }
    let mut deep = cattle();
    deep["Instance"]["Properties"] = nested;
    assert!(refused(deep).contains("nested more than 64"));

    let mut big = cattle();
    big["Instance"]["Properties"] = json!({"Blob": "x".repeat(MAX_SPEC_BYTES)});
    assert!(refused(big).contains("bytes, more than"));
}

#[test]
fn logical_ids_that_print_as_something_else_are_refused_naming_the_code_point() {
    let pets = |ids: Value| {
        let mut p = cattle();
        p["Allocation"] = json!({ "LogicalIDs": ids });
        p
    };
    for (hidden, code) in [
        ("n1\u{200B}", "U+200B"),
        ("n\u{200C}1", "U+200C"),
        ("n\u{200D}1", "U+200D"),
        ("\u{2060}n1", "U+2060"),
        ("\u{FEFF}n1", "U+FEFF"),
        ("\u{202E}gnp.exe", "U+202E"),
        ("\u{202A}x", "U+202A"),
        ("\u{2066}x\u{2069}", "U+2066"),
        ("soft\u{AD}hyphen", "U+00AD"),
        ("line\u{2028}break", "U+2028"),
        ("tag\u{E0041}", "U+E0041"),
    ] {
        let err = refused(pets(json!(["n1", hidden])));
        assert!(
            err.contains("LogicalIDs[1]") && err.contains(code) && err.contains("invisible"),
            "{hidden:?}: {err}"
        );
    }
    // What people write stays accepted: addresses, host names, letters of any script.
    let fine = pets(json!([
        "10.0.0.1",
        "fe80::1",
        "db-1.example.com",
        "ñandú",
        "節點-1"
    ]));
    assert!(parse(&spec(fine), Origin::Commit).is_ok());
    // A record stored by an earlier version still loads (the controller must not lose it).
    assert!(parse(&spec(pets(json!(["n1", "n1\u{200B}"]))), Origin::Stored).is_ok());
}

#[test]
fn ids_are_checked_before_anything_else() {
    for id in ["../victim", "", ".hidden", "a/b", "x\u{0}"] {
        let s = GroupSpec {
            id: id.into(),
            properties: Some(cattle()),
        };
        let err = parse(&s, Origin::Commit).expect_err(id);
        assert!(err.contains("invalid group ID"), "{err}");
    }
}

#[test]
fn a_stored_empty_allocation_is_a_group_scaled_to_zero() {
    let mut p = cattle();
    p["Allocation"] = json!({});
    assert_eq!(
        parse(&spec(p), Origin::Stored).expect("stored").allocation,
        Allocation::Size(0)
    );
}

#[test]
fn go_style_nulls_and_infrakit_files_parse() {
    let g = parse(
        &spec(json!({
            "Allocation": {"LogicalIDs": ["10.0.0.1", "10.0.0.2"], "Size": null},
            "Instance": {"Plugin": "instance-docker", "Properties": null},
            "Flavor": {"Plugin": "flavor-zookeeper"}
        })),
        Origin::Commit,
    )
    .expect("valid");
    assert_eq!(
        g.allocation,
        Allocation::Pets(vec!["10.0.0.1".into(), "10.0.0.2".into()])
    );
    // The properties serialize back to the same names InfraKit's files use.
    let back = serde_json::to_value(&g.properties).expect("serialize");
    assert_eq!(
        back["Allocation"],
        json!({"LogicalIDs": ["10.0.0.1", "10.0.0.2"]})
    );
    assert_eq!(back["Instance"], json!({"Plugin": "instance-docker"}));
}

#[test]
fn the_schema_is_derived_from_the_parsed_types() {
    let s = schema();
    let text = s.to_string();
    for word in [
        "Allocation",
        "LogicalIDs",
        "MaxSurge",
        "MinReadySeconds",
        "Remediation",
        "newest_first",
        "additionalProperties",
    ] {
        assert!(text.contains(word), "schema lacks {word}: {text}");
    }
    assert_eq!(s["title"], "InfraKit group spec");
}

#[test]
fn the_design_example_round_trips_with_the_same_field_names() {
    let text = r#"{"ID": "cattle",
     "Properties": {
       "Allocation": {"Size": 5},
       "Instance": {"Plugin": "instance-file", "Properties": {"Note": "v1"}},
       "Flavor": {"Plugin": "flavor-vanilla",
                  "Properties": {"Init": ["echo hello"], "Tags": {"tier": "web"}}}}}"#;
    let original: Value = serde_json::from_str(text).expect("json");
    let s: GroupSpec = serde_json::from_str(text).expect("spec");
    let g = parse(&s, Origin::Commit).expect("valid");
    assert_eq!(g.size(), 5);
    let back = json!({"ID": s.id, "Properties": g.properties});
    assert_eq!(back, original);
}
