//! Reading JSON documents named on the command line (`-` is standard input).

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;

/// The largest input document read: what a plugin accepts in one request body, so nothing larger
/// could be sent anyway, and reading `/dev/zero` or a wrong file cannot grow the CLI without bound.
pub const MAX_INPUT_BYTES: usize = infrakit_sdk::rpc::MAX_REQUEST_BYTES;

/// Checks that every named input file exists before the command does anything else (looking for
/// plugins included), so a typo is reported as such rather than as a missing plugin.
pub fn check_exist<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for path in paths.into_iter().filter(|p| *p != "-") {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => bail!("'{path}' is a directory; name a JSON file"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("'{path}' does not exist; check the file name")
            }
            Err(e) => bail!("cannot read '{path}': {e}"),
        }
    }
    Ok(())
}

/// Reads `path` (or stdin for `-`) and parses it; the error names the file and where it broke.
pub fn read_json<T: DeserializeOwned>(path: &str, what: &str) -> Result<T> {
    let name = if path == "-" {
        "standard input".to_string()
    } else {
        format!("'{path}'")
    };
    let bytes = if path == "-" {
        read_capped(std::io::stdin().lock(), &name)?
    } else {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow!("{what} file '{path}' does not exist; check the file name")
            }
            _ => anyhow!("cannot read {what} file '{path}': {e}"),
        })?;
        read_capped(file, &name)?
    };
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("{name} is not a valid {what}: {e}"))
}

/// Reads at most [`MAX_INPUT_BYTES`]; more is an error naming the input and the limit.
fn read_capped(reader: impl Read, name: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {name}"))?;
    if bytes.len() > MAX_INPUT_BYTES {
        bail!(
            "{name} is larger than {} MiB, the most a plugin accepts in one request; \
             is it the right file?",
            MAX_INPUT_BYTES / (1024 * 1024)
        );
    }
    Ok(bytes)
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
