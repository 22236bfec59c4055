//! The SDK's conformance kit against instance-qemu as a real process, with real TCG guests.

mod common;

use std::time::Duration;

use common::{prerequisites, Lab};
use infrakit_sdk::conformance;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_qemu_passes_the_instance_conformance_suite() {
    let Ok(_lock) = prerequisites("instance-qemu conformance test") else {
        return;
    };
    let lab = Lab::new("conf");
    let plugin = lab.start_plugin();
    // The suite destroys VMs before their guests have booted far enough to hear the ACPI button:
    // a short power-down wait, then QEMU is killed.
    let mut properties = lab.properties();
    properties["PowerdownTimeout"] = json!(3);
    let mut options = conformance::instance::Options::new(properties);
    options.invalid_properties = Some(json!({"ImageDir": common::image_dir(), "Memory": "lots"}));
    options.settle = Duration::from_secs(30);
    let report = conformance::instance::run(&plugin.client(), options).await;
    eprintln!("{report}");
    assert!(
        report.passed(),
        "{report}\nplugin log:\n{}",
        lab.plugin_log()
    );
    assert!(lab.qemus().is_empty(), "the suite's VMs are still running");
    assert!(lab.taps().is_empty(), "taps left: {:?}", lab.taps());
}
