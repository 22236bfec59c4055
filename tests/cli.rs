//! The CLI against real plugin processes: instance and flavor round trips, combo, discovery, and the
//! errors a user meets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;

use common::World;
use serde_json::{json, Value};

#[test]
fn instance_file_round_trip_through_the_cli() {
    let w = World::new();
    let dir = w.path("instances");
    let _p = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().unwrap()],
    );

    let spec = w.write(
        "spec.json",
        r#"{"Properties": {"Note": "v1"}, "Tags": {"infrakit.group": "web", "tier": "front"}, "Init": "echo hello"}"#,
    );
    let id = w
        .ok(&["instance", "provision", spec.to_str().unwrap()])
        .trim()
        .to_string();
    assert!(id.starts_with("instance-"), "{id}");
    assert!(
        dir.join(format!("{id}.json")).exists(),
        "one file per instance"
    );
    let other = w.write("other.json", r#"{"Tags": {"infrakit.group": "db"}}"#);
    let id2 = w
        .ok(&["instance", "provision", other.to_str().unwrap()])
        .trim()
        .to_string();

    let all: Value = serde_json::from_str(&w.ok(&["instance", "describe", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let web = w.ok(&["instance", "describe", "-q", "--tags", "infrakit.group=web"]);
    assert_eq!(web.trim(), id);
    let table = w.ok(&["instance", "describe", "--tags", "tier=front"]);
    assert!(
        table.starts_with("ID") && table.contains(&id) && !table.contains(&id2),
        "{table}"
    );

    // Properties only when asked for.
    let plain: Value =
        serde_json::from_str(&w.ok(&["instance", "describe", "--json", "-t", "tier=front"]))
            .unwrap();
    assert!(plain[0].get("Properties").is_none(), "{plain}");
    let with: Value = serde_json::from_str(&w.ok(&[
        "instance",
        "describe",
        "--json",
        "-t",
        "tier=front",
        "--properties",
    ]))
    .unwrap();
    assert!(with[0]["Properties"].to_string().contains("v1"), "{with}");

    w.ok(&["instance", "label", &id, "owner=ops", "tier=back"]);
    let labeled: Value =
        serde_json::from_str(&w.ok(&["instance", "describe", "--json", "-t", "owner=ops"]))
            .unwrap();
    assert_eq!(labeled[0]["Tags"]["tier"], json!("back"));
    assert_eq!(labeled[0]["Tags"]["infrakit.group"], json!("web"));

    w.ok(&["instance", "destroy", &id, "--reason", "rolling-update"]);
    assert_eq!(w.ok(&["instance", "describe", "-q"]).trim(), id2);
    let err = w.fails(&["instance", "destroy", &id]);
    assert!(err.contains(&id), "{err}");

    let err = w.fails(&["instance", "label", &id2, "nopair"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let bad = w.write("bad.json", "{\"Tags\": ");
    let err = w.fails(&["instance", "provision", bad.to_str().unwrap()]);
    assert!(
        err.contains("bad.json") && err.contains("not a valid instance spec"),
        "{err}"
    );
}

#[test]
fn combo_of_two_vanillas_merges_in_order() {
    let w = World::new();
    let _a = w.serve("vanilla-a", &["flavor-vanilla"]);
    let _b = w.serve("vanilla-b", &["flavor-vanilla"]);
    let _c = w.serve("flavor-combo", &["flavor-combo"]);
    let props = w.write(
        "combo.json",
        r#"{"Flavors": [
              {"Plugin": "vanilla-a", "Properties": {"Init": ["echo a1", "echo a2"], "Tags": {"tier": "a", "from-a": "yes"},
                                                      "Attachments": [{"ID": "vol-a", "Type": "volume"}]}},
              {"Plugin": "vanilla-b", "Properties": {"Init": ["echo b"], "Tags": {"tier": "b"},
                                                      "Attachments": [{"ID": "vol-b", "Type": "volume"}]}}
           ]}"#,
    );
    let spec = w.write(
        "spec.json",
        r#"{"Init": "echo base", "Tags": {"infrakit.group": "g"}}"#,
    );
    let out: Value = serde_json::from_str(&w.ok(&[
        "flavor",
        "--name",
        "flavor-combo",
        "prepare",
        props.to_str().unwrap(),
        "--spec",
        spec.to_str().unwrap(),
        "--size",
        "3",
    ]))
    .unwrap();
    assert_eq!(
        out["Init"],
        json!("echo base\necho a1\necho a2\necho b"),
        "{out}"
    );
    assert_eq!(out["Tags"]["tier"], json!("b"), "later flavor wins: {out}");
    assert_eq!(out["Tags"]["from-a"], json!("yes"));
    assert_eq!(out["Tags"]["infrakit.group"], json!("g"));
    assert_eq!(
        out["Attachments"],
        json!([{"ID": "vol-a", "Type": "volume"}, {"ID": "vol-b", "Type": "volume"}])
    );

    let health = w.ok(&[
        "flavor",
        "-n",
        "flavor-combo",
        "healthy",
        props.to_str().unwrap(),
        "--id",
        "i-1",
    ]);
    assert_eq!(health.trim(), "healthy");
    w.ok(&[
        "flavor",
        "-n",
        "flavor-combo",
        "drain",
        props.to_str().unwrap(),
        "--id",
        "i-1",
    ]);
    w.ok(&[
        "flavor",
        "-n",
        "flavor-combo",
        "validate",
        props.to_str().unwrap(),
    ]);

    // A child that does not exist is named in the error.
    let broken = w.write("broken.json", r#"{"Flavors": [{"Plugin": "vanilla-zz"}]}"#);
    let err = w.fails(&[
        "flavor",
        "-n",
        "flavor-combo",
        "validate",
        broken.to_str().unwrap(),
    ]);
    assert!(err.contains("vanilla-zz"), "{err}");
    // A typo in a vanilla property is refused with the field's name.
    let typo = w.write("typo.json", r#"{"Inits": ["x"]}"#);
    let err = w.fails(&[
        "flavor",
        "-n",
        "vanilla-a",
        "validate",
        typo.to_str().unwrap(),
    ]);
    assert!(err.contains("Inits"), "{err}");
}

/// A fake plugin that speaks a future major version of the instance interface.
fn serve_fake(listener: UnixListener, implements: &'static str) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let reply = format!(r#"{{"Implements":["{implements}"]}}"#);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
}

#[test]
fn a_different_major_version_is_refused_with_both_versions() {
    let w = World::new();
    std::fs::create_dir_all(w.plugins_dir()).unwrap();
    serve_fake(
        UnixListener::bind(w.socket("future")).unwrap(),
        "infrakit.instance/2.3",
    );
    let err = w.fails(&["instance", "--name", "future", "describe"]);
    assert!(
        err.contains("infrakit.instance/2.3") && err.contains("infrakit.instance/1.0"),
        "{err}"
    );

    // The wrong kind of plugin is refused too, naming what it does implement.
    let _v = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let err = w.fails(&["instance", "--name", "flavor-vanilla", "describe"]);
    assert!(
        err.contains("does not implement infrakit.instance") && err.contains("infrakit.flavor/1.0"),
        "{err}"
    );
}

#[test]
fn plugin_ls_and_not_found() {
    let w = World::new();
    let dir = w.path("instances");
    let _i = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().unwrap()],
    );
    let _v = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    // A stale socket shows up as not answering rather than breaking the listing.
    drop(UnixListener::bind(w.socket("dead")).unwrap());

    // Only this world's plugins: not whatever the machine's Docker engine has enabled.
    let ls = |args: &[&str]| -> String {
        let out = w
            .cmd(args)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = ls(&["plugin", "ls"]);
    assert!(
        table.contains("NAME") && table.contains("SOCKET"),
        "{table}"
    );
    assert!(
        table.contains("infrakit.instance/1.0") && table.contains("infrakit.flavor/1.0"),
        "{table}"
    );
    assert!(table.contains("not answering"), "{table}");
    let names = ls(&["plugin", "ls", "-q"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        vec!["dead", "flavor-vanilla", "instance-file"]
    );
    let rows: Value = serde_json::from_str(&ls(&["plugin", "ls", "--json"])).unwrap();
    assert_eq!(rows[1]["Source"], json!("dir"));
    // Each name is found once here, so each is the one commands pick.
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["Picked"] == json!(true)),
        "{rows}"
    );
    assert!(table.contains("PICKED"), "{table}");
    // A plugin from the plugins directory answers without a word about where it was found.
    let out = w
        .cmd(&["instance", "--name", "instance-file", "describe", "-q"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let err = w.fails(&["instance", "--name", "nowhere", "describe"]);
    assert!(
        err.contains("plugin 'nowhere' not found") && err.contains("nowhere.sock"),
        "{err}"
    );
    let err = w.fails(&["instance", "--name", "dead", "describe"]);
    assert!(err.contains("is the plugin running"), "{err}");
}

#[test]
fn help_lists_the_plugin_kinds() {
    let w = World::new();
    let help = w.ok(&["plugin", "serve", "--help"]);
    for kind in ["instance-file", "flavor-vanilla", "flavor-combo"] {
        assert!(help.contains(kind), "{help}");
    }
}

#[test]
fn group_commit_of_a_missing_file_says_so_before_looking_for_the_plugin() {
    // No group plugin runs: the missing file is still what the user hears about.
    let w = World::new();
    let missing = w.path("no-such-group.json");
    let err = w.fails(&["group", "commit", missing.to_str().unwrap()]);
    assert!(
        err.contains("does not exist") && err.contains("no-such-group.json"),
        "{err}"
    );
    assert!(!err.contains("plugin 'group' not found"), "{err}");
}

/// `bootstrap --pretend` says what it would do without touching any engine (DOCKER_HOST points at
/// nothing), and bad files are refused with what to fix.
#[test]
fn bootstrap_pretends_and_refuses_bad_files() {
    let w = World::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/swarm/bootstrap.json");
    let nothing = format!("unix://{}", w.path("no-engine.sock").display());
    let run = |args: &[&str]| {
        w.cmd(args)
            .env("DOCKER_HOST", &nothing)
            .output()
            .expect("run infrakit")
    };
    let out = run(&[
        "bootstrap",
        example,
        "--registry",
        "10.98.0.1:5000/infrakit",
        "--pretend",
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "make the seed 10.98.0.11 (group 'swarm-managers')",
        "docker swarm init --advertise-addr 10.98.0.11",
        "deploy bundle 'infrakit' from 10.98.0.1:5000/infrakit",
        "commit group 'swarm-managers' (3 pets, flavor flavor-swarm/manager)",
        "commit group 'swarm-workers' (2 instances, flavor flavor-swarm/worker) through the \
         swarm's group plugin",
        "wait until every node is Ready",
    ] {
        assert!(printed.contains(want), "missing '{want}' in:\n{printed}");
    }

    let even = w.write(
        "even.json",
        &json!([{"Plugin": "group", "Properties": {"ID": "m", "Properties": {
            "Allocation": {"LogicalIDs": ["10.0.0.1", "10.0.0.2"]},
            "Instance": {"Plugin": "instance-docker", "Properties": {"Image": "x"}},
            "Flavor": {"Plugin": "flavor-swarm/manager"}}}}])
        .to_string(),
    );
    // Refused, with the words that say what to fix.
    let refused = |args: &[&str], want: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{err}");
    };
    refused(
        &[
            "bootstrap",
            even.to_str().unwrap(),
            "--registry",
            "r/x",
            "--pretend",
        ],
        "even number",
    );
    let none = w.write("none.json", "[]");
    refused(
        &["bootstrap", none.to_str().unwrap(), "--registry", "r/x"],
        "exactly one",
    );
    refused(
        &["bootstrap", "/nonexistent/groups.json", "--registry", "r/x"],
        "does not exist",
    );

    // A manager's logical ID is the address the swarm dials: one host's own, reachable.
    for (addr, why) in [
        ("255.255.255.255", "the broadcast address"),
        ("0.0.0.0", "the unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("224.0.0.1", "a multicast address"),
    ] {
        let f = w.write(
            "unreachable.json",
            &json!([{"Plugin": "group", "Properties": {"ID": "m", "Properties": {
                "Allocation": {"LogicalIDs": [addr, "10.0.0.2", "10.0.0.3"]},
                "Instance": {"Plugin": "instance-docker", "Properties": {"Image": "x"}},
                "Flavor": {"Plugin": "flavor-swarm/manager"}}}}])
            .to_string(),
        );
        let out = run(&[
            "bootstrap",
            f.to_str().unwrap(),
            "--registry",
            "r/x",
            "--pretend",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(&format!("logical ID '{addr}' is {why}"))
                && err.contains("unicast"),
            "{addr}: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("advertise-addr"),
            "{addr}: nothing planned"
        );
    }
    // --env is checked as `swarm deploy --env` checks it, --pretend or not.
    for bad in ["nocolon", "group:=v", "group:NOVALUE", "nope:A=b"] {
        let out = run(&[
            "bootstrap",
            example,
            "--registry",
            "r/x",
            "--env",
            bad,
            "--pretend",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        let deploy = run(&["swarm", "deploy", "--registry", "r/x", "--env", bad]);
        let deploy_err = String::from_utf8_lossy(&deploy.stderr);
        assert!(!out.status.success(), "--env {bad} accepted: {err}");
        assert_eq!(
            err.trim(),
            deploy_err.trim(),
            "--env {bad}: bootstrap and swarm deploy say the same"
        );
        assert!(err.contains(&format!("--env {bad}")), "{err}");
    }
}

/// Run only by `a_skip_is_listed_at_the_end_of_make_test_and_fails_under_ci`, as its own process.
#[test]
#[ignore = "a skipping test on purpose, run by a_skip_is_listed_at_the_end_of_make_test_and_fails_under_ci"]
fn skip_demo() {
    common::skip::skip("demo part", "nothing to demo with");
}

/// Run only by `a_skip_is_listed_at_the_end_of_make_test_and_fails_under_ci`, as its own process.
#[test]
#[ignore = "a skipping test on purpose, run by a_skip_is_listed_at_the_end_of_make_test_and_fails_under_ci"]
fn swarm_opt_out_demo() {
    assert!(common::skip::swarm_opted_out("demo swarm part"));
}

/// A test that cannot run is not a silent "ok": it lands in the skip log that `make test` prints at
/// the end (scripts/test-skips.sh), and under CI=true it fails, as does the summary.
#[test]
fn a_skip_is_listed_at_the_end_of_make_test_and_fails_under_ci() {
    let w = World::new();
    let log = w.path("skips.log");
    let this = std::env::current_exe().expect("this test binary");
    let demo = |name: &str, ci: bool| {
        let mut c = std::process::Command::new(&this);
        c.args(["--exact", name, "--ignored", "--test-threads", "1"])
            .env("INFRAKIT_SKIP_LOG", &log)
            .env("INFRAKIT_SKIP_SWARM", "1")
            .env_remove("CI");
        if ci {
            c.env("CI", "true");
        }
        c.output().expect("run the demo test")
    };
    let summary = |ci: bool| {
        let mut c = std::process::Command::new("bash");
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/test-skips.sh"
        ))
        .arg(&log)
        .env_remove("CI");
        if ci {
            c.env("CI", "true");
        }
        c.output().expect("run scripts/test-skips.sh")
    };
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();

    let empty = summary(false);
    assert!(empty.status.success() && said(&empty).contains("nothing skipped"));

    // Outside CI: the test passes, and says why it did not run, in the log.
    assert!(demo("skip_demo", false).status.success());
    assert!(demo("swarm_opt_out_demo", false).status.success());
    let lines = std::fs::read_to_string(&log).expect("the skip log");
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        vec![
            "skip_demo: the demo part did not run: nothing to demo with",
            "swarm_opt_out_demo: the demo swarm part did not run: INFRAKIT_SKIP_SWARM=1 (opted out)",
        ]
    );
    let listed = summary(false);
    assert!(listed.status.success());
    assert!(
        said(&listed).contains("2 test part(s) did NOT run")
            && said(&listed).contains("  - skip_demo: the demo part did not run"),
        "{}",
        said(&listed)
    );
    // Under CI: the summary of those skips fails, and so does each test itself.
    assert!(!summary(true).status.success());
    for name in ["skip_demo", "swarm_opt_out_demo"] {
        let out = demo(name, true);
        assert!(
            !out.status.success() && said(&out).contains("must run in CI"),
            "{name} under CI=true: {}",
            said(&out)
        );
    }
}
