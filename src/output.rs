//! How results are printed: a table for people, JSON for scripts (`--json`), IDs only (`-q`).

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

/// `println!` that returns the write's error (`?`) instead of panicking: with stdout closed
/// (`infrakit ... | head -0`) the command then ends quietly (see [`is_closed_pipe`]) rather than
/// aborting.
macro_rules! outln {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )?
    };
}
pub(crate) use outln;

/// `eprintln!` that never panics: a closed standard error loses the message, nothing more.
macro_rules! errln {
    ($($arg:tt)*) => {
        {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr().lock(),
                format_args!("{}\n", format_args!($($arg)*)),
            );
        }
    };
}
pub(crate) use errln;

/// The command failed only because whoever reads its output stopped reading (a closed pipe): not
/// worth a message or a failing exit status, as `head` users expect.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => Some(io.kind()),
            // serde_json's writer wraps the io error in its own.
            None => cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind),
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Quiet,
}

impl Format {
    pub fn from_flags(json: bool, quiet: bool) -> Format {
        if json {
            Format::Json
        } else if quiet {
            Format::Quiet
        } else {
            Format::Table
        }
    }
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints rows under a header, columns aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(3);
    writeln!(tw, "{}", header.join("\t"))?;
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace(['\t', '\n'], " ")).collect();
        writeln!(tw, "{}", cells.join("\t"))?;
    }
    tw.flush()?;
    Ok(())
}

/// Prints one line per item (for `-q`).
pub fn lines<I: IntoIterator<Item = String>>(items: I) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for i in items {
        writeln!(out, "{i}")?;
    }
    Ok(())
}

/// `k=v,k2=v2` for a tag map, in key order.
pub fn tags(tags: &std::collections::BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
