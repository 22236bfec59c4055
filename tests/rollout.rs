//! Rolling updates on a real Docker Engine, plugins as processes (instance-docker, flavor-vanilla,
//! the group controller) on real sockets, watched from outside by a probe that asks the engine.
//!
//! - `rolling_update_keeps_ten_serving`: 10 busybox containers with a Docker HEALTHCHECK, updated
//!   with MaxSurge 2, MaxUnavailable 0, MinReadySeconds 1. Every 100 ms the probe counts the
//!   group's containers that are running and healthy by the engine's own HEALTHCHECK (`docker ps`:
//!   `(healthy)`), of the old or the new spec: never below 10, never above 12 (nor more than 12
//!   containers in any state), and the update completes with all 10 on the new spec. The
//!   containers exit at once on SIGTERM, so one being destroyed stops counting at once.
//! - `failed_update_pauses_then_rolls_back`: an update to a command that exits at once pauses (the
//!   10 old containers untouched, still serving); then an update to one that runs for a second and
//!   exits, with FailureAction rollback, rolls back to the old spec. The probe runs throughout.
//!
//! The group controller runs with its default health interval (30 s): a Healthy verdict on a
//! replacement still in its MinReadySeconds soak must not be trusted that long, or the second
//! update would count containers that died as available (docs/design-notes.md).
//!
//! Conventions of tests/engine.rs and tests/docker.rs: without an engine the tests skip loudly,
//! except with `CI=true` where they fail; they take the same lock file (one engine per machine);
//! every group has a name unique to the run, and guards kill the plugins and remove the group's
//! containers even when a test fails.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::engine::{self, busybox, docker, ensure_busybox, unique, wait_until};
use common::{Plugin, World};
use serde_json::{json, Value};

const SIZE: usize = 10;
const SURGE: usize = 2;
const HASH_LABEL: &str = "infrakit.config.hash";

/// One container of a group as `docker ps -a` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Container {
    id: String,
    /// `running`, `exited`, ...
    state: String,
    /// `Up 3 seconds (healthy)`, `Exited (1) 2 seconds ago`, ...
    status: String,
    hash: String,
}

impl Container {
    /// Running, and healthy by the engine's own HEALTHCHECK.
    fn serving(&self) -> bool {
        self.state == "running" && self.status.ends_with("(healthy)")
    }
}

/// Every container (running or not) with `label`; None when the engine did not answer.
/// Ok(lock) when the tests should run; Err(()) after saying loudly why not. Panics in CI.
fn prerequisites() -> Result<File, ()> {
    let lock = engine::prerequisites("rolling update tests on the engine", || None)?;
    ensure_busybox();
    Ok(lock)
}

fn try_containers(label: &str) -> Option<Vec<Container>> {
    let format =
        format!("{{{{.ID}}}}\t{{{{.State}}}}\t{{{{.Status}}}}\t{{{{.Label \"{HASH_LABEL}\"}}}}");
    let o = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
        "--format",
        &format,
    ]);
    if !o.status.success() {
        return None;
    }
    let mut out: Vec<Container> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t').map(str::to_string);
            Container {
                id: f.next().unwrap_or_default(),
                state: f.next().unwrap_or_default(),
                status: f.next().unwrap_or_default(),
                hash: f.next().unwrap_or_default(),
            }
        })
        .collect();
    out.sort();
    Some(out)
}

fn containers(label: &str) -> Vec<Container> {
    try_containers(label).unwrap_or_else(|| panic!("docker ps --filter label={label} failed"))
}

/// Removes every container with the label when a test ends, even failing (declared before the
/// stack, so the controller is gone before this runs and re-creates nothing).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids: Vec<String> = try_containers(&self.0)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}

/// What the probe saw.
#[derive(Debug, Default, Clone)]
struct Counts {
    samples: usize,
    /// Samples the engine did not answer (not counted).
    failed: usize,
    min_serving: usize,
    max_serving: usize,
    /// Containers of the group in any state (the controller's physical bound).
    max_all: usize,
    /// Config hashes of the containers counted as serving.
    serving_hashes: BTreeSet<String>,
    /// The first sample below the floor, for the failure message.
    first_low: Option<(Duration, Vec<Container>)>,
}

