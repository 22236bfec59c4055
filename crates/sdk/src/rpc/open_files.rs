//! The process's open-file limit (`RLIMIT_NOFILE`): the server sizes its connection cap by it, and a
//! plugin binary raises it at start.
//!
//! Raising is the binary's decision, not the library's (a library changing process limits would
//! surprise its host), so the server only reads it; `infrakit plugin serve` calls
//! [`raise_to_hard_limit`] before it binds.

use rustix::process::{getrlimit, setrlimit, Resource};

/// The soft limit on open files, or None when unlimited.
pub fn soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Raises the soft limit on open files to the hard limit (many systems start processes at 1,024
/// with a far higher hard limit). Returns the soft limit in force afterwards (None: unlimited).
pub fn raise_to_hard_limit() -> std::io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(soft_limit())
}
