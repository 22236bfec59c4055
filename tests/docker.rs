//! `instance-docker` on a real Docker Engine: the plugin against the engine, and cattle through the
//! group controller (plugins as processes, like tests/group.rs).
//!
//! Conventions of tests/engine.rs: without an engine the tests skip loudly, except with `CI=true`
//! where they fail; they take the same lock file (one engine per machine); every group and network
//! has a name unique to the run, and a guard removes its containers even when a test fails.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{
    self, busybox, docker, docker_ok, ensure_busybox, text, unique, wait_until, STATIC_BIN,
};
use common::{Plugin, World};
use infrakit_instance_docker::DockerInstancePlugin;
use infrakit_sdk::spi::instance::{DestroyContext, InstancePlugin, Spec, Tags};
use serde_json::{json, Value};

/// Every container (running or not) with `label`.
/// Ok(lock) when the tests should run; Err(()) after saying loudly why not. Panics in CI.
fn prerequisites() -> Result<File, ()> {
    let lock = engine::prerequisites("instance-docker tests", || None)?;
    ensure_busybox();
    Ok(lock)
}

fn containers(label: &str) -> Vec<String> {
    let out = docker_ok(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ]);
    out.lines().map(str::to_string).collect()
}

fn running(label: &str) -> Vec<String> {
    let out = docker_ok(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ]);
    out.lines().map(str::to_string).collect()
}

