//! The wire protocol, spoken by hand to a real `infrakit plugin serve` process.

mod common;

use std::time::Duration;

use common::{post, request, World};

#[test]
fn activate_and_provision_over_raw_http() {
    let w = World::new();
    let dir = w.path("instances");
    let p = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().unwrap()],
    );

    let r = post(&p.socket, "/Plugin.Activate", b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["Implements"],
        serde_json::json!(["infrakit.instance/1.0"])
    );
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: application/vnd.docker.plugins.v1.2+json"),
        "{}",
        r.headers
    );

    let body =
        br#"{"Spec":{"Tags":{"infrakit.group":"g"},"Init":"echo hi","LogicalID":"10.0.0.1"}}"#;
    let r = post(&p.socket, "/Instance.Provision", body).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["ID"].as_str().expect("ID").to_string();

    let r = post(
        &p.socket,
        "/Instance.DescribeInstances",
        br#"{"Tags":{"infrakit.group":"g"}}"#,
    )
    .unwrap();
    let d = r.json();
    assert_eq!(d["Descriptions"][0]["ID"], serde_json::json!(id));
    assert_eq!(
        d["Descriptions"][0]["LogicalID"],
        serde_json::json!("10.0.0.1")
    );

    // Our addition: `IDs` names the instances wanted (with properties, here); an ID that is not
    // there is left out, and a describe without it still lists everything.
    let r = post(
        &p.socket,
        "/Instance.Provision",
        br#"{"Spec":{"Tags":{"infrakit.group":"g"}}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let other = r.json()["ID"].as_str().expect("ID").to_string();
    let body = format!(
        r#"{{"Tags":{{"infrakit.group":"g"}},"Properties":true,"IDs":["{id}","instance-gone"]}}"#
    );
    let r = post(&p.socket, "/Instance.DescribeInstances", body.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let d = r.json();
    let listed = d["Descriptions"].as_array().expect("Descriptions");
    assert_eq!(listed.len(), 1, "{}", r.body);
    assert_eq!(listed[0]["ID"], serde_json::json!(id));
    assert_eq!(
        listed[0]["Properties"]["Spec"]["Init"],
        serde_json::json!("echo hi")
    );
    let r = post(
        &p.socket,
        "/Instance.DescribeInstances",
        br#"{"Tags":{"infrakit.group":"g"}}"#,
    )
    .unwrap();
    assert_eq!(r.json()["Descriptions"].as_array().map(Vec::len), Some(2));
    let r = post(
        &p.socket,
        "/Instance.Destroy",
        format!(r#"{{"Instance":"{other}"}}"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let r = post(
        &p.socket,
        "/Instance.Destroy",
        format!(r#"{{"Instance":"{id}"}}"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &p.socket,
        "/Instance.Destroy",
        format!(r#"{{"Instance":"{id}"}}"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 404, "destroying twice is NotFound: {}", r.body);
    assert!(r.json()["Err"].as_str().unwrap().contains(&id));
}

#[test]
fn bad_requests_get_4xx_with_err_and_the_server_keeps_serving() {
    let w = World::new();
    let dir = w.path("instances");
    let p = w.serve(
        "instance-file",
        &["instance-file", "--dir", dir.to_str().unwrap()],
    );

    let r = post(&p.socket, "/Instance.Provision", b"{\"Spec\": {").unwrap();
    assert_eq!(r.status, 400);
    let err = r.json()["Err"].as_str().unwrap().to_string();
    assert!(
        err.contains("malformed JSON") && err.contains("Instance.Provision"),
        "{err}"
    );

    let r = post(
        &p.socket,
        "/Instance.Provision",
        br#"{"Spec": {"Tags": "not a map"}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["Err"].as_str().unwrap().contains("invalid type"),
        "{}",
        r.body
    );

    let r = post(&p.socket, "/Instance.Frobnicate", b"{}").unwrap();
    assert_eq!(r.status, 404);
    let err = r.json()["Err"].as_str().unwrap().to_string();
    assert!(
        err.contains("Frobnicate") && err.contains("Provision"),
        "{err}"
    );

    let r = post(&p.socket, "/Flavor.Prepare", b"{}").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["Err"]
        .as_str()
        .unwrap()
        .contains("does not implement Flavor"));

    let r = post(&p.socket, "/Nonsense", b"{}").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["Err"].is_string());

    let big = vec![b' '; 9 * 1024 * 1024];
    let r = post(&p.socket, "/Instance.Provision", &big).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["Err"].as_str().unwrap().contains("limit"));

    let r = request(&p.socket, "GET", "/Plugin.Activate", b"").unwrap();
    assert_eq!(r.status, 405);
    assert!(r.json()["Err"].as_str().unwrap().contains("POST"));

    let r = post(
        &p.socket,
        "/Instance.Provision",
        br#"{"Spec":{},"Type":"nope"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        r.json()["Err"]
            .as_str()
            .unwrap()
            .contains("sub-type 'nope'"),
        "{}",
        r.body
    );

    // Still alive and well after all of that.
    let r = post(&p.socket, "/Plugin.Activate", b"{}").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_refused() {
    let w = World::new();
    std::fs::create_dir_all(w.plugins_dir()).unwrap();
    // A socket file nobody listens on: what a killed plugin leaves behind.
    drop(std::os::unix::net::UnixListener::bind(w.socket("flavor-vanilla")).unwrap());
    assert!(w.socket("flavor-vanilla").exists());
    let p = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    let r = post(&p.socket, "/Plugin.Activate", b"{}").unwrap();
    assert_eq!(
        r.json()["Implements"],
        serde_json::json!(["infrakit.flavor/1.0"])
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&p.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "socket mode");

    // A second server on the same live socket is refused with a clear error.
    let err = w.fails(&["plugin", "serve", "flavor-vanilla"]);
    assert!(err.contains("already listening"), "{err}");
    // ...and the first one is unharmed.
    assert_eq!(
        post(&p.socket, "/Plugin.Activate", b"{}").unwrap().status,
        200
    );
}

#[test]
fn sigterm_exits_within_a_second_even_with_an_idle_keepalive_connection() {
    use std::io::Write;
    let w = World::new();
    let mut p = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut keep = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
    keep.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    p.signal(15);
    let took = p
        .wait_exit(Duration::from_secs(5))
        .expect("plugin did not exit after SIGTERM");
    println!("SIGTERM to exit: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        p.child.try_wait().unwrap().unwrap().success(),
        "clean exit status"
    );
    assert!(!p.socket.exists(), "socket file removed on exit");
}

#[test]
fn sigint_exits_cleanly_too() {
    let w = World::new();
    let mut p = w.serve("flavor-vanilla", &["flavor-vanilla"]);
    p.signal(2);
    let took = p
        .wait_exit(Duration::from_secs(5))
        .expect("plugin did not exit after SIGINT");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
