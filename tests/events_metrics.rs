//! The group controller's event stream (`infrakit group events`) and the Prometheus metrics
//! (`GET /metrics` on every plugin socket, `--metrics-listen` for the group plugin), with real
//! plugin processes: instance-file, flavor-vanilla and the group controller.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{request, Plugin, World};
use serde_json::{json, Value};

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spec(size: u64, note: &str) -> String {
    json!({"ID": "ev", "Properties": {
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": note}},
        "Flavor": {"Plugin": "flavor-vanilla"},
        "Policies": {"Update": {"MaxSurge": 1, "MaxUnavailable": 0}}
    }})
    .to_string()
}

/// instance-file, flavor-vanilla and a group controller (200 ms poll, plus `group_args`) in `w`.
struct Stack {
    files: Plugin,
    vanilla: Plugin,
    group: Plugin,
}

fn stack(w: &World, group_args: &[&str]) -> Stack {
    let instances = w.path("instances");
    let files = w.serve(
        "instance-file",
        &["instance-file", "--dir", instances.to_str().unwrap()],
    );
    let vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let store = w.path("store");
    let mut args = vec![
        "group",
        "--store",
        store.to_str().unwrap(),
        "--poll-interval",
        "200ms",
    ];
    args.extend_from_slice(group_args);
    let group = w.serve("group", &args);
    Stack {
        files,
        vanilla,
        group,
    }
}

fn describe(w: &World) -> Value {
    serde_json::from_str(&w.ok(&["group", "--json", "describe", "ev"])).expect("describe json")
}

fn events(w: &World) -> Vec<Value> {
    w.ok(&[
        "group",
        "--json",
        "events",
        "ev",
        "--since",
        "1h",
        "--no-follow",
    ])
    .lines()
    .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
    .collect()
}

/// Parsed samples: `name{labels}` (labels sorted, as written) -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the Prometheus text parses");
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            Some((format!("{}{{{}}}", s.metric, labels.join(",")), value))
        })
        .collect()
}

fn metrics_of(socket: &std::path::Path) -> BTreeMap<String, f64> {
    let r = request(socket, "GET", "/metrics", b"").expect("GET /metrics");
    assert_eq!(r.status, 200);
    samples(&r.body)
}