/// Removes every container with a label, and named networks/tags, when a test ends (even failing).
struct Cleanup {
    labels: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Cleanup {
    fn new() -> Cleanup {
        Cleanup {
            labels: Vec::new(),
            networks: Vec::new(),
            images: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.labels {
            let ids = containers(l);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", i]);
        }
    }
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn plugin_against_the_engine() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let group = unique("dk-unit");
    clean.labels.push(format!("infrakit.group={group}"));
    let plugin = DockerInstancePlugin::from_env().expect("engine address");

    // Validate: properties, image and network on the engine.
    plugin
        .validate(&json!({"Image": busybox(), "Cmd": ["sleep", "60"]}))
        .await
        .expect("valid");
    let e = plugin
        .validate(&json!({"Image": "infrakit-test/no-such-image:1"}))
        .await
        .unwrap_err();
    assert!(
        e.message.contains(
            "image infrakit-test/no-such-image:1 not found on the engine; build or pull it first"
        ),
        "{e}"
    );
    let e = plugin
        .validate(&json!({"Image": busybox(), "Network": "infrakit-no-such-net"}))
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("network 'infrakit-no-such-net' not found"),
        "{e}"
    );
    let e = plugin
        .validate(&json!({"Image": busybox(), "Memroy": "1g"}))
        .await
        .unwrap_err();
    assert!(e.message.contains("Memroy"), "{e}");

    // Provision a pet with tags, env, labels and an Init script that runs before the command.
    let spec = Spec {
        properties: Some(json!({
            "Image": busybox(), "Cmd": ["sleep", "3600"], "Env": {"GREETING": "hello"},
            "Labels": {"owner": "test"}, "StopTimeout": 1, "Hostname": "pet-a"
        })),
        tags: tags(&[("infrakit.group", &group), ("tier", "web")]),
        init: "echo \"$GREETING from init\" > /init.out".into(),
        logical_id: Some("a".into()),
        attachments: vec![],
    };
    let id = plugin.provision(spec).await.expect("provision");
    let name = docker_ok(&["inspect", "-f", "{{.Name}}", &id]);
    assert_eq!(name, format!("/{group}-a"));
    let out = wait_until(
        "the init script's output",
        Duration::from_secs(10),
        || text(&docker(&["exec", &id, "cat", "/init.out"])),
        |o| o.contains("hello from init"),
    );
    assert!(out.contains("hello from init"));
    assert_eq!(docker_ok(&["exec", &id, "hostname"]), "pet-a");
    // The command still runs as PID 1 after the script (exec).
    let pid1 = docker_ok(&["exec", &id, "cat", "/proc/1/cmdline"]);
    assert!(pid1.starts_with("sleep"), "{pid1:?}");

    // Describe: by tag on the engine side, with state properties.
    let found = plugin
        .describe_instances(&tags(&[("infrakit.group", &group), ("tier", "web")]), true)
        .await
        .expect("describe");
    assert_eq!(found.len(), 1, "{found:?}");
    let d = &found[0];
    assert_eq!(d.id, id);
    assert_eq!(d.logical_id.as_deref(), Some("a"));
    assert_eq!(d.tags.get("owner").map(String::as_str), Some("test"));
    assert!(
        !d.tags.contains_key("infrakit.instance-docker"),
        "marker hidden"
    );
    let p = d.properties.clone().unwrap_or(Value::Null);
    assert_eq!(p["State"], "running", "{p}");
    assert_eq!(p["Running"], true, "{p}");
    assert_eq!(p["Health"], "none", "{p}");
    assert!(p["IPAddresses"]["bridge"].as_str().is_some(), "{p}");
    let none = plugin
        .describe_instances(&tags(&[("infrakit.group", &group), ("tier", "db")]), false)
        .await
        .expect("describe");
    assert!(none.is_empty());

    // Label: already there is fine; anything new is refused with a reason.
    plugin
        .label(&id, tags(&[("tier", "web")]))
        .await
        .expect("same labels");
    let e = plugin
        .label(&id, tags(&[("tier", "db")]))
        .await
        .unwrap_err();
    assert!(e.message.contains("cannot be relabelled"), "{e}");

    // An exited container is still described, with its exit code.
    // (`docker kill`: PID 1 in a container ignores signals it has no handler for.)
    docker_ok(&["kill", &id]);
    let found = plugin
        .describe_instances(&tags(&[("infrakit.group", &group)]), true)
        .await
        .expect("describe");
    let p = found[0].properties.clone().unwrap_or(Value::Null);
    assert_eq!(p["State"], "exited", "{p}");
    assert_eq!(p["Running"], false, "{p}");

    // Destroy: gone, then NotFound.
    let t = Instant::now();
    plugin
        .destroy(&id, DestroyContext::default())
        .await
        .expect("destroy");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(containers(&format!("infrakit.group={group}")).is_empty());
    let e = plugin
        .destroy(&id, DestroyContext::default())
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // A missing image at provision time: a clear error and no container.
    let e = plugin
        .provision(Spec {
            properties: Some(json!({"Image": "infrakit-test/no-such-image:1"})),
            tags: tags(&[("infrakit.group", &group)]),
            ..Spec::default()
        })
        .await
        .unwrap_err();
    assert!(e.message.contains("not found on the engine"), "{e}");
    assert!(containers(&format!("infrakit.group={group}")).is_empty());
}

/// A user-defined network with a /24 subnet unlikely to be taken (10.<pid-derived>.<x>.0/24,
/// retried on a clash), removed by `clean`: (name, subnet).
fn test_network(clean: &mut Cleanup) -> (String, String) {
    let net = unique("ik-net");
    for i in 0..20u32 {
        let candidate = format!(
            "10.{}.{}.0/24",
            200 + (std::process::id() % 50),
            (i * 7 + std::process::id()) % 256
        );
        if docker(&["network", "create", "--subnet", &candidate, &net])
            .status
            .success()
        {
            clean.networks.push(net.clone());
            return (net, candidate);
        }
    }
    panic!("could not create a test network");
}

#[tokio::test]
async fn static_ips_from_logical_ids() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let group = unique("dk-ip");
    clean.labels.push(format!("infrakit.group={group}"));
    let (net, subnet) = test_network(&mut clean);
    let base = subnet.trim_end_matches("0/24");
    let plugin = DockerInstancePlugin::from_env().expect("engine address");
    let props =
        json!({"Image": busybox(), "Cmd": ["sleep", "3600"], "Network": net, "StopTimeout": 1});
    plugin.validate(&props).await.expect("valid");

    let ip = format!("{base}5");
    let id = plugin
        .provision(Spec {
            properties: Some(props.clone()),
            tags: tags(&[("infrakit.group", &group)]),
            logical_id: Some(ip.clone()),
            ..Spec::default()
        })
        .await
        .expect("provision with a static IP");
    let d = plugin
        .describe_instances(&tags(&[("infrakit.group", &group)]), true)
        .await
        .expect("describe");
    let p = d[0].properties.clone().unwrap_or(Value::Null);
    assert_eq!(p["IPAddresses"][&net], json!(ip), "{p}");
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.Name}}", &id]),
        format!("/{group}-{ip}")
    );

    // Outside the subnet: refused, naming it; nothing created.
    let e = plugin
        .provision(Spec {
            properties: Some(props.clone()),
            tags: tags(&[("infrakit.group", &group)]),
            logical_id: Some("192.0.2.7".into()),
            ..Spec::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message.contains("outside the subnet") && e.message.contains(&subnet),
        "{e}"
    );
    // An IP-shaped logical ID without a network.
    let e = plugin
        .provision(Spec {
            properties: Some(json!({"Image": busybox()})),
            tags: tags(&[("infrakit.group", &group)]),
            logical_id: Some("192.0.2.7".into()),
            ..Spec::default()
        })
        .await
        .unwrap_err();
    assert!(e.message.contains("needs a user-defined Network"), "{e}");
    assert_eq!(containers(&format!("infrakit.group={group}")).len(), 1);
    plugin
        .destroy(&id, DestroyContext::default())
        .await
        .expect("destroy");
}