/// Counts the group's serving containers every 100 ms on a thread of its own, until finished (or
/// dropped: a failing test stops it too).
struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Counts>>,
}

impl Probe {
    fn start(label: &str, floor: usize) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, label) = (stop.clone(), label.to_string());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut c = Counts {
                min_serving: usize::MAX,
                ..Counts::default()
            };
            while !flag.load(Ordering::Relaxed) {
                let tick = Instant::now();
                match try_containers(&label) {
                    Some(all) => {
                        let serving: Vec<&Container> = all.iter().filter(|x| x.serving()).collect();
                        c.samples += 1;
                        c.min_serving = c.min_serving.min(serving.len());
                        c.max_serving = c.max_serving.max(serving.len());
                        c.max_all = c.max_all.max(all.len());
                        c.serving_hashes
                            .extend(serving.iter().map(|x| x.hash.clone()));
                        if serving.len() < floor && c.first_low.is_none() {
                            c.first_low = Some((start.elapsed(), all));
                        }
                    }
                    None => c.failed += 1,
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
            }
            c
        });
        Probe {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("probe thread"))
            .unwrap_or_default()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Asserts what a probe saw: never fewer than `floor` serving, never more than SIZE + SURGE
/// serving or existing, and only the given configurations serving.
fn check(what: &str, c: &Counts, floor: usize, hashes: &[&str]) {
    eprintln!(
        "{what}: serving min {} max {}, containers max {}, {} samples ({} failed)",
        c.min_serving, c.max_serving, c.max_all, c.samples, c.failed
    );
    assert!(c.samples >= 10, "{what}: too few probe samples: {c:?}");
    assert!(
        c.failed * 10 <= c.samples,
        "{what}: the engine missed too many probes: {c:?}"
    );
    assert!(
        c.min_serving >= floor,
        "{what}: only {} serving at some point (floor {floor}); first low sample: {:#?}",
        c.min_serving,
        c.first_low
    );
    assert!(
        c.max_serving <= SIZE + SURGE && c.max_all <= SIZE + SURGE,
        "{what}: above target + surge: {c:?}"
    );
    let allowed: BTreeSet<String> = hashes.iter().map(|h| h.to_string()).collect();
    assert!(
        c.serving_hashes.is_subset(&allowed),
        "{what}: serving containers of another spec: {:?} (expected within {allowed:?})",
        c.serving_hashes
    );
}

