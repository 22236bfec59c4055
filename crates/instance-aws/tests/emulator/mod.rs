//! The EC2 emulator the tests run against: moto in server mode, on a free loopback port, stopped
//! when dropped; and the plugin's own binary started against it.
//!
//! moto's `moto_server` is found at `$INFRAKIT_MOTO`, else /opt/infrakit/moto-venv/bin/moto_server
//! (where scripts/setup-moto.sh installs it). Without it a test skips, loudly; under CI=true it
//! fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infrakit_sdk::rpc::client::{Endpoint, InstanceClient};

/// The plugin's binary: `$INFRAKIT_AWS_BIN`; else, in this crate's tests, the one cargo built for
/// them; else (the root package's tests, which cargo does not build it for)
/// `$CARGO_TARGET_DIR/debug/infrakit-instance-aws` or `<workspace>/target/debug/...`: run
/// `cargo build -p infrakit-instance-aws` first.
pub fn plugin_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("INFRAKIT_AWS_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_infrakit-instance-aws") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let p = target.join("debug").join("infrakit-instance-aws");
    assert!(
        p.is_file(),
        "the EC2 plugin's binary is not at {}: run `cargo build -p infrakit-instance-aws` first \
         (or set INFRAKIT_AWS_BIN)",
        p.display()
    );
    p
}

pub const DEFAULT_MOTO: &str = "/opt/infrakit/moto-venv/bin/moto_server";
/// An AMI moto knows (its built-in list), so runs with AMI validation on accept it too.
pub const AMI: &str = "ami-12c6146b";
pub const REGION: &str = "us-east-1";
/// The fake secret key the plugins get: a test checks it never appears in a log or an error.
pub const SECRET: &str = "infrakit-test-secret-4f1c9e";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// moto_server's path, or None (after saying why) when a test should skip.
pub fn moto_path() -> Option<PathBuf> {
    let path = std::env::var_os("INFRAKIT_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MOTO));
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "the EC2 emulator (moto_server) is not at {} (set INFRAKIT_MOTO, or run scripts/setup-moto.sh)",
        path.display()
    );
    if in_ci() {
        panic!("CI=true and {why}");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running moto_server; killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts moto (with extra environment, e.g. MOTO_ENABLE_AMI_VALIDATION) and waits until it
    /// answers; None when the test should skip.
    pub fn start(env: &[(&str, &str)]) -> Option<Moto> {
        let path = moto_path()?;
        Some(Moto::start_at(&path, free_port(), env))
    }

    pub fn start_at(path: &Path, port: u16, env: &[(&str, &str)]) -> Moto {
        let mut cmd = Command::new(path);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !moto.answers() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited at start ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn answers(&self) -> bool {
        http_get(self.port, "/moto-api/").is_some()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/").then_some(out)
}

/// The environment every plugin process of the tests gets: fake static credentials, the
/// emulator's endpoint, no instance metadata lookups, no profile files of the user's.
pub fn plugin_env(home: &Path, endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", REGION),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_MAX_ATTEMPTS", "2"),
        ("INFRAKIT_AWS_POLL_SECONDS", "0.5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([
        ("HOME".to_string(), home.display().to_string()),
        (
            "AWS_CONFIG_FILE".to_string(),
            home.join("no-aws-config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            home.join("no-aws-credentials").display().to_string(),
        ),
    ])
    .collect()
}

/// The plugin's binary as a process on a socket of its own; killed on drop.
pub struct Plugin {
    child: Child,
    pub socket: PathBuf,
    pub state: PathBuf,
}

impl Plugin {
    /// Starts the plugin in `dir` with `env` (nothing else of the test's environment but PATH).
    pub fn start(dir: &Path, env: &[(String, String)]) -> Plugin {
        Plugin::start_on(dir, &dir.join("instance-aws.sock"), env)
    }

    /// As [`Plugin::start`], listening on `socket` (e.g. in a plugins directory).
    pub fn start_on(dir: &Path, socket: &Path, env: &[(String, String)]) -> Plugin {
        let socket = socket.to_path_buf();
        let state = dir.join("state");
        let log = std::fs::File::create(dir.join("plugin.log")).expect("log file");
        let mut cmd = Command::new(plugin_binary());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("INFRAKIT_PLUGIN_SOCKET", &socket)
            .env("INFRAKIT_AWS_STATE_DIR", &state)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd.spawn().expect("starting infrakit-instance-aws");
        let mut plugin = Plugin {
            child,
            socket,
            state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStreamProbe::connect(&plugin.socket).is_err() {
            if let Ok(Some(status)) = plugin.child.try_wait() {
                panic!(
                    "infrakit-instance-aws exited at start ({status}): {}",
                    std::fs::read_to_string(dir.join("plugin.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the plugin's socket did not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        plugin
    }

    pub fn client(&self) -> InstanceClient {
        InstanceClient::new(Endpoint::new("instance-aws", &self.socket))
    }

    /// SIGKILL: no clean-up of any kind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pending_launches(&self) -> usize {
        std::fs::read_dir(self.state.join("pending"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
    }
}

struct UnixStreamProbe;

impl UnixStreamProbe {
    fn connect(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
        std::os::unix::net::UnixStream::connect(path)
    }
}

/// Polls `check` every 100 ms until it is true, for at most `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback TCP proxy in front of the emulator that can swallow answers: requests reach the
/// emulator (which acts on them), but their answers never reach the plugin: a lost answer, or a
/// plugin killed while waiting for one.
pub struct Proxy {
    pub port: u16,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let swallow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = swallow.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut c_read, mut u_write) = (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut u_write);
                });
                let flag = flag.clone();
                let (mut u_read, mut c_write) = (upstream, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match u_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                                    continue;
                                }
                                if c_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy { port, swallow }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn swallow(&self, on: bool) {
        self.swallow.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}
