//! A test that cannot run says so where a person sees it. `cargo test` hides what a passing test
//! prints, so a skip that only printed passed silently ("ok" without prometheus installed): every
//! skip is also appended to the skip log, which `make test` empties first and prints at the end.
//! Under CI=true a required part that cannot run is a failure, never a skip.

use std::io::Write;
use std::path::PathBuf;

use super::engine::in_ci;

/// The environment variable naming the skip log (`make test` sets it).
pub const SKIP_LOG_ENV: &str = "INFRAKIT_SKIP_LOG";

/// The opt-out of the tests that bring up the swarm lab and a bootstrapped swarm (`make test-quick`).
pub const SKIP_SWARM_ENV: &str = "INFRAKIT_SKIP_SWARM";

/// `$INFRAKIT_SKIP_LOG`, else `target/tmp/test-skips.log`.
pub fn skip_log() -> PathBuf {
    std::env::var_os(SKIP_LOG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/test-skips.log")))
}

/// The test that is running: the harness names each test's thread after it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string()
}

/// Writes one line to the skip log and says it loudly on stderr (a part that is optional, or that
/// the person opted out of: never a failure; a required part goes through [`skip`]).
pub fn record(what: &str, why: &str) {
    let line = format!("{}: the {what} did not run: {why}", test_name());
    eprintln!("\n*** SKIPPING {line} ***\n");
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One short append per skip: lines of tests running in parallel do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("(cannot append to the skip log {}: {e})", log.display());
    }
}

/// A required part (`what`, e.g. "Prometheus scrape test") cannot run because of `why`: a failure
/// under CI=true, elsewhere a skip that `make test` reports at the end.
pub fn skip(what: &str, why: &str) {
    if in_ci() {
        panic!("the {what} must run in CI (CI=true) but cannot: {why}");
    }
    record(what, why);
}

/// True when the person asked not to bring up the swarm lab or a bootstrapped swarm
/// (`INFRAKIT_SKIP_SWARM=1`, `make test-quick`); the skip is reported like any other. CI runs them:
/// the opt-out is refused there.
pub fn swarm_opted_out(what: &str) -> bool {
    if std::env::var(SKIP_SWARM_ENV).as_deref() != Ok("1") {
        return false;
    }
    if in_ci() {
        panic!("the {what} must run in CI (CI=true): unset {SKIP_SWARM_ENV}");
    }
    record(what, &format!("{SKIP_SWARM_ENV}=1 (opted out)"));
    true
}
