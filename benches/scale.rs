//! Scale: one group of N file instances under one controller, with real processes (instance-file,
//! flavor-vanilla, group) on sockets, a fresh stack per size. For each N it prints
//! - commit → all N instance files present;
//! - commit → the group converged (`DescribeGroup` says so);
//! - destroy → no instance file left, and → the group forgotten;
//! - the peak RSS (VmHWM over the whole run) and CPU seconds of the group and instance-file plugins;
//!
//! and then the ratio of every figure between consecutive sizes: ten times the instances should cost
//! at most about ten times the time and memory.
//!
//! Run: `make bench-scale` (release build). Environment:
//! - `SIZES` (default `1000,10000,100000`): e.g. `SIZES=1000,10000` for a quick run;
//! - `RUNS` (default 1): repeat every size, and print the range of each figure;
//! - `POLL` (default `5s`, the controller's default): the group plugin's `--poll-interval`;
//! - `GROUP_WRAP` (default none): a command the group plugin runs under, e.g.
//!   `GROUP_WRAP="heaptrack -o /tmp/group"` to see what its peak memory is made of (the RSS and CPU
//!   figures are then the wrapper's, not the plugin's);
//! - `DIR` (default: the system's temporary directory): where each run's instance directory and
//!   group store are made, e.g. `DIR=/dev/shm` to take the disk's file system out of the figures.
//!   On an ext4 without a journal (this VM's root), creating a file after many were deleted makes
//!   the kernel skip every recently deleted inode (`recently_deleted`, for minutes after the
//!   deletion), so a size measured right after another size's destroy pays for it in the kernel.
//!
//! Instance files are counted from an inotify watch of the benchmark's own (listing a directory of
//! 100,000 files every few milliseconds would cost more than what is measured); `DescribeGroup`
//! is asked only once every file is there, at most as often as it takes to answer, so the
//! benchmark does not slow down the controller it measures.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infrakit_sdk::rpc::client::{Endpoint, GroupClient};
use infrakit_sdk::spi::group::{GroupPlugin, GroupSpec};
use serde_json::json;

mod common;

use common::{cpu_seconds, serve, serve_wrapped, wait_socket, Proc};

/// How long any one phase may take before the benchmark gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(1800);

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn instance_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".json")
}

/// The instance files in `dir`, from an inotify watch (a full listing after a lost event).
struct FileCount {
    count: Arc<AtomicUsize>,
}

impl FileCount {
    fn start(dir: &Path) -> FileCount {
        use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC).expect("inotify");
        inotify::add_watch(
            &fd,
            dir,
            WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::DELETE_SELF
                | WatchFlags::ONLYDIR,
        )
        .expect("watch the instance directory");
        let count = Arc::new(AtomicUsize::new(0));
        let shared = count.clone();
        let dir = dir.to_path_buf();
        let mut names: HashSet<String> = list(&dir);
        shared.store(names.len(), Ordering::SeqCst);
        std::thread::spawn(move || {
            let mut buffer = vec![std::mem::MaybeUninit::<u8>::uninit(); 1 << 16];
            let mut reader = inotify::Reader::new(&fd, &mut buffer);
            loop {
                let Ok(event) = reader.next() else { return };
                let flags = event.events();
                if flags.intersects(ReadFlags::IGNORED | ReadFlags::DELETE_SELF) {
                    return; // the directory is gone: the stack it belonged to is over
                }
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    names = list(&dir);
                } else if let Some(name) = event.file_name().and_then(|n| n.to_str().ok()) {
                    if instance_name(name) {
                        if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                            names.insert(name.to_string());
                        } else {
                            names.remove(name);
                        }
                    }
                }
                shared.store(names.len(), Ordering::SeqCst);
            }
        });
        FileCount { count }
    }

    fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until exactly `n` files are there; the time since `start`.
    async fn until(&self, n: usize, start: Instant, what: &str) -> Duration {
        while self.get() != n {
            assert!(
                start.elapsed() < PHASE_LIMIT,
                "{what}: {} instance files after {PHASE_LIMIT:?}, waiting for {n}",
                self.get()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        start.elapsed()
    }
}

fn list(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| instance_name(n))
                .collect()
        })
        .unwrap_or_default()
}

fn spec(id: &str, size: usize) -> GroupSpec {
    serde_json::from_value(json!({"ID": id, "Properties": {
        "Allocation": {"Size": size},
        "Instance": {"Plugin": "instance-file", "Properties": {"Note": "scale"}},
        "Flavor": {"Plugin": "flavor-vanilla",
                   "Properties": {"Init": ["echo hello"], "Tags": {"tier": "bench"}}}
    }}))
    .expect("spec")
}

/// Asks `DescribeGroup` until `done` holds for its answer (or the group is gone, for `None`),
/// pausing between calls at least as long as the last call took, so that a group of 100,000
/// is not kept busy describing itself to the benchmark.
async fn until_described(
    g: &GroupClient,
    id: &str,
    start: Instant,
    what: &str,
    done: impl Fn(Option<bool>) -> bool,
) -> Duration {
    loop {
        let asked = Instant::now();
        let answer = match g.describe_group(id).await {
            Ok(d) => Some(d.converged),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("{what}: DescribeGroup failed: {e}"),
        };
        if done(answer) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PHASE_LIMIT,
            "{what}: not done within {PHASE_LIMIT:?}"
        );
        let took = asked.elapsed();
        tokio::time::sleep(took.max(Duration::from_millis(2))).await;
    }
}

/// The figures of one size.
#[derive(Clone, Copy, Default)]
struct Figures {
    present: f64,
    converged: f64,
    destroyed: f64,
    forgotten: f64,
    group_mb: f64,
    file_mb: f64,
    group_cpu: f64,
    file_cpu: f64,
}

