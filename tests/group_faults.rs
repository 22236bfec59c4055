//! The group controller when something it depends on misbehaves: an instance plugin that goes away
//! mid-commit, an instance description it cannot read, a store directory changed by hand. Real
//! plugin processes (instance-file, flavor-vanilla, group) driven through the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Plugin, World};
use serde_json::{json, Value};

struct Stack {
    w: World,
    files: Option<Plugin>,
    _vanilla: Plugin,
    group: Option<Plugin>,
    starts: u32,
    /// How long the group controller trusts a Healthy verdict.
    health_interval: &'static str,
}

impl Stack {
    /// instance-file and flavor-vanilla; the group controller is started by [`Stack::start_group`].
    fn new() -> Stack {
        let w = World::new();
        let vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
        let mut s = Stack {
            w,
            files: None,
            _vanilla: vanilla,
            group: None,
            starts: 0,
            health_interval: "1s",
        };
        s.start_files();
        s
    }

    fn instances_dir(&self) -> PathBuf {
        self.w.path("instances")
    }

    fn start_files(&mut self) {
        let dir = self.instances_dir();
        self.files = Some(self.w.serve(
            "instance-file",
            &["instance-file", "--dir", dir.to_str().unwrap()],
        ));
    }

    fn kill_files(&mut self) {
        if let Some(mut f) = self.files.take() {
            f.signal(9);
            f.wait_exit(Duration::from_secs(10))
                .expect("instance-file killed");
        }
    }

    fn store(&self) -> PathBuf {
        self.w.path("store")
    }

    /// Starts the group controller with its log (stdout and stderr) in `group-<n>.log`.
    fn start_group(&mut self) {
        let child = self.spawn_group();
        let p = Plugin {
            child,
            socket: self.w.socket("group"),
        };
        p.wait_ready();
        self.group = Some(p);
    }