/// instance-docker, flavor-vanilla and the group controller as processes. The controller polls
/// every 250 ms (speed) and keeps its default health interval (what is being tested); its log
/// is printed when a test fails.
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
        let docker = w.serve("instance-docker", &["instance-docker"]);
        let vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
        let store = w.path("store");
        let log = File::create(w.path("group.log")).expect("log file");
        let child = w
            .cmd(&[
                "plugin",
                "serve",
                "group",
                "--name",
                "group",
                "--store",
                store.to_str().expect("utf-8"),
                "--poll-interval",
                "250ms",
            ])
            .env("INFRAKIT_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn the group controller");
        let group = Plugin {
            child,
            socket: w.socket("group"),
        };
        group.wait_ready();
        Stack {
            w,
            _docker: docker,
            _vanilla: vanilla,
            _group: group,
        }
    }

    fn commit(&self, id: &str, props: Value) {
        let f = self.w.write(
            &format!("{}.json", unique(id)),
            &json!({"ID": id, "Properties": props}).to_string(),
        );
        self.w.ok(&["group", "commit", f.to_str().expect("utf-8")]);
    }

    fn describe(&self, id: &str) -> Value {
        let out = self.w.ok(&["group", "describe", id, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("describe is not JSON ({e}): {out}"))
    }

    /// Waits until the group's update is in `state`; returns the description.
    fn wait_update(&self, id: &str, state: &str, limit: Duration) -> Value {
        wait_until(
            &format!("update state {state}"),
            limit,
            || self.describe(id),
            |d| d["Update"]["State"] == state,
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.w.path("group.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- group controller log (last 60 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A serving container with a HEALTHCHECK the engine runs every second. Its shell exits at once on
/// SIGTERM, so a container the controller destroys stops counting as serving within milliseconds
/// rather than after a StopTimeout (a probe that counted a stopping container would be lenient).
/// `version` goes into a label, so each version is another configuration.
fn serving_spec(version: &str) -> Value {
    json!({"Image": busybox(), "Cmd": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
           "StopTimeout": 1,
           "Labels": {"app.version": version},
           "Healthcheck": {"Test": ["CMD", "true"], "Interval": "1s"}})
}

/// A broken container: `cmd` exits by itself; no HEALTHCHECK, so only its state tells.
fn broken_spec(version: &str, cmd: &str) -> Value {
    json!({"Image": busybox(), "Cmd": ["sh", "-c", cmd], "StopTimeout": 1,
           "Labels": {"app.version": version}})
}

fn group(instance: Value, update: Value) -> Value {
    json!({
        "Allocation": {"Size": SIZE},
        "Instance": {"Plugin": "instance-docker", "Properties": instance},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Tags": {"tier": "web"}}},
        "Policies": {"Update": update}
    })
}

/// Commits the first version and waits until its 10 containers serve; returns the config hash.
fn start_serving(s: &Stack, id: &str, label: &str, update: Value) -> String {
    let t = Instant::now();
    s.commit(id, group(serving_spec("a"), update));
    let first = wait_until(
        "10 serving containers",
        Duration::from_secs(60),
        || containers(label),
        |v| v.len() == SIZE && v.iter().all(Container::serving),
    );
    let hashes: BTreeSet<&str> = first.iter().map(|c| c.hash.as_str()).collect();
    assert_eq!(hashes.len(), 1, "{first:#?}");
    let converged = wait_until(
        "the group to converge",
        Duration::from_secs(30),
        || s.describe(id),
        |d| d["Converged"] == true,
    );
    eprintln!(
        "{SIZE} containers serving in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(converged["Update"].is_null(), "{converged}");
    first[0].hash.clone()
}

#[test]
fn rolling_update_keeps_ten_serving() {
    let Ok(_lock) = prerequisites() else { return };
    let test_start = Instant::now();
    let id = unique("ro-roll");
    let label = format!("infrakit.group={id}");
    let _clean = Cleanup(label.clone());
    let s = Stack::new();
    let update = json!({"MaxSurge": SURGE, "MaxUnavailable": 0, "MinReadySeconds": 1,
                        "HealthyDeadlineSeconds": 60, "FailureAction": "pause"});
    let old = start_serving(&s, &id, &label, update.clone());

    let probe = Probe::start(&label, SIZE);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    s.commit(&id, group(serving_spec("b"), update));
    let d = s.wait_update(&id, "completed", Duration::from_secs(90));
    let took = t.elapsed();
    // A last look after the update: nothing drops once it says completed.
    std::thread::sleep(Duration::from_millis(500));
    let counts = probe.finish();

    let new = d["Update"]["TargetHash"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    assert_ne!(new, old);
    eprintln!(
        "rolling update of {SIZE} (surge {SURGE}, unavailable 0, MinReady 1s): completed in {:.1}s",
        took.as_secs_f64()
    );
    check("rolling update", &counts, SIZE, &[&old, &new]);
    assert!(
        counts.serving_hashes.contains(&new),
        "never saw a new one serving: {counts:?}"
    );
    let last = wait_until(
        "10 serving containers of the new spec, nothing else",
        Duration::from_secs(30),
        || containers(&label),
        |v| v.len() == SIZE && v.iter().all(|c| c.serving() && c.hash == new),
    );
    assert_eq!(last.len(), SIZE);
    let d = wait_until(
        "the group to converge",
        Duration::from_secs(30),
        || s.describe(&id),
        |d| d["Converged"] == true,
    );
    assert_eq!(d["Update"]["State"], "completed", "{d}");
    assert_eq!(d["Update"]["Done"], SIZE, "{d}");
    assert_eq!(d["Update"]["Failures"], 0, "{d}");
    let statuses = d["Status"].as_array().cloned().unwrap_or_default();
    assert_eq!(statuses.len(), SIZE, "{d}");
    assert!(
        statuses
            .iter()
            .all(|i| i["Current"] == true && i["Health"] == "healthy"),
        "{d}"
    );

    s.w.ok(&["group", "destroy", &id, "--timeout", "60s"]);
    assert!(containers(&label).is_empty());
    eprintln!("test took {:.1}s", test_start.elapsed().as_secs_f64());
}

#[test]
fn failed_update_pauses_then_rolls_back() {
    let Ok(_lock) = prerequisites() else { return };
    let test_start = Instant::now();
    let id = unique("ro-fail");
    let label = format!("infrakit.group={id}");
    let _clean = Cleanup(label.clone());
    let s = Stack::new();
    let update = |action: &str, min_ready: u64, deadline: u64| {
        json!({"MaxSurge": SURGE, "MaxUnavailable": 0, "MinReadySeconds": min_ready,
               "HealthyDeadlineSeconds": deadline, "FailureAction": action})
    };
    let old = start_serving(&s, &id, &label, update("pause", 1, 6));
    let old_ids: Vec<String> = containers(&label).into_iter().map(|c| c.id).collect();
    let probe = Probe::start(&label, SIZE);
    std::thread::sleep(Duration::from_millis(500));

    // 1. A command that exits at once, FailureAction pause.
    let t = Instant::now();
    s.commit(
        &id,
        group(broken_spec("c", "exit 1"), update("pause", 1, 6)),
    );
    let d = s.wait_update(&id, "paused", Duration::from_secs(40));
    let paused_after = t.elapsed();
    let message = d["Update"]["Message"].as_str().unwrap_or("").to_string();
    eprintln!(
        "update to a command that exits at once: paused after {:.1}s: {message}",
        paused_after.as_secs_f64()
    );
    assert!(
        message.contains("failed") && message.contains("paused"),
        "{d}"
    );
    assert!(d["Update"]["Failures"].as_u64().unwrap_or(0) >= 1, "{d}");
    assert!(
        d["Message"].as_str().unwrap_or("").contains("paused"),
        "{d}"
    );
    let broken = d["Update"]["TargetHash"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    // The old instances still serve, untouched; the failed replacements go (the group is above
    // its target while paused).
    let now = wait_until(
        "the 10 old containers alone",
        Duration::from_secs(20),
        || containers(&label),
        |v| v.len() == SIZE,
    );
    assert!(now.iter().all(|c| c.serving() && c.hash == old), "{now:#?}");
    let ids: Vec<String> = now.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, old_ids, "the old containers were replaced");
    // Paused stays paused.
    std::thread::sleep(Duration::from_secs(2));
    let d = s.describe(&id);
    assert_eq!(d["Update"]["State"], "paused", "{d}");
    assert_eq!(
        containers(&label)
            .iter()
            .filter(|c| c.serving() && c.hash == old)
            .count(),
        SIZE
    );

    // 2. A command that runs a second and exits, FailureAction rollback. Its first verdict may
    // well be Healthy (it runs); during the 3 s soak the controller must ask again.
    let t = Instant::now();
    s.commit(
        &id,
        group(
            broken_spec("d", "sleep 1; exit 1"),
            update("rollback", 3, 8),
        ),
    );
    let d = s.wait_update(&id, "rolled_back", Duration::from_secs(40));
    let rolled_back_after = t.elapsed();
    let message = d["Update"]["Message"].as_str().unwrap_or("").to_string();
    eprintln!(
        "update to a command that exits after 1s (rollback): rolled back after {:.1}s: {message}",
        rolled_back_after.as_secs_f64()
    );
    assert!(message.contains("rolled back"), "{d}");
    assert_eq!(d["Update"]["RollingBack"], true, "{d}");
    assert_eq!(d["Update"]["PreviousHash"], json!(old), "{d}");
    let now = wait_until(
        "the 10 old containers alone again",
        Duration::from_secs(20),
        || containers(&label),
        |v| v.len() == SIZE,
    );
    assert!(now.iter().all(|c| c.serving() && c.hash == old), "{now:#?}");
    let ids: Vec<String> = now.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, old_ids, "the old containers were replaced");
    let d = wait_until(
        "the rolled-back group to converge",
        Duration::from_secs(20),
        || s.describe(&id),
        |d| d["Converged"] == true,
    );
    assert_eq!(d["Update"]["State"], "rolled_back", "{d}");
    let counts = probe.finish();
    check("failed updates", &counts, SIZE, &[&old]);
    assert_ne!(broken, old);

    s.w.ok(&["group", "destroy", &id, "--timeout", "60s"]);
    assert!(containers(&label).is_empty());
    eprintln!("test took {:.1}s", test_start.elapsed().as_secs_f64());
}
