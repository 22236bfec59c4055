//! The instance plugin: each instance is one `qemu-system-x86_64` process.
//!
//! The plugin keeps a view of the VMs it runs (a map by ID), made at start from the state
//! directory and kept by events, not rebuilt per describe:
//! - at start, every VM directory whose QEMU still runs is adopted (its pid checked against the
//!   command line, so a reused pid is never mistaken for it); one whose QEMU is gone is cleaned up;
//! - each adopted VM has a watcher task on a pidfd of its QEMU: when QEMU exits (powered off,
//!   killed, crashed), the pidfd becomes readable at once, the watcher removes the VM's files,
//!   drops it from the view and signals the change feed; so a dead VM is gone from the next
//!   describe and `Instance.Changes` reports it within milliseconds.
//!
//! Describe with properties asks each QEMU over QMP for its real status (`running`, `paused`, ...).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infrakit_sdk::prelude::*;
use infrakit_sdk::spi::changes::ChangeFeed;
use infrakit_sdk::spi::instance::Changes;
use rustix::process::{Pid, PidfdFlags, Signal};
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::accel::{self, Accel};
use crate::launch::{self, Plan, Tools};
use crate::properties::{Properties, DEFAULT_POWERDOWN_TIMEOUT_SECS};
use crate::qmp;
use crate::record::{self, Record, VmDir};

/// How long Destroy waits for QEMU to be gone after SIGKILL.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the plugin runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the VMs' directories are (see [`crate::record`]).
    pub state_dir: PathBuf,
    pub tools: Tools,
    /// The accelerator for VMs whose `Accel` is `auto`; detected when `None`.
    pub accel: Option<Accel>,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Config {
        Config {
            state_dir: state_dir.into(),
            tools: Tools::default(),
            accel: None,
        }
    }
}

/// One running VM.
struct Vm {
    id: String,
    dir: VmDir,
    record: Mutex<Record>,
    pid: i32,
    /// A pidfd of QEMU, to kill exactly it (never a process that reused its pid).
    pidfd: OwnedFd,
    /// Becomes true once QEMU is gone and the VM's files are removed.
    gone: watch::Receiver<bool>,
    /// A destroy is under way (its exit is expected, not worth a warning).
    destroying: AtomicBool,
}

impl Vm {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the VM is gone, at most `timeout`; true if it is.
    async fn wait_gone(&self, timeout: Duration) -> bool {
        let mut gone = self.gone.clone();
        let wait = async move { gone.wait_for(|g| *g).await.map(|_| ()) };
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }
}

struct Shared {
    config: Config,
    /// An exclusive lock on `<state>/.lock`, held for the plugin's life: two plugins adopting
    /// the same VMs would each destroy and replace them.
    _lock: std::fs::File,
    host_accel: Accel,
    vms: Mutex<BTreeMap<String, Arc<Vm>>>,
    feed: ChangeFeed,
}

