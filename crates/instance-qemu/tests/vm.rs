//! instance-qemu with real QEMU (TCG) guests, the plugin a real process in a network namespace
//! of the test's own: boot scripts run in the guests, static addresses answer, a killed QEMU is
//! reported and gone, a restarted plugin adopts its VMs, destroy leaves nothing, bad properties
//! and a missing image are refused with messages that say what to fix.

mod common;

use std::time::{Duration, Instant};

use common::{prerequisites, wait_until, Lab};
use infrakit_sdk::prelude::*;
use serde_json::json;

/// Generous: two cores shared with other builds boot a TCG guest in 4 to 20 seconds.
const BOOT: Duration = Duration::from_secs(240);

fn spec(lab: &Lab, ip: &str, init: &str) -> Spec {
    Spec {
        properties: Some(lab.properties()),
        tags: Tags::from([
            ("infrakit.group".to_string(), "vmtest".to_string()),
            ("tier".to_string(), "db".to_string()),
        ]),
        init: init.to_string(),
        logical_id: Some(ip.to_string()),
        attachments: vec![],
    }
}

async fn ids(client: &impl InstancePlugin) -> Vec<String> {
    let mut ids: Vec<String> = client
        .describe_instances(&Tags::new(), false)
        .await
        .expect("describe")
        .into_iter()
        .map(|d| d.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_run_their_boot_scripts_survive_a_plugin_restart_and_leave_nothing() {
    let Ok(_lock) = prerequisites("instance-qemu VM test") else {
        return;
    };
    let lab = Lab::new("life");
    let plugin = lab.start_plugin();
    let client = plugin.client();

    // Two pets with boot scripts that read their tags and report on the console.
    let init =
        "#!/bin/sh\necho \"boot-script ran on $(hostname) tags=$(cat /run/infrakit/tags)\"\n";
    let a = client
        .provision(spec(&lab, "10.231.0.11", init))
        .await
        .expect("provision a");
    let b = client
        .provision(spec(&lab, "10.231.0.12", init))
        .await
        .expect("provision b");
    for id in [&a, &b] {
        let console = wait_until(&format!("{id}'s boot script"), BOOT, || {
            let c = lab.console(id);
            c.contains("infrakit-guest: init exited").then_some(c)
        });
        assert!(
            console.contains("infrakit-guest: init exited 0"),
            "{id}'s boot script failed:\n{console}"
        );
        assert!(
            console.contains("boot-script ran on") && console.contains("\"tier\":\"db\""),
            "{id}'s boot script did not see its tags:\n{console}"
        );
    }
    for ip in ["10.231.0.11", "10.231.0.12"] {
        wait_until(&format!("{ip} to answer a ping"), BOOT, || {
            lab.pings(ip).then_some(())
        });
    }
    let described = client
        .describe_instances(&Tags::from([("tier".into(), "db".into())]), true)
        .await
        .expect("describe");
    assert_eq!(described.len(), 2, "{described:?}");
    for d in &described {
        let p = d.properties.as_ref().expect("properties");
        assert_eq!(p["Status"], "running", "{p}");
        assert_eq!(p["Accel"], "tcg", "{p}");
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(lab.qemus().len(), 2);
    assert_eq!(lab.taps().len(), 2, "{:?}", lab.taps());

    // The plugin crashes and comes back: same VMs, no new QEMU.
    let before = lab.qemus();
    plugin.kill();
    let plugin = lab.start_plugin();
    let client = plugin.client();
    assert_eq!(
        ids(&client).await,
        both,
        "the restarted plugin lists other VMs"
    );
    let mut after = lab.qemus();
    after.sort();
    let mut before_sorted = before.clone();
    before_sorted.sort();
    assert_eq!(after, before_sorted, "a restart started or lost a QEMU");
    assert!(
        lab.plugin_log().contains("adopted a running VM"),
        "{}",
        lab.plugin_log()
    );

    // A QEMU killed behind the plugin's back: reported at once, gone from describe, no tap left.
    let cursor = client
        .changes("", Duration::ZERO)
        .await
        .expect("changes")
        .cursor;
    let pid_a = std::fs::read_to_string(lab.state_dir().join(&a).join("qemu.pid"))
        .expect("a's pid file")
        .trim()
        .to_string();
    let killed = Instant::now();
    common::run_ok("kill", &["-9", &pid_a]);
    let change = client
        .changes(&cursor, Duration::from_secs(30))
        .await
        .expect("changes");
    let reported = killed.elapsed();
    eprintln!("a killed QEMU was reported after {reported:?}");
    assert!(change.changed, "no change reported: {change:?}");
    assert!(
        reported < Duration::from_secs(5),
        "the change took {reported:?}"
    );
    assert_eq!(ids(&client).await, vec![b.clone()]);
    assert!(!lab.state_dir().join(&a).exists(), "{a}'s files are left");
    wait_until("a's tap to go", Duration::from_secs(10), || {
        (lab.taps().len() == 1).then_some(())
    });

    // Destroy: ACPI power-down (the guest's acpid powers off), nothing left.
    let started = Instant::now();
    client
        .destroy(&b, DestroyContext::default())
        .await
        .expect("destroy b");
    eprintln!("destroy with ACPI power-down took {:?}", started.elapsed());
    assert!(ids(&client).await.is_empty());
    assert!(lab.qemus().is_empty(), "QEMU left: {:?}", lab.qemus());
    assert!(lab.taps().is_empty(), "taps left: {:?}", lab.taps());
    let left = lab.leftovers();
    assert!(
        left.is_empty(),
        "files left in the state directory: {left:?}"
    );
    let e = client
        .destroy(&b, DestroyContext::default())
        .await
        .expect_err("a second destroy");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        !lab.plugin_log().contains("killing QEMU"),
        "the guest did not power down on the ACPI button:\n{}",
        lab.plugin_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_properties_and_a_missing_image_get_errors_that_say_what_to_fix() {
    let Ok(_lock) = prerequisites("instance-qemu refusal test") else {
        return;
    };
    let lab = Lab::new("bad");
    let plugin = lab.start_plugin();
    let client = plugin.client();

    let e = client
        .validate(&json!({"ImageDir": common::image_dir(), "Memroy": 128}))
        .await
        .expect_err("a typo");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(e.message.contains("Memroy"), "{e}");

    let missing = json!({"ImageDir": "/nonexistent/vm-image"});
    let e = client.validate(&missing).await.expect_err("no image");
    assert!(e.message.contains("make vm-image"), "{e}");
    let e = client
        .provision(Spec {
            properties: Some(missing),
            ..Spec::default()
        })
        .await
        .expect_err("no image");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");

    let e = client
        .provision(Spec {
            properties: Some(
                json!({"ImageDir": common::image_dir(), "Network": {"Bridge": "nosuchbr"}}),
            ),
            ..Spec::default()
        })
        .await
        .expect_err("no bridge");
    assert!(
        e.message.contains("nosuchbr") && e.message.contains("not a bridge"),
        "{e}"
    );

    let e = client
        .provision(Spec {
            properties: Some(json!({"ImageDir": common::image_dir()})),
            logical_id: Some("10.231.0.50".into()),
            ..Spec::default()
        })
        .await
        .expect_err("an address without a network");
    assert!(e.message.contains("Network"), "{e}");

    let pets = AllocationMethod {
        logical_ids: vec!["10.231.0.51".into()],
        ..AllocationMethod::default()
    };
    let e = client
        .validate_with_allocation(&json!({"ImageDir": common::image_dir()}), &pets)
        .await
        .expect_err("addresses without a network, at commit");
    assert!(
        e.message.contains("10.231.0.51") && e.message.contains("Network"),
        "{e}"
    );

    // A second plugin on the same state directory refuses to start (it would manage the same VMs).
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_infrakit-instance-qemu"))
        .arg("--socket")
        .arg(lab.dir.path().join("second.sock"))
        .arg("--state-dir")
        .arg(lab.state_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a second plugin");
    let out = second.wait_with_output().expect("second plugin's exit");
    let said = common::text(&out);
    assert!(!out.status.success(), "a second plugin started: {said}");
    assert!(
        said.contains("another instance-qemu plugin uses the state directory"),
        "{said}"
    );

    // None of the refusals left a VM or a file behind.
    assert!(ids(&client).await.is_empty());
    assert!(lab.qemus().is_empty());
    let left = lab.leftovers();
    assert!(left.is_empty(), "refused provisions left files: {left:?}");
}
