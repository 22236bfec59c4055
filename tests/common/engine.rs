//! What the tests that need a Docker Engine share (tests/docker.rs, engine.rs, rollout.rs,
//! zookeeper.rs): the docker CLI, the prerequisites check with its lock, and the tests' own busybox
//! image.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Held by every engine test while it runs: they share one engine, and a test that counts
/// containers or measures a rollout must not see another's.
pub const LOCK: &str = "/tmp/infrakit-engine-tests.lock";

/// The static binary the managed plugins are made of (`make static`; `make test` builds it).
pub const STATIC_BIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/static/x86_64-unknown-linux-gnu/release/infrakit"
);

/// The tests' busybox image's repository: a name of their own that no recipe or user picks; the
/// tag is the content hash ([`busybox`]).
pub const BUSYBOX_REPO: &str = "infrakit-selftest/busybox";

/// The applets the tests run in a busybox container (`exec`, Cmd, Init, HEALTHCHECK).
const BUSYBOX_APPLETS: &[&str] = &["sh", "sleep", "cat", "echo", "true", "ls", "hostname", "ip"];

/// The label holding the content hash, checked before the image is used.
const BUSYBOX_LABEL: &str = "infrakit.selftest.content";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A command's stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// `docker ARGS`, which must succeed; its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(o.status.success(), "docker {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Why no engine can be used, if none can.
pub fn engine_missing() -> Option<String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "no Docker engine answers ({}); run scripts/docker-engine.sh",
            text(&o).trim()
        )),
        Err(e) => Some(format!("no docker CLI ({e}); run scripts/docker-engine.sh")),
    }
}

/// Why the managed plugins cannot be made, if they cannot.
pub fn static_bin_missing() -> Option<String> {
    (!Path::new(STATIC_BIN).is_file())
        .then(|| format!("no static binary at {STATIC_BIN}; run make static (make test does)"))
}

/// Ok(the engine tests' lock) when `what` (the tests, for the messages) should run: an engine
/// answers and `more` (asked only then) finds nothing missing. Otherwise Err(()) after saying
/// loudly why they skip; under CI=true a missing prerequisite is a failure instead.
pub fn prerequisites(what: &str, more: impl FnOnce() -> Option<String>) -> Result<File, ()> {
    if let Some(why) = engine_missing().or_else(more) {
        super::skip::skip(what, &why);
        return Err(());
    }
    let lock = File::create(LOCK).unwrap_or_else(|e| panic!("cannot create {LOCK}: {e}"));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {LOCK}: {e}"));
    Ok(lock)
}

/// The hash of what the tests' busybox image holds: the host's /bin/busybox and the applet list.
fn busybox_content_hash() -> &'static str {
    use sha2::{Digest, Sha256};
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let binary = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
            panic!("cannot read /bin/busybox ({e}): install Debian's busybox-static")
        });
        let mut h = Sha256::new();
        h.update(&binary);
        for applet in BUSYBOX_APPLETS {
            h.update(b"\0");
            h.update(applet.as_bytes());
        }
        hex::encode(h.finalize())
    })
}

/// The tests' busybox image, `infrakit-selftest/busybox:<content hash>` ([`ensure_busybox`]
/// makes it).
pub fn busybox() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("{BUSYBOX_REPO}:{}", &busybox_content_hash()[..16]))
}

/// Makes [`busybox`] from the host's static busybox (Debian's busybox-static) with `docker import`
/// (nothing can be pulled), unless an image of that name carries the same content hash in its
/// label: neither a stale image (another busybox, fewer applets) nor a foreign one under the same
/// name is ever used.
pub fn ensure_busybox() {
    let (name, hash) = (busybox(), busybox_content_hash());
    let label = docker(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{BUSYBOX_LABEL}\"}}}}"),
        name,
    ]);
    if label.status.success() && String::from_utf8_lossy(&label.stdout).trim() == hash {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let bin = tmp.path().join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copy /bin/busybox (install Debian's busybox-static)");
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink");
    }
    let tar = tmp.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(tmp.path().join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar failed");
    docker_ok(&[
        "import",
        "--change",
        "CMD [\"sh\"]",
        "--change",
        &format!("LABEL {BUSYBOX_LABEL}={hash}"),
        tar.to_str().expect("utf-8 path"),
        name,
    ]);
}

/// Waits until `ok` holds for what `get` returns, or panics with `what` and the last value.
pub fn wait_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut get: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let v = get();
        if ok(&v) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}; last: {v:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The host CLI, finding plugins only through the engine (an empty plugins directory).
pub struct Cli {
    pub plugins_dir: PathBuf,
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(super::BIN)
            .args(args)
            .env("INFRAKIT_PLUGINS_DIR", &self.plugins_dir)
            .env("INFRAKIT_LOG", "warn")
            .env_remove("INFRAKIT_ENGINE_PLUGINS_DIR")
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .output()
            .expect("run infrakit")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "infrakit {args:?} failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "infrakit {args:?} should fail: {}",
            text(&o)
        );
        text(&o)
    }

    /// The group's description from the group plugin `group_plugin`, or what went wrong.
    pub fn describe(&self, group_plugin: &str, id: &str) -> Result<serde_json::Value, String> {
        let o = self.run(&["group", "-n", group_plugin, "describe", id, "--json"]);
        if !o.status.success() {
            return Err(text(&o));
        }
        serde_json::from_slice(&o.stdout).map_err(|e| format!("{e}: {}", text(&o)))
    }
}
