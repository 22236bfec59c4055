//! Helpers for the end-to-end tests: real `infrakit` processes on sockets in a temp directory.

#![allow(dead_code)]

pub mod engine;
pub mod lab;
pub mod skip;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_infrakit");

/// A scratch world: a plugins directory and whatever else a test needs, removed at the end.
pub struct World {
    pub tmp: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        World {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    pub fn plugins_dir(&self) -> PathBuf {
        self.path("plugins")
    }
    pub fn socket(&self, name: &str) -> PathBuf {
        self.plugins_dir().join(format!("{name}.sock"))
    }

    /// A command for the infrakit binary that finds plugins only in this world.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("INFRAKIT_PLUGINS_DIR", self.plugins_dir())
            .env("INFRAKIT_LOG", "warn")
            .env_remove("INFRAKIT_PLUGIN_SOCKET")
            .env_remove("INFRAKIT_INSTANCE_FILE_DIR")
            .stdin(Stdio::null());
        c
    }

    /// Runs the CLI to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run infrakit")
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "infrakit {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and insists it fails; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "infrakit {args:?} should have failed but printed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts `infrakit plugin serve <args>` and waits until its socket answers.
    pub fn serve(&self, name: &str, args: &[&str]) -> Plugin {
        let mut all = vec!["plugin", "serve"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--name", name]);
        let child = self
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn plugin");
        let socket = self.socket(name);
        let p = Plugin { child, socket };
        p.wait_ready();
        p
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }
}

/// A running plugin process; SIGKILLed on drop if still alive.
/// The open-file limit (soft and hard) the held-connection tests give a plugin: a tester's machine,
/// where 1,100 connections ran the plugin out of descriptors.
#[allow(dead_code)] // only the held-connection tests use it
pub const PLUGIN_FD_LIMIT: usize = 1024;

/// `infrakit plugin serve <args> --name <name>` with at most [`PLUGIN_FD_LIMIT`] open files.
#[allow(dead_code)] // only the held-connection tests use it
pub fn serve_with_fd_limit(w: &World, name: &str, args: &str) -> Plugin {
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -n {PLUGIN_FD_LIMIT}; exec \"$0\" plugin serve {args} --name {name}"
        ))
        .arg(BIN)
        .env("INFRAKIT_PLUGINS_DIR", w.plugins_dir())
        .env("INFRAKIT_LOG", "warn")
        .env_remove("INFRAKIT_PLUGIN_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    let p = Plugin {
        child,
        socket: w.socket(name),
    };
    p.wait_ready();
    p
}

pub struct Plugin {
    pub child: Child,
    pub socket: PathBuf,
}

impl Plugin {
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = post(&self.socket, "/Plugin.Activate", b"{}") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("plugin at {} never answered", self.socket.display());
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal by number (15 = TERM, 9 = KILL).
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit up to `limit`; returns how long it took, or None.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP reply.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.body))
    }
}

/// POSTs `body` to `path` on a fresh connection, by hand (no client library in between).
/// The sum of the samples on a plugin's `/metrics` page whose lines start with `needle` (a metric
/// name and the start of its labels, e.g. `infrakit_rpc_served_total{method="Instance.DescribeInstances"`).
#[allow(dead_code)] // not every test binary reads metrics
pub fn metric(socket: &Path, needle: &str) -> f64 {
    let r = request(socket, "GET", "/metrics", b"").expect("GET /metrics");
    r.body
        .lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn post(socket: &Path, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    request(socket, "POST", path, body)
}

pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // A server may answer (413) before reading everything; a failed write of the rest is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    })
}
