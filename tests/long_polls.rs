//! Long polls against real plugin processes (issue 22, items 1 and 4): hundreds of held
//! `Instance.Changes` or `Group.Events` polls, most of them then abandoned by their clients, must
//! neither keep a short call or a command out nor keep their places once their clients are gone;
//! a real `group events` follower (another client) keeps its place and prints meanwhile.
//!
//! Figures (time to answer, descriptors) are printed: `cargo test --test long_polls -- --nocapture`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{post, serve_with_fd_limit, World};
use infrakit_sdk::rpc::long_polls::MAX_LONG_POLLS_PER_CLIENT;
use serde_json::{json, Value};

/// Long polls a test opens (the tester's figure), and how many of them stay: every seventh.
const POLLS: usize = 600;
const KEEP_EVERY: usize = 7;

/// A short call must be answered within this while the polls are held (a bound on starvation, not
/// a speed test: the measured time is printed).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How long any single step may take before the test gives up (a hang is a failure).
const STEP: Duration = Duration::from_secs(60);

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the plugin's /proc entry")
        .count()
}

/// The test holds a descriptor per poll too.
fn raise_own_fd_limit() {
    let limit = infrakit_sdk::rpc::open_files::raise_to_hard_limit().expect("raise RLIMIT_NOFILE");
    if let Some(n) = limit {
        assert!(
            n as usize > POLLS + 64,
            "this test holds {POLLS} connections; the hard open-file limit here is {n}"
        );
    }
}

/// Opens `n` connections and sends the long poll `path`/`body` on each (keep-alive, as a client
/// library would), on a thread of its own so that a server that stops accepting fails the test
/// instead of hanging it.
fn hold_polls(socket: &Path, n: usize, path: &str, body: Value) -> Vec<UnixStream> {
    let socket = socket.to_path_buf();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = UnixStream::connect(&socket).expect("connect");
            // The server may already have answered or closed it: that is its right.
            let _ = s.write_all(request.as_bytes());
            held.push(s);
        }
        let _ = tx.send(held);
    });
    rx.recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{n} long polls not accepted within {STEP:?}"))
}

/// Keeps every `KEEP_EVERY`th connection and closes the others (their clients went away).
fn abandon_most(held: Vec<UnixStream>) -> Vec<UnixStream> {
    held.into_iter()
        .enumerate()
        .filter(|(i, _)| i % KEEP_EVERY == 0)
        .map(|(_, s)| s)
        .collect()
}

