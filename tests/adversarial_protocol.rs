//! The protocol server and the CLI under hostile input (issue 10), against real `infrakit`
//! processes: held-open connections do not starve a new client, a half-closed request gets its
//! reply, oversized input is refused with bounded memory, a closed pipe ends the CLI quietly, a
//! refused start leaves no socket, and random requests always get a well-formed answer.
//!
//! Figures (time to serve, fd count, RSS, proptest cases) are printed: `cargo test --test
//! adversarial_protocol -- --nocapture`. `PROPTEST_CASES=100000` runs the property tests longer.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{post, serve_with_fd_limit, World, BIN};
use infrakit_sdk::rpc::connections::{FD_RESERVE, MAX_CONNECTIONS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// Connections a test holds open against one plugin (the tester's figure: over 1,024).
const HELD: usize = 1_100;

/// A new client must be answered within this while the connections are held (generous: it is
/// a bound on starvation, not a speed test; the measured time is printed).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The server's descriptors under any load: its cap plus what it keeps for itself.
const FD_BOUND: usize = MAX_CONNECTIONS + FD_RESERVE;

/// The server's resident memory under the held connections, far above what it needs.
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// How long any single step may take before the test gives up (a hang is a failure).
const STEP: Duration = Duration::from_secs(60);

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the plugin's /proc entry")
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// The test process needs a descriptor per held connection too.
fn raise_own_fd_limit() {
    let limit = infrakit_sdk::rpc::open_files::raise_to_hard_limit().expect("raise RLIMIT_NOFILE");
    if let Some(n) = limit {
        assert!(
            n as usize > HELD + 64,
            "this test holds {HELD} connections; the hard open-file limit here is {n}"
        );
    }
}

/// Opens `n` connections to `socket` and writes `first` on each, on a thread of its own so that a
/// server that stops accepting fails the test instead of hanging it.
fn hold(socket: &Path, n: usize, first: &'static [u8]) -> Vec<UnixStream> {
    let socket = socket.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = UnixStream::connect(&socket).expect("connect");
            // The server may already have closed it to make room: that is its right.
            let _ = s.write_all(first);
            held.push(s);
        }
        let _ = tx.send(held);
    });
    rx.recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{n} connections not accepted within {STEP:?}"))
}

/// The fd count once the server has taken in everything (stable for 300 ms).
fn settled_fd_count(pid: i32) -> usize {
    let deadline = Instant::now() + STEP;
    let mut last = (fd_count(pid), 0);
    while Instant::now() < deadline && last.1 < 3 {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
    }
    last.0
}

/// Holds `HELD` connections that each sent `first` to a plugin limited to `PLUGIN_FD_LIMIT` open
/// files, then checks that a new client is answered in time and that the plugin's descriptors and
/// memory stay bounded.
fn new_client_is_served_while_connections_are_held(what: &str, first: &'static [u8]) {
    raise_own_fd_limit();
    let w = World::new();
    let p = serve_with_fd_limit(&w, "flavor-vanilla", "flavor-vanilla");
    let before = (fd_count(p.pid()), rss_kib(p.pid()));

    let held = hold(&p.socket, HELD, first);
    let fds = settled_fd_count(p.pid());
    let rss = rss_kib(p.pid());

    let start = Instant::now();
    let activate = post(&p.socket, "/Plugin.Activate", b"{}").expect("new client");
    let validate = post(
        &p.socket,
        "/Flavor.Validate",
        br#"{"Properties": {"Init": ["echo hi"]}, "Allocation": {"Size": 1}}"#,
    )
    .expect("new client's call");
    let took = start.elapsed();
    println!(
        "{HELD} {what} connections held: plugin fds {} -> {fds}, VmRSS {} -> {rss} KiB; \
         a new client's two calls answered in {took:?}",
        before.0, before.1
    );
    assert_eq!(activate.status, 200, "{}", activate.body);
    assert_eq!(
        activate.json()["Implements"],
        json!(["infrakit.flavor/1.0"])
    );
    assert_eq!(validate.status, 200, "{}", validate.body);
    assert!(took < ANSWER_WITHIN, "a new client waited {took:?}");
    assert!(
        fds <= FD_BOUND,
        "the plugin holds {fds} descriptors (bound {FD_BOUND})"
    );
    assert!(rss <= RSS_BOUND_KIB, "the plugin's RSS is {rss} KiB");
    drop(held);
}

#[test]
fn a_new_client_is_served_while_1100_idle_connections_are_held() {
    new_client_is_served_while_connections_are_held("idle", b"");
}

#[test]
fn a_new_client_is_served_while_1100_half_sent_heads_are_held() {
    new_client_is_served_while_connections_are_held(
        "half-sent",
        b"POST /Flavor.Validate HTTP/1.1\r\nHost: plugin\r\nContent-Le",
    );
}

