//! Logs go to stderr (a managed plugin's stderr reaches dockerd's log), filtered by `--log-level`
//! or `INFRAKIT_LOG` (tracing's filter syntax, e.g. `info,infrakit_sdk=debug`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub const LOG_ENV: &str = "INFRAKIT_LOG";

/// `default` applies when neither the flag nor the environment says anything: plugins log at info,
/// interactive commands only warn (their output is for the person at the terminal).
pub fn init(level: Option<&str>, default: &str) {
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var(LOG_ENV).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter '{filter}': {e}; using 'info'");
        EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
