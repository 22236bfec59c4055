//! HTTP/1.1 over a unix socket with a small pool of keep-alive connections.
//!
//! Hand-written rather than hyper-util's pooled client because that one wants a connector type per
//! transport and we need exactly one thing: reuse an idle connection when there is one, open a new one
//! otherwise, and never send a request twice (a `Provision` is not idempotent).
//!
//! A server may close a keep-alive connection (ours does after `connections::IDLE_TIMEOUT`, or to
//! make room at its connection cap). A request written into a connection just as the server closes
//! it cannot be told apart from one the server received and then failed on, so it cannot be retried
//! safely. The pool avoids that moment rather than guessing afterwards: it forgets a connection long
//! before the server's idle timeout, and lets the connections' tasks see a server's close before it
//! picks one. A connection found closed is skipped (the request was never sent on it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::connections::IDLE_TIMEOUT;
use super::{CONTENT_TYPE, MAX_REPLY_BYTES};
use crate::{Error, Result};

/// Connections kept idle per socket; more concurrent callers simply open more and the extras close.
const MAX_IDLE: usize = 16;

/// A pooled connection idle longer than this is closed rather than reused: half the server's
/// [`IDLE_TIMEOUT`], so the client always gives up on a connection well before the server does.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(IDLE_TIMEOUT.as_secs() / 2);

type Sender = SendRequest<Full<Bytes>>;

pub(crate) struct Transport {
    socket: PathBuf,
    timeout: Duration,
    /// Idle connections with the time each was last used, most recent last.
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Transport {
    pub fn new(socket: &Path, timeout: Duration) -> Transport {
        Transport {
            socket: socket.to_path_buf(),
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// POSTs `body` to `/path`; returns the status and the whole reply body.
    pub async fn post(&self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.post_as(path, body, CONTENT_TYPE).await
    }

    /// [`Transport::post`] with another content type (InfraKit v0.5's JSON-RPC wants
    /// `application/json`).
    pub async fn post_as(
        &self,
        path: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(u16, Bytes)> {
        let call = self.post_inner(path, body, content_type);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!(
                "no answer to {path} from {} within {:?}",
                self.socket.display(),
                self.timeout
            ))),
        }
    }

    /// The most recently used idle connection that is young enough; older ones are dropped.
    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        loop {
            let (sender, since) = idle.pop()?;
            if since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(sender);
            }
        }
    }

    async fn post_inner(
        &self,
        path: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(u16, Bytes)> {
        let mut req = self.request(path, body, content_type)?;
        // Let the pooled connections' tasks run first: a close the server sent meanwhile is then
        // seen (`is_closed`) instead of written into.
        tokio::task::yield_now().await;
        // An idle connection may have been closed by the server since we used it; hyper hands the
        // request back untouched when it was not sent, and we try the next one.
        while let Some(mut sender) = self.take_idle() {
            if sender.is_closed() || sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return self.finish(sender, resp).await,
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(self.transport_error(path, e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport_error(path, e))?;
        self.finish(sender, resp).await
    }

    fn request(
        &self,
        path: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<Request<Full<Bytes>>> {
        Request::post(format!("/{path}"))
            .header(hyper::header::HOST, "plugin")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::ACCEPT, content_type)
            .body(Full::new(body))
            .map_err(|e| Error::internal(format!("cannot build a request for /{path}: {e}")))
    }

    async fn finish(
        &self,
        sender: Sender,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(u16, Bytes)> {
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "reading the reply from {} failed: {e}",
                    self.socket.display()
                ))
            })?
            .to_bytes();
        if !sender.is_closed() {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push((sender, Instant::now()));
                }
            }
        }
        Ok((status, body))
    }

    async fn connect(&self) -> Result<Sender> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "no such socket".to_string(),
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused: nobody is listening (stale socket?)".to_string()
                }
                _ => e.to_string(),
            };
            Error::unavailable(format!(
                "cannot connect to {}: {why}; is the plugin running?",
                self.socket.display()
            ))
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "handshake with {} failed: {e}",
                    self.socket.display()
                ))
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("plugin connection ended: {e}");
            }
        });
        Ok(sender)
    }

    fn transport_error(&self, path: &str, e: hyper::Error) -> Error {
        Error::unavailable(format!(
            "call /{path} on {} failed: {e}",
            self.socket.display()
        ))
    }
}