#[test]
fn a_new_client_is_served_while_1100_slow_bodies_are_held() {
    new_client_is_served_while_connections_are_held(
        "slow-body",
        b"POST /Flavor.Validate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 1000\r\n\r\n{\"Prop",
    );
}

#[test]
fn a_client_that_half_closes_after_its_provision_gets_the_reply() {
    let w = World::new();
    let dir = w.path("instances");
    let p = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().expect("utf-8 path")],
    );
    let body = br#"{"Spec":{"Tags":{"infrakit.group":"half"},"Init":"echo hi"}}"#;
    let mut s = UnixStream::connect(&p.socket).expect("connect");
    s.set_read_timeout(Some(STEP)).expect("timeout");
    write!(
        s,
        "POST /Instance.Provision HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("write head");
    s.write_all(body).expect("write body");
    s.shutdown(std::net::Shutdown::Write)
        .expect("shut down the write side");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "reply: {reply}");
    let (_, body) = reply.split_once("\r\n\r\n").expect("a body");
    let id = serde_json::from_str::<Value>(body).expect("JSON")["ID"]
        .as_str()
        .expect("an ID")
        .to_string();
    let described = post(
        &p.socket,
        "/Instance.DescribeInstances",
        br#"{"Tags":{"infrakit.group":"half"}}"#,
    )
    .expect("describe");
    assert_eq!(described.json()["Descriptions"][0]["ID"], json!(id));
}

/// Runs the CLI under a 1 GiB address-space limit: reading without bound would fail on it.
fn cli_with_bounded_memory(w: &World, args: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!("ulimit -v 1048576; exec \"$0\" {args}"))
        .arg(BIN)
        .env("INFRAKIT_PLUGINS_DIR", w.plugins_dir())
        .env("INFRAKIT_LOG", "warn");
    c
}

#[test]
fn committing_dev_zero_is_refused_with_the_limit_and_bounded_memory() {
    let w = World::new();
    let out = cli_with_bounded_memory(&w, "group commit /dev/zero")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("'/dev/zero' is larger than 8 MiB"),
        "stderr: {err}"
    );

    // The same on standard input.
    let mut child = cli_with_bounded_memory(&w, "group validate -")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..64 {
            // The CLI stops reading at the limit and exits: a closed pipe ends the feed.
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("standard input is larger than 8 MiB"),
        "stderr: {err}"
    );
}

#[test]
fn a_missing_file_is_reported_before_the_missing_plugin() {
    let w = World::new();
    let err = w.fails(&["group", "commit", "no-such-group.json"]);
    assert!(
        err.contains("'no-such-group.json' does not exist"),
        "stderr: {err}"
    );
    let err = w.fails(&["instance", "provision", "no-such-spec.json"]);
    assert!(
        err.contains("'no-such-spec.json' does not exist"),
        "stderr: {err}"
    );
}

/// Runs the CLI with its stdout a pipe nobody reads (the read end is closed before it starts, so
/// every write fails with EPIPE: deterministic, unlike `| head -0`).
fn run_into_closed_pipe(w: &World, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    w.cmd(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run")
}

#[test]
fn a_closed_pipe_ends_the_cli_with_exit_0_and_no_message() {
    let w = World::new();
    let dir = w.path("instances");
    let _p = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().expect("utf-8 path")],
    );
    let spec = w.write("spec.json", r#"{"Tags": {"t": "1"}}"#);
    w.ok(&["instance", "provision", spec.to_str().expect("utf-8 path")]);
    for args in [
        &["plugin", "ls"][..],
        &["instance", "describe"],
        &["instance", "describe", "-q"],
        &["instance", "describe", "--json"],
        &["group", "schema"],
    ] {
        let out = run_into_closed_pipe(&w, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "infrakit {args:?} into a closed pipe: {:?}, stderr: {err}",
            out.status
        );
        assert_eq!(err, "", "infrakit {args:?} printed to stderr");
    }
}

#[test]
fn a_controller_refused_on_a_locked_store_leaves_no_socket_behind() {
    let w = World::new();
    let store = w.path("store");
    let store = store.to_str().expect("utf-8 path");
    let _first = w.serve("group", &["group", "--store", store]);
    let out = w
        .cmd(&[
            "plugin", "serve", "group", "--name", "group2", "--store", store,
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second controller started");
    assert!(
        err.contains("another group controller is using the store"),
        "stderr: {err}"
    );
    assert!(
        !w.socket("group2").exists(),
        "the refused controller left {} behind",
        w.socket("group2").display()
    );
    assert!(
        w.socket("group").exists(),
        "the first one's socket is intact"
    );
}

// ---- Property tests: random requests always get a well-formed answer ----

/// One request as sent on the wire.
#[derive(Debug, Clone)]
enum Wire {
    /// Well-formed HTTP with a random method, path and body.
    Http {
        method: &'static str,
        path: String,
        body: Vec<u8>,
    },
    /// Bytes that need not be HTTP at all.
    Raw(Vec<u8>),
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// InfraKit's own field names most of the time, so the parser gets past the first level.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "ID",
            "Properties",
            "Allocation",
            "Size",
            "LogicalIDs",
            "Instance",
            "Flavor",
            "Plugin",
            "Init",
            "Tags",
            "Spec",
            "Pretend",
            "Type",
            "Updating",
            "Policies",
        ])
        .prop_map(String::from),
        "[A-Za-z]{0,8}",
    ]
}

