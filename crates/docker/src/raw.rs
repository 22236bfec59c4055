//! Requests to the engine that bollard cannot make for us: one HTTP/1.1 request on its own
//! connection to the unix socket, with hyper (which bollard brings anyway), the whole answer read.
//!
//! Two users: the plugin list ([`crate::plugins`]: 20.10 sends `null`s bollard's model refuses)
//! and plugin services ([`crate::swarm::services`]: bollard's `TaskSpecPluginSpec` cannot carry
//! the `Privileges` and `Env` a plugin service needs, and loses them when reading one back).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use infrakit_sdk::{Error, ErrorKind, Result};
use serde::Deserialize;
use tokio::net::UnixStream;

use crate::engine::{io_reason, Engine, API_VERSION};

/// Replies larger than this are refused (a plugin or service list is a few 10 kB).
const MAX_REPLY_BYTES: usize = 16 << 20;

/// An engine's answer: its status and whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    /// The body as `T` when the status is 2xx; the engine's refusal as an error of the matching
    /// kind (404 NotFound, 409 Conflict, ...) otherwise. `what` says what we were doing.
    pub fn json<T: for<'de> Deserialize<'de>>(&self, engine: &Engine, what: &str) -> Result<T> {
        self.ok(what)?;
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::internal(format!(
                "{what}: the engine at {} answered JSON we do not understand: {e}",
                engine.address()
            ))
        })
    }

    /// `Ok` for a 2xx status; the engine's refusal otherwise.
    pub fn ok(&self, what: &str) -> Result<()> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::from_status(self.status),
            format!(
                "{what}: the engine answered {}: {}",
                self.status,
                engine_message(&self.body)
            ),
        ))
    }
}

/// `/v1.41` + `path` (path starts with `/`; a query may follow).
pub fn versioned(path: &str) -> String {
    format!(
        "/v{}.{}{path}",
        API_VERSION.major_version, API_VERSION.minor_version
    )
}

impl Engine {
    /// One request with an optional JSON body, bounded by the engine's timeout; failing to reach
    /// the engine or no answer in time is `Unavailable`. Any status is returned as it came.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply> {
        self.request_with_headers(method, path, body, &[]).await
    }

    /// A request with no body and empty registry credentials (`X-Registry-Auth: {}`): what
    /// pushing to a registry that allows anonymous access takes.
    pub async fn request_with_auth(&self, method: Method, path: &str) -> Result<Reply> {
        // base64("{}")
        self.request_with_headers(method, path, None, &[("X-Registry-Auth", "e30=")])
            .await
    }

    async fn request_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let path = versioned(path);
        match tokio::time::timeout(
            self.timeout(),
            self.send(method.clone(), &path, body, headers),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!(
                "the Docker engine at {} did not answer {method} {path} within {:?}",
                self.address(),
                self.timeout()
            ))),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let unreachable = |why: String| {
            Error::unavailable(format!("no Docker engine at {} ({why})", self.address()))
        };
        let stream =
            match tokio::time::timeout(self.connect_timeout(), UnixStream::connect(self.socket()))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(unreachable(io_reason(&e))),
                Err(_) => {
                    return Err(unreachable(format!(
                        "no connection within {:?}",
                        self.connect_timeout()
                    )))
                }
            };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::unavailable(format!("{}: {e}", self.address())))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("engine connection ended: {e}");
            }
        });
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| {
                Error::internal(format!("cannot encode the body of {method} {path}: {e}"))
            })?),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "docker");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| Error::internal(format!("cannot build {method} {path}: {e}")))?;
        let resp = sender.send_request(req).await.map_err(|e| {
            Error::unavailable(format!("{method} {path} on {}: {e}", self.address()))
        })?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "reading the reply to {method} {path} from {}: {e}",
                    self.address()
                ))
            })?
            .to_bytes();
        // One request per connection: dropping the sender ends the connection task.
        drop(sender);
        conn.abort();
        Ok(Reply { status, body })
    }
}

/// The engine's `{"message": "..."}` error body, or the body itself.
pub fn engine_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Msg {
        message: String,
    }
    match serde_json::from_slice::<Msg>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}
