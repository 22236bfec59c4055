//! How results are printed: a table for people, JSON for scripts (`--json`), IDs only (`-q`).

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

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