    fn spawn_group(&mut self) -> std::process::Child {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let store = self.store();
        self.w
            .cmd(&[
                "plugin",
                "serve",
                "group",
                "--name",
                "group",
                "--store",
                store.to_str().unwrap(),
                "--poll-interval",
                "1s",
                "--health-interval",
                self.health_interval,
            ])
            .env("INFRAKIT_LOG", "info")
            // Warnings go to stderr: both in the one file.
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn group")
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

    fn commit(&self, id: &str, props: &Value) -> std::process::Output {
        let f = self.w.write(
            &format!("{id}-{}.json", nanos()),
            &json!({"ID": id, "Properties": props}).to_string(),
        );
        self.w.run(&["group", "commit", f.to_str().unwrap()])
    }

    fn committed(&self, id: &str, props: &Value) {
        let out = self.commit(id, props);
        assert!(
            out.status.success(),
            "commit of {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The instance files carrying group `id`'s tag.
    fn members(&self, id: &str) -> Vec<PathBuf> {
        members(&self.instances_dir(), id)
    }

    fn describe(&self, id: &str) -> Value {
        serde_json::from_str(&self.w.ok(&["group", "describe", id, "--json"])).expect("json")
    }

    fn wait_until(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < limit,
                "{what}: not after {limit:?}; controller log (tail):\n{}",
                tail(&self.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn cattle(size: u64) -> Value {
    json!({
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "faults"}},
        "Flavor": {"Plugin": "flavor-vanilla"}
    })
}

fn members(dir: &Path, id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".json") && !n.starts_with('.')
        })
        .filter(|e| {
            std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["Tags"]["infrakit.group"] == json!(id))
        })
        .map(|e| e.path())
        .collect()
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

// ---- the store directory ----

/// A FIFO named like a record used to block the load in open(): the socket never answered, no
/// group was managed, and SIGTERM was not acted on.
#[test]
fn a_fifo_in_the_store_neither_blocks_the_start_nor_sigterm() {
    let mut s = Stack::new();
    std::fs::create_dir_all(s.store()).expect("store");
    let fifo = std::ffi::CString::new(s.store().join("x.json").as_os_str().as_encoded_bytes())
        .expect("path");
    // SAFETY: a NUL-terminated path, and a mode.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    s.start_group();
    s.w.ok(&["group", "ls"]);
    s.committed("after", &cattle(1));
    s.wait_until("the new group converges", Duration::from_secs(30), || {
        s.members("after").len() == 1
    });
    assert!(s.log().contains("x.json"), "the FIFO is named in a warning");
    let mut g = s.group.take().expect("group");
    g.signal(15);
    assert!(
        g.wait_exit(Duration::from_secs(15)).is_some(),
        "SIGTERM ends the group plugin"
    );
}

/// b.json renamed to c.json while the controller runs, then a new group `c` committed: the commit
/// used to overwrite b's record silently, and after a restart b was unmanaged, its instances
/// orphaned.
#[test]
fn a_record_renamed_while_running_is_neither_overwritten_nor_orphaned() {
    let mut s = Stack::new();
    s.start_group();
    s.committed("b", &cattle(2));
    s.wait_until("b converges", Duration::from_secs(30), || {
        s.members("b").len() == 2
    });
    std::fs::rename(s.store().join("b.json"), s.store().join("c.json")).expect("rename");
    let out = s.commit("c", &cattle(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the commit of c must be refused");
    assert!(stderr.contains("holds group 'b'"), "{stderr}");
    let held: Value =
        serde_json::from_slice(&std::fs::read(s.store().join("c.json")).expect("c.json"))
            .expect("json");
    assert_eq!(held["Spec"]["ID"], json!("b"), "b's record is intact");

    // After a restart, b is managed again (its record back under its own name) and says so.
    s.kill_group();
    // b's task may have saved its record again meanwhile (b.json, and c.json a stale copy): the
    // case that orphaned b is the one where only c.json holds it.
    let _ = std::fs::remove_file(s.store().join("b.json"));
    s.start_group();
    let ls = s.w.ok(&["group", "ls"]);
    assert!(ls.contains('b'), "{ls}");
    assert!(s.store().join("b.json").exists());
    assert_eq!(
        count(&s.log(), "moved back"),
        1,
        "a warning says what happened"
    );
    let victim = s.members("b").pop().expect("an instance of b");
    std::fs::remove_file(victim).expect("rm");
    s.wait_until("b heals after the restart", Duration::from_secs(30), || {
        s.members("b").len() == 2 && s.describe("b")["Converged"] == json!(true)
    });
    // And c can now be committed.
    s.committed("c", &cattle(1));
    s.wait_until("c converges", Duration::from_secs(30), || {
        s.members("c").len() == 1
    });
}

// ---- an outage of the instance plugin ----

/// instance-file killed mid-commit and back soon after: every provision in flight failed, and each
/// failure counted toward the backoff, so the group waited out MaxBackoffSeconds (300 s) before it
/// provisioned again. One outage is one failure, and a plugin that answers again resumes the work.
#[test]
fn an_outage_of_the_instance_plugin_mid_commit_is_one_failure() {
    const SIZE: usize = 300;
    let mut s = Stack::new();
    s.start_group();
    // Instances count as available only after a minute: none made before the outage becomes
    // available during the test, which would reset the backoff and hide what the outage did.
    let mut spec = cattle(SIZE as u64);
    spec["Policies"] = json!({"Update": {"MinReadySeconds": 60, "HealthyDeadlineSeconds": 600}});
    s.committed("big", &spec);
    s.wait_until("provisions under way", Duration::from_secs(60), || {
        !s.members("big").is_empty()
    });
    s.kill_files();
    // Down long enough for the provisions queued to fail (in the report: down for a second).
    s.wait_until("provisions fail", Duration::from_secs(60), || {
        count(&s.log(), "provisioning an instance of group 'big' failed") >= 50
    });
    let before = s.members("big").len();
    let back = Instant::now();
    s.start_files();
    s.wait_until(
        "every instance made once instance-file is back",
        Duration::from_secs(30),
        || s.members("big").len() == SIZE,
    );
    eprintln!(
        "outage mid-commit of {SIZE}: {before} made before the outage; all made {:.1} s after \
         instance-file was back",
        back.elapsed().as_secs_f64()
    );
}

// ---- an instance description that cannot be read ----

/// `{"Deep": [[[...]]]}`: a JSON object whose deepest value is `depth` levels down.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 1..depth {
        v = json!([v]);
    }
    json!({ "Deep": v })
}

/// A hand-written instance file carrying the group's tag, as deep as the plugin itself still reads
/// (127 levels): the controller's DescribeInstances reply did not parse ("recursion limit
/// exceeded"), the group stayed "converging" and a deleted instance was never replaced.
#[test]
fn an_unreadable_instance_is_set_aside_and_the_group_still_heals() {
    let mut s = Stack::new();
    s.start_group();
    s.committed("g", &cattle(3));
    s.wait_until("g converges", Duration::from_secs(30), || {
        s.members("g").len() == 3 && s.describe("g")["Converged"] == json!(true)
    });
    // 127 levels in all (the most the plugin reads): the record, and 126 arrays in "Deep".
    let mut record = json!({"ID": "deep", "Tags": {"infrakit.group": "g"}});
    record["Deep"] = nested(127)["Deep"].clone();
    s.w.write("instances/deep.json", &record.to_string());
    let victim = s
        .members("g")
        .into_iter()
        .find(|p| !p.ends_with("deep.json"))
        .expect("a real instance");
    std::fs::remove_file(&victim).expect("rm");
    // The group heals: the deep one (no config hash: outdated) is replaced too, by ID.
    s.wait_until(
        "g heals around the unreadable one",
        Duration::from_secs(60),
        || {
            let members = s.members("g");
            members.len() == 3
                && !members.iter().any(|p| p.ends_with("deep.json"))
                && s.describe("g")["Converged"] == json!(true)
        },
    );
    let events =
        s.w.ok(&["group", "events", "g", "--since", "1h", "--no-follow"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("instance-unreadable") && l.contains("deep")),
        "an event says which instance could not be read:\n{events}"
    );
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains("deep") && l.contains("cannot be read")),
        "the unreadable description is reported:\n{}",
        tail(&log, 40)
    );
}