#[test]
fn events_show_a_scale_and_a_rolling_update_in_order_and_metrics_match_describe() {
    let w = World::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let Stack {
        files,
        vanilla,
        group,
    } = stack(
        &w,
        &["--health-interval", "1s", "--metrics-listen", &listen],
    );

    let v1 = w.write("v1.json", &spec(2, "v1"));
    w.ok(&["group", "commit", v1.to_str().unwrap()]);
    wait_until("2 converged", Duration::from_secs(30), || {
        let d = describe(&w);
        d["Converged"] == true && d["Instances"].as_array().map(Vec::len) == Some(2)
    });
    w.ok(&["group", "scale", "ev", "3"]);
    wait_until("3 converged", Duration::from_secs(30), || {
        let d = describe(&w);
        d["Converged"] == true && d["Instances"].as_array().map(Vec::len) == Some(3)
    });
    let v2 = w.write("v2.json", &spec(3, "v2"));
    w.ok(&["group", "commit", v2.to_str().unwrap()]);
    wait_until("the update completes", Duration::from_secs(60), || {
        let d = describe(&w);
        d["Converged"] == true && d["Update"]["State"] == "completed"
    });

    let all = events(&w);
    let kinds: Vec<&str> = all.iter().filter_map(|e| e["Kind"].as_str()).collect();
    // In order: sequence numbers grow, times never go back.
    for pair in all.windows(2) {
        assert!(
            pair[0]["Seq"].as_u64() < pair[1]["Seq"].as_u64(),
            "{pair:?}"
        );
        assert!(
            pair[0]["Time"].as_str() <= pair[1]["Time"].as_str(),
            "{pair:?}"
        );
    }
    let position = |kind: &str, from: usize| {
        kinds[from..]
            .iter()
            .position(|k| *k == kind)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("no {kind} after #{from} in {kinds:?}"))
    };
    let commit = position("commit", 0);
    let first_fill = position("provision-started", commit);
    assert_eq!(all[first_fill]["Cause"], "fill", "{:?}", all[first_fill]);
    position("provision-finished", first_fill);
    let scale = position("scale", first_fill);
    assert_eq!(all[scale]["Message"], "target 2 -> 3");
    let fill_after_scale = position("provision-started", scale);
    assert_eq!(all[fill_after_scale]["Cause"], "fill");
    let second_commit = position("commit", fill_after_scale);
    let started = position("update-started", second_commit);
    let surge = position("provision-started", started);
    assert_eq!(all[surge]["Cause"], "rollout");
    let replaced = position("destroy-started", surge);
    assert_eq!(all[replaced]["Cause"], "rollout");
    assert!(all[replaced]["Instance"]
        .as_str()
        .is_some_and(|i| !i.is_empty()));
    position("destroyed", replaced);
    let completed = position("update-completed", replaced);
    assert_eq!(
        kinds[second_commit..completed]
            .iter()
            .filter(|k| **k == "destroyed")
            .count(),
        3,
        "every old instance replaced once: {kinds:?}"
    );
    // Only this group's events, and a human form too.
    assert!(all.iter().all(|e| e["Group"] == "ev"));
    let human = w.ok(&["group", "events", "ev", "--since", "1h", "--no-follow"]);
    assert!(
        human
            .lines()
            .any(|l| l.contains("ev update-completed (rollout)")),
        "{human}"
    );

    // Metrics on the plugin socket and on the TCP listener agree with describe.
    let d = describe(&w);
    let m = metrics_of(&group.socket);
    let gauge = |name: &str, labels: &str| {
        m.get(&format!("{name}{{{labels}}}"))
            .copied()
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {m:#?}"))
    };
    let n = d["Instances"].as_array().map(Vec::len).unwrap_or(0) as f64;
    assert_eq!(
        gauge("infrakit_group_instances", "group=ev,state=present"),
        n
    );
    assert_eq!(
        gauge("infrakit_group_instances", "group=ev,state=current"),
        n
    );
    assert_eq!(
        gauge("infrakit_group_target", "group=ev"),
        d["Target"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(gauge("infrakit_group_converged", "group=ev"), 1.0);
    assert_eq!(
        gauge("infrakit_group_update_state", "group=ev,state=completed"),
        1.0
    );
    assert_eq!(
        gauge("infrakit_group_update_state", "group=ev,state=updating"),
        0.0
    );
    let healthy = d["Status"]
        .as_array()
        .map(|s| s.iter().filter(|i| i["Health"] == "healthy").count())
        .unwrap_or(0) as f64;
    assert_eq!(
        gauge("infrakit_group_instances_health", "group=ev,health=healthy"),
        healthy
    );
    // 2 + 1 + 3 provisions, 3 destroys, all ok.
    assert_eq!(
        gauge(
            "infrakit_group_actions_total",
            "group=ev,kind=provision,outcome=ok"
        ),
        6.0
    );
    assert_eq!(
        gauge(
            "infrakit_group_actions_total",
            "group=ev,kind=destroy,outcome=ok"
        ),
        3.0
    );
    assert!(
        m.keys().any(|k| k.starts_with("infrakit_rpc_made_total")
            && k.contains("method=Instance.Provision")
            && k.contains("plugin=instance-file")),
        "{m:#?}"
    );
    assert!(
        m.keys().any(|k| k.starts_with("infrakit_rpc_served_total")
            && k.contains("method=Group.CommitGroup")),
        "{m:#?}"
    );

    let mut tcp = std::net::TcpStream::connect(&listen).expect("the metrics listener");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("infrakit_group_target{group=\"ev\"} 3"),
        "{reply}"
    );

    // Every plugin serves its own: the instance plugin counts the calls it answered.
    let files_m = metrics_of(&files.socket);
    assert_eq!(
        files_m
            .get("infrakit_rpc_served_total{method=Instance.Provision,outcome=ok}")
            .copied(),
        Some(6.0),
        "{files_m:#?}"
    );
    assert!(!metrics_of(&vanilla.socket).is_empty());
}

#[test]
fn events_follow_new_ones_as_they_happen() {
    let w = World::new();
    let _stack = stack(&w, &[]);
    // Following from now on: a commit made after it started shows up.
    let mut follower = w
        .cmd(&["group", "--json", "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("events");
    std::thread::sleep(Duration::from_millis(300));
    let v1 = w.write("v1.json", &spec(1, "v1"));
    w.ok(&["group", "commit", v1.to_str().unwrap()]);
    let mut out = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("provision-finished") {
                let _ = tx.send(text.clone());
                break;
            }
        }
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the follower printed the commit's events");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen.contains("\"Kind\":\"commit\""), "{seen}");
}

/// `GET path` on 127.0.0.1:`port`; the body when the answer is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A real Prometheus (Debian's `prometheus`) scrapes the group plugin's `--metrics-listen` and
/// answers a query with the value `group describe` shows. Runs in CI (scripts/setup-debian.sh
/// installs the package there); skipped loudly where the binary is missing.
#[test]
fn a_real_prometheus_scrapes_the_group_plugin() {
    let Some(prometheus) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        common::skip::skip(
            "Prometheus scrape test",
            "no prometheus binary (apt-get install prometheus; scripts/setup-debian.sh installs it in CI)",
        );
        return;
    };
    let w = World::new();
    let metrics_port = free_port();
    let _stack = stack(
        &w,
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    let v1 = w.write("v1.json", &spec(4, "v1"));
    w.ok(&["group", "commit", v1.to_str().unwrap()]);
    wait_until("4 converged", Duration::from_secs(30), || {
        describe(&w)["Converged"] == true
    });

    let web_port = free_port();
    let config = w.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: infrakit\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    );
    let server = std::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", w.path("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);

    let query = "/api/v1/query?query=infrakit_group_target%7Bgroup%3D%22ev%22%7D";
    let mut value = None;
    wait_until(
        "Prometheus has scraped the target",
        Duration::from_secs(60),
        || {
            value = http_get(web_port, query).and_then(|body| {
                let v: Value = serde_json::from_str(&body).ok()?;
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string)
            });
            value.is_some()
        },
    );
    let d = describe(&w);
    assert_eq!(
        value.as_deref(),
        Some(d["Target"].to_string().as_str()),
        "Prometheus's infrakit_group_target vs describe's Target"
    );
}

