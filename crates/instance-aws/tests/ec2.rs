//! The plugin's binary against the EC2 emulator (moto in server mode): the conformance kit, and
//! what only a cloud plugin must get right (UserData, private IPs, termination, a crash in the
//! middle of a launch, and errors a user can act on).
//!
//! Each test starts its own moto on a free loopback port and its own plugin process, and stops
//! both. Without moto a test skips loudly (fails under CI=true): scripts/setup-moto.sh installs it.

mod emulator;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use emulator::{plugin_env, wait_until, Moto, Plugin, Proxy, AMI};
use infrakit_sdk::conformance::instance as conformance;
use infrakit_sdk::spi::instance::{DestroyContext, InstancePlugin, Spec, Tags};
use infrakit_sdk::ErrorKind;
use serde_json::json;

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spec(properties: serde_json::Value, tags: Tags) -> Spec {
    Spec {
        properties: Some(properties),
        tags,
        ..Spec::default()
    }
}

/// An EC2 client of the test's own, to look behind the plugin's back (and act out of band).
async fn sdk_client(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(emulator::REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// Every instance in the emulator carrying `key=value`, with its state, as EC2 itself lists them
/// (terminated ones included).
async fn ec2_states(endpoint: &str, key: &str, value: &str) -> BTreeMap<String, String> {
    let client = sdk_client(endpoint).await;
    let out = client
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances by the test");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn passes_the_conformance_kit() {
    let Some(moto) = Moto::start(&[]) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(dir.path(), &plugin_env(dir.path(), &moto.url()));
    let mut options =
        conformance::Options::new(json!({"ImageId": AMI, "InstanceType": "t3.micro"}));
    options.invalid_properties = Some(json!({"ImageId": AMI, "InstanceTyp": "t3.micro"}));
    let report = conformance::run(&plugin.client(), options).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.outcome == infrakit_sdk::conformance::Outcome::Passed),
        "every check runs (Changes included): {report}"
    );
}

#[tokio::test]
async fn provisions_with_tags_and_user_data_then_describes() {
    let Some(moto) = Moto::start(&[]) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(dir.path(), &plugin_env(dir.path(), &moto.url()));
    let client = plugin.client();
    let init = "#!/bin/sh\necho hello from infrakit > /tmp/hello\n";
    let mut s = spec(
        json!({"ImageId": AMI, "InstanceType": "t3.small"}),
        tags(&[
            ("infrakit.group", "web"),
            ("infrakit.config.hash", "abc123"),
            ("tier", "front"),
        ]),
    );
    s.init = init.to_string();
    let id = client.provision(s).await.expect("provision");
    assert!(id.starts_with("i-"), "an EC2 instance ID: {id}");

    let found = client
        .describe_instances(&tags(&[("infrakit.group", "web")]), true)
        .await
        .expect("describe");
    assert_eq!(found.len(), 1, "{found:?}");
    let d = &found[0];
    assert_eq!(d.id, id);
    assert_eq!(d.tags.get("tier").map(String::as_str), Some("front"));
    assert_eq!(
        d.tags.get("infrakit.config.hash").map(String::as_str),
        Some("abc123")
    );
    let props = d.properties.as_ref().expect("properties");
    assert_eq!(props["InstanceType"], "t3.small", "{props}");
    assert!(
        props["State"] == "running" || props["State"] == "pending",
        "{props}"
    );

    // Behind the plugin's back: EC2 has the tags and the Init as base64 user data.
    let ec2 = sdk_client(&moto.url()).await;
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("DescribeInstanceAttribute");
    let user_data = attr
        .user_data()
        .and_then(|u| u.value())
        .expect("user data set");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(user_data)
        .expect("base64 user data");
    assert_eq!(String::from_utf8_lossy(&decoded), init);
    assert_eq!(
        ec2_states(&moto.url(), "infrakit.group", "web").await.len(),
        1
    );

    let none = client
        .describe_instances(&tags(&[("infrakit.group", "other")]), false)
        .await
        .expect("describe other");
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn pets_keep_their_private_ips() {
    let Some(moto) = Moto::start(&[]) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(dir.path(), &plugin_env(dir.path(), &moto.url()));
    let client = plugin.client();
    // moto's default VPC has a default subnet per zone; the pets' IPs are in the first one.
    let ec2 = sdk_client(&moto.url()).await;
    let subnets = ec2.describe_subnets().send().await.expect("subnets");
    let subnet = subnets
        .subnets()
        .iter()
        .find(|s| s.cidr_block() == Some("172.31.0.0/20"))
        .or_else(|| subnets.subnets().first())
        .expect("a default subnet");
    let subnet_id = subnet.subnet_id().expect("subnet id").to_string();
    let base = subnet
        .cidr_block()
        .expect("cidr")
        .split('/')
        .next()
        .expect("ip")
        .to_string();
    let octets: Vec<&str> = base.split('.').collect();
    let ip = |n: u8| format!("{}.{}.{}.{n}", octets[0], octets[1], octets[2]);
    let properties = json!({"ImageId": AMI, "SubnetId": subnet_id});

    let pet = |logical: String| Spec {
        properties: Some(properties.clone()),
        tags: tags(&[
            ("infrakit.group", "pets"),
            ("infrakit.logical_id", &logical),
        ]),
        logical_id: Some(logical),
        ..Spec::default()
    };
    let first = client
        .provision(pet(ip(10)))
        .await
        .expect("provision pet .10");
    let second = client
        .provision(pet(ip(11)))
        .await
        .expect("provision pet .11");
    // A provision of a pet that exists (a retry) returns it instead of launching another.
    let again = client
        .provision(pet(ip(10)))
        .await
        .expect("provision .10 again");
    assert_eq!(again, first, "a pet is launched once");

    let described = client
        .describe_instances(&tags(&[("infrakit.group", "pets")]), true)
        .await
        .expect("describe");
    assert_eq!(described.len(), 2, "{described:?}");
    for (id, want) in [(&first, ip(10)), (&second, ip(11))] {
        let d = described.iter().find(|d| &d.id == id).expect("described");
        assert_eq!(d.logical_id.as_deref(), Some(want.as_str()));
        let props = d.properties.as_ref().expect("properties");
        assert_eq!(props["PrivateIpAddress"], want.as_str(), "{props}");
    }

    // Destroyed: no longer described, its sibling untouched. (Replacing it at the same address
    // is EC2's business once the old one has terminated; moto never frees a terminated
    // instance's address, so it cannot be shown here.)
    client
        .destroy(&first, DestroyContext::default())
        .await
        .expect("destroy .10");
    let left = client
        .describe_instances(&tags(&[("infrakit.group", "pets")]), false)
        .await
        .expect("describe after destroy");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, second);
    assert_eq!(left[0].logical_id.as_deref(), Some(ip(11).as_str()));
}

