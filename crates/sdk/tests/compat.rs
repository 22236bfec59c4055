//! Group files written for Go InfraKit load into our types and serialize back with the same names.

use infrakit_sdk::spi::flavor::Health;
use infrakit_sdk::spi::group::{GroupProperties, GroupSpec};
use infrakit_sdk::spi::instance::{Description, Spec};
use serde_json::{json, Value};

const DESIGN_EXAMPLE: &str = r#"{"ID": "cattle",
 "Properties": {
   "Allocation": {"Size": 5},
   "Instance": {"Plugin": "instance-file", "Properties": {"Note": "v1"}},
   "Flavor": {"Plugin": "flavor-vanilla",
              "Properties": {"Init": ["echo hello"], "Tags": {"tier": "web"}}}}}"#;

#[test]
fn infrakit_group_file_round_trips_with_the_same_field_names() {
    let original: Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
    let spec: GroupSpec = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
    assert_eq!(spec.id, "cattle");
    let props: GroupProperties = serde_json::from_value(spec.properties.clone().unwrap()).unwrap();
    assert_eq!(props.allocation.size, 5);
    assert_eq!(props.instance.plugin, "instance-file");
    assert_eq!(props.flavor.plugin, "flavor-vanilla");

    // Back to JSON: identical document, field for field.
    let mut back = serde_json::to_value(&spec).unwrap();
    back["Properties"] = serde_json::to_value(&props).unwrap();
    assert_eq!(back, original);
}

#[test]
fn pets_and_go_style_nulls_parse() {
    let props: GroupProperties = serde_json::from_value(json!({
        "Allocation": {"LogicalIDs": ["10.0.0.1", "10.0.0.2"]},
        "Instance": {"Plugin": "instance-docker", "Properties": null},
        "Flavor": {"Plugin": "flavor-zookeeper"}
    }))
    .unwrap();
    assert_eq!(props.allocation.logical_ids, vec!["10.0.0.1", "10.0.0.2"]);
    let back = serde_json::to_value(&props).unwrap();
    assert_eq!(
        back["Allocation"],
        json!({"LogicalIDs": ["10.0.0.1", "10.0.0.2"]})
    );

    // Go writes null for empty maps and slices.
    let d: Description =
        serde_json::from_value(json!({"ID": "i-1", "LogicalID": null, "Tags": null})).unwrap();
    assert_eq!(d.id, "i-1");
    assert!(d.tags.is_empty() && d.logical_id.is_none());
    let s: Spec =
        serde_json::from_value(json!({"Tags": null, "Attachments": null, "Init": null})).unwrap();
    assert_eq!(s, Spec::default());
    assert_eq!(serde_json::to_value(&s).unwrap(), json!({}));
}

#[test]
fn a_typo_in_a_group_file_names_the_field() {
    let err = serde_json::from_value::<GroupProperties>(json!({
        "Alocation": {"Size": 1},
        "Instance": {"Plugin": "i"}, "Flavor": {"Plugin": "f"}
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("Alocation"), "{err}");
}

#[test]
fn health_reads_words_and_go_numbers() {
    assert_eq!(
        serde_json::from_value::<Health>(json!(1)).unwrap(),
        Health::Healthy
    );
    assert_eq!(
        serde_json::from_value::<Health>(json!("unhealthy")).unwrap(),
        Health::Unhealthy
    );
    assert_eq!(
        serde_json::to_value(Health::Unknown).unwrap(),
        json!("unknown")
    );
    assert!(serde_json::from_value::<Health>(json!("meh")).is_err());
}
