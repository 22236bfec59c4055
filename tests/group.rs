//! The group controller end to end: real plugin processes (instance-file, flavor-vanilla, group) on
//! sockets, driven through the CLI. InfraKit's own acceptance story, pets, crash recovery mid-update,
//! and the errors a user meets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Plugin, World};
use serde_json::{json, Value};

/// A world with instance-file, flavor-vanilla and the group controller running.
struct Stack {
    w: World,
    _files: Plugin,
    _vanilla: Plugin,
    group: Option<Plugin>,
}

impl Stack {
    fn new() -> Stack {
        let w = World::new();
        let files = w.serve(
            "instance-file",
            &[
                "instance-file",
                "--dir",
                w.path("instances").to_str().unwrap(),
            ],
        );
        let vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
        let mut s = Stack {
            w,
            _files: files,
            _vanilla: vanilla,
            group: None,
        };
        s.start_group();
        s
    }

    fn start_group(&mut self) {
        let store = self.w.path("store");
        self.group = Some(self.w.serve(
            "group",
            &[
                "group",
                "--store",
                store.to_str().unwrap(),
                "--poll-interval",
                "200ms",
                "--health-interval",
                "1s",
            ],
        ));
    }

    fn dir(&self) -> PathBuf {
        self.w.path("instances")
    }

    fn commit(&self, id: &str, props: Value) -> String {
        let f = self.w.write(
            &format!("{id}-{}.json", fastrand_suffix()),
            &json!({"ID": id, "Properties": props}).to_string(),
        );
        self.w.ok(&["group", "commit", f.to_str().unwrap()])
    }

    fn watch(&self, id: &str) {
        self.w.ok(&["group", "watch", id, "--timeout", "60s"]);
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn cattle(size: u64, note: &str) -> Value {
    json!({
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": note}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hello"], "Tags": {"tier": "web"}}}
    })
}

/// Every instance file: ID → its tags.
fn instances(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let tags: BTreeMap<String, String> =
            serde_json::from_value(v["Tags"].clone()).unwrap_or_default();
        out.insert(v["ID"].as_str().unwrap_or(&name).to_string(), tags);
    }
    out
}

