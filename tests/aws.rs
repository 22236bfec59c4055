//! The group controller with the EC2 instance plugin, against the EC2 emulator (moto in server
//! mode): a group of 5 converges, 2 instances terminated behind its back are replaced, a rolling
//! update replaces every instance, and a destroy terminates them all.
//!
//! The plugin is its own binary (crates/instance-aws), which cargo does not build for this
//! package's tests: `cargo build -p infrakit-instance-aws` first (`make test` does), or point
//! INFRAKIT_AWS_BIN at one. Without moto (scripts/setup-moto.sh) the test skips loudly; under
//! CI=true it fails.

mod common;
#[path = "../crates/instance-aws/tests/emulator/mod.rs"]
mod emulator;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::World;
use emulator::{plugin_env, Moto, Plugin, AMI};
use serde_json::json;

/// An EC2 Query API call to moto, as a test acting behind the plugin's back (moto reads the
/// region and account from the Authorization header and does not check the signature).
fn ec2_call(port: u16, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{}/ec2/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
        emulator::REGION,
        body.len()
    );
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out
}

/// The IDs of the group's instances EC2 reports in `state`.
fn ids_in_state(port: u16, group: &str, state: &str) -> BTreeSet<String> {
    let xml = ec2_call(
        port,
        &format!(
            "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Ainfrakit.group\
             &Filter.1.Value.1={group}&Filter.2.Name=instance-state-name&Filter.2.Value.1={state}"
        ),
    );
    xml.split("<instanceId>")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once("</instanceId>")
                .map(|(id, _)| id.to_string())
        })
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn group(size: u64, instance_type: &str) -> serde_json::Value {
    json!({"ID": "ec2-web", "Properties": {
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-aws",
                     "Properties": {"ImageId": AMI, "InstanceType": instance_type}},
        "Flavor": {"Plugin": "flavor-vanilla",
                   "Properties": {"Init": ["echo hello"], "Tags": {"tier": "web"}}}
    }})
}

#[test]
fn a_group_on_ec2_converges_heals_rolls_and_is_destroyed() {
    let Some(moto) = Moto::start(&[]) else { return };
    let w = World::new();
    std::fs::create_dir_all(w.plugins_dir()).expect("plugins dir");
    let _plugin = Plugin::start_on(
        &w.path(""),
        &w.socket("instance-aws"),
        &plugin_env(&w.path(""), &moto.url()),
    );
    let _vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let store = w.path("store");
    let _group = w.serve(
        "group",
        &[
            "group",
            "--store",
            store.to_str().expect("path"),
            "--poll-interval",
            "1s",
        ],
    );
    let port = moto.port;

    // A group of 5 converges: five running instances, launched in few requests.
    let v1 = w.write("v1.json", &group(5, "t3.micro").to_string());
    w.ok(&["group", "commit", v1.to_str().expect("path")]);
    w.ok(&["group", "watch", "ec2-web", "--timeout", "120s"]);
    let first = ids_in_state(port, "ec2-web", "running");
    assert_eq!(first.len(), 5, "{first:?}");

    // Two terminated behind the controller's back are replaced.
    let gone: Vec<&String> = first.iter().take(2).collect();
    ec2_call(
        port,
        &format!(
            "Action=TerminateInstances&Version=2016-11-15&InstanceId.1={}&InstanceId.2={}",
            gone[0], gone[1]
        ),
    );
    wait_until(
        "five running again, without the two terminated",
        Duration::from_secs(120),
        || {
            let now = ids_in_state(port, "ec2-web", "running");
            now.len() == 5 && !now.contains(gone[0]) && !now.contains(gone[1])
        },
    );
    w.ok(&["group", "watch", "ec2-web", "--timeout", "120s"]);
    let healed = ids_in_state(port, "ec2-web", "running");

    // A rolling update: a new InstanceType replaces every instance.
    let v2 = w.write("v2.json", &group(5, "t3.small").to_string());
    w.ok(&["group", "commit", v2.to_str().expect("path")]);
    w.ok(&["group", "watch", "ec2-web", "--timeout", "180s"]);
    let rolled = ids_in_state(port, "ec2-web", "running");
    assert_eq!(rolled.len(), 5, "{rolled:?}");
    assert!(
        rolled.is_disjoint(&healed),
        "every instance replaced: {healed:?} → {rolled:?}"
    );
    let described = w.ok(&[
        "instance",
        "--name",
        "instance-aws",
        "describe",
        "--tags",
        "infrakit.group=ec2-web",
    ]);
    for id in &rolled {
        assert!(described.contains(id.as_str()), "{id} in {described}");
    }

    // Destroy: every instance terminated, none left running.
    w.ok(&["group", "destroy", "ec2-web"]);
    wait_until(
        "no instance of the group running",
        Duration::from_secs(60),
        || ids_in_state(port, "ec2-web", "running").is_empty(),
    );
    let terminated = ids_in_state(port, "ec2-web", "terminated");
    assert!(
        rolled.is_subset(&terminated) && healed.is_subset(&terminated),
        "all terminated: {terminated:?}"
    );
}