#[tokio::test]
async fn destroy_terminates_and_batches() {
    let Some(moto) = Moto::start(&[]) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(dir.path(), &plugin_env(dir.path(), &moto.url()));
    let client = plugin.client();
    let group = tags(&[("infrakit.group", "batch")]);
    // Ten equal provisions at once, then ten destroys at once.
    let shared = std::sync::Arc::new(plugin.client());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (c, s) = (shared.clone(), spec(json!({"ImageId": AMI}), group.clone()));
        set.spawn(async move { c.provision(s).await });
    }
    let ids: Vec<String> = set
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("provision"))
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 10, "ten instances: {ids:?}");
    let mut set = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let c = shared.clone();
        set.spawn(async move { c.destroy(&id, DestroyContext::default()).await });
    }
    for r in set.join_all().await {
        r.expect("destroy");
    }
    let states = ec2_states(&moto.url(), "infrakit.group", "batch").await;
    assert_eq!(states.len(), 10);
    assert!(
        states
            .values()
            .all(|s| s == "terminated" || s == "shutting-down"),
        "{states:?}"
    );
    let described = client
        .describe_instances(&group, false)
        .await
        .expect("describe");
    assert!(
        described.is_empty(),
        "terminated instances are not described: {described:?}"
    );
    let again = client.destroy(&ids[0], DestroyContext::default()).await;
    assert_eq!(again.expect_err("second destroy").kind, ErrorKind::NotFound);

    // The batching, counted on the plugin's own metrics: ten provisions and ten destroys in far
    // fewer than twenty requests of each kind.
    let counts = emulator_calls(&plugin.socket);
    let run = counts.get("RunInstances").copied().unwrap_or(0);
    let terminate = counts.get("TerminateInstances").copied().unwrap_or(0);
    assert!(
        (1..=3).contains(&run),
        "ten equal provisions in a few RunInstances: {counts:?}"
    );
    assert!(
        (1..=3).contains(&terminate),
        "ten destroys in a few TerminateInstances: {counts:?}"
    );
}

/// The plugin's request counts by operation, from its `GET /metrics`.
fn emulator_calls(socket: &std::path::Path) -> BTreeMap<String, u64> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: plugin\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("infrakit_aws_requests_total{operation=\"") else {
            continue;
        };
        let Some((op, value)) = rest.split_once("\"} ") else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(op.to_string(), v as u64);
        }
    }
    out
}