fn hashes(dir: &Path) -> BTreeSet<String> {
    instances(dir)
        .values()
        .filter_map(|t| t.get("infrakit.config.hash").cloned())
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

#[test]
fn infrakit_acceptance_story() {
    let s = Stack::new();
    let dir = s.dir();

    // Commit a group of 5 → 5 instance files.
    let out = s.commit("cattle", cattle(5, "v1"));
    assert!(out.contains("cattle"), "{out}");
    s.watch("cattle");
    let v1 = instances(&dir);
    assert_eq!(v1.len(), 5);
    assert_eq!(hashes(&dir).len(), 1);
    for tags in v1.values() {
        assert_eq!(tags["infrakit.group"], "cattle");
        assert_eq!(tags["tier"], "web", "the flavor's tags are applied");
    }

    // --pretend of a changed spec prints the plan and changes nothing.
    let f = s.w.write(
        "v2.json",
        &json!({"ID": "cattle", "Properties": cattle(10, "v2")}).to_string(),
    );
    let plan =
        s.w.ok(&["group", "commit", "--pretend", f.to_str().unwrap()]);
    assert!(plan.contains("rolling update on 5 instances"), "{plan}");
    assert!(plan.contains("adding 5 instances to reach 10"), "{plan}");
    let structured: Value = serde_json::from_str(&s.w.ok(&[
        "group",
        "commit",
        "--pretend",
        "--json",
        f.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(structured["Plan"]["Create"], json!(5), "{structured}");
    assert_eq!(
        structured["Plan"]["Replace"].as_array().unwrap().len(),
        5,
        "{structured}"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(instances(&dir), v1, "pretend changed nothing");

    // Commit it → rolling update plus growth to 10, every instance carries the new hash.
    s.w.ok(&["group", "commit", f.to_str().unwrap()]);
    s.watch("cattle");
    let v2 = instances(&dir);
    assert_eq!(v2.len(), 10);
    let h = hashes(&dir);
    assert_eq!(h.len(), 1, "one hash: {h:?}");
    assert_ne!(
        h,
        v1.values()
            .map(|t| t["infrakit.config.hash"].clone())
            .collect(),
        "new hash"
    );
    assert!(
        v1.keys().all(|id| !v2.contains_key(id)),
        "every v1 instance was replaced"
    );

    // Delete 3 instance files by hand → back to 10.
    for id in v2.keys().take(3) {
        std::fs::remove_file(dir.join(format!("{id}.json"))).unwrap();
    }
    wait_until("10 instances again", Duration::from_secs(30), || {
        instances(&dir).len() == 10
    });
    s.watch("cattle");

    // Scale to 5.
    s.w.ok(&["group", "scale", "cattle", "5"]);
    wait_until("5 instances", Duration::from_secs(30), || {
        instances(&dir).len() == 5
    });
    s.watch("cattle");
    assert_eq!(s.w.ok(&["group", "ls", "-q"]).trim(), "cattle");

    // Free and re-commit → same instances adopted, none created.
    let before = instances(&dir);
    s.w.ok(&["group", "free", "cattle"]);
    assert!(s.w.ok(&["group", "ls", "-q"]).trim().is_empty());
    let f5 = s.w.write(
        "v2-5.json",
        &json!({"ID": "cattle", "Properties": cattle(5, "v2")}).to_string(),
    );
    s.w.ok(&["group", "commit", f5.to_str().unwrap()]);
    s.watch("cattle");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        instances(&dir).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "adopted, none created"
    );

    // Destroy → 0 files, no orphans, group forgotten.
    s.w.ok(&["group", "destroy", "cattle"]);
    assert!(instances(&dir).is_empty());
    let err = s.w.fails(&["group", "describe", "cattle"]);
    assert!(err.contains("no group 'cattle'"), "{err}");
    assert!(!s.w.path("store/cattle.json").exists(), "record removed");
}

#[test]
fn pets_keep_one_instance_per_logical_id() {
    let s = Stack::new();
    let dir = s.dir();
    let pets = |ids: &[&str]| {
        json!({
            "Allocation": {"LogicalIDs": ids},
            "Instance": {"Plugin": "instance-file", "Properties": {"Note": "pet"}},
            "Flavor": {"Plugin": "flavor-vanilla"}
        })
    };
    let by_logical = |dir: &Path| -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, tags) in instances(dir) {
            m.entry(tags.get("infrakit.logical_id").cloned().unwrap_or_default())
                .or_default()
                .push(id);
        }
        m
    };
    s.commit("zk", pets(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    s.watch("zk");
    let m = by_logical(&dir);
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
    assert!(m.values().all(|v| v.len() == 1));

    // Kill one → re-created with the same logical ID.
    let victim = m["10.0.0.2"][0].clone();
    std::fs::remove_file(dir.join(format!("{victim}.json"))).unwrap();
    wait_until("10.0.0.2 re-created", Duration::from_secs(30), || {
        by_logical(&dir)
            .get("10.0.0.2")
            .is_some_and(|v| v.len() == 1 && v[0] != victim)
    });

    // Plant a duplicate → removed.
    let original = by_logical(&dir)["10.0.0.1"][0].clone();
    let text = std::fs::read_to_string(dir.join(format!("{original}.json"))).unwrap();
    let planted = text.replace(&original, "instance-planted");
    std::fs::write(dir.join("instance-planted.json"), planted).unwrap();
    wait_until("duplicate removed", Duration::from_secs(30), || {
        by_logical(&dir)
            .get("10.0.0.1")
            .is_some_and(|v| v.len() == 1)
    });
    s.watch("zk");

    // Add a fourth ID → one created.
    let before: BTreeSet<String> = instances(&dir).keys().cloned().collect();
    s.commit(
        "zk",
        pets(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
    );
    s.watch("zk");
    let after: BTreeSet<String> = instances(&dir).keys().cloned().collect();
    assert_eq!(after.len(), 4);
    assert_eq!(after.difference(&before).count(), 1, "exactly one created");
    assert_eq!(by_logical(&dir)["10.0.0.4"].len(), 1);

    // Remove an ID → its member goes.
    s.commit("zk", pets(&["10.0.0.1", "10.0.0.2", "10.0.0.4"]));
    s.watch("zk");
    let m = by_logical(&dir);
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        vec!["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    );
}

#[test]
fn kill_9_mid_rolling_update_resumes_within_bounds() {
    for kill_after in [1usize, 7, 15] {
        let mut s = Stack::new();
        let dir = s.dir();
        s.commit("big", cattle(20, "v1"));
        s.watch("big");
        let v1: BTreeSet<String> = hashes(&dir);

        // Sample the instance count all the time: never below 19, never above 20.
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let max = Arc::new(AtomicUsize::new(0));
        let sampler = {
            let (stop, min, max, dir) = (stop.clone(), min.clone(), max.clone(), dir.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = instances(&dir).len();
                    min.fetch_min(n, Ordering::Relaxed);
                    max.fetch_max(n, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };

        s.commit("big", cattle(20, "v2"));
        wait_until(
            &format!("{kill_after} replaced"),
            Duration::from_secs(60),
            || {
                instances(&dir)
                    .values()
                    .filter(|t| !v1.contains(&t["infrakit.config.hash"]))
                    .count()
                    >= kill_after
            },
        );
        let mut g = s.group.take().unwrap();
        g.signal(9);
        g.wait_exit(Duration::from_secs(5)).expect("killed");
        drop(g);
        std::thread::sleep(Duration::from_millis(300));
        s.start_group();
        s.watch("big");
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();

        let now = instances(&dir);
        assert_eq!(now.len(), 20, "kill after {kill_after}");
        let h = hashes(&dir);
        assert_eq!(
            h.len(),
            1,
            "every instance current (kill after {kill_after})"
        );
        assert!(h.is_disjoint(&v1));
        let (lo, hi) = (min.load(Ordering::Relaxed), max.load(Ordering::Relaxed));
        println!(
            "kill -9 after {kill_after} replacements: instance count stayed within [{lo}, {hi}]"
        );
        assert!(lo >= 19, "fell to {lo} (kill after {kill_after})");
        assert!(hi <= 20, "rose to {hi} (kill after {kill_after})");
    }
}

#[test]
fn bad_group_files_are_refused_and_running_groups_untouched() {
    let s = Stack::new();
    let dir = s.dir();
    s.commit("ok", cattle(2, "v1"));
    s.watch("ok");
    let before = instances(&dir);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing allocation",
            json!({"ID": "ok", "Properties": {"Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-vanilla"}}}).to_string(),
            "Allocation",
        ),
        (
            "both allocations",
            json!({"ID": "ok", "Properties": {"Allocation": {"Size": 2, "LogicalIDs": ["a"]},
                "Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-vanilla"}}}).to_string(),
            "both Size and LogicalIDs",
        ),
        (
            "unknown plugin",
            json!({"ID": "ok", "Properties": {"Allocation": {"Size": 2},
                "Instance": {"Plugin": "instance-nope"}, "Flavor": {"Plugin": "flavor-vanilla"}}}).to_string(),
            "instance-nope",
        ),
        (
            "typo in a field",
            json!({"ID": "ok", "Properties": {"Alocation": {"Size": 2},
                "Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-vanilla"}}}).to_string(),
            "Alocation",
        ),
        ("bad JSON", "{\"ID\": \"ok\", \"Properties\": {".to_string(), "not a valid group spec"),
        (
            "a LogicalID with a zero-width space (prints as its twin)",
            json!({"ID": "pets", "Properties": {"Allocation": {"LogicalIDs": ["n1", "n1\u{200B}"]},
                "Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-vanilla"}}}).to_string(),
            "LogicalIDs[1]: 'n1\\u{200b}' holds U+200B",
        ),
        (
            "a LogicalID with a right-to-left override (prints reversed)",
            json!({"ID": "pets", "Properties": {"Allocation": {"LogicalIDs": ["\u{202E}gnp.exe"]},
                "Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-vanilla"}}}).to_string(),
            "holds U+202E",
        ),
    ];
    for (what, text, needle) in cases {
        let f = s.w.write("bad.json", &text);
        let err = s.w.fails(&["group", "commit", f.to_str().unwrap()]);
        assert!(err.contains(needle), "{what}: {err}");
    }

    // A plugin that is down: a clear error naming it.
    let mut down = s.w.serve("flavor-down", &["flavor-vanilla"]);
    down.signal(9);
    down.wait_exit(Duration::from_secs(5));
    let f = s.w.write(
        "down.json",
        &json!({"ID": "other", "Properties": {"Allocation": {"Size": 1},
            "Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-down"}}})
        .to_string(),
    );
    let err = s.w.fails(&["group", "commit", f.to_str().unwrap()]);
    assert!(err.contains("flavor-down"), "{err}");

    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(instances(&dir), before, "the running group is untouched");
    assert_eq!(s.w.ok(&["group", "ls", "-q"]).trim(), "ok");
    let d: Value = serde_json::from_str(&s.w.ok(&["group", "describe", "ok", "--json"])).unwrap();
    assert_eq!(d["Converged"], json!(true), "{d}");
}

