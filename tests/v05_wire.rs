//! Wire compatibility with InfraKit v0.5 (Docker's Go InfraKit, tag v0.5), both ways, on real
//! sockets.
//!
//! - Our plugins (real `infrakit plugin serve` processes) answer v0.5's JSON-RPC requests, sent by
//!   hand exactly as v0.5's client writes them, with v0.5-shaped results and errors.
//! - Our group controller (a real process) drives a v0.5 instance plugin and a v0.5 flavor plugin:
//!   small JSON-RPC servers made here from the same fixtures, listening where v0.5 listens
//!   (`<plugins dir>/<name>`, no `.sock`) and answering `/Plugin.Activate` with Go's 404.
//!
//! The fixtures are v0.5's own shapes: the request and result types of `pkg/rpc/{instance,flavor,
//! group}/types.go`, the envelope of gorilla/rpc's json2 (`vendor/github.com/gorilla/rpc/v2/json2`),
//! and the `Instance.Provision` request recorded in v0.5's `examples/flavor/swarm/README.md`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::engine::wait_until;
use common::World;
use serde_json::{json, Value};

/// POSTs a JSON-RPC body to `/` as v0.5's client does (Host `h`, `application/json`); returns the
/// status, the content type and the reply parsed.
fn v05_call(socket: &Path, body: &str) -> (u16, String, Value) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nUser-Agent: Go-http-client/1.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ctype = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, ctype, v)
}

