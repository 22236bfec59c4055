//! What the benchmarks share: the `infrakit` binary, a plugin process killed on drop, waiting for
//! a socket, and a process's CPU time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use infrakit_sdk::rpc::client::{Endpoint, RpcClient};
use infrakit_sdk::spi::GROUP;

pub const BIN: &str = env!("CARGO_BIN_EXE_infrakit");

pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub fn serve(plugins: &Path, args: &[&str]) -> Proc {
    serve_wrapped(plugins, args, &[])
}

/// [`serve`] run under a wrapper command (`heaptrack -o FILE`, `valgrind --tool=massif`): the
/// wrapper's words come first and the plugin's command line after them.
pub fn serve_wrapped(plugins: &Path, args: &[&str], wrapper: &[&str]) -> Proc {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let child = command
        .args(["plugin", "serve"])
        .args(args)
        .env("INFRAKIT_PLUGINS_DIR", plugins)
        .env("INFRAKIT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start plugin");
    Proc { child }
}

pub async fn wait_socket(socket: &Path) {
    for _ in 0..500 {
        if RpcClient::new(Endpoint::new("x", socket), GROUP)
            .activate()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no plugin at {}", socket.display());
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}