#[test]
fn quick_start_up_converges_the_example_and_cleans_its_sockets() {
    let w = World::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cattle.json");
    let dir = w.path("instances");
    let out = w
        .cmd(&[
            "up",
            example,
            "--until-converged",
            "--timeout",
            "60s",
            "--poll-interval",
            "200ms",
        ])
        .env("HOME", w.path("home"))
        .env("INFRAKIT_INSTANCE_FILE_DIR", &dir)
        .env("INFRAKIT_GROUP_STORE", w.path("store"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ready: 5/5 healthy"), "{stdout}");
    assert_eq!(instances(&dir).len(), 5);
    assert!(w.path("store/cattle.json").exists(), "the group is stored");
    let left: Vec<_> = std::fs::read_dir(w.plugins_dir())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "sockets removed on exit: {left:?}");

    // Running it again adopts the same instances.
    let before = instances(&dir);
    let out = w
        .cmd(&["up", example, "--until-converged", "--timeout", "60s"])
        .env("INFRAKIT_INSTANCE_FILE_DIR", &dir)
        .env("INFRAKIT_GROUP_STORE", w.path("store"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(instances(&dir), before);
}

#[test]
fn an_instance_plugin_that_goes_away_is_reported_and_nothing_is_destroyed() {
    let mut s = Stack::new();
    let dir = s.dir();
    s.commit("steady", cattle(3, "v1"));
    s.watch("steady");
    let before = instances(&dir);

    // The instance plugin dies: the group reports it, decides nothing, destroys nothing.
    s._files.signal(9);
    s._files.wait_exit(Duration::from_secs(5)).expect("killed");
    wait_until("the outage reported", Duration::from_secs(10), || {
        let d: Value =
            serde_json::from_str(&s.w.ok(&["group", "describe", "steady", "--json"])).unwrap();
        d["Converged"] == json!(false)
            && d["Message"]
                .as_str()
                .unwrap_or("")
                .contains("instance-file")
    });
    assert_eq!(instances(&dir), before);

    // It comes back: the same instances, converged again.
    s._files = s.w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().unwrap()],
    );
    s.watch("steady");
    assert_eq!(instances(&dir), before, "no instance re-created");
}

#[test]
fn plans_can_be_pinned_and_updates_rolled_back() {
    let s = Stack::new();
    let dir = s.dir();
    s.commit("web", cattle(3, "v1"));
    s.watch("web");
    let v1 = hashes(&dir);

    // validate and schema need no plugin.
    let good = s.w.write(
        "good.json",
        &json!({"ID": "web", "Properties": cattle(3, "v2")}).to_string(),
    );
    let out = s.w.ok(&["group", "validate", good.to_str().unwrap()]);
    assert!(
        out.contains("valid group 'web'") && out.contains("3 instances"),
        "{out}"
    );
    let bad = s.w.write(
        "badpolicy.json",
        &json!({"ID": "web", "Properties": {"Allocation": {"Size": 3},
            "Instance": {"Plugin": "instance-file"}, "Flavor": {"Plugin": "flavor-vanilla"},
            "Policies": {"Update": {"MaxSurge": 0, "MaxUnavailable": 0}}}})
        .to_string(),
    );
    let err = s.w.fails(&["group", "validate", bad.to_str().unwrap()]);
    assert!(
        err.contains("MaxSurge") || err.contains("MaxUnavailable"),
        "{err}"
    );
    let schema: Value = serde_json::from_str(&s.w.ok(&["group", "schema"])).unwrap();
    assert_eq!(
        schema["properties"]["Properties"]["required"],
        json!(["Allocation", "Instance", "Flavor"])
    );

    // A plan pinned by its version: refused once the observed state changed, accepted when not.
    let version =
        s.w.ok(&["group", "commit", "--pretend", "-q", good.to_str().unwrap()])
            .trim()
            .to_string();
    assert!(!version.is_empty());
    let victim = instances(&dir).keys().next().unwrap().clone();
    std::fs::remove_file(dir.join(format!("{victim}.json"))).unwrap();
    wait_until("the victim replaced", Duration::from_secs(30), || {
        instances(&dir).len() == 3
    });
    s.watch("web");
    let err = s.w.fails(&[
        "group",
        "commit",
        "--expect",
        &version,
        good.to_str().unwrap(),
    ]);
    assert!(
        err.contains("changed since plan") && err.contains(&version),
        "{err}"
    );
    let version =
        s.w.ok(&["group", "commit", "--pretend", "-q", good.to_str().unwrap()])
            .trim()
            .to_string();
    s.w.ok(&[
        "group",
        "commit",
        "--expect",
        &version,
        good.to_str().unwrap(),
    ]);
    s.watch("web");
    let v2 = hashes(&dir);
    assert_ne!(v1, v2);

    // Roll back: every instance carries the previous configuration again.
    let out = s.w.ok(&["group", "rollback", "web"]);
    assert!(!out.trim().is_empty());
    wait_until("rolled back to v1", Duration::from_secs(30), || {
        hashes(&dir) == v1 && instances(&dir).len() == 3
    });
    let d: Value = serde_json::from_str(&s.w.ok(&["group", "describe", "web", "--json"])).unwrap();
    assert!(
        d["Update"].to_string().contains("rolled_back")
            || d["Update"].to_string().contains("rolling_back"),
        "{d}"
    );
    let err = s.w.fails(&["group", "pause", "nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
}

#[test]
fn up_keeps_its_groups_apart_from_the_group_plugins_store() {
    let w = World::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cattle.json");
    let home = w.path("home");
    let out = w
        .cmd(&["up", example, "--until-converged", "--timeout", "60s"])
        .env("HOME", &home)
        .env("INFRAKIT_INSTANCE_FILE_DIR", w.path("instances"))
        .env_remove("INFRAKIT_GROUP_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        home.join(".infrakit/up/groups/cattle.json").exists(),
        "stored in up's own store: {stderr}"
    );
    assert!(
        !home.join(".infrakit/groups").exists(),
        "the group plugin's default store is not touched"
    );
    assert!(stderr.contains(".infrakit/up/groups"), "{stderr}");

    // A group plugin started later with its default store does not resume the group.
    let _files = w.serve(
        "instance-file",
        &[
            "instance-file",
            "--dir",
            w.path("instances").to_str().unwrap(),
        ],
    );
    let _vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let mut cmd = w.cmd(&["plugin", "serve", "group", "--name", "group"]);
    cmd.env("HOME", &home)
        .env_remove("INFRAKIT_GROUP_STORE")
        .stdout(std::process::Stdio::null());
    let group = common::Plugin {
        child: cmd.spawn().unwrap(),
        socket: w.socket("group"),
    };
    group.wait_ready();
    assert_eq!(w.ok(&["group", "ls", "-q"]).trim(), "", "nothing resumed");

    let help = w.ok(&["up", "--help"]);
    assert!(help.contains("~/.infrakit/up/groups"), "{help}");
}

/// Lines `infrakit up` printed so far, read by a thread.
fn collect_lines(from: impl Read + Send + 'static) -> Arc<std::sync::Mutex<Vec<String>>> {
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
fn up_prints_each_change_as_it_happens_and_says_when_the_group_is_gone() {
    let w = World::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cattle.json");
    let child = w
        .cmd(&["up", example, "--poll-interval", "200ms"])
        .env("HOME", w.path("home"))
        .env("INFRAKIT_INSTANCE_FILE_DIR", w.path("instances"))
        .env_remove("INFRAKIT_GROUP_STORE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = common::Plugin {
        child,
        socket: w.socket("group"),
    };
    let out = collect_lines(up.child.stdout.take().unwrap());
    let err = collect_lines(up.child.stderr.take().unwrap());
    let saw = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        while !out.lock().unwrap().iter().any(|l| pred(l)) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; up printed:\n{}",
                out.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    saw("ready", &|l| l == "cattle: now 5 of 5: ready: 5/5 healthy");
    // The event stream too, followed from before the group existed.
    saw("a provision event", &|l| {
        l.contains(" cattle provision-finished ")
    });
    saw("a line with the five new instances", &|l| {
        l.starts_with("cattle: +5 instances: instance-")
    });
    wait_until("keeping converged", Duration::from_secs(10), || {
        err.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("keeping group 'cattle' converged"))
    });

    w.ok(&["group", "scale", "cattle", "3"]);
    saw("the target change", &|l| l == "cattle: target 5 -> 3");
    saw("two instances gone, named", &|l| {
        l.starts_with("cattle: -2 instances: instance-")
    });

    let v2 = std::fs::read_to_string(example)
        .unwrap()
        .replace("\"v1\"", "\"v2\"");
    let f = w.write("v2.json", &v2);
    w.ok(&["group", "commit", f.to_str().unwrap()]);
    saw("the update's end", &|l| {
        l.starts_with("cattle: update: ") && l.contains("completed")
    });

    w.ok(&["group", "destroy", "cattle"]);
    saw("the group gone", &|l| {
        l.starts_with("cattle: gone (destroyed") && l.ends_with("no group left to keep converged")
    });
    wait_until("no longer keeping it", Duration::from_secs(10), || {
        err.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("group 'cattle' no longer exists"))
    });

    up.signal(15);
    up.wait_exit(Duration::from_secs(10))
        .expect("up stops on SIGTERM");
    let err = err.lock().unwrap().clone();
    let keeping = err.iter().filter(|l| l.contains("keeping group")).count();
    assert_eq!(keeping, 1, "said once, before the destroy: {err:?}");
}

/// `up` (`make up`) stopped by Ctrl-C half way through an update, then run again with the same
/// file: it resumes the stored group, saying what differs and that --force would undo it, instead
/// of re-committing the file and rolling the update back without a word; --force says what it
/// abandons.
#[test]
fn up_again_resumes_a_stored_group_mid_update_and_force_says_what_it_undoes() {
    let w = World::new();
    // MinReadySeconds keeps the update going for minutes: it is surely half way when stopped.
    let spec = |note: &str| {
        json!({"ID": "cattle", "Properties": {
            "Allocation": {"Size": 3},
            "Instance": {"Plugin": "instance-file", "Properties": {"Note": note}},
            "Flavor": {"Plugin": "flavor-vanilla"},
            "Policies": {"Update": {"MaxSurge": 1, "MaxUnavailable": 0, "MinReadySeconds": 600, "HealthyDeadlineSeconds": 0}}
        }})
        .to_string()
    };
    let v1 = w.write("v1.json", &spec("v1"));
    let v2 = w.write("v2.json", &spec("v2"));
    let v1 = v1.to_str().unwrap();
    let stored = w.path("store").join("cattle.json");
    // The Note of the spec the store holds for the group (the record keeps older versions too).
    let stored_note = || -> String {
        std::fs::read_to_string(&stored)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|r| {
                r["Spec"]["Properties"]["Instance"]["Properties"]["Note"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let up = |extra: &[&str]| {
        let mut args = vec!["up", v1, "--poll-interval", "200ms"];
        args.extend_from_slice(extra);
        let mut child = w
            .cmd(&args)
            .env("HOME", w.path("home"))
            .env("INFRAKIT_INSTANCE_FILE_DIR", w.path("instances"))
            .env("INFRAKIT_GROUP_STORE", w.path("store"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = collect_lines(child.stderr.take().unwrap());
        (
            common::Plugin {
                child,
                socket: w.socket("group"),
            },
            err,
        )
    };
    let said = |err: &Arc<std::sync::Mutex<Vec<String>>>, what: &str| {
        wait_until(what, Duration::from_secs(30), || {
            err.lock().unwrap().iter().any(|l| l.contains(what))
        });
        err.lock().unwrap().join("\n")
    };
    let update_state = || {
        let d: Value =
            serde_json::from_str(&w.ok(&["group", "describe", "cattle", "--json"])).unwrap();
        d["Update"]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // The first run; from another terminal, a commit of v2; Ctrl-C while it rolls.
    let (mut first, err) = up(&[]);
    said(&err, "keeping group 'cattle' converged");
    w.ok(&["group", "commit", v2.to_str().unwrap()]);
    wait_until("the update under way", Duration::from_secs(30), || {
        update_state() == "updating"
    });
    first.signal(2);
    first
        .wait_exit(Duration::from_secs(10))
        .expect("up stops on Ctrl-C");
    assert_eq!(stored_note(), "v2");

    // Again with v1's file: the stored v2 group is resumed, its update still going, and it says so.
    let (mut again, err) = up(&[]);
    let text = said(&err, "resuming the stored group");
    assert!(
        text.contains("other Instance/Flavor properties")
            && text.contains("update is in progress")
            && text.contains("--force"),
        "{text}"
    );
    assert_eq!(update_state(), "updating", "not rolled back");
    assert_eq!(stored_note(), "v2", "the file was not committed");
    again.signal(2);
    again.wait_exit(Duration::from_secs(10)).expect("up stops");

    // --force commits the file, saying what it abandons.
    let (mut forced, err) = up(&["--force"]);
    let text = said(&err, "--force: committing");
    assert!(text.contains("abandons its update in progress"), "{text}");
    wait_until("v1 stored", Duration::from_secs(30), || {
        stored_note() == "v1"
    });
    forced.signal(2);
    forced.wait_exit(Duration::from_secs(10)).expect("up stops");
}