/// The `result` of a successful call, checking the envelope as v0.5's client reads it.
fn result(socket: &Path, body: &str) -> Value {
    let (status, ctype, v) = v05_call(socket, body);
    assert_eq!(status, 200, "{v}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    let sent: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["id"], sent["id"], "the id is echoed: {v}");
    assert!(v.get("error").is_none(), "unexpected error: {v}");
    v["result"].clone()
}

/// The `error` of a failed call: status 200 and `{"code", "message", "data": null}`, as gorilla's
/// json2 writes it.
fn error(socket: &Path, body: &str) -> Value {
    let (status, _, v) = v05_call(socket, body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert!(v.get("result").is_none(), "{v}");
    let e = v["error"].clone();
    assert!(e["code"].is_i64() && e["message"].is_string(), "{v}");
    assert_eq!(e.get("data"), Some(&Value::Null), "{v}");
    e
}

/// v0.5's `Instance.Provision` request from the swarm example's log (the Init script shortened,
/// the Box property kept: instance-file stores any object).
const PROVISION: &str = r##"{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Type":"","Spec":{"Properties":{"Box":"ubuntu/trusty64"},"Tags":{"infrakit-link":"HmjVIS7jEMNMu3mU","infrakit-link-context":"swarm/t9vg5zqmdtw8ovhniwifszwbw/manager","infrakit.config_sha":"UBS6BBMA84vUjjtMceeraQGP_eQ=","infrakit.group":"swarm-managers","swarm-id":"t9vg5zqmdtw8ovhniwifszwbw"},"Init":"#!/bin/sh\nset -o errexit\n","LogicalID":"192.168.2.202","Attachments":null}},"id":3237913983924951943}"##;

#[test]
fn our_plugins_answer_v05_requests_in_v05_shapes() {
    let w = World::new();
    let instances = w.path("instances");
    let _files = w.serve(
        "instance-file",
        &["instance-file", "--dir", instances.to_str().unwrap()],
    );
    let _vanilla = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let store = w.path("store");
    let _group = w.serve(
        "group",
        &[
            "group",
            "--store",
            store.to_str().unwrap(),
            "--poll-interval",
            "200ms",
        ],
    );
    let (files, vanilla, group) = (
        w.socket("instance-file"),
        w.socket("flavor-vanilla"),
        w.socket("group"),
    );

    // Handshake: v0.5's interface names and versions (its client wants them equal).
    let r = result(
        &files,
        r#"{"jsonrpc":"2.0","method":"Handshake.Implements","params":{},"id":1}"#,
    );
    assert_eq!(
        r,
        json!({"APIs": [{"Name": "Instance", "Version": "0.5.0"}]})
    );
    let r = result(
        &vanilla,
        r#"{"jsonrpc":"2.0","method":"Handshake.Implements","params":{},"id":2}"#,
    );
    assert_eq!(r, json!({"APIs": [{"Name": "Flavor", "Version": "0.1.0"}]}));
    let r = result(
        &group,
        r#"{"jsonrpc":"2.0","method":"Handshake.Implements","params":{},"id":3}"#,
    );
    assert_eq!(r, json!({"APIs": [{"Name": "Group", "Version": "0.1.0"}]}));
    let r = result(
        &files,
        r#"{"jsonrpc":"2.0","method":"Handshake.Types","params":{},"id":4}"#,
    );
    assert_eq!(r, json!({"Types": {"Instance/0.5.0": ["."]}}));

    // ---- Instance ----
    let r = result(
        &files,
        r#"{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Type":"","Properties":{"Box":"x"}},"id":10}"#,
    );
    assert_eq!(r, json!({"Type": "", "OK": true}));
    let e = error(
        &files,
        r#"{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Type":"","Properties":[1]},"id":11}"#,
    );
    assert_eq!(e["code"], -32000);
    assert!(
        e["message"].as_str().unwrap().contains("JSON object"),
        "{e}"
    );

    let r = result(&files, PROVISION);
    assert_eq!(r["Type"], "");
    let id = r["ID"].as_str().expect("an ID").to_string();
    // Stored under our tag name, so our controller reads it as its own config hash.
    let stored: String = std::fs::read_dir(&instances)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        stored.contains("infrakit.config.hash") && !stored.contains("infrakit.config_sha"),
        "{stored}"
    );

    let describe = |props: bool| {
        result(
            &files,
            &format!(
                r#"{{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{{"Type":"","Tags":{{"infrakit.config_sha":"UBS6BBMA84vUjjtMceeraQGP_eQ="}},"Properties":{props}}},"id":12}}"#
            ),
        )
    };
    let r = describe(false);
    let list = r["Descriptions"].as_array().expect("Descriptions");
    assert_eq!(list.len(), 1, "{r}");
    let d = &list[0];
    assert_eq!(d["ID"], id.as_str());
    assert_eq!(d["LogicalID"], "192.168.2.202");
    assert_eq!(
        d["Tags"]["infrakit.config_sha"],
        "UBS6BBMA84vUjjtMceeraQGP_eQ="
    );
    assert_eq!(d["Tags"]["infrakit.group"], "swarm-managers");
    assert!(d["Tags"].get("infrakit.config.hash").is_none(), "{d}");
    assert!(d.get("Properties").is_none(), "omitted unless asked: {d}");
    assert!(describe(true)["Descriptions"][0]["Properties"].is_object());

    let r = result(
        &files,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"Instance.Label","params":{{"Type":"","Instance":"{id}","Labels":{{"infrakit.config_sha":"NEW"}}}},"id":13}}"#
        ),
    );
    assert_eq!(r, json!({"Type": "", "OK": true}));
    let r = result(
        &files,
        r#"{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Type":"","Tags":{"infrakit.config_sha":"NEW"},"Properties":false},"id":14}"#,
    );
    assert_eq!(r["Descriptions"].as_array().map(Vec::len), Some(1), "{r}");

    let destroy = format!(
        r#"{{"jsonrpc":"2.0","method":"Instance.Destroy","params":{{"Type":"","Instance":"{id}"}},"id":15}}"#
    );
    assert_eq!(result(&files, &destroy), json!({"Type": "", "OK": true}));
    let e = error(&files, &destroy);
    assert_eq!(e["code"], -32000);
    assert!(e["message"].as_str().unwrap().contains(&id), "{e}");

    // Unknown methods, sub-types and envelopes: v0.5's codes.
    let e = error(
        &files,
        r#"{"jsonrpc":"2.0","method":"Instance.Nope","params":{},"id":16}"#,
    );
    assert_eq!(e["code"], -32000);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("rpc: can't find"),
        "{e}"
    );
    let e = error(
        &files,
        r#"{"jsonrpc":"2.0","method":"Flavor.Validate","params":{},"id":17}"#,
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("rpc: can't find"),
        "{e}"
    );
    let e = error(
        &files,
        r#"{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Type":"nosuch"},"id":18}"#,
    );
    assert!(e["message"].as_str().unwrap().contains("nosuch"), "{e}");
    let e = error(
        &files,
        r#"{"jsonrpc":"1.0","method":"Instance.Validate","params":{},"id":19}"#,
    );
    assert_eq!(e["code"], -32600);
    let e = error(&files, "{not json");
    assert_eq!(e["code"], -32700);
    let e = error(
        &files,
        r#"{"jsonrpc":"2.0","method":"Instance.Label","params":{"Labels":[1]},"id":20}"#,
    );
    assert_eq!(e["code"], -32600);

    // ---- Flavor ----
    let props = r#"{"Init":["echo hello"],"Tags":{"tier":"web"}}"#;
    let r = result(
        &vanilla,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"Flavor.Validate","params":{{"Type":"","Properties":{props},"Allocation":{{"Size":2,"LogicalIDs":null}}}},"id":30}}"#
        ),
    );
    assert_eq!(r, json!({"Type": "", "OK": true}));
    let r = result(
        &vanilla,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"Flavor.Prepare","params":{{"Type":"","Properties":{props},"Spec":{{"Properties":{{"Box":"b"}},"Tags":{{"infrakit.config_sha":"SHA","infrakit.group":"g"}},"Init":"","LogicalID":null,"Attachments":null}},"Allocation":{{"Size":2,"LogicalIDs":null}},"Index":{{"Group":"g","Sequence":0}}}},"id":31}}"#
        ),
    );
    assert_eq!(r["Type"], "");
    let spec = &r["Spec"];
    for field in ["Properties", "Tags", "Init", "LogicalID", "Attachments"] {
        assert!(
            spec.get(field).is_some(),
            "Go writes every field ({field}): {spec}"
        );
    }
    assert!(
        spec["Init"].as_str().unwrap().contains("echo hello"),
        "{spec}"
    );
    assert_eq!(spec["Tags"]["tier"], "web");
    assert_eq!(spec["Tags"]["infrakit.config_sha"], "SHA", "{spec}");
    assert_eq!(spec["Properties"], json!({"Box": "b"}));
    let instance = r#"{"ID":"i-1","LogicalID":null,"Tags":{"infrakit.config_sha":"SHA"}}"#;
    let r = result(
        &vanilla,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"Flavor.Healthy","params":{{"Type":"","Properties":{props},"Instance":{instance}}},"id":32}}"#
        ),
    );
    assert_eq!(
        r,
        json!({"Type": "", "Health": 1}),
        "health is v0.5's number"
    );
    let r = result(
        &vanilla,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"Flavor.Drain","params":{{"Type":"","Properties":{props},"Instance":{instance}}},"id":33}}"#
        ),
    );
    assert_eq!(r, json!({"Type": "", "OK": true}));
    let e = error(
        &vanilla,
        r#"{"jsonrpc":"2.0","method":"Flavor.Validate","params":{"Type":"","Properties":{"Init":3},"Allocation":{}},"id":34}"#,
    );
    assert_eq!(e["code"], -32000);

    // ---- Group ----
    let spec = |id: &str, size: u64| {
        json!({"ID": id, "Properties": {
            "Allocation": {"Size": size},
            "Instance": {"Plugin": "instance-file", "Properties": {"Note": "v05"}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo hi"]}}}})
    };
    let commit = |id: &str, size: u64, pretend: bool| {
        json!({"jsonrpc": "2.0", "method": "Group.CommitGroup",
               "params": {"Spec": spec(id, size), "Pretend": pretend}, "id": 40})
        .to_string()
    };
    let r = result(&group, &commit("v05g", 2, true));
    assert!(r["Details"].is_string(), "{r}");
    assert_eq!(r.as_object().map(|o| o.len()), Some(1), "only Details: {r}");
    let r = result(&group, &commit("v05g", 2, false));
    assert!(r["Details"].is_string(), "{r}");
    let describe =
        r#"{"jsonrpc":"2.0","method":"Group.DescribeGroup","params":{"ID":"v05g"},"id":41}"#;
    let d = wait_until(
        "two instances in the group, described in v0.5's shape",
        Duration::from_secs(30),
        || result(&group, describe),
        |r| r["Description"]["Instances"].as_array().map(Vec::len) == Some(2),
    );
    let desc = d["Description"].as_object().unwrap();
    assert_eq!(
        desc.keys().collect::<Vec<_>>(),
        ["Converged", "Instances"],
        "v0.5's Description has only these: {d}"
    );
    for i in d["Description"]["Instances"].as_array().unwrap() {
        assert!(i["Tags"]["infrakit.config_sha"].is_string(), "{i}");
        assert!(i["Tags"].get("infrakit.config.hash").is_none(), "{i}");
    }
    let r = result(
        &group,
        r#"{"jsonrpc":"2.0","method":"Group.InspectGroups","params":{},"id":42}"#,
    );
    assert_eq!(r["Groups"][0]["ID"], "v05g", "{r}");
    assert_eq!(r["Groups"][0]["Properties"]["Allocation"]["Size"], 2, "{r}");
    let r = result(
        &group,
        r#"{"jsonrpc":"2.0","method":"Group.FreeGroup","params":{"ID":"v05g"},"id":43}"#,
    );
    assert_eq!(r, json!({"OK": true}));
    let e = error(&group, describe);
    assert!(e["message"].as_str().unwrap().contains("v05g"), "{e}");

    result(&group, &commit("v05d", 1, false));
    let r = result(
        &group,
        r#"{"jsonrpc":"2.0","method":"Group.DestroyGroup","params":{"ID":"v05d"},"id":44}"#,
    );
    assert_eq!(r, json!({"OK": true}));
    let e = error(
        &group,
        r#"{"jsonrpc":"2.0","method":"Group.DestroyGroup","params":{"ID":"nosuch"},"id":45}"#,
    );
    assert!(e["message"].as_str().unwrap().contains("nosuch"), "{e}");

    // The native protocol on the same socket is untouched.
    let r = common::post(&files, "/Plugin.Activate", b"{}").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Implements"], json!(["infrakit.instance/1.0"]));
}

// ---------------------------------------------------------------------------------------------
// A v0.5 plugin, for our client to drive: gorilla's json2 behind Go's mux (only `/`), in memory.

/// What one v0.5 plugin holds and has been asked.
#[derive(Default)]
struct V05State {
    next: u64,
    instances: BTreeMap<String, Value>,
    /// Every call: (path, method, params).
    calls: Vec<(String, String, Value)>,
}

type Shared = Arc<Mutex<V05State>>;

/// Serves a v0.5 plugin implementing `iface` at `socket` until the listener is dropped (the
/// threads end with the test process; the socket is in the test's temp dir).
fn serve_v05(socket: PathBuf, iface: &'static str) -> Shared {
    let state: Shared = Arc::default();
    let listener = UnixListener::bind(&socket).expect("bind the v0.5 socket");
    let st = state.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let st = st.clone();
            std::thread::spawn(move || {
                let _ = serve_conn(conn, iface, &st);
            });
        }
    });
    state
}