/// Waits until the plugin holds at most `bound` descriptors; returns how long that took.
fn fds_fall_to(pid: i32, bound: usize) -> Duration {
    let start = Instant::now();
    loop {
        let now = fd_count(pid);
        if now <= bound {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the plugin still holds {now} descriptors (bound {bound}): the abandoned polls kept their places"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of the reply that arrived on `s` (0: none within the step).
fn reply_status(s: &mut UnixStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn abandoned_long_polls_end_at_once_and_a_short_call_is_answered_meanwhile() {
    raise_own_fd_limit();
    let w = World::new();
    let dir = w.path("instances");
    let p = serve_with_fd_limit(
        &w,
        "instance-file",
        &format!("instance-file --dir {}", dir.display()),
    );
    let base_fds = fd_count(p.pid());
    let first = post(
        &p.socket,
        "/Instance.Changes",
        br#"{"Cursor": "", "TimeoutMs": 0}"#,
    )
    .expect("first Changes");
    assert_eq!(first.status, 200, "{}", first.body);
    let cursor = first.json()["Cursor"].clone();

    let held = hold_polls(
        &p.socket,
        POLLS,
        "/Instance.Changes",
        json!({"Cursor": cursor, "TimeoutMs": 55_000}),
    );
    let held_fds = fd_count(p.pid());
    let mut kept = abandon_most(held);

    // A new client's short call, three times on fresh connections.
    for attempt in 1..=3 {
        let start = Instant::now();
        let described = post(&p.socket, "/Instance.DescribeInstances", br#"{"Tags": {}}"#);
        let took = start.elapsed();
        println!("{POLLS} long polls, all but {} abandoned: DescribeInstances #{attempt} answered in {took:?}", kept.len());
        let described = described.expect("DescribeInstances");
        assert_eq!(
            described.status, 200,
            "DescribeInstances #{attempt} got no answer while long polls were held: {}",
            described.body
        );
        assert!(took < ANSWER_WITHIN, "DescribeInstances waited {took:?}");
    }

    // The abandoned polls give back their places (and descriptors) at once.
    // (Slack for what the plugin opens meanwhile: the short calls' connections, its own files.)
    let bound = base_fds + kept.len() + 48;
    let freed_in = fds_fall_to(p.pid(), bound);
    println!(
        "plugin fds: {base_fds} before, {held_fds} with the polls, {} (<= {bound}) {freed_in:?} after {} were abandoned",
        fd_count(p.pid()),
        POLLS - kept.len()
    );

    // Every client that stayed has (or now gets, at a change) an answer: none is left hanging.
    change(&p.socket);
    for s in &mut kept {
        let status = reply_status(s);
        assert!(
            status == 200 || status == 503,
            "a kept long poll got {status} (0: nothing within 10 s)"
        );
    }

    // All hang up: their places come back at once, and this client may hold its whole share again,
    // every poll of it held until the next change.
    drop(kept);
    fds_fall_to(p.pid(), base_fds + 16);
    let cursor = post(
        &p.socket,
        "/Instance.Changes",
        br#"{"Cursor": "", "TimeoutMs": 0}"#,
    )
    .expect("Changes")
    .json()["Cursor"]
        .clone();
    let mut share = hold_polls(
        &p.socket,
        MAX_LONG_POLLS_PER_CLIENT,
        "/Instance.Changes",
        json!({"Cursor": cursor, "TimeoutMs": 55_000}),
    );
    change(&p.socket);
    for s in &mut share {
        assert_eq!(reply_status(s), 200, "a poll of the new share was not held");
    }
}

/// Makes a change on instance-file (a provision), which answers every held `Changes` poll.
fn change(socket: &Path) {
    let provisioned = post(
        socket,
        "/Instance.Provision",
        br#"{"Spec": {"Properties": {"Note": "a change"}, "Tags": {"t": "1"}}}"#,
    )
    .expect("Provision");
    assert_eq!(provisioned.status, 200, "{}", provisioned.body);
}

fn group_spec(id: &str, size: u64) -> String {
    json!({"ID": id, "Properties": {
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": id}},
        "Flavor": {"Plugin": "flavor-vanilla"}
    }})
    .to_string()
}

fn converged(w: &World, id: &str) -> bool {
    let d: Value =
        serde_json::from_str(&w.ok(&["group", "--json", "describe", id])).expect("describe json");
    d["Converged"] == true && d["Instances"].as_array().map(Vec::len) == Some(1)
}

#[test]
fn held_and_abandoned_event_followers_never_crowd_out_commands() {
    raise_own_fd_limit();
    let w = World::new();
    let dir = w.path("instances");
    let _files = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().expect("utf-8 path")],
    );
    let _vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let store = w.path("store");
    let group = w.serve(
        "group",
        &[
            "group",
            "--store",
            store.to_str().expect("utf-8 path"),
            "--poll-interval",
            "200ms",
        ],
    );
    let base_fds = fd_count(group.pid());
    let quiet = w.write("quiet.json", &group_spec("quiet", 1));
    let ev = w.write("ev.json", &group_spec("ev", 1));
    w.ok(&["group", "commit", quiet.to_str().expect("path")]);
    w.ok(&["group", "commit", ev.to_str().expect("path")]);
    for id in ["quiet", "ev"] {
        let deadline = Instant::now() + STEP;
        while !converged(&w, id) {
            assert!(Instant::now() < deadline, "{id} did not converge");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // A real follower of ev's events, printing JSON lines into a file (from what is kept: however
    // late it starts on busy cores, it prints every scale).
    let out_path = w.path("follower.out");
    let err_path = w.path("follower.err");
    let out = std::fs::File::create(&out_path).expect("follower output");
    let err = std::fs::File::create(&err_path).expect("follower errors");
    let mut follower = Follower(
        w.cmd(&["group", "--json", "events", "ev", "--since", "1h"])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn the follower"),
    );

    // Hundreds of followers of a group where nothing happens: they wait the whole 55 s.
    let now = post(
        &group.socket,
        "/Group.Events",
        br#"{"Cursor": 0, "TimeoutMs": 0}"#,
    )
    .expect("Events");
    assert_eq!(now.status, 200, "{}", now.body);
    let held = hold_polls(
        &group.socket,
        POLLS,
        "/Group.Events",
        json!({"Cursor": now.json()["Next"], "ID": "quiet", "TimeoutMs": 55_000}),
    );
    let kept = abandon_most(held);

    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for flap in 0..10 {
        let size = if flap % 2 == 0 { "2" } else { "1" };
        let t = Instant::now();
        w.ok(&["group", "scale", "ev", size]);
        w.ok(&["group", "ls"]);
        slowest = slowest.max(t.elapsed());
    }
    println!(
        "{POLLS} held Group.Events polls, all but {} abandoned: 10 scale + ls pairs in {:?}, the slowest {slowest:?}",
        kept.len(),
        start.elapsed()
    );
    assert!(slowest < 2 * ANSWER_WITHIN, "a scale + ls took {slowest:?}");

    // The abandoned polls gave their places back.
    let bound = base_fds + kept.len() + 48;
    let freed_in = fds_fall_to(group.pid(), bound);
    println!("group plugin fds <= {bound} within {freed_in:?} of the end");

    // The follower saw every scale.
    let deadline = Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let scales = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["Kind"] == "scale")
            .count();
        if scales >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower printed {scales} of 10 scale events:\n{text}\nand on stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let errors = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        follower.0.try_wait().expect("follower status").is_none(),
        "the follower exited: {errors}"
    );
    // The 600 polls came from one client (this test): it got its share, the follower its own.
    assert!(
        !errors.contains("waiting for a turn"),
        "the follower was kept waiting by another client's polls: {errors}"
    );
}

/// A `group events` process, killed when the test ends however it ends.
struct Follower(std::process::Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
