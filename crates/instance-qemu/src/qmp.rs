//! A small QMP client: the QEMU Machine Protocol over the VM's unix socket, one connection per
//! question.
//!
//! QMP is line-delimited JSON: QEMU greets (`{"QMP": ...}`), the client enters command mode with
//! `qmp_capabilities`, then each `{"execute": ...}` gets `{"return": ...}` or `{"error": ...}`,
//! with asynchronous `{"event": ...}` lines in between (skipped here). The plugin asks three
//! things (`query-status`, `system_powerdown`, `quit`), so this is some sixty lines on tokio's
//! `UnixStream` rather than the `qapi` crates, whose generated types cover all of QAPI and pull in
//! their own codec stack for what is here a read-line/write-line exchange.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one QMP exchange may take (QEMU answers in milliseconds unless it is wedged).
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// A QMP failure, as a sentence.
pub type QmpError = String;

/// Runs `command` (with `arguments`) on the QMP socket at `socket` and returns its `return` value.
pub async fn execute(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, QmpError> {
    tokio::time::timeout(QMP_TIMEOUT, exchange(socket, command, arguments))
        .await
        .map_err(|_| {
            format!(
                "QMP {command} on {}: no answer within {QMP_TIMEOUT:?}",
                socket.display()
            )
        })?
}

async fn exchange(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, QmpError> {
    let at = |e: std::io::Error| format!("QMP {command} on {}: {e}", socket.display());
    let stream = UnixStream::connect(socket).await.map_err(at)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting.
    next_reply(&mut lines, command, socket, true).await?;
    write
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await
        .map_err(at)?;
    next_reply(&mut lines, command, socket, false).await?;
    let mut request = json!({"execute": command});
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut text = request.to_string();
    text.push('\n');
    write.write_all(text.as_bytes()).await.map_err(at)?;
    next_reply(&mut lines, command, socket, false).await
}

/// The next line that is not an event: the greeting, or a command's `return` (an `error` is Err).
async fn next_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    command: &str,
    socket: &Path,
    greeting: bool,
) -> Result<Value, QmpError> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| format!("QMP {command} on {}: {e}", socket.display()))?
            .ok_or_else(|| {
                format!(
                    "QMP {command} on {}: QEMU closed the connection",
                    socket.display()
                )
            })?;
        let reply: Value = serde_json::from_str(&line)
            .map_err(|e| format!("QMP {command}: QEMU sent what is not JSON ({e}): {line}"))?;
        if reply.get("event").is_some() {
            continue;
        }
        if greeting {
            return Ok(reply);
        }
        if let Some(r) = reply.get("return") {
            return Ok(r.clone());
        }
        let why = reply
            .pointer("/error/desc")
            .and_then(Value::as_str)
            .unwrap_or("an error without a description");
        return Err(format!("QMP {command}: {why}"));
    }
}