#[tokio::test]
async fn a_plugin_killed_mid_launch_makes_no_duplicate_after_restart() {
    let Some(moto) = Moto::start(&[]) else { return };
    let proxy = Proxy::start(moto.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let env = plugin_env(dir.path(), &proxy.url());
    let mut plugin = Plugin::start(dir.path(), &env);
    let group = tags(&[("infrakit.group", "crash"), ("infrakit.config.hash", "v1")]);
    let the_spec = spec(json!({"ImageId": AMI}), group.clone());

    // The launch reaches EC2, its answer never reaches the plugin, which is killed waiting.
    proxy.swallow(true);
    let client = plugin.client();
    let waiting = tokio::spawn({
        let s = the_spec.clone();
        async move { client.provision(s).await }
    });
    wait_until(
        "EC2 to have launched the instance",
        Duration::from_secs(30),
        || async {
            ec2_states(&moto.url(), "infrakit.group", "crash")
                .await
                .len()
                == 1
        },
    )
    .await;
    assert_eq!(
        plugin.pending_launches(),
        1,
        "the launch is on record before it is sent"
    );
    plugin.kill();
    assert!(
        waiting.await.expect("join").is_err(),
        "the caller saw the provision fail"
    );
    proxy.swallow(false);

    // The controller retries the provision against the restarted plugin: the orphan's instance is
    // handed back, nothing new is launched.
    let plugin = Plugin::start(dir.path(), &env);
    let launched = ec2_states(&moto.url(), "infrakit.group", "crash").await;
    let id = plugin
        .client()
        .provision(the_spec.clone())
        .await
        .expect("provision after restart");
    assert!(
        launched.contains_key(&id),
        "the instance launched before the crash: {id} of {launched:?}"
    );
    assert_eq!(
        ec2_states(&moto.url(), "infrakit.group", "crash")
            .await
            .len(),
        1,
        "no second instance"
    );
    assert_eq!(plugin.pending_launches(), 0, "the orphan is settled");
    // The next provision launches a new one, as it should.
    let next = plugin
        .client()
        .provision(the_spec)
        .await
        .expect("a second provision");
    assert_ne!(next, id);
    let described = plugin
        .client()
        .describe_instances(&group, false)
        .await
        .expect("describe");
    assert_eq!(described.len(), 2, "{described:?}");
}

#[tokio::test]
async fn a_bad_ami_is_a_clear_error() {
    let Some(moto) = Moto::start(&[("MOTO_ENABLE_AMI_VALIDATION", "true")]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(dir.path(), &plugin_env(dir.path(), &moto.url()));
    let group = tags(&[("infrakit.group", "bad")]);
    let err = plugin
        .client()
        .provision(spec(
            json!({"ImageId": "ami-00000000000000bad"}),
            group.clone(),
        ))
        .await
        .expect_err("an AMI that does not exist");
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(
        err.message.contains("InvalidAMIID") && err.message.contains("check ImageId"),
        "{err}"
    );
    assert!(plugin
        .client()
        .describe_instances(&group, false)
        .await
        .expect("describe")
        .is_empty());
    assert_eq!(
        plugin.pending_launches(),
        0,
        "a refused launch leaves no record"
    );
    // The AMI moto knows is accepted by the same emulator.
    plugin
        .client()
        .provision(spec(json!({"ImageId": AMI}), group))
        .await
        .expect("a known AMI");
}

#[tokio::test]
async fn missing_credentials_are_a_clear_error_and_describe_does_not_answer_none() {
    let Some(moto) = Moto::start(&[]) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let env: Vec<(String, String)> = plugin_env(dir.path(), &moto.url())
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
        .collect();
    let plugin = Plugin::start(dir.path(), &env);
    let group = tags(&[("infrakit.group", "nocreds")]);
    let err = plugin
        .client()
        .provision(spec(json!({"ImageId": AMI}), group.clone()))
        .await
        .expect_err("no credentials");
    assert!(err.message.contains("no usable AWS credentials"), "{err}");
    assert!(
        err.message.contains("AWS_ACCESS_KEY_ID"),
        "says what to set: {err}"
    );
    let err = plugin
        .client()
        .describe_instances(&group, false)
        .await
        .expect_err("describe without credentials must fail, not answer 'no instances'");
    assert!(err.message.contains("credentials"), "{err}");
}

#[tokio::test]
async fn an_emulator_that_is_down_is_a_clear_error() {
    let Some(mut moto) = Moto::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = Plugin::start(dir.path(), &plugin_env(dir.path(), &moto.url()));
    let group = tags(&[("infrakit.group", "down")]);
    plugin
        .client()
        .provision(spec(json!({"ImageId": AMI}), group.clone()))
        .await
        .expect("provision while up");
    moto.stop();
    let err = plugin
        .client()
        .describe_instances(&group, false)
        .await
        .expect_err("describe with EC2 unreachable must fail, not answer 'no instances'");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("cannot reach EC2"), "{err}");
    let err = plugin
        .client()
        .provision(spec(json!({"ImageId": AMI}), group))
        .await
        .expect_err("provision with EC2 unreachable");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    // The secret never shows in an error or the log.
    assert!(!err.message.contains(emulator::SECRET), "{err}");
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap_or_default();
    assert!(!log.is_empty() && !log.contains(emulator::SECRET), "{log}");
}