impl Figures {
    const NAMES: [&'static str; 8] = [
        "commit → all present (s)",
        "commit → converged (s)",
        "destroy → no file (s)",
        "destroy → group gone (s)",
        "group peak RSS (MB)",
        "instance-file peak RSS (MB)",
        "group CPU (s)",
        "instance-file CPU (s)",
    ];

    fn values(&self) -> [f64; 8] {
        [
            self.present,
            self.converged,
            self.destroyed,
            self.forgotten,
            self.group_mb,
            self.file_mb,
            self.group_cpu,
            self.file_cpu,
        ]
    }
}

async fn one(n: usize, poll: &str, parent: Option<&str>, wrap: &[&str]) -> Figures {
    let tmp = match parent {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let plugins = tmp.path().join("plugins");
    let dir = tmp.path().join("instances");
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&dir).expect("instance dir");
    let procs: Vec<Proc> = vec![
        serve_wrapped(
            &plugins,
            &[
                "group",
                "--store",
                store.to_str().unwrap_or_default(),
                "--poll-interval",
                poll,
            ],
            wrap,
        ),
        serve(
            &plugins,
            &["instance-file", "--dir", dir.to_str().unwrap_or_default()],
        ),
        serve(&plugins, &["flavor-vanilla"]),
    ];
    for name in ["group", "instance-file", "flavor-vanilla"] {
        wait_socket(&plugins.join(format!("{name}.sock"))).await;
    }
    let (group_pid, file_pid) = (procs[0].child.id(), procs[1].child.id());
    let (group_cpu0, file_cpu0) = (cpu_seconds(group_pid), cpu_seconds(file_pid));
    let files = FileCount::start(&dir);
    let g = GroupClient::new(Endpoint::new("group", plugins.join("group.sock")));

    let start = Instant::now();
    g.commit_group(spec("scale", n), false)
        .await
        .expect("commit");
    let present = files.until(n, start, "commit").await;
    let converged = until_described(&g, "scale", start, "converge", |c| c == Some(true)).await;
    assert_eq!(files.get(), n, "converged with another number of files");

    let start = Instant::now();
    g.destroy_group("scale").await.expect("destroy");
    let destroyed = files.until(0, start, "destroy").await;
    let forgotten = until_described(&g, "scale", start, "destroy", |c| c.is_none()).await;

    let figures = Figures {
        present: present.as_secs_f64(),
        converged: converged.as_secs_f64(),
        destroyed: destroyed.as_secs_f64(),
        forgotten: forgotten.as_secs_f64(),
        group_mb: status_kb(group_pid, "VmHWM:") as f64 / 1024.0,
        file_mb: status_kb(file_pid, "VmHWM:") as f64 / 1024.0,
        group_cpu: cpu_seconds(group_pid) - group_cpu0,
        file_cpu: cpu_seconds(file_pid) - file_cpu0,
    };
    drop(procs);
    figures
}

fn table(sizes: &[usize], runs: &[Vec<Figures>]) {
    let show = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if v.len() < 2 || (hi - lo).abs() < 0.0005 * hi.abs().max(1.0) {
            format!("{lo:.3}")
        } else {
            format!("{lo:.3}-{hi:.3}")
        }
    };
    print!("{:<30}", "instances");
    for n in sizes {
        print!("{n:>18}");
    }
    println!();
    for (i, name) in Figures::NAMES.iter().enumerate() {
        print!("{name:<30}");
        for figures in runs {
            let v: Vec<f64> = figures.iter().map(|f| f.values()[i]).collect();
            print!("{:>18}", show(&v));
        }
        println!();
    }
    if sizes.len() < 2 {
        return;
    }
    println!();
    println!(
        "ratio of each figure between consecutive sizes (medians; aim: 10x the instances ≤ 12x)"
    );
    print!("{:<30}", "");
    for w in sizes.windows(2) {
        print!("{:>18}", format!("{}→{}", w[0], w[1]));
    }
    println!();
    let median = |figures: &[Figures], i: usize| {
        let mut v: Vec<f64> = figures.iter().map(|f| f.values()[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, name) in Figures::NAMES.iter().enumerate() {
        print!("{name:<30}");
        for w in runs.windows(2) {
            let (a, b) = (median(&w[0], i), median(&w[1], i));
            let ratio = if a > 0.0 { b / a } else { f64::NAN };
            print!("{:>18}", format!("{ratio:.1}x"));
        }
        println!();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .expect("SIZES: numbers separated by commas")
        })
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let poll = std::env::var("POLL").unwrap_or_else(|_| "5s".into());
    let parent = std::env::var("DIR").ok().filter(|d| !d.is_empty());
    let wrap_words = std::env::var("GROUP_WRAP").unwrap_or_default();
    let wrap: Vec<&str> = wrap_words.split_whitespace().collect();
    println!(
        "scale: sizes {sizes:?}, {runs} run(s) each, poll interval {poll}, files in {}",
        parent.as_deref().unwrap_or("the temporary directory")
    );
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); sizes.len()];
    for run in 0..runs {
        for (i, n) in sizes.iter().enumerate() {
            let f = one(*n, &poll, parent.as_deref(), &wrap).await;
            println!(
                "run {} {n:>7}: present {:.3} s, converged {:.3} s, destroyed {:.3} s (group gone {:.3} s), \
                 peak RSS group {:.1} MB / instance-file {:.1} MB, CPU group {:.2} s / instance-file {:.2} s",
                run + 1,
                f.present,
                f.converged,
                f.destroyed,
                f.forgotten,
                f.group_mb,
                f.file_mb,
                f.group_cpu,
                f.file_cpu
            );
            figures[i].push(f);
        }
    }
    println!();
    table(&sizes, &figures);
}