/// A group spec in InfraKit's shape with random values where the values go.
fn group_spec() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("fuzz")), json_value()],
        prop_oneof![
            (0u64..5).prop_map(|n| json!({"Size": n})),
            prop::collection::vec("[0-9.]{1,15}", 0..4).prop_map(|ids| json!({"LogicalIDs": ids})),
            json_value(),
        ],
        prop_oneof![Just(json!("instance-file")), json_value()],
        prop_oneof![Just(json!("flavor-vanilla")), json_value()],
        json_value(),
        json_value(),
    )
        .prop_map(|(id, allocation, instance, flavor, iprops, fprops)| {
            json!({"ID": id, "Properties": {
                "Allocation": allocation,
                "Instance": {"Plugin": instance, "Properties": iprops},
                "Flavor": {"Plugin": flavor, "Properties": fprops}}})
        })
}

fn wire() -> impl Strategy<Value = Wire> {
    let method = prop_oneof![8 => Just("POST"), 1 => Just("GET"), 1 => Just("PUT")];
    let path = prop_oneof![
        prop::sample::select(vec![
            "/Plugin.Activate",
            "/Group.CommitGroup",
            "/Group.DescribeGroup",
            "/Group.InspectGroups",
            "/Group.SetSize",
            "/Group.DestroyInstances",
            "/Group.UpdateCommand",
            "/Flavor.Validate",
            "/Flavor.Prepare",
            "/Flavor.Healthy",
            "/Instance.Provision",
        ])
        .prop_map(String::from),
        "/[A-Za-z0-9._-]{0,24}",
    ];
    let body = prop_oneof![
        // A commit that only plans (never changes anything).
        4 => group_spec().prop_map(|spec| json!({"Spec": spec, "Pretend": true}).to_string().into_bytes()),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ];
    prop_oneof![
        9 => (method, path, body).prop_map(|(method, path, body)| Wire::Http { method, path, body }),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Wire::Raw),
    ]
}

/// Sends one request on a fresh connection and reads until the server closes it.
fn exchange(socket: &Path, wire: &Wire) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(STEP))?;
    match wire {
        Wire::Http { method, path, body } => {
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )?;
            // The server may answer before it has read everything (413, 405).
            let _ = s.write_all(body);
        }
        Wire::Raw(bytes) => {
            let _ = s.write_all(bytes);
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The answer to a well-formed request: 2xx, or an error status with `{"Err": "..."}` that is
/// a 4xx, or 503 for "a plugin it needs is not there" (the controller's honest answer to a spec
/// naming a plugin nobody serves). Never a 500, never silence.
fn check_http_reply(reply: &str) -> std::result::Result<(), TestCaseError> {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TestCaseError::fail(format!("no status line in {reply:?}")))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    prop_assert!(
        (400..500).contains(&status) || status == 503,
        "status {status}: {body}"
    );
    let err = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("Err").and_then(Value::as_str).map(String::from));
    prop_assert!(
        err.is_some_and(|e| !e.is_empty()),
        "status {status} without an Err message: {body:?}"
    );
    Ok(())
}

#[test]
fn random_requests_always_get_a_well_formed_answer_and_never_stop_the_server() {
    let w = World::new();
    let dir = w.path("instances");
    let store = w.path("store");
    let mut plugins = vec![
        w.serve(
            "instance-file",
            &["instance-file", "--dir", dir.to_str().expect("utf-8 path")],
        ),
        w.serve("flavor-vanilla", &["flavor-vanilla"]),
    ];
    plugins.push(w.serve(
        "group",
        &["group", "--store", store.to_str().expect("utf-8 path")],
    ));
    // Config::default() reads PROPTEST_CASES (256 unless set).
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let result = runner.run(&(0..plugins.len(), wire()), |(which, wire)| {
        let socket = &plugins[which].socket;
        let reply = exchange(socket, &wire)
            .map_err(|e| TestCaseError::fail(format!("no answer to {wire:?}: {e}")))?;
        if let Wire::Http { .. } = wire {
            check_http_reply(&reply)?;
        }
        Ok(())
    });
    println!(
        "{cases} random requests over 3 plugins in {:?}",
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // Every plugin still serves, and none has died.
    for p in &mut plugins {
        let r = post(&p.socket, "/Plugin.Activate", b"{}").expect("still serving");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            p.child.try_wait().expect("wait").is_none(),
            "a plugin exited"
        );
    }
}
