//! The Docker Engine's API on its unix socket, through bollard.
//!
//! [`Engine`] knows where the engine is and how long to wait for it; [`Engine::docker`] is a
//! bollard client for it, with which callers make typed requests (containers, images, networks,
//! plugin create), and [`Engine::error`] turns bollard's failures into InfraKit errors a user can
//! act on. bollard is built for the unix socket only (no TLS, no HTTP over TCP: a remote engine's
//! plugin sockets are unreachable from here anyway).
//!
//! **The API version is pinned** to [`API_VERSION`], 1.41, what the engine we support speaks
//! (Debian's docker.io 20.10), rather than negotiated. bollard releases differ: 0.21 sends
//! unversioned paths (the engine then answers as its own version), later ones send
//! `/v<version>/...`, and their default version (1.53 in 0.21) is one 20.10 refuses. Pinned, every
//! release sends something 20.10 accepts, and a newer engine answers with the 1.41 behaviour this
//! code is tested against; negotiating would cost a `GET /version` before each client's first
//! request and let a newer engine answer with behaviour we never tested.
//!
//! What bollard cannot read from 20.10 is ours: the plugin list ([`crate::plugins`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::{ClientVersion, Docker};
use infrakit_sdk::{Error, ErrorKind, Result};

/// Where the engine listens when `DOCKER_HOST` says nothing else.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The engine API version every request is made for (see the module docs).
pub const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// The engine's API on a unix socket.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Engine {
    /// `DOCKER_HOST` when it is a `unix://` address, else `/var/run/docker.sock`. A non-unix
    /// `DOCKER_HOST` (tcp://, ssh://) yields `None`: plugin sockets of a remote engine are not
    /// reachable from here anyway.
    pub fn from_env() -> Option<Engine> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(Engine::new),
            _ => Some(Engine::new(DEFAULT_SOCKET)),
        }
    }

    /// Timeouts are short on purpose: discovery asks the engine on behalf of a person waiting at
    /// a prompt, and a machine without an engine must not feel slower for it.
    pub fn new(socket: impl Into<PathBuf>) -> Engine {
        Engine {
            socket: socket.into(),
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }

    /// `connect` bounds reaching the socket (the plugin list's own request); `total` bounds a
    /// whole request (bollard's requests: whole seconds, rounded up).
    pub fn with_timeouts(mut self, connect: Duration, total: Duration) -> Engine {
        self.connect_timeout = connect;
        self.timeout = total;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `unix:///var/run/docker.sock`, for messages.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A bollard client for this engine, pinned to [`API_VERSION`]. Cheap (no connection is made
    /// until a request; bollard keeps none idle), so callers make one per operation and an engine
    /// that comes up later is found. No socket is `Unavailable`.
    pub fn docker(&self) -> Result<Docker> {
        let path = self.socket.to_str().ok_or_else(|| {
            Error::invalid(format!(
                "the engine's socket path {} is not UTF-8; set DOCKER_HOST=unix://PATH to one that is",
                self.socket.display()
            ))
        })?;
        let secs = self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0);
        Docker::connect_with_unix(path, secs.max(1), &API_VERSION)
            .map_err(|e| self.error("connecting", e))
    }

    /// A bollard failure as InfraKit's error. The engine's refusals keep their meaning (by
    /// `ErrorKind::from_status`: 404 is `NotFound`, 409 `Conflict`, ...) and its message; an
    /// engine that cannot be reached or does not answer in time is `Unavailable`; an answer we
    /// cannot read is `Internal`. `what` says what we were doing ("inspecting container x").
    pub fn error(&self, what: &str, e: BollardError) -> Error {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => Error::new(
                ErrorKind::from_status(status_code),
                format!("{what}: the engine answered {status_code}: {message}"),
            ),
            BollardError::SocketNotFoundError(_) => Error::unavailable(format!(
                "no Docker engine at {} (no such socket)",
                self.address()
            )),
            BollardError::RequestTimeoutError => Error::unavailable(format!(
                "{what}: the Docker engine at {} did not answer within {:?}",
                self.address(),
                self.timeout
            )),
            BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
                Error::internal(format!(
                    "{what}: the engine's answer is not what we expect: {e}"
                ))
            }
            other => match io_cause(&other) {
                Some(io) => Error::unavailable(format!(
                    "{what}: no Docker engine at {} ({})",
                    self.address(),
                    io_reason(io)
                )),
                None => Error::unavailable(format!("{what} on {}: {other}", self.address())),
            },
        }
    }
}

/// The engine's refusal in a bollard failure: its status and message, when it answered with one.
pub fn refusal(e: &BollardError) -> Option<(u16, &str)> {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message)),
        _ => None,
    }
}

/// The I/O error at the root of a failure (the connector's, under hyper's), if any.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Why a socket could not be reached, in a few words.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such socket".to_string(),
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What bollard puts on the wire is what a 20.10 engine accepts: an unversioned path or one
    /// for API 1.41, never bollard's own default version (which 20.10 refuses).
    #[tokio::test]
    async fn requests_are_for_api_1_41_or_unversioned() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let reply =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK";
            conn.write_all(reply.as_bytes()).await.unwrap();
            head
        });
        let engine = Engine::new(&sock);
        let pong = engine.docker().unwrap().ping().await.unwrap();
        assert_eq!(pong, "OK");
        let head = server.await.unwrap();
        let line = head.lines().next().unwrap_or_default();
        assert!(
            line == "GET /_ping HTTP/1.1" || line == "GET /v1.41/_ping HTTP/1.1",
            "{line}"
        );
    }

    #[tokio::test]
    async fn no_engine_is_unavailable_and_says_where() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::new(tmp.path().join("none.sock"));
        let e = engine.docker().unwrap_err();
        assert_eq!(e.kind, infrakit_sdk::ErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("none.sock") && e.message.contains("no such socket"));

        // A socket file nobody listens on: refused, not found.
        let path = tmp.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let engine = Engine::new(&path);
        let e = engine
            .docker()
            .unwrap()
            .ping()
            .await
            .map_err(|e| engine.error("pinging", e))
            .unwrap_err();
        assert_eq!(e.kind, infrakit_sdk::ErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("connection refused"), "{e}");
    }

    #[test]
    fn refusals_keep_their_meaning() {
        let engine = Engine::new("/x.sock");
        let refused = |status_code| BollardError::DockerResponseServerError {
            status_code,
            message: "no such thing".into(),
        };
        let e = engine.error("inspecting x", refused(404));
        assert_eq!(e.kind, infrakit_sdk::ErrorKind::NotFound);
        assert_eq!(
            e.message,
            "inspecting x: the engine answered 404: no such thing"
        );
        assert_eq!(
            engine.error("x", refused(409)).kind,
            infrakit_sdk::ErrorKind::Conflict
        );
        assert_eq!(
            engine.error("x", refused(400)).kind,
            infrakit_sdk::ErrorKind::Invalid
        );
        assert_eq!(
            engine.error("x", refused(500)).kind,
            infrakit_sdk::ErrorKind::Internal
        );
        assert_eq!(refusal(&refused(409)), Some((409, "no such thing")));
    }
}
