//! Go InfraKit's JSON (nulls for empty maps and slices, health as numbers) loads into our types.
//! Group files are checked by infrakit-group's spec tests.

use infrakit_sdk::spi::flavor::Health;
use infrakit_sdk::spi::instance::{Description, Spec};
use serde_json::json;

#[test]
fn go_style_nulls_parse() {
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
