//! The server's connection limits, with short limits so each takes well under a second to hit:
//! idle and half-sent connections are closed, a full server makes room for a new client, a
//! half-closed request gets its reply, a slow body gets 408, and the SDK's pooled client rides over
//! connections the server closed without failing a call or sending one twice. Long polls
//! (`Instance.Changes`) have a budget of their own, end when their client hangs up, are answered
//! early to make room at the cap, and a half-closed one still gets its answer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use infrakit_sdk::rpc::client::{Endpoint, FlavorClient};
use infrakit_sdk::rpc::server::{Limits, Plugins, Server};
use infrakit_sdk::spi::changes::ChangeFeed;
use infrakit_sdk::spi::flavor::{AllocationMethod, FlavorPlugin, Health, Index};
use infrakit_sdk::spi::instance::{
    Changes, Description, DestroyContext, InstanceId, InstancePlugin, Spec, Tags,
};
use infrakit_sdk::Result;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Longest any single step may take before the test fails (far above what each needs).
const STEP: Duration = Duration::from_secs(10);

/// Counts `Healthy` calls; a call with `{"SleepMs": n}` properties takes n ms.
#[derive(Default, Clone)]
struct Counting {
    healthy_calls: Arc<AtomicUsize>,
}

#[async_trait]
impl FlavorPlugin for Counting {
    async fn validate(&self, _: &Value, _: &AllocationMethod) -> Result<()> {
        Ok(())
    }
    async fn prepare(
        &self,
        _: &Value,
        spec: Spec,
        _: &AllocationMethod,
        _: &Index,
    ) -> Result<Spec> {
        Ok(spec)
    }
    async fn healthy(&self, properties: &Value, _: &Description) -> Result<Health> {
        self.healthy_calls.fetch_add(1, Ordering::SeqCst);
        if let Some(ms) = properties.get("SleepMs").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(Health::Healthy)
    }
    async fn drain(&self, _: &Value, _: &Description) -> Result<()> {
        Ok(())
    }
}

/// An instance plugin that only reports changes (from its [`ChangeFeed`]), for long polls.
#[derive(Default, Clone)]
struct Feed(Arc<ChangeFeed>);

#[async_trait]
impl InstancePlugin for Feed {
    async fn validate(&self, _: &Value) -> Result<()> {
        Ok(())
    }
    async fn provision(&self, _: Spec) -> Result<InstanceId> {
        Ok(InstanceId::from("i-1"))
    }
    async fn label(&self, _: &str, _: Tags) -> Result<()> {
        Ok(())
    }
    async fn destroy(&self, _: &str, _: DestroyContext) -> Result<()> {
        Ok(())
    }
    async fn describe_instances(&self, _: &Tags, _: bool) -> Result<Vec<Description>> {
        Ok(Vec::new())
    }
    async fn changes(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        self.0.wait(cursor, timeout).await
    }
}