/// instance-docker, flavor-vanilla and the group controller as processes. The instance plugin's
/// log (info) goes to `docker.log` so a test can count its provision attempts.
struct Stack {
    w: World,
    _docker: Plugin,
    _vanilla: Plugin,
    _group: Plugin,
}

impl Stack {
    fn new() -> Stack {
        let w = World::new();
        std::fs::create_dir_all(w.plugins_dir()).expect("mkdir");
        let log = File::create(w.path("docker.log")).expect("log file");
        let child = w
            .cmd(&[
                "plugin",
                "serve",
                "instance-docker",
                "--name",
                "instance-docker",
            ])
            .env("INFRAKIT_LOG", "info")
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn instance-docker");
        let docker = Plugin {
            child,
            socket: w.socket("instance-docker"),
        };
        docker.wait_ready();
        let vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
        let store = w.path("store");
        let group = w.serve(
            "group",
            &[
                "group",
                "--store",
                store.to_str().expect("utf-8"),
                "--poll-interval",
                "300ms",
                "--health-interval",
                "1s",
            ],
        );
        Stack {
            w,
            _docker: docker,
            _vanilla: vanilla,
            _group: group,
        }
    }

    fn commit(&self, id: &str, props: Value) -> String {
        let f = self.w.write(
            &format!("{}.json", unique(id)),
            &json!({"ID": id, "Properties": props}).to_string(),
        );
        self.w.ok(&["group", "commit", f.to_str().expect("utf-8")])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.w.path("docker.log")).unwrap_or_default()
    }
}

fn busybox_group(size: u64, image: &str) -> Value {
    json!({
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-docker",
                     "Properties": {"Image": image, "Cmd": ["sleep", "3600"], "StopTimeout": 1}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Tags": {"tier": "web"}}}
    })
}

#[test]
fn cattle_heal_scale_and_destroy() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let id = unique("dk-cattle");
    let label = format!("infrakit.group={id}");
    clean.labels.push(label.clone());
    let s = Stack::new();
    let limit = Duration::from_secs(90);

    s.commit(&id, busybox_group(5, busybox()));
    let first = wait_until(
        "5 running containers",
        limit,
        || running(&label),
        |v| v.len() == 5,
    );

    // docker rm -f two → replaced.
    let victims = &first[..2];
    let mut args = vec!["rm", "-f"];
    args.extend(victims.iter().map(String::as_str));
    docker_ok(&args);
    let now = wait_until(
        "2 removed containers replaced",
        limit,
        || running(&label),
        |v| v.len() == 5 && !victims.iter().any(|x| v.contains(x)),
    );
    assert_eq!(containers(&label).len(), 5, "no extra containers");
    assert!(now.iter().filter(|c| first.contains(c)).count() == 3);

    // Scale 5 → 20 → 5.
    s.w.ok(&["group", "scale", &id, "20"]);
    wait_until(
        "20 running containers",
        limit,
        || running(&label),
        |v| v.len() == 20,
    );
    s.w.ok(&["group", "scale", &id, "5"]);
    wait_until(
        "back to 5 containers",
        limit,
        || containers(&label),
        |v| v.len() == 5,
    );
    s.w.ok(&["group", "watch", &id, "--timeout", "60s"]);
    let described = s.w.ok(&["group", "describe", &id]);
    assert!(described.contains("5 of 5 instances"), "{described}");

    // Destroy → nothing left with the group's label.
    s.w.ok(&["group", "destroy", &id, "--timeout", "60s"]);
    assert!(containers(&label).is_empty(), "{:?}", containers(&label));
}

