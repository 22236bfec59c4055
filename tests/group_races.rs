//! The group controller under concurrency, crashes and a hostile store: one writer per group,
//! records that cannot be managed reported and never acted on, limits refused at commit. Real
//! plugin processes (instance-file, flavor-vanilla, group) driven through the CLI.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Plugin, World};
use serde_json::{json, Value};

struct Stack {
    w: World,
    _files: Plugin,
    _vanilla: Plugin,
    group: Option<Plugin>,
    starts: u32,
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
            starts: 0,
        };
        s.start_group();
        s
    }

    fn store(&self) -> PathBuf {
        self.w.path("store")
    }

    /// Starts the group controller with its log (stdout) in `group-<n>.log`.
    fn start_group(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let store = self.store();
        let child = self
            .w
            .cmd(&[
                "plugin",
                "serve",
                "group",
                "--name",
                "group",
                "--store",
                store.to_str().unwrap(),
                "--poll-interval",
                "200ms",
                "--health-interval",
                "1s",
            ])
            // Info lines are what the tests count ("managing group", replacements).
            .env("INFRAKIT_LOG", "info")
            .stdout(Stdio::from(log))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn group");
        let p = Plugin {
            child,
            socket: self.w.socket("group"),
        };
        p.wait_ready();
        self.group = Some(p);
    }

    fn kill_group(&mut self) {
        if let Some(g) = self.group.take() {
            g.signal(9);
            drop(g);
        }
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.w.path(&format!("group-{n}.log"))
    }

    /// Every log line of every controller started so far.
    fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect()
    }

    fn spec_file(&self, name: &str, id: &str, props: &Value) -> PathBuf {
        self.w
            .write(name, &json!({"ID": id, "Properties": props}).to_string())
    }

    fn commit_in_background(&self, file: &std::path::Path) -> Child {
        self.w
            .cmd(&["group", "commit", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn commit")
    }

    fn instances(&self) -> usize {
        std::fs::read_dir(self.w.path("instances"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.ends_with(".json") && !n.starts_with('.')
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn inspect(&self, id: &str) -> Option<Value> {
        let out = self.w.run(&["group", "inspect", id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("inspect json"))
    }

    fn wait_until(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < limit,
                "{what}: not after {limit:?}; controller log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn cattle(size: u64) -> Value {
    json!({
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "race"}},
        "Flavor": {"Plugin": "flavor-vanilla"}
    })
}

fn size_of(spec: &Value) -> u64 {
    spec["Properties"]["Allocation"]["Size"]
        .as_u64()
        .unwrap_or(0)
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn parallel_commits_of_a_new_group_start_exactly_one_worker_and_the_last_one_stays() {
    let mut s = Stack::new();
    let files: Vec<PathBuf> = (1..=20)
        .map(|n| s.spec_file(&format!("race-{n}.json"), "race", &cattle(n)))
        .collect();
    let children: Vec<Child> = files.iter().map(|f| s.commit_in_background(f)).collect();
    let mut accepted = 0;
    for c in children {
        let out = c.wait_with_output().expect("commit");
        assert!(
            out.status.success(),
            "a commit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        accepted += 1;
    }
    assert_eq!(accepted, 20);
    let spec = s.inspect("race").expect("the group exists");
    let size = size_of(&spec) as usize;
    assert!((1..=20).contains(&size), "{spec}");
    s.w.ok(&["group", "watch", "race", "--timeout", "60s"]);
    s.wait_until(
        "instances match the last commit",
        Duration::from_secs(30),
        || s.instances() == size,
    );
    let log = s.log();
    assert_eq!(
        count(&log, "managing group"),
        1,
        "exactly one worker for the group:\n{log}"
    );
    // Same configuration in every commit: nothing is ever replaced, only added or removed.
    assert_eq!(count(&log, "rolling_update"), 0, "{log}");

    // The stored spec is the one the controller ran: a restart keeps it.
    s.kill_group();
    s.start_group();
    assert_eq!(s.inspect("race"), Some(spec));
    s.w.ok(&["group", "watch", "race", "--timeout", "60s"]);
    assert_eq!(s.instances(), size);
}

#[test]
fn a_commit_racing_a_destroy_ends_destroyed_or_committed_and_survives_a_restart() {
    let mut s = Stack::new();
    for round in 0..6u64 {
        let id = format!("dr{round}");
        let f = s.spec_file(&format!("{id}-a.json"), &id, &cattle(3));
        s.w.ok(&["group", "commit", f.to_str().unwrap()]);
        s.w.ok(&["group", "watch", &id, "--timeout", "60s"]);
        let again = s.spec_file(&format!("{id}-b.json"), &id, &cattle(2));
        let destroy =
            s.w.cmd(&["group", "destroy", &id, "--timeout", "60s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("destroy");
        // Different offsets put the commit before, during and after the destroy's convergence.
        std::thread::sleep(Duration::from_millis(round * 40));
        let commit = s.commit_in_background(&again);
        let destroy = destroy.wait_with_output().expect("destroy");
        let commit = commit.wait_with_output().expect("commit");
        assert!(
            commit.status.success(),
            "round {round}: commit: {}",
            String::from_utf8_lossy(&commit.stderr)
        );
        // Settle, then what the controller shows must be what the store holds.
        let settled = |s: &Stack| -> Option<Value> {
            let spec = s.inspect(&id);
            if spec.is_some() {
                s.w.ok(&["group", "watch", &id, "--timeout", "60s"]);
            }
            spec
        };
        let before = settled(&s);
        match &before {
            Some(spec) => {
                assert_eq!(size_of(spec), 2, "round {round}: {spec}");
                let stderr = String::from_utf8_lossy(&destroy.stderr);
                assert!(
                    !destroy.status.success() || stderr.is_empty(),
                    "round {round}: destroy said it succeeded although the group lives on"
                );
            }
            None => {
                assert!(
                    destroy.status.success(),
                    "round {round}: group gone but destroy failed: {}",
                    String::from_utf8_lossy(&destroy.stderr)
                );
            }
        }
        s.kill_group();
        s.start_group();
        let after = settled(&s);
        assert_eq!(
            after, before,
            "round {round}: a restart changed the outcome"
        );
        let want = before.as_ref().map(|v| size_of(v) as usize).unwrap_or(0);
        let ours = || {
            let out = s.w.ok(&[
                "instance",
                "describe",
                "--tags",
                &format!("infrakit.group={id}"),
                "-q",
            ]);
            out.lines().filter(|l| !l.trim().is_empty()).count()
        };
        s.wait_until(
            "instances match the outcome",
            Duration::from_secs(30),
            || ours() == want,
        );
        if before.is_some() {
            s.w.ok(&["group", "destroy", &id, "--timeout", "60s"]);
        }
    }
    assert_eq!(s.instances(), 0);
}

#[test]
fn unusable_records_are_listed_never_managed_and_never_escape_the_store() {
    let mut s = Stack::new();
    let f = s.spec_file("good.json", "good", &cattle(2));
    s.w.ok(&["group", "commit", f.to_str().unwrap()]);
    s.w.ok(&["group", "watch", "good", "--timeout", "60s"]);
    s.kill_group();

    let store = s.store();
    let good: Value =
        serde_json::from_slice(&std::fs::read(store.join("good.json")).expect("record"))
            .expect("json");
    // A copy under another name, an ID escaping the store, a spec no longer valid, and a spec
    // that would exhaust memory.
    std::fs::copy(store.join("good.json"), store.join("copy.json")).expect("copy");
    let victim = s.w.path("victim");
    std::fs::write(&victim, "keep me").expect("victim");
    let mut evil = good.clone();
    evil["Spec"]["ID"] = json!("../victim");
    std::fs::write(store.join("evil.json"), evil.to_string()).expect("evil");
    let mut negative = good.clone();
    negative["Spec"]["ID"] = json!("negative");
    negative["Spec"]["Properties"]["Allocation"] = json!({"Size": -3});
    std::fs::write(store.join("negative.json"), negative.to_string()).expect("negative");
    let mut huge = good.clone();
    huge["Spec"]["ID"] = json!("huge");
    huge["Spec"]["Properties"]["Allocation"] = json!({"Size": 1_000_000_000u64});
    std::fs::write(store.join("huge.json"), huge.to_string()).expect("huge");

    s.start_group();
    let out = s.w.run(&["group", "ls"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ls must say something is wrong");
    for id in ["good", "copy", "evil", "negative", "huge"] {
        assert!(stdout.contains(id), "ls lists {id}:\n{stdout}");
    }
    assert!(
        stderr.contains("must be named after its group ID"),
        "{stderr}"
    );
    assert!(stderr.contains("Allocation.Size"), "{stderr}");
    assert!(stderr.contains("more than the 100000"), "{stderr}");
    assert_eq!(
        count(&s.log(), "managing group"),
        2,
        "only 'good', once per start"
    );

    // The good group is still managed: a deleted instance comes back.
    let one = std::fs::read_dir(s.w.path("instances"))
        .expect("dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .expect("an instance");
    std::fs::remove_file(one.path()).expect("rm");
    s.wait_until("the good group heals", Duration::from_secs(30), || {
        s.instances() == 2
    });

    // Freeing the escaping record removes the file in the store, nothing outside it.
    s.w.ok(&["group", "free", "evil"]);
    assert!(!store.join("evil.json").exists());
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep me");
    // A corrected commit replaces an unusable record.
    let fixed = s.spec_file("negative-fixed.json", "negative", &cattle(1));
    s.w.ok(&["group", "commit", fixed.to_str().unwrap()]);
    s.w.ok(&["group", "watch", "negative", "--timeout", "60s"]);
    for id in ["copy", "huge"] {
        s.w.ok(&["group", "free", id]);
    }
    s.w.ok(&["group", "ls"]);
    for id in ["good", "negative"] {
        s.w.ok(&["group", "destroy", id, "--timeout", "60s"]);
    }
}

#[test]
fn specs_that_would_hurt_the_controller_are_refused_at_commit() {
    let s = Stack::new();
    let refuse = |name: &str, props: Value, want: &str| {
        let f = s.spec_file(name, "limits", &props);
        let err = s.w.fails(&["group", "commit", f.to_str().unwrap()]);
        assert!(err.contains(want), "{name}: {err} (wanted {want})");
        let err = s.w.fails(&["group", "validate", f.to_str().unwrap()]);
        assert!(err.contains(want), "{name} validate: {err} (wanted {want})");
    };
    let mut alloc = cattle(1);
    alloc["Allocation"] = json!({"Size": 1_000_000_000u64});
    refuse("huge.json", alloc, "more than the 100000");
    let mut typo = cattle(1);
    typo["Allocation"] = json!({"Size": 3, "Sise": 4});
    refuse("typo.json", typo, "Properties.Allocation.Sise");
    let mut array = cattle(1);
    array["Allocation"] = json!([1]);
    refuse("array.json", array, "Properties.Allocation");
    let mut nested = json!("leaf");
    for _ in 0..123 {
        nested = json!({ "n": nested });
    }
    let mut deep = cattle(1);
    deep["Instance"]["Properties"] = nested;
    refuse("deep.json", deep, "nested more than 64");
    let mut nul = cattle(1);
    nul["Allocation"] = json!({"LogicalIDs": ["a\u{0}b"]});
    refuse("nul.json", nul, "control character");
    let mut long = cattle(1);
    long["Allocation"] = json!({"LogicalIDs": ["x".repeat(100_000)]});
    refuse("long.json", long, "more than 253");
    // Nothing was created by any of them.
    assert_eq!(s.instances(), 0);
    assert!(s.inspect("limits").is_none());
}

#[test]
fn a_second_controller_is_refused_even_when_the_old_lock_file_is_deleted() {
    let s = Stack::new();
    let _ = std::fs::remove_file(s.store().join(".lock"));
    let store = s.store();
    let out = s.w.run(&[
        "plugin",
        "serve",
        "group",
        "--name",
        "group-two",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another group controller"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&store)
        .expect("store")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the store is private");
}

#[test]
fn kill_9_during_commits_keeps_the_last_acknowledged_commit_or_the_one_in_flight() {
    let mut s = Stack::new();
    let mut acknowledged: Option<u64> = None;
    for round in 0..8u64 {
        let size = round % 4 + 1;
        let f = s.spec_file(&format!("k{round}.json"), "kill", &cattle(size));
        let commit = s.commit_in_background(&f);
        std::thread::sleep(Duration::from_millis(fastrand_ms(round)));
        s.kill_group();
        let out = commit.wait_with_output().expect("commit");
        s.start_group();
        let stored = s.inspect("kill").map(|v| size_of(&v));
        if out.status.success() {
            assert_eq!(
                stored,
                Some(size),
                "round {round}: an acknowledged commit was lost"
            );
            acknowledged = Some(size);
        } else {
            assert!(
                stored == acknowledged || stored == Some(size),
                "round {round}: stored {stored:?}, acknowledged {acknowledged:?}, in flight {size}"
            );
            acknowledged = stored;
        }
        if let Some(want) = stored {
            s.w.ok(&["group", "watch", "kill", "--timeout", "60s"]);
            s.wait_until(
                "instances match the stored spec",
                Duration::from_secs(30),
                || s.instances() == want as usize,
            );
        }
    }
    if acknowledged.is_some() {
        s.w.ok(&["group", "destroy", "kill", "--timeout", "60s"]);
    }
    assert_eq!(s.instances(), 0);
}

/// A spread of kill delays (0-70 ms) without a random-number dependency.
fn fastrand_ms(round: u64) -> u64 {
    (round * 37 + 11) % 71
}