impl Shared {
    fn vms(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The QEMU instance plugin. Make it inside a tokio runtime (it starts a watcher per VM).
pub struct QemuPlugin {
    shared: Arc<Shared>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl QemuPlugin {
    /// Opens the state directory (made if missing), decides the accelerator (logged once) and
    /// adopts every VM still running from an earlier run of the plugin.
    pub fn open(config: Config) -> Result<QemuPlugin> {
        let state = &config.state_dir;
        record::check_state_dir(state)?;
        std::fs::create_dir_all(state).map_err(|e| {
            Error::invalid(format!(
                "cannot create the state directory {}: {e}; choose a writable --state-dir",
                state.display()
            ))
        })?;
        let lock = lock_state_dir(state)?;
        let host_accel = match config.accel {
            Some(a) => {
                tracing::info!(accel = a.name(), "accelerator chosen by the command line");
                a
            }
            None => {
                let d = accel::detect();
                tracing::info!(accel = d.accel.name(), "accelerator: {}", d.why);
                d.accel
            }
        };
        let plugin = QemuPlugin {
            shared: Arc::new(Shared {
                config,
                _lock: lock,
                host_accel,
                vms: Mutex::new(BTreeMap::new()),
                feed: ChangeFeed::new(),
            }),
        };
        plugin.adopt_all()?;
        Ok(plugin)
    }

    /// The accelerator VMs with `Accel: auto` get.
    pub fn host_accel(&self) -> Accel {
        self.shared.host_accel
    }

    /// The directory of VM `id`.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.shared.config.state_dir.join(id)
    }

    fn adopt_all(&self) -> Result<()> {
        let state = &self.shared.config.state_dir;
        let entries = std::fs::read_dir(state).map_err(|e| {
            Error::internal(format!(
                "cannot list the state directory {}: {e}",
                state.display()
            ))
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !record::is_vm_id(&name) {
                continue;
            }
            let dir = VmDir(entry.path());
            let pid = find_qemu(&dir);
            match (dir.read_record(), pid) {
                (Ok(rec), Some(pid)) => match self.adopt(dir, rec, pid) {
                    Ok(()) => tracing::info!(id = %name, pid, "adopted a running VM"),
                    Err(e) => tracing::warn!(id = %name, "cannot adopt VM: {e}"),
                },
                (Err(why), Some(pid)) => {
                    // Started, but its record is unreadable: nobody can describe or destroy it.
                    tracing::warn!(id = %name, pid, "VM without a readable record ({why}); stopping it");
                    let _ = rustix::process::kill_process(
                        Pid::from_raw(pid).ok_or_else(|| Error::internal("pid 0"))?,
                        Signal::KILL,
                    );
                    let _ = dir.remove();
                }
                (_, None) => {
                    tracing::info!(id = %name, "VM's QEMU is gone (stopped while the plugin was away, or its start was cut short); removing its files");
                    let _ = dir.remove();
                }
            }
        }
        Ok(())
    }

    /// Puts a running QEMU in the view and starts watching it.
    fn adopt(&self, dir: VmDir, record: Record, pid: i32) -> Result<()> {
        let raw = Pid::from_raw(pid).ok_or_else(|| Error::internal("QEMU's pid file says 0"))?;
        let pidfd = rustix::process::pidfd_open(raw, PidfdFlags::empty())
            .map_err(|e| Error::internal(format!("QEMU (pid {pid}) is gone: {e}")))?;
        // The pid was checked before the pidfd was taken: check again, now that it is pinned.
        if !record::is_our_qemu(pid, &dir) {
            return Err(Error::internal(format!("QEMU (pid {pid}) exited")));
        }
        let watch_fd = pidfd
            .try_clone()
            .map_err(|e| Error::internal(format!("cannot duplicate a pidfd: {e}")))?;
        let (tx, rx) = watch::channel(false);
        let id = record.id.clone();
        let vm = Arc::new(Vm {
            id: id.clone(),
            dir,
            record: Mutex::new(record),
            pid,
            pidfd,
            gone: rx,
            destroying: AtomicBool::new(false),
        });
        self.shared.vms().insert(id, vm.clone());
        tokio::spawn(watch_exit(self.shared.clone(), vm, watch_fd, tx));
        self.shared.feed.changed();
        Ok(())
    }

    fn plan(&self, spec: &Spec, props: Properties, id: String) -> Result<Plan> {
        let boot = props.boot_files()?;
        let address = match &spec.logical_id {
            Some(l) => l.parse::<Ipv4Addr>().ok(),
            None => None,
        };
        if address.is_some() && props.network.is_none() {
            return Err(Error::invalid(format!(
                "LogicalID {} is an IPv4 address, which becomes the VM's static address: give \
                 Network {{\"Bridge\": ...}} for it to be on",
                spec.logical_id.as_deref().unwrap_or_default()
            )));
        }
        let (tap, mac) = match &props.network {
            Some(net) => (
                Some(launch::tap_name(&id)),
                Some(launch::mac_address(
                    &net.mac_prefix,
                    spec.logical_id.as_deref(),
                    &id,
                )?),
            ),
            None => (None, None),
        };
        Ok(Plan {
            dir: VmDir(self.vm_dir(&id)),
            hostname: launch::hostname(spec.logical_id.as_deref(), &id),
            accel: accel::choose(props.accel, self.shared.host_accel),
            logical_id: spec.logical_id.clone(),
            id,
            props,
            boot,
            tap,
            mac,
            address,
        })
    }
}

/// Takes `<state>/.lock` (an advisory lock the kernel drops when the process dies, so a crashed
/// plugin never blocks its successor).
fn lock_state_dir(state: &Path) -> Result<std::fs::File> {
    let path = state.join(".lock");
    let file = std::fs::File::create(&path)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::unavailable(format!(
            "another instance-qemu plugin uses the state directory {}; stop it or choose another \
             --state-dir (two plugins would both manage the same VMs)",
            state.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::internal(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// QEMU's pid for `dir`: from its pid file, else (a plugin that died between starting QEMU and
/// QEMU writing the file) by looking for its command line in /proc.
fn find_qemu(dir: &VmDir) -> Option<i32> {
    if let Some(pid) = dir.pid().filter(|p| record::is_our_qemu(*p, dir)) {
        return Some(pid);
    }
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .find(|pid| record::is_our_qemu(*pid, dir))
}

/// Waits for QEMU to exit, then removes the VM's files and drops it from the view.
async fn watch_exit(shared: Arc<Shared>, vm: Arc<Vm>, pidfd: OwnedFd, gone: watch::Sender<bool>) {
    // SAFETY: the AsyncFd owns the pidfd and closes it only when dropped, after deregistering.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(e) => {
            tracing::warn!(id = %vm.id, "cannot watch QEMU's pidfd ({e}); polling it");
            while record::is_our_qemu(vm.pid, &vm.dir) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    // Inside a container the plugin is PID 1 and so QEMU's parent: reap it (elsewhere QEMU is
    // not our child and this does nothing).
    if let Some(pid) = Pid::from_raw(vm.pid) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
    }
    if !vm.destroying.load(Ordering::SeqCst) {
        let tail = console_tail(&vm.dir.path(record::CONSOLE), 5);
        tracing::warn!(id = %vm.id, pid = vm.pid, "QEMU exited; the VM is gone. Last console lines:\n{tail}");
    }
    if let Err(e) = vm.dir.remove() {
        tracing::warn!(id = %vm.id, "{e}");
    }
    shared.vms().remove(&vm.id);
    let _ = gone.send(true);
    shared.feed.changed();
}

/// The last `n` lines of a console log (for a log line about a VM that died).
fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[async_trait]
impl InstancePlugin for QemuPlugin {
    async fn validate(&self, properties: &Value) -> Result<()> {
        Properties::parse(properties).map(|_| ())
    }

    /// Also refuses, at commit, pets whose logical IDs are addresses when there is no network
    /// for them to be on.
    async fn validate_with_allocation(
        &self,
        properties: &Value,
        allocation: &AllocationMethod,
    ) -> Result<()> {
        let props = Properties::parse(properties)?;
        if props.network.is_none() {
            if let Some(ip) = allocation
                .logical_ids
                .iter()
                .find(|l| l.parse::<Ipv4Addr>().is_ok())
            {
                return Err(Error::invalid(format!(
                    "logical ID {ip} is an IPv4 address, which becomes the VM's static address: \
                     give Network {{\"Bridge\": ...}} in the instance properties"
                )));
            }
        }
        Ok(())
    }

    async fn provision(&self, spec: Spec) -> Result<InstanceId> {
        let props = Properties::parse(spec.properties.as_ref().unwrap_or(&Value::Null))?;
        let id = record::new_id();
        let plan = self.plan(&spec, props, id.clone())?;
        let record = Record {
            id: id.clone(),
            logical_id: spec.logical_id.clone(),
            tags: spec.tags.clone(),
            properties: spec.properties.clone().unwrap_or(Value::Null),
            tap: plan.tap.clone(),
            mac: plan.mac.clone(),
            address: plan.address.map(|a| a.to_string()),
            accel: plan.accel.name().into(),
            created: now_secs(),
        };
        // The record first: a plugin that dies during the launch finds the directory at its next
        // start and stops whatever it had started.
        plan.dir.create()?;
        let tags = json!({"ID": id, "LogicalID": spec.logical_id, "Tags": spec.tags});
        let launched = async {
            plan.dir.write_record(&record)?;
            launch::launch(
                &self.shared.config.tools,
                &plan,
                &spec.init,
                tags.to_string().as_bytes(),
            )
            .await
        }
        .await;
        let pid = match launched {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(pid) = find_qemu(&plan.dir).and_then(Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
                let _ = plan.dir.remove();
                return Err(e.context(format!("cannot start VM {id}")));
            }
        };
        if let Err(e) = self.adopt(plan.dir.clone(), record, pid) {
            let tail = console_tail(&plan.dir.path(record::CONSOLE), 10);
            let _ = plan.dir.remove();
            return Err(Error::internal(format!(
                "VM {id} stopped right after it started ({}); its console ended with:\n{tail}",
                e.message
            )));
        }
        tracing::info!(%id, pid, accel = plan.accel.name(), logical_id = ?spec.logical_id, "VM started");
        Ok(id)
    }

    async fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let vm = self
            .shared
            .vms()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no VM {id}")))?;
        let updated = {
            let mut rec = vm.record();
            rec.tags.extend(labels);
            rec.clone()
        };
        vm.dir.write_record(&updated)?;
        self.shared.feed.changed();
        Ok(())
    }

    async fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        let vm = self
            .shared
            .vms()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no VM {id}")))?;
        let already = vm.destroying.swap(true, Ordering::SeqCst);
        let timeout = {
            let rec = vm.record();
            Properties::parse(&rec.properties)
                .map(|p| p.powerdown_timeout)
                .unwrap_or(DEFAULT_POWERDOWN_TIMEOUT_SECS)
        };
        if !already {
            tracing::info!(%id, reason = %context.reason, "destroying: ACPI power button");
            if let Err(e) = qmp::execute(&vm.dir.socket(), "system_powerdown", None).await {
                tracing::info!(%id, "{e}; killing QEMU");
            }
        }
        if vm.wait_gone(Duration::from_secs(timeout)).await {
            return Ok(());
        }
        tracing::info!(%id, "the guest did not power down within {timeout} s; killing QEMU");
        if let Err(e) = rustix::process::pidfd_send_signal(&vm.pidfd, Signal::KILL) {
            tracing::debug!(%id, "kill: {e}");
        }
        if vm.wait_gone(KILL_TIMEOUT).await {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "VM {id}: QEMU (pid {}) is still there {KILL_TIMEOUT:?} after SIGKILL",
                vm.pid
            )))
        }
    }

    async fn describe_instances(&self, tags: &Tags, properties: bool) -> Result<Vec<Description>> {
        let vms: Vec<Arc<Vm>> = self
            .shared
            .vms()
            .values()
            .filter(|vm| tags_match(&vm.record().tags, tags))
            .cloned()
            .collect();
        let mut statuses = BTreeMap::new();
        if properties {
            let mut asks = tokio::task::JoinSet::new();
            for vm in &vms {
                let (id, socket) = (vm.id.clone(), vm.dir.socket());
                asks.spawn(async move {
                    let status = qmp::execute(&socket, "query-status", None).await;
                    (id, status)
                });
            }
            while let Some(Ok((id, status))) = asks.join_next().await {
                statuses.insert(id, status);
            }
        }
        let mut out = Vec::with_capacity(vms.len());
        for vm in vms {
            // The VM may have exited while we asked: then it is gone.
            if *vm.gone.borrow() {
                continue;
            }
            let rec = vm.record().clone();
            let props = properties.then(|| {
                let status = match statuses.remove(&vm.id) {
                    Some(Ok(s)) => s.get("status").cloned().unwrap_or(Value::Null),
                    Some(Err(e)) => Value::String(format!("unknown: {e}")),
                    None => Value::Null,
                };
                json!({
                    "Status": status,
                    "Pid": vm.pid,
                    "Accel": rec.accel,
                    "Address": rec.address,
                    "MAC": rec.mac,
                    "Tap": rec.tap,
                    "Console": vm.dir.path(record::CONSOLE),
                    "Created": rec.created,
                    "Spec": rec.properties,
                })
            });
            out.push(Description {
                id: rec.id,
                logical_id: rec.logical_id,
                tags: rec.tags.into(),
                properties: props,
            });
        }
        Ok(out)
    }

    async fn changes(&self, cursor: &str, timeout: Duration) -> Result<Changes> {
        self.shared.feed.wait(cursor, timeout).await
    }
}