struct Served {
    _tmp: tempfile::TempDir,
    socket: PathBuf,
    plugin: Counting,
    feed: Feed,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Served {
    fn start(limits: Limits) -> Served {
        let tmp = tempfile::tempdir().expect("temp dir");
        let socket = tmp.path().join("limits.sock");
        let plugin = Counting::default();
        let feed = Feed::default();
        let server = Server::bind(&socket).expect("bind").with_limits(limits);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_until(
            Plugins::new().flavor(plugin.clone()).instance(feed.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        Served {
            _tmp: tmp,
            socket,
            plugin,
            feed,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn client(&self) -> FlavorClient {
        FlavorClient::new(Endpoint::new("limits", &self.socket))
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let served = timeout(STEP, task).await.expect("server stops");
            served.expect("server task").expect("server result");
        }
    }
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

const HEALTHY: &[u8] = br#"{"Properties": {}, "Instance": {"ID": "i-1"}}"#;

fn head(path: &str, len: usize, close: bool) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn read_to_close(s: &mut UnixStream) -> (String, Duration) {
    let start = Instant::now();
    let mut raw = Vec::new();
    let read = timeout(STEP, s.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    (String::from_utf8_lossy(&raw).into_owned(), start.elapsed())
}

async fn connect(socket: &Path) -> UnixStream {
    timeout(STEP, UnixStream::connect(socket))
        .await
        .expect("connect in time")
        .expect("connect")
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let s = Served::start(limits(|l| l.idle_timeout = Duration::from_millis(300)));
    let mut idle = connect(&s.socket).await;
    let (sent, took) = read_to_close(&mut idle).await;
    assert_eq!(sent, "", "nothing is sent to an idle connection");
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_head_is_closed_after_the_header_timeout_not_the_idle_one() {
    let s = Served::start(limits(|l| {
        l.header_read_timeout = Duration::from_millis(200);
        l.idle_timeout = Duration::from_secs(30);
    }));
    let mut half = connect(&s.socket).await;
    half.write_all(b"POST /Flavor.Healthy HTTP/1.1\r\nHost: pl")
        .await
        .expect("write");
    let (_, took) = read_to_close(&mut half).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_keep_alive_connection_that_served_a_call_is_idle_again_not_half_sent() {
    let s = Served::start(limits(|l| {
        l.header_read_timeout = Duration::from_millis(100);
        l.idle_timeout = Duration::from_millis(600);
    }));
    let mut c = connect(&s.socket).await;
    c.write_all(head("/Flavor.Healthy", HEALTHY.len(), false).as_bytes())
        .await
        .expect("write head");
    c.write_all(HEALTHY).await.expect("write body");
    let mut buf = vec![0u8; 4096];
    let n = timeout(STEP, c.read(&mut buf))
        .await
        .expect("reply")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // After the reply the connection waits under the idle timeout (600 ms), not the head's (100 ms).
    let (_, took) = read_to_close(&mut c).await;
    assert!(took >= Duration::from_millis(450), "closed after {took:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_reply() {
    let s = Served::start(Limits::default());
    // A call slow enough that the EOF arrives while it runs.
    let slow = br#"{"Properties": {"SleepMs": 300}, "Instance": {"ID": "i-1"}}"#;
    let mut c = connect(&s.socket).await;
    c.write_all(head("/Flavor.Healthy", slow.len(), false).as_bytes())
        .await
        .expect("write head");
    c.write_all(slow).await.expect("write body");
    c.shutdown().await.expect("shut down the write side");
    let (reply, _) = read_to_close(&mut c).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "reply: {reply}");
    assert!(reply.contains(r#"{"Health":"#), "reply: {reply}");
    assert_eq!(s.plugin.healthy_calls.load(Ordering::SeqCst), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_with_an_err() {
    let s = Served::start(limits(|l| l.body_read_timeout = Duration::from_millis(200)));
    let mut c = connect(&s.socket).await;
    c.write_all(head("/Flavor.Healthy", 100, true).as_bytes())
        .await
        .expect("write head");
    c.write_all(b"{\"Proper").await.expect("write some body");
    let (reply, _) = read_to_close(&mut c).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "reply: {reply}");
    assert!(
        reply.contains(r#""Err":"the request body of /Flavor.Healthy did not arrive"#),
        "reply: {reply}"
    );
    assert_eq!(s.plugin.healthy_calls.load(Ordering::SeqCst), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_the_longest_waiting_connection_makes_room_for_a_new_client() {
    let s = Served::start(limits(|l| l.max_connections = 4));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&s.socket).await);
    }
    let mut newest = connect(&s.socket).await;
    newest
        .write_all(head("/Flavor.Healthy", HEALTHY.len(), true).as_bytes())
        .await
        .expect("write head");
    newest.write_all(HEALTHY).await.expect("write body");
    let (reply, _) = read_to_close(&mut newest).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "reply: {reply}");
    // The oldest idle connection was the one closed.
    let (sent, _) = read_to_close(&mut held[0]).await;
    assert_eq!(sent, "");
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_connections_stuck_in_a_slow_body_make_room_too() {
    let s = Served::start(limits(|l| l.max_connections = 3));
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&s.socket).await;
        let head = "POST /Flavor.Healthy HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100\r\n\
                    Expect: 100-continue\r\n\r\n";
        c.write_all(head.as_bytes()).await.expect("write head");
        // hyper says "100 Continue" when the handler starts reading the body: from here the
        // connection is a request in progress, not an idle one.
        let mut buf = vec![0u8; 256];
        let n = timeout(STEP, c.read(&mut buf))
            .await
            .expect("100 in time")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));
        c.write_all(b"{").await.expect("write some body");
        held.push(c);
    }
    let mut newest = connect(&s.socket).await;
    newest
        .write_all(head("/Flavor.Healthy", HEALTHY.len(), true).as_bytes())
        .await
        .expect("write head");
    newest.write_all(HEALTHY).await.expect("write body");
    let (reply, _) = read_to_close(&mut newest).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "reply: {reply}");
    assert_eq!(
        s.plugin.healthy_calls.load(Ordering::SeqCst),
        1,
        "no half-received request reached the plugin"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_with_every_connection_in_a_call_a_new_one_is_closed_after_the_admit_wait() {
    let s = Served::start(limits(|l| {
        l.max_connections = 1;
        l.admit_wait = Duration::from_millis(200);
    }));
    let busy = s.client();
    let slow = json!({"SleepMs": 1500});
    let call = tokio::spawn(async move { busy.healthy(&slow, &Description::default()).await });
    // Wait until the slow call is in the plugin.
    let deadline = Instant::now() + STEP;
    while s.plugin.healthy_calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the slow call never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut refused = connect(&s.socket).await;
    let (sent, took) = read_to_close(&mut refused).await;
    assert_eq!(sent, "", "closed unanswered");
    assert!(
        took < Duration::from_millis(1400),
        "the refusal waited for the call: {took:?}"
    );
    let done = timeout(STEP, call).await.expect("slow call ends");
    assert_eq!(done.expect("task").expect("slow call"), Health::Healthy);
    s.shutdown().await;
}

#[tokio::test]
async fn the_pooled_client_reconnects_when_the_server_closed_its_connection_and_sends_once() {
    let s = Served::start(limits(|l| {
        l.idle_timeout = Duration::from_millis(200);
        l.max_connections = 2;
    }));
    let client = s.client();
    let props = json!({});
    let d = Description::default();
    assert_eq!(
        client.healthy(&props, &d).await.expect("first"),
        Health::Healthy
    );
    // The server closes the pooled connection (idle timeout).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.healthy(&props, &d).await.expect("after idle close"),
        Health::Healthy
    );
    // Two raw connections fill the cap; the client's pooled connection is the longest waiting
    // and is closed to make room for the second.
    let _a = connect(&s.socket).await;
    let _b = connect(&s.socket).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        client.healthy(&props, &d).await.expect("after eviction"),
        Health::Healthy
    );
    assert_eq!(
        s.plugin.healthy_calls.load(Ordering::SeqCst),
        3,
        "each call reached the plugin exactly once"
    );
    s.shutdown().await;
}

/// The feed's current cursor, from a zero-wait `Instance.Changes` (a short call).
async fn cursor(socket: &Path) -> String {
    let mut s = connect(socket).await;
    let body = br#"{"Cursor": "", "TimeoutMs": 0}"#;
    s.write_all(head("/Instance.Changes", body.len(), true).as_bytes())
        .await
        .expect("head");
    s.write_all(body).await.expect("body");
    let (reply, _) = read_to_close(&mut s).await;
    let json = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {reply}"));
    v["Cursor"].as_str().expect("a cursor").to_string()
}

/// Sends an `Instance.Changes` long poll for `cursor` (keep-alive) and returns the connection.
async fn long_poll(socket: &Path, cursor: &str, wait_ms: u64) -> UnixStream {
    let mut s = connect(socket).await;
    let body = json!({"Cursor": cursor, "TimeoutMs": wait_ms}).to_string();
    s.write_all(head("/Instance.Changes", body.len(), false).as_bytes())
        .await
        .expect("head");
    s.write_all(body.as_bytes()).await.expect("body");
    s
}

/// True when nothing arrives on `s` within `within` (the poll is held).
async fn silent(s: &mut UnixStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    timeout(within, s.read(&mut byte)).await.is_err()
}

#[tokio::test]
async fn a_long_poll_over_the_budget_is_refused_at_once_and_its_connection_closed() {
    let served = Served::start(limits(|l| l.max_long_polls = 1));
    let cursor = cursor(&served.socket).await;
    let mut held = long_poll(&served.socket, &cursor, 30_000).await;
    assert!(silent(&mut held, Duration::from_millis(200)).await, "held");
    let mut refused = long_poll(&served.socket, &cursor, 30_000).await;
    let (reply, took) = read_to_close(&mut refused).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains("1 long polls are held already, this plugin's limit"),
        "{reply}"
    );
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    // A zero-wait call is a short call: answered whatever the budget.
    assert_eq!(self::cursor(&served.socket).await, cursor);
    drop(held);
    served.shutdown().await;
}

#[tokio::test]
async fn a_long_poll_whose_client_hangs_up_gives_its_place_back_at_once() {
    let served = Served::start(limits(|l| l.max_long_polls = 1));
    let cursor = cursor(&served.socket).await;
    let mut held = long_poll(&served.socket, &cursor, 30_000).await;
    assert!(silent(&mut held, Duration::from_millis(200)).await, "held");
    drop(held);
    // The place is free again long before the abandoned poll's 30 s are up.
    let start = Instant::now();
    loop {
        let mut next = long_poll(&served.socket, &cursor, 30_000).await;
        if silent(&mut next, Duration::from_millis(100)).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the abandoned poll still holds the only place"
        );
    }
    println!("place free again {:?} after the hang-up", start.elapsed());
    served.shutdown().await;
}

#[tokio::test]
async fn a_half_closed_long_poll_still_gets_its_answer() {
    let served = Served::start(Limits::default());
    let cursor = cursor(&served.socket).await;
    let mut held = long_poll(&served.socket, &cursor, 30_000).await;
    held.shutdown().await.expect("half-close");
    assert!(silent(&mut held, Duration::from_millis(300)).await, "held");
    served.feed.0.changed();
    let (reply, _) = read_to_close(&mut held).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""Changed":true"#), "{reply}");
    served.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_the_oldest_long_poll_is_answered_early_to_make_room() {
    // Two connections: one long poll, one call at work; a third client must still get in.
    let served = Served::start(limits(|l| {
        l.max_connections = 2;
        l.admit_wait = STEP;
    }));
    let cursor = cursor(&served.socket).await;
    let mut poll = long_poll(&served.socket, &cursor, 30_000).await;
    assert!(silent(&mut poll, Duration::from_millis(200)).await, "held");
    let slow = {
        let client = served.client();
        tokio::spawn(async move {
            client
                .healthy(&json!({"SleepMs": 3000}), &Description::default())
                .await
        })
    };
    let start = Instant::now();
    while served.plugin.healthy_calls.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < STEP, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let mut third = connect(&served.socket).await;
    third
        .write_all(head("/Plugin.Activate", 0, true).as_bytes())
        .await
        .expect("head");
    let (reply, _) = read_to_close(&mut third).await;
    let took = start.elapsed();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        took < Duration::from_secs(2),
        "the new client waited {took:?}"
    );
    let (answered, _) = read_to_close(&mut poll).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(
        answered.to_ascii_lowercase().contains("connection: close"),
        "{answered}"
    );
    assert!(answered.contains(r#""Changed":false"#), "{answered}");
    slow.await.expect("join").expect("the slow call completes");
    served.shutdown().await;
}