/// A pets group whose commit plan lists `n` logical IDs of 250 bytes each.
fn pets_spec(n: usize) -> String {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("{i:05}-{}", "p".repeat(244)))
        .collect();
    json!({"ID": "ev", "Properties": {
        "Allocation": {"LogicalIDs": ids},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "pets"}},
        "Flavor": {"Plugin": "flavor-vanilla"}
    }})
    .to_string()
}

/// Issue 22, items 2 and 3: a commit whose plan lists 200 pets of 250 bytes (50 KB) used to be
/// one 50 KB event (and a 448 KiB spec, a 430 KB one per commit, kept 10,000 times). Every event
/// is now small, says what was cut, and the stream is read in bounded pages, none missing.
#[test]
fn a_big_commit_makes_a_small_event_and_the_stream_is_read_in_bounded_pages() {
    let w = World::new();
    let Stack {
        group,
        files: _files,
        vanilla: _vanilla,
    } = stack(&w, &[]);
    let pets = w.write("pets.json", &pets_spec(200));
    w.ok(&["group", "commit", pets.to_str().unwrap()]);
    wait_until("200 pets", Duration::from_secs(120), || {
        let d = describe(&w);
        d["Converged"] == true && d["Instances"].as_array().map(Vec::len) == Some(200)
    });

    let lines = events(&w);
    let biggest = lines.iter().map(|e| e.to_string().len()).max().unwrap_or(0);
    println!(
        "{} events; the biggest is {biggest} bytes as JSON",
        lines.len()
    );
    assert!(
        biggest <= 2048,
        "an event of {biggest} bytes: events must not carry whole plans or specs"
    );
    let commit = lines
        .iter()
        .find(|e| e["Kind"] == "commit")
        .expect("the commit's event");
    assert!(
        commit["Message"]
            .as_str()
            .is_some_and(|m| m.ends_with("more bytes)")),
        "the commit's event says it was cut: {commit}"
    );
    let seqs: Vec<u64> = lines.iter().filter_map(|e| e["Seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|p| p[1] == p[0] + 1) && seqs.first() == Some(&1),
        "every event once, in order (paged): {seqs:?}"
    );

    // One reply is a page: bounded in bytes whatever is kept.
    let page = request(
        &group.socket,
        "POST",
        "/Group.Events",
        br#"{"Cursor": 0, "TimeoutMs": 0}"#,
    )
    .expect("Events");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.len() <= 1024 * 1024 + 4096, "{}", page.body.len());
}