/// Properties the controller could not read back were accepted at Provision (and Validate).
#[test]
fn instance_file_refuses_properties_nested_too_deep() {
    let s = Stack::new();
    let socket = s.w.socket("instance-file");
    for depth in [100, 65] {
        let props = nested(depth);
        let r = common::post(
            &socket,
            "/Instance.Provision",
            json!({"Spec": {"Properties": props, "Tags": {"t": "deep"}}})
                .to_string()
                .as_bytes(),
        )
        .expect("post");
        assert_ne!(r.status, 200, "depth {depth} refused: {}", r.body);
        assert!(
            r.body.contains("64"),
            "the error names the limit: {}",
            r.body
        );
        let r = common::post(
            &socket,
            "/Instance.Validate",
            json!({ "Properties": props }).to_string().as_bytes(),
        )
        .expect("post");
        assert_ne!(r.status, 200, "Validate refuses depth {depth}: {}", r.body);
    }
    assert_eq!(count_files(&s.instances_dir()), 0, "nothing was written");
    // 64 levels are fine.
    let r = common::post(
        &socket,
        "/Instance.Provision",
        json!({"Spec": {"Properties": nested(64), "Tags": {"t": "deep"}}})
            .to_string()
            .as_bytes(),
    )
    .expect("post");
    assert_eq!(r.status, 200, "{}", r.body);
}

// ---- many groups on one instance plugin ----

use common::metric;

/// Every group described every instance of the plugin on every pass: 2,000 groups of one instance
/// made ~185,000 DescribeInstances. Groups sharing a plugin share its observation.
#[test]
fn groups_sharing_an_instance_plugin_share_its_describes() {
    const GROUPS: usize = 100;
    let mut s = Stack::new();
    // Verdicts trusted for a minute: the flavor's checks (a describe of the instances to judge,
    // per group) stay out of the count.
    s.health_interval = "60s";
    s.start_group();
    let files = s.w.socket("instance-file");
    let group = s.w.socket("group");
    let describes = || {
        metric(
            &files,
            "infrakit_rpc_served_total{method=\"Instance.DescribeInstances\"",
        )
    };
    let passes = || metric(&group, "infrakit_group_pass_duration_seconds_count");
    let started = Instant::now();
    for i in 0..GROUPS {
        s.committed(&format!("g{i}"), &cattle(1));
    }
    s.wait_until(
        "every group has its instance",
        Duration::from_secs(120),
        || count_files(&s.instances_dir()) >= GROUPS,
    );
    let storm = describes();
    eprintln!(
        "{GROUPS} groups of 1 committed and provisioned in {:.1} s: {storm} DescribeInstances",
        started.elapsed().as_secs_f64()
    );
    // Steady state: every group passes every poll interval (1 s).
    let (d0, p0) = (describes(), passes());
    s.wait_until("three passes per group", Duration::from_secs(60), || {
        passes() >= p0 + 3.0 * GROUPS as f64
    });
    let (d1, p1) = (describes(), passes());
    let per_pass = (d1 - d0) / (p1 - p0);
    eprintln!(
        "steady state: {} DescribeInstances over {} passes of {GROUPS} groups ({per_pass:.3} a pass)",
        d1 - d0,
        p1 - p0
    );
    assert!(
        per_pass < 0.25,
        "the groups share the plugin's observation: {per_pass:.3} describes a pass"
    );
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
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