#[test]
fn a_missing_image_is_a_clear_error_without_a_container_storm() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let id = unique("dk-gone");
    let label = format!("infrakit.group={id}");
    clean.labels.push(label.clone());
    // An image that exists at commit (Validate checks it) and is removed afterwards: the
    // provisions that follow meet a missing image.
    let image = format!("infrakit-test/{}:1", unique("gone"));
    docker_ok(&["tag", busybox(), &image]);
    clean.images.push(image.clone());
    let s = Stack::new();

    // Validation at commit already refuses an image that is not there.
    let f = s.w.write(
        "missing.json",
        &json!({"ID": format!("{id}-x"), "Properties": busybox_group(2, "infrakit-test/no-such-image:1")}).to_string(),
    );
    let err = s.w.fails(&["group", "commit", f.to_str().expect("utf-8")]);
    assert!(err.contains("not found on the engine"), "{err}");

    s.commit(&id, busybox_group(3, &image));
    let first = wait_until(
        "3 containers",
        Duration::from_secs(60),
        || running(&label),
        |v| v.len() == 3,
    );
    docker_ok(&["rmi", &image]);
    let mut args = vec!["rm", "-f"];
    args.extend(first.iter().map(String::as_str));
    docker_ok(&args);

    let describe = wait_until(
        "the group to report the missing image",
        Duration::from_secs(20),
        || text(&s.w.run(&["group", "describe", &id])),
        |d| d.contains("not found on the engine"),
    );
    assert!(describe.contains(&image), "{describe}");
    let before = s.log().matches("provision refused").count();
    std::thread::sleep(Duration::from_secs(5));
    let attempts = s.log().matches("provision refused").count() - before;
    eprintln!(
        "provision attempts in 5 s with a missing image: {attempts} ({} in all)",
        s.log().matches("provision refused").count()
    );
    assert!(attempts <= 12, "a storm: {attempts} attempts in 5 s");
    assert!(
        containers(&label).is_empty(),
        "no container for a missing image"
    );

    // Image back → the group heals.
    docker_ok(&["tag", busybox(), &image]);
    wait_until(
        "3 containers again",
        Duration::from_secs(90),
        || running(&label),
        |v| v.len() == 3,
    );
    s.w.ok(&["group", "destroy", &id, "--timeout", "60s"]);
    assert!(containers(&label).is_empty());
}

/// Disables and removes a managed plugin when the test ends.
struct ManagedPlugin(String);

impl Drop for ManagedPlugin {
    fn drop(&mut self) {
        let _ = docker(&["plugin", "disable", "-f", &self.0]);
        let _ = docker(&["plugin", "rm", "-f", &self.0]);
    }
}

