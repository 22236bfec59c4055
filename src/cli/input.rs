//! Reading JSON documents named on the command line (`-` is standard input).

use std::io::Read;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;

/// Reads `path` (or stdin for `-`) and parses it; the error names the file and where it broke.
pub fn read_json<T: DeserializeOwned>(path: &str, what: &str) -> Result<T> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {what} file '{path}'"))?
    };
    let name = if path == "-" { "standard input" } else { path };
    serde_json::from_str(&text).map_err(|e| anyhow!("{name} is not a valid {what}: {e}"))
}

/// Parses `k=v` pairs (for `--tags` and labels).
pub fn parse_pairs(pairs: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("'{p}' is not a KEY=VALUE pair"))
        })
        .collect()
}