/// Issue 22, item 6: a `--since` longer than the clock is a clear error, not an overflow panic.
#[test]
fn a_since_longer_than_the_clock_is_a_clear_error() {
    let w = World::new();
    let _stack = stack(&w, &[]);
    for huge in ["500000000000y", "18446744073709551615s"] {
        let out = w.run(&["group", "events", "--since", huge, "--no-follow"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--since {huge}: not a usage error ({:?}): {stderr}",
            out.status
        );
        assert!(
            stderr.contains("--since") && stderr.contains("e.g. 10m"),
            "--since {huge}: {stderr}"
        );
    }
}

/// Issue 22, item 5: label values never come from a request. A path with a quote or a backslash
/// and hundreds of distinct unknown paths are all counted as method "other"; the page stays valid
/// and does not grow with them.
#[test]
fn metric_labels_come_from_a_fixed_set_whatever_the_paths_asked() {
    let w = World::new();
    let Stack { files, .. } = stack(&w, &[]);
    let socket = &files.socket;
    for path in ["/foo\"bar", "/a\\b", "/Instance.Nosuch", "/Plugin.Nosuch"] {
        let r = request(socket, "POST", path, b"{}").expect("POST");
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    let before = request(socket, "GET", "/metrics", b"")
        .expect("metrics")
        .body;
    let long = "x".repeat(2000);
    for i in 0..300 {
        let r = request(socket, "POST", &format!("/u{i}-{long}"), b"{}").expect("POST");
        assert_eq!(r.status, 404);
    }
    let after = request(socket, "GET", "/metrics", b"")
        .expect("metrics")
        .body;
    println!(
        "/metrics: {} bytes before 300 distinct unknown paths, {} after",
        before.len(),
        after.len()
    );
    assert!(
        !after.contains("foo") && !after.contains("a\\b") && !after.contains("xxxx"),
        "a label value came from a request path:\n{}",
        after.get(..2000).unwrap_or(&after)
    );
    assert!(
        after.contains(r#"method="other""#),
        "unknown methods are counted as other:\n{after}"
    );
    assert!(
        after.len() < before.len() + 4096,
        "/metrics grew from {} to {} bytes with unknown paths",
        before.len(),
        after.len()
    );
    // Still a valid page for a scraper.
    let parsed = samples(&after);
    assert!(
        parsed.keys().any(|k| k.starts_with("infrakit_rpc_served")),
        "{parsed:?}"
    );
}

/// `group events` names what it cannot show: a group that does not exist is an error (at once, not
/// a silent follow forever), and `--no-follow` that printed nothing says so on stderr.
#[test]
fn events_of_an_unknown_group_fail_and_an_empty_answer_says_so() {
    let w = World::new();
    let _stack = stack(&w, &[]);
    let v1 = w.write("v1.json", &spec(1, "v1"));
    w.ok(&["group", "commit", v1.to_str().unwrap()]);
    wait_until("ev converged", Duration::from_secs(30), || {
        describe(&w)["Converged"] == json!(true)
    });

    for args in [
        &["group", "events", "nosuch", "--no-follow"][..],
        &["group", "events", "nosuch", "--since", "1h", "--no-follow"][..],
        // Following: an error at once too (the child is killed if it hangs instead).
        &["group", "events", "nosuch"][..],
    ] {
        let mut child = w
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("events");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} still running after 20 s: a typo'd group is followed forever");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert!(!status.success(), "{args:?} succeeded: {err}");
        assert!(
            err.contains("no group 'nosuch'") && err.contains("group ls"),
            "{args:?}: {err}"
        );
    }

    // Nothing to show: exit 0, nothing on stdout, a line on stderr saying why.
    let out = w.run(&["group", "events", "ev", "--no-follow"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("no events of group 'ev' to show") && err.contains("--since"),
        "{err}"
    );
    // With something to show: no such line.
    let out = w.run(&["group", "events", "--since", "1h", "--no-follow"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("commit"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no events"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A destroyed group: its kept events are still shown, with a word that it is gone.
    w.ok(&["group", "destroy", "ev"]);
    let out = w.run(&["group", "events", "ev", "--since", "1h", "--no-follow"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("commit"));
    assert!(err.contains("group 'ev' is not managed"), "{err}");
}