/// The managed plugin (plugins/instance-docker/config.json, packaged by scripts/plugins.sh)
/// provisions, describes and destroys through the engine's socket mounted into it.
#[test]
fn managed_instance_docker_provisions() {
    let Ok(_lock) = prerequisites() else { return };
    if !std::path::Path::new(STATIC_BIN).is_file() {
        common::skip::skip(
            "managed instance-docker test",
            &format!("no static binary at {STATIC_BIN} (make static; make test builds it)"),
        );
        return;
    }
    let mut clean = Cleanup::new();
    let group = unique("dk-managed");
    clean.labels.push(format!("infrakit.group={group}"));
    let build = tempfile::tempdir().expect("temp dir");
    let version = "0.0.0-dk";
    let reference = format!("infrakit-test/dk-instance-docker:{version}");
    let _plugin = ManagedPlugin(reference.clone());
    for cmd in ["create", "enable"] {
        let o = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/plugins.sh"))
            .args([cmd, "instance-docker"])
            .env("REPO", "infrakit-test")
            .env("NAME_PREFIX", "dk-")
            .env("VERSION", version)
            .env("BIN", STATIC_BIN)
            .env("BUILD_DIR", build.path())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/plugins.sh");
        assert!(o.status.success(), "plugins.sh {cmd}: {}", text(&o));
    }
    let id = docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", &reference]);
    let socket = std::path::PathBuf::from(format!("/run/docker/plugins/{id}/idocker.sock"));
    let call = |method: &str, body: Value| -> common::Reply {
        let path = format!("/Instance.{method}");
        let bytes = body.to_string();
        // The engine reports the plugin enabled when its socket accepts; retry briefly anyway.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match common::post(&socket, &path, bytes.as_bytes()) {
                Ok(r) => return r,
                Err(e) if Instant::now() > deadline => {
                    panic!("{method} on {}: {e}", socket.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    let r = call(
        "Provision",
        json!({"Spec": {"Properties": {"Image": busybox(), "Cmd": ["sleep", "3600"], "StopTimeout": 1},
                        "Tags": {"infrakit.group": group}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cid = r.json()["ID"].clone();
    assert_eq!(
        running(&format!("infrakit.group={group}")),
        vec![cid.as_str().unwrap_or("?").to_string()]
    );
    let r = call(
        "DescribeInstances",
        json!({"Tags": {"infrakit.group": group}, "Properties": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let described = r.json();
    assert_eq!(
        described.to_string().matches("\"running\"").count(),
        1,
        "{described}"
    );
    let r = call(
        "Destroy",
        json!({"Instance": cid, "Context": {"Reason": "terminate"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(containers(&format!("infrakit.group={group}")).is_empty());
}

/// A pet whose logical ID is an address outside the network's subnet is refused when the group is
/// committed (the instance plugin sees the allocation), not at its first provision.
#[test]
fn an_ip_outside_the_subnet_is_refused_at_commit() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let id = unique("dk-pets");
    let label = format!("infrakit.group={id}");
    clean.labels.push(label.clone());
    let (net, subnet) = test_network(&mut clean);
    let inside = format!("{}9", subnet.trim_end_matches("0/24"));
    let s = Stack::new();
    let pets = |ids: &[&str]| {
        json!({"ID": id, "Properties": {
            "Allocation": {"LogicalIDs": ids},
            "Instance": {"Plugin": "instance-docker",
                         "Properties": {"Image": busybox(), "Cmd": ["sleep", "3600"], "Network": net}},
            "Flavor": {"Plugin": "flavor-vanilla"}
        }})
        .to_string()
    };
    let f = s.w.write("outside.json", &pets(&[&inside, "192.0.2.7"]));
    let err = s.w.fails(&["group", "commit", f.to_str().expect("utf-8")]);
    assert!(
        err.contains("192.0.2.7") && err.contains("outside the subnet") && err.contains(&subnet),
        "{err}"
    );
    let ls = s.w.ok(&["group", "ls", "-q"]);
    assert!(!ls.contains(&id), "a refused group is not kept: {ls}");
    assert!(containers(&label).is_empty());
    // The same group with its addresses inside the subnet passes the same checks.
    let f = s.w.write("inside.json", &pets(&[&inside]));
    s.w.ok(&["group", "commit", "--pretend", f.to_str().expect("utf-8")]);
    assert!(containers(&label).is_empty());
}

/// The tests' busybox image is theirs alone: a foreign image under its name (another content, no
/// content label, as a user's recipe or an older test run would leave) is rebuilt before use, and
/// the rebuilt image has the applets the tests run (`hostname` for exec).
#[test]
fn a_foreign_image_under_the_tests_busybox_name_is_rebuilt_before_use() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let original = docker_ok(&["image", "inspect", "--format", "{{.Id}}", busybox()]);
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("foreign"), "not busybox").expect("write");
    let tar = tmp.path().join("foreign.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(tmp.path())
        .args(["-cf", tar.to_str().expect("utf-8"), "foreign"])
        .status()
        .expect("tar");
    assert!(st.success());
    let foreign = docker_ok(&["import", tar.to_str().expect("utf-8"), busybox()]);
    // Both are untagged once the name is rebuilt: removed at the end.
    clean.images.push(foreign.clone());
    clean.images.push(original);

    ensure_busybox();
    let now = docker_ok(&["image", "inspect", "--format", "{{.Id}}", busybox()]);
    assert_ne!(now, foreign, "the foreign image was used");
    let host = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--hostname",
        "selftest",
        busybox(),
        "hostname",
    ]);
    assert_eq!(host, "selftest");
}

/// "Converged" is not "ready": containers whose HEALTHCHECK is still `starting` (vanilla: unknown)
/// make a converged group that `group watch` does not call ready (it times out saying how many are
/// healthy) and `group describe` shows as "converged, 0/2 healthy", with each container's name.
#[test]
fn converged_is_not_ready_until_members_are_healthy_and_describe_names_the_containers() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let id = unique("dk-ready");
    let label = format!("infrakit.group={id}");
    clean.labels.push(label.clone());
    let s = Stack::new();
    // The first check runs an hour after the start: the health stays `starting`.
    s.commit(
        &id,
        json!({
            "Allocation": {"Size": 2},
            "Instance": {"Plugin": "instance-docker",
                         "Properties": {"Image": busybox(), "Cmd": ["sleep", "3600"], "StopTimeout": 1,
                                        "Healthcheck": {"Test": ["CMD", "true"], "Interval": "1h"}}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}}
        }),
    );
    s.w.ok(&[
        "group",
        "watch",
        &id,
        "--converged-only",
        "--timeout",
        "60s",
    ]);
    let err = s.w.fails(&["group", "watch", &id, "--timeout", "3s"]);
    assert!(
        err.contains("has converged but only 0/2 of its instances are healthy"),
        "{err}"
    );
    let described = s.w.ok(&["group", "describe", &id]);
    assert!(
        described.contains("2 of 2 instances, converged, 0/2 healthy"),
        "{described}"
    );
    assert!(!described.contains("ready:"), "{described}");
    let header = described
        .lines()
        .find(|l| l.starts_with("ID"))
        .unwrap_or("");
    assert!(header.contains("NAME"), "{described}");
    let names: Vec<String> = docker_ok(&[
        "ps",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        assert!(n.starts_with(&format!("{id}-")), "{n}");
        assert!(described.contains(n.as_str()), "{n} not in {described}");
    }
}

/// `infrakit bootstrap --down FILE` removes the nodes instance-docker made for the file's groups on
/// the engine, and nothing else (here no swarm answers: it says so, and the nodes still go);
/// `--pretend` names them and removes nothing. The swarm part (the bundle removed through a
/// manager first) runs in tests/swarm_bootstrap.rs on a bootstrapped swarm.
#[tokio::test]
async fn bootstrap_down_removes_the_files_nodes_and_nothing_else() {
    let Ok(_lock) = prerequisites() else { return };
    let mut clean = Cleanup::new();
    let (managers, workers, other) = (
        unique("bd-managers"),
        unique("bd-workers"),
        unique("bd-other"),
    );
    for g in [&managers, &workers, &other] {
        clean.labels.push(format!("infrakit.group={g}"));
    }
    let plugin = DockerInstancePlugin::from_env().expect("engine address");
    // A pet's logical ID as a tag (an IP as the container's own address needs a network).
    let node = |group: &str, ip: Option<&str>| Spec {
        properties: Some(json!({"Image": busybox(), "Cmd": ["sleep", "3600"], "StopTimeout": 1})),
        tags: match ip {
            Some(ip) => tags(&[("infrakit.group", group), ("infrakit.logical_id", ip)]),
            None => tags(&[("infrakit.group", group)]),
        },
        ..Spec::default()
    };
    for spec in [
        node(&managers, Some("10.96.0.11")),
        node(&managers, Some("10.96.0.12")),
        node(&workers, None),
        node(&other, None),
    ] {
        plugin.provision(spec).await.expect("provision");
    }
    let w = World::new();
    let file = w.write(
        "bootstrap.json",
        &json!([
            {"Plugin": "group", "Properties": {"ID": managers, "Properties": {
                "Allocation": {"LogicalIDs": ["10.96.0.11", "10.96.0.12", "10.96.0.13"]},
                "Instance": {"Plugin": "instance-docker", "Properties": {"Image": busybox()}},
                "Flavor": {"Plugin": "flavor-swarm/manager"}}}},
            {"Plugin": "group", "Properties": {"ID": workers, "Properties": {
                "Allocation": {"Size": 2},
                "Instance": {"Plugin": "instance-docker", "Properties": {"Image": busybox()}},
                "Flavor": {"Plugin": "flavor-swarm/worker"}}}}
        ])
        .to_string(),
    );
    let seed_engine = format!("{}/{{ip}}/docker.sock", w.path("nodes").display());
    let down = |extra: &[&str]| {
        let mut args = vec![
            "bootstrap",
            "--down",
            file.to_str().unwrap(),
            "--seed-engine",
            &seed_engine,
        ];
        args.extend_from_slice(extra);
        w.cmd(&args)
            .env_remove("DOCKER_HOST")
            .output()
            .expect("run bootstrap --down")
    };

    let out = down(&["--pretend"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.matches("bootstrap --down would remove node").count(),
        3,
        "{said}"
    );
    assert_eq!(containers(&format!("infrakit.group={managers}")).len(), 2);

    let out = down(&[]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("no manager's engine answers") && said.contains("10.96.0.11/docker.sock"),
        "{said}"
    );
    assert!(said.contains("removed 3 node(s) of 2 group(s)"), "{said}");
    assert!(containers(&format!("infrakit.group={managers}")).is_empty());
    assert!(containers(&format!("infrakit.group={workers}")).is_empty());
    assert_eq!(
        containers(&format!("infrakit.group={other}")).len(),
        1,
        "another group's node is not bootstrap's: kept"
    );
    // Again: nothing left to remove, not an error.
    let out = down(&[]);
    assert!(out.status.success() && text(&out).contains("removed 0 node(s)"));
}
