//! Logs, filtered by `--log-level` or `INFRAKIT_LOG` (tracing's filter syntax, e.g.
//! `info,infrakit_sdk=debug`).
//!
//! Commands log to stderr (stdout is their output). A plugin (`plugin serve`) splits: warnings and
//! errors to stderr, the rest to stdout, because dockerd logs a managed plugin's stderr at level
//! "error" and its stdout at "info"; one stream for everything would make every line an error.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

pub const LOG_ENV: &str = "INFRAKIT_LOG";

/// `default` applies when neither the flag nor the environment says anything: plugins log at info,
/// interactive commands only warn (their output is for the person at the terminal).
pub fn init(level: Option<&str>, default: &str, plugin: bool) {
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var(LOG_ENV).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter '{filter}': {e}; using 'info'");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if plugin {
        builder
            .with_writer(
                std::io::stderr
                    .with_max_level(Level::WARN)
                    .or_else(std::io::stdout),
            )
            .try_init()
    } else {
        builder.with_writer(std::io::stderr).try_init()
    };
}