/// One keep-alive connection: requests in turn until the client closes it.
fn serve_conn(mut conn: UnixStream, iface: &str, st: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let (status, ctype, reply) = if path != "/" {
            st.lock()
                .unwrap()
                .calls
                .push((path, String::new(), Value::Null));
            (
                404,
                "text/plain; charset=utf-8",
                "404 page not found\n".to_string(),
            )
        } else {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let method = req["method"].as_str().unwrap_or("").to_string();
            let params = req["params"].clone();
            st.lock()
                .unwrap()
                .calls
                .push((path, method.clone(), params.clone()));
            let out = match answer_v05(iface, &method, &params, st) {
                Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": req["id"]}),
                Err(m) => json!({"jsonrpc": "2.0",
                    "error": {"code": -32000, "message": m, "data": null}, "id": req["id"]}),
            };
            (200, "application/json; charset=utf-8", out.to_string())
        };
        let text = if status == 200 { "OK" } else { "Not Found" };
        write!(
            conn,
            "HTTP/1.1 {status} {text}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
    }
}

/// What v0.5's instance-file and flavor-vanilla examples answer, in v0.5's result types.
fn answer_v05(iface: &str, method: &str, p: &Value, st: &Shared) -> Result<Value, String> {
    let t = p["Type"].clone();
    let mut s = st.lock().unwrap();
    Ok(match (iface, method) {
        (_, "Handshake.Implements") => {
            let version = if iface == "Instance" {
                "0.5.0"
            } else {
                "0.1.0"
            };
            json!({"APIs": [{"Name": iface, "Version": version}]})
        }
        ("Instance", "Instance.Validate") => json!({"Type": t, "OK": true}),
        ("Instance", "Instance.Provision") => {
            s.next += 1;
            let id = format!("instance-{}", s.next);
            let spec = &p["Spec"];
            let d = json!({"ID": id, "LogicalID": spec["LogicalID"], "Tags": spec["Tags"]});
            s.instances.insert(id.clone(), d);
            json!({"Type": t, "ID": id})
        }
        ("Instance", "Instance.Label") => {
            let id = p["Instance"].as_str().unwrap_or("");
            let d = s
                .instances
                .get_mut(id)
                .ok_or(format!("instance {id} not found"))?;
            for (k, v) in p["Labels"].as_object().cloned().unwrap_or_default() {
                d["Tags"][k] = v;
            }
            json!({"Type": t, "OK": true})
        }
        ("Instance", "Instance.Destroy") => {
            let id = p["Instance"].as_str().unwrap_or("");
            s.instances
                .remove(id)
                .ok_or(format!("instance {id} not found"))?;
            json!({"Type": t, "OK": true})
        }
        ("Instance", "Instance.DescribeInstances") => {
            let want = p["Tags"].as_object().cloned().unwrap_or_default();
            let list: Vec<Value> = s
                .instances
                .values()
                .filter(|d| want.iter().all(|(k, v)| &d["Tags"][k] == v))
                .cloned()
                .collect();
            json!({"Type": t, "Descriptions": list})
        }
        ("Flavor", "Flavor.Validate") => json!({"Type": t, "OK": true}),
        ("Flavor", "Flavor.Prepare") => {
            let mut spec = p["Spec"].clone();
            spec["Tags"]["v05-flavor"] = json!("prepared");
            spec["Init"] = json!("echo from v0.5");
            json!({"Type": t, "Spec": spec})
        }
        ("Flavor", "Flavor.Healthy") => json!({"Type": t, "Health": 1}),
        ("Flavor", "Flavor.Drain") => json!({"Type": t, "OK": true}),
        _ => return Err(format!("rpc: can't find method \"{method}\"")),
    })
}

