//! What the VM tests (and the benchmark) share: the prerequisites, a lab (a network namespace of
//! our own with a bridge, swept at the next start if a crashed run left it), and the plugin as a
//! real process inside that namespace.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use infrakit_sdk::rpc::client::{Endpoint, InstanceClient};
use serde_json::{json, Value};

/// Every network namespace the tests make starts with this, then the test process's pid.
pub const NETNS_PREFIX: &str = "ikq-";
/// The bridge inside each namespace, and its address: the host side of every test VM.
pub const BRIDGE: &str = "labbr0";
pub const BRIDGE_ADDRESS: &str = "10.231.0.1";
/// VM tests of every test binary (and the benchmark) take this lock: two cores run two or three
/// TCG guests at a time at most.
const LOCK: &str = "/tmp/infrakit-instance-qemu-tests.lock";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The guest image: $INFRAKIT_VM_IMAGE, else what `make vm-image` made.
pub fn image_dir() -> PathBuf {
    std::env::var_os("INFRAKIT_VM_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/infrakit/vm-image/current"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (the tests make a network namespace, a bridge and taps)".into());
    }
    for tool in ["qemu-system-x86_64", "qemu-img", "ip"] {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed (scripts/setup-vm.sh installs it)"
            ));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some(
            "/bin/busybox is missing (Debian's busybox-static; the tests ping with it)".into(),
        );
    }
    let image = image_dir();
    for f in ["vmlinux", "initrd.gz", "rootfs.raw"] {
        if !image.join(f).is_file() {
            return Some(format!(
                "no guest image at {} (run `make vm-image` as root, or set INFRAKIT_VM_IMAGE)",
                image.display()
            ));
        }
    }
    None
}

/// `Ok(lock)` when the VM tests can run (hold the lock while they do); `Err` when they must skip,
/// said loudly. Under CI=true a missing prerequisite fails the test instead.
pub fn prerequisites(what: &str) -> Result<File, ()> {
    if let Some(why) = missing() {
        if in_ci() {
            panic!("the {what} must run in CI (CI=true) but cannot: {why}");
        }
        eprintln!("\n*** SKIPPING the {what}: {why} ***\n");
        return Err(());
    }
    let lock = File::create(LOCK).unwrap_or_else(|e| panic!("cannot create {LOCK}: {e}"));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {LOCK}: {e}"));
    Ok(lock)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn run_ok(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(
        o.status.success(),
        "{program} {args:?} failed: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until `check` answers `Some`, polling every 100 ms, at most `deadline`.
pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes namespaces a crashed run left (their creator's pid is gone), stopping what runs in
/// them (QEMUs of that run).
fn sweep() {
    let list = String::from_utf8_lossy(&run("ip", &["netns", "list"]).stdout).into_owned();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        // Only names this code made (`ikq-<pid>-<tag>`), whose maker is gone.
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("sweeping the network namespace {name} a crashed test run left");
        kill_namespace(name);
    }
}

fn kill_namespace(name: &str) {
    let pids = String::from_utf8_lossy(&run("ip", &["netns", "pids", name]).stdout).into_owned();
    for pid in pids.split_whitespace() {
        let _ = run("kill", &["-9", pid]);
    }
    let _ = run("ip", &["netns", "del", name]);
}

/// A network namespace with a bridge at 10.231.0.1/24; removed (and everything in it stopped)
/// when dropped.
pub struct Lab {
    pub netns: String,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        sweep();
        let netns = format!("{NETNS_PREFIX}{}-{tag}", std::process::id());
        kill_namespace(&netns);
        run_ok("ip", &["netns", "add", &netns]);
        let lab = Lab {
            netns,
            dir: tempfile::Builder::new()
                .prefix("ikq-")
                .tempdir()
                .expect("temporary directory"),
        };
        lab.ip(&["link", "set", "lo", "up"]);
        lab.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        lab.ip(&[
            "addr",
            "add",
            &format!("{BRIDGE_ADDRESS}/24"),
            "dev",
            BRIDGE,
        ]);
        lab.ip(&["link", "set", BRIDGE, "up"]);
        lab
    }

    /// `ip -n NETNS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.netns];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("instance-qemu.sock")
    }

    /// The interfaces in the namespace whose names start with `ik` (the VMs' taps).
    pub fn taps(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("ik"))
            .collect()
    }

    /// True when `address` answers a ping from the bridge.
    pub fn pings(&self, address: &str) -> bool {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "/bin/busybox",
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                address,
            ],
        )
        .status
        .success()
    }

    /// Pids of the QEMUs started with this lab's state directory.
    pub fn qemus(&self) -> Vec<i32> {
        let needle = self.state_dir().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("qemu-system") && c.contains(&needle)
                })
            })
            .collect()
    }

    /// The properties of a 128 MiB guest on the lab's bridge.
    pub fn properties(&self) -> Value {
        json!({
            "ImageDir": image_dir(),
            "Memory": 128,
            "Network": {"Bridge": BRIDGE, "Prefix": 24, "Gateway": BRIDGE_ADDRESS},
            "PowerdownTimeout": 15,
        })
    }

    /// What is in the state directory but the plugin's lock file (VM directories left behind).
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The console log of VM `id`.
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.state_dir().join(id).join("console.log")).unwrap_or_default()
    }

    /// Starts the plugin inside the namespace and waits until it answers.
    pub fn start_plugin(&self) -> Plugin {
        self.start_plugin_at(&self.socket())
    }

    /// As [`Lab::start_plugin`], listening on `socket`.
    pub fn start_plugin_at(&self, socket: &Path) -> Plugin {
        let log = File::create(self.dir.path().join("plugin.log")).expect("plugin log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(env!("CARGO_BIN_EXE_infrakit-instance-qemu"))
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--accel", "tcg"])
            .env("INFRAKIT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the plugin");
        let plugin = Plugin {
            child,
            socket: socket.to_path_buf(),
        };
        wait_until("the plugin's socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&plugin.socket)
                .ok()
                .map(|_| ())
        });
        plugin
    }

    pub fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugin.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in self.qemus() {
            let _ = run("kill", &["-9", &pid.to_string()]);
        }
        kill_namespace(&self.netns);
    }
}

/// The plugin process; killed (SIGKILL) when dropped.
pub struct Plugin {
    pub child: Child,
    pub socket: PathBuf,
}

impl Plugin {
    pub fn client(&self) -> InstanceClient {
        InstanceClient::new(Endpoint::new("instance-qemu", &self.socket))
    }

    /// SIGKILL and wait: a crash, nothing cleaned up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait at most `deadline`; the exit status.
    pub fn terminate(mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let _ = run("kill", &["-TERM", &self.child.id().to_string()]);
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
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
