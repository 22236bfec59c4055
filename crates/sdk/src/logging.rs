//! Logs for InfraKit processes (our CLI, our plugins, and plugins written with this SDK), filtered by
//! an explicit level, else `INFRAKIT_LOG`, else `RUST_LOG` (tracing's filter syntax, e.g.
//! `info,infrakit_sdk=debug`), else a default.
//!
//! A plugin splits its output: warnings and errors to stderr, the rest to stdout, because dockerd
//! logs a managed plugin's stderr at level "error" and its stdout at "info"; one stream for
//! everything would make every line an error. A command logs to stderr only (stdout is its output).

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "INFRAKIT_LOG";

/// Where the lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A plugin process: info and below to stdout, warn and error to stderr.
    Plugin,
    /// A command a person runs: everything to stderr.
    Command,
}

/// Installs the global subscriber. `level` (a flag) wins over the environment; `default` applies
/// when neither says anything. A second call does nothing (the first subscriber stays), so a
/// test or an embedding program that installed its own keeps it.
pub fn init(level: Option<&str>, default: &str, output: Output) {
    let filter = level
        .map(str::to_string)
        .or_else(|| env_filter(LOG_ENV))
        .or_else(|| env_filter("RUST_LOG"))
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter '{filter}': {e}; using 'info'");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match output {
        Output::Plugin => builder
            .with_writer(
                std::io::stderr
                    .with_max_level(Level::WARN)
                    .or_else(std::io::stdout),
            )
            .try_init(),
        Output::Command => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn env_filter(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}