#[test]
fn our_controller_drives_v05_instance_and_flavor_plugins() {
    let w = World::new();
    std::fs::create_dir_all(w.plugins_dir()).unwrap();
    // Where v0.5 listens: `<plugins dir>/<name>`, no `.sock`.
    let inst = serve_v05(w.plugins_dir().join("v05-files"), "Instance");
    let flav = serve_v05(w.plugins_dir().join("v05-vanilla"), "Flavor");
    let store = w.path("store");
    let _group = w.serve(
        "group",
        &[
            "group",
            "--store",
            store.to_str().unwrap(),
            "--poll-interval",
            "200ms",
            "--health-interval",
            "500ms",
        ],
    );

    // plugin ls finds them and says which protocol each speaks.
    let ls = w.ok(&["plugin", "ls", "--json"]);
    let rows: Value = serde_json::from_str(&ls).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["Name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {ls}"))
    };
    assert_eq!(row("v05-files")["Protocol"], "v0.5", "{ls}");
    assert_eq!(row("v05-files")["Implements"], json!(["Instance/0.5.0"]));
    assert_eq!(row("v05-vanilla")["Implements"], json!(["Flavor/0.1.0"]));
    assert_eq!(row("group")["Protocol"], "infrakit", "{ls}");

    let spec = json!({"ID": "legacy", "Properties": {
        "Allocation": {"Size": 3},
        "Instance": {"Plugin": "v05-files", "Properties": {"Note": "v1"}},
        "Flavor": {"Plugin": "v05-vanilla", "Properties": {"Init": ["echo hi"]}}}});
    let f = w.write("legacy.json", &spec.to_string());
    w.ok(&["group", "commit", f.to_str().unwrap()]);

    let count = || inst.lock().unwrap().instances.len();
    wait_until(
        "three v0.5 instances",
        Duration::from_secs(30),
        count,
        |n| *n == 3,
    );
    let first: Vec<String> = inst.lock().unwrap().instances.keys().cloned().collect();
    for d in inst.lock().unwrap().instances.values() {
        let tags = &d["Tags"];
        assert_eq!(tags["infrakit.group"], "legacy", "{d}");
        assert!(
            tags["infrakit.config_sha"].is_string(),
            "v0.5's tag name: {d}"
        );
        assert!(tags.get("infrakit.config.hash").is_none(), "{d}");
        assert_eq!(
            tags["v05-flavor"], "prepared",
            "the v0.5 flavor prepared it: {d}"
        );
    }

    // Every call reached the plugins as v0.5 sends them: JSON-RPC on `/` after one 404 on
    // Activate, with none of our additions in the params.
    for (name, st) in [("instance", &inst), ("flavor", &flav)] {
        let calls = &st.lock().unwrap().calls;
        assert!(
            calls.iter().any(|(path, _, _)| path == "/Plugin.Activate"),
            "{name}: asked Activate first"
        );
        assert!(
            calls.iter().any(|(_, m, _)| m == "Handshake.Implements"),
            "{name}: then v0.5's handshake"
        );
        for (path, method, params) in calls.iter().filter(|(p, _, _)| p == "/") {
            assert!(
                !method.ends_with(".Changes") && !method.ends_with(".HealthyMany"),
                "{name}: {method} is not v0.5's, and is not sent to it"
            );
            for ours in ["Context", "IDs", "Expect"] {
                assert!(
                    params.get(ours).is_none(),
                    "{name} {path} {method}: {params}"
                );
            }
        }
    }
    assert!(flav
        .lock()
        .unwrap()
        .calls
        .iter()
        .any(|(_, m, _)| m == "Flavor.Prepare"));

    // One instance dies: the controller sees it gone (describe read back through the tag
    // mapping) and makes one new one, leaving the others (they read as current, not outdated).
    let dead = first[0].clone();
    inst.lock().unwrap().instances.remove(&dead);
    let after = wait_until(
        "the dead v0.5 instance replaced",
        Duration::from_secs(30),
        || {
            inst.lock()
                .unwrap()
                .instances
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        },
        |ids| ids.len() == 3 && !ids.contains(&dead),
    );
    for kept in &first[1..] {
        assert!(after.contains(kept), "{kept} was kept: {after:?}");
    }

    // Destroy through the controller: drained (v0.5 Drain) and destroyed (v0.5 Destroy).
    w.ok(&["group", "destroy", "legacy", "--timeout", "60s"]);
    assert_eq!(count(), 0);
    assert!(flav
        .lock()
        .unwrap()
        .calls
        .iter()
        .any(|(_, m, _)| m == "Flavor.Drain"));
}
