//! What keeps one bad client from starving a plugin's other clients: a cap on connections (at the
//! cap, the connection that has waited longest without a request being worked on is closed to make
//! room: idle, half-sent heads and bodies still arriving alike, since nothing has been done for them;
//! after those, the oldest long poll is answered at once), a separate budget for long polls
//! (`Instance.Changes`, `Group.Events`: they wait for news, so they must never hold every place a
//! short call needs; the budget itself is `long_polls.rs`), a long poll ended the moment its
//! client hangs up, a deadline for a request's head, a deadline for an idle keep-alive connection,
//! and HTTP/1 half-close (a client that shuts down its write side after its request still gets the
//! reply).
//!
//! Not here: what a request may contain. The router (`server.rs`) enforces the body size limit and
//! the body deadline from [`Limits`]. The limits and what a client sees when it hits one are listed
//! in docs/limits.md.
//!
//! Why our own watchdog rather than hyper's `header_read_timeout`: hyper starts that timer whenever
//! it waits for a request head, idle keep-alive included, so it cannot give a half-sent head 10 s
//! and an idle pooled connection 60 s. Here a connection's clock is "idle since" until the first byte
//! of a request arrives, then "head since" until hyper hands the request over.
//!
//! Why our own hang-up watch for long polls: the server allows half-close, so hyper deliberately
//! does not read a connection while its call is being worked on, and never sees a client that went
//! away. A held poll would then keep its place (and a descriptor) for up to `MAX_CHANGES_WAIT`.
//! The watch waits for the socket to become readable while a poll is held: end-of-file plus the
//! peer's write side gone too (`EPOLLHUP`: the client closed its socket, not just half-closed it)
//! ends the poll and the connection at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::long_polls::{Budget, Place};
pub use super::long_polls::{MAX_LONG_POLLS, MAX_LONG_POLLS_PER_CLIENT};

/// How long a client may take to send a request's head (request line and headers), counted from
/// its first byte. A head is a few hundred bytes; only a stalled or hostile client needs longer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request's body may take to arrive once its head is in. Bodies are at most
/// `MAX_REQUEST_BYTES` on a local socket: milliseconds for a client that is really sending.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a keep-alive connection may sit with no request before the server closes it. The SDK's
/// client drops its pooled connections after `POOL_IDLE_TIMEOUT` (half this), so a pooled
/// connection is never reused just as the server closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections served at once. A plugin's real clients hold a handful (the controller pools up to
/// 16 per plugin); the cap is there so file descriptors run out for nobody.
pub const MAX_CONNECTIONS: usize = 512;

/// How long a new connection waits for room when every connection is in a call (none can be closed
/// to make room); after that it is closed unanswered.
pub const ADMIT_WAIT: Duration = Duration::from_secs(2);

/// File descriptors kept out of the connection cap for the process's own use (its store, outbound
/// connections to other plugins, the engine): the cap is lowered to `RLIMIT_NOFILE` minus this.
pub const FD_RESERVE: usize = 64;

/// After asking a connection to close to make room, how long to wait for it before choosing another.
const EVICT_SETTLE: Duration = Duration::from_millis(100);

/// The server's connection limits; `Limits::default()` holds the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`BODY_READ_TIMEOUT`].
    pub body_read_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`ADMIT_WAIT`].
    pub admit_wait: Duration,
    /// See [`MAX_LONG_POLLS`].
    pub max_long_polls: usize,
    /// See [`MAX_LONG_POLLS_PER_CLIENT`].
    pub max_long_polls_per_client: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            admit_wait: ADMIT_WAIT,
            max_long_polls: MAX_LONG_POLLS,
            max_long_polls_per_client: MAX_LONG_POLLS_PER_CLIENT,
        }
    }
}

impl Limits {
    /// The cap actually used: `max_connections`, lowered so that it fits in `open_files` (the soft
    /// `RLIMIT_NOFILE`) with [`FD_RESERVE`] to spare, and never below 1.
    pub fn effective_max_connections(&self, open_files: Option<u64>) -> usize {
        let fits = open_files
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .map(|n| n.saturating_sub(FD_RESERVE))
            .unwrap_or(usize::MAX);
        self.max_connections.min(fits).max(1)
    }

    /// The long-poll budget actually used under a cap of `max_connections`: `max_long_polls`, at
    /// most half the cap, never below 1.
    pub fn effective_max_long_polls(&self, max_connections: usize) -> usize {
        self.max_long_polls.min(max_connections / 2).max(1)
    }
}

/// What one connection is doing, as far as the limits care.
#[derive(Debug, Clone, Copy)]
struct State {
    phase: Phase,
    /// When the connection last finished a request (or was accepted).
    idle_since: Instant,
    /// When the first byte of the next request's head arrived, if one has.
    head_since: Option<Instant>,
    /// Asked to close to make room; not chosen again.
    evicting: bool,
    /// The current long poll was cut short (to make room, or its client hung up) or refused: its
    /// reply closes the connection.
    close_after_reply: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests, or receiving a head.
    Waiting,
    /// The head is in and the body is being read (since the head's first byte): nothing has been
    /// done yet, so the connection may still be closed to make room (a slow body must not hold a
    /// place a real client needs).
    Reading(Instant),
    /// The handler is at work: the connection is closed by nothing here until the reply is out.
    Working,
    /// A long poll is held (since then): it only waits for news, so to make room it is answered at
    /// once (and its connection closed), and it ends when its client hangs up.
    Polling(Instant),
}

/// One admitted connection's state, shared by its IO, its service and its watchdog.
struct Slot {
    state: Mutex<State>,
    /// Wakes the watchdog when a head starts (its deadline moves earlier).
    head_started: Notify,
    /// Asks the connection to close to make room for a new one.
    evict: Notify,
    /// Wakes the connection's loop when a long poll starts (it then watches for a hang-up).
    poll_started: Notify,
    /// Ends the long poll being held, if one is.
    cut: Mutex<Option<oneshot::Sender<()>>>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: Mutex::new(State {
                phase: Phase::Waiting,
                idle_since: Instant::now(),
                head_since: None,
                evicting: false,
                close_after_reply: false,
            }),
            head_started: Notify::new(),
            evict: Notify::new(),
            poll_started: Notify::new(),
            cut: Mutex::new(None),
        }
    }

    /// The state lock is held for a few instructions and nothing in it can panic halfway; a
    /// poisoned lock still holds a consistent state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived: between requests they are the start of a head.
    fn on_read(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Waiting && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            drop(s);
            self.head_started.notify_one();
        }
    }

    /// hyper has a request's head and calls the service.
    fn begin_request(self: &Arc<Slot>) -> RequestGuard {
        let mut s = self.lock();
        s.phase = Phase::Reading(s.head_since.take().unwrap_or_else(Instant::now));
        RequestGuard(self.clone())
    }

    /// When the connection is to be closed, or (reading a body, whose deadline is the handler's, or
    /// working, which has none) when to look again.
    fn deadline(&self, limits: &Limits) -> Instant {
        let s = self.lock();
        match (s.phase, s.head_since) {
            (Phase::Waiting, Some(t)) => t + limits.header_read_timeout,
            (Phase::Waiting, None) => s.idle_since + limits.idle_timeout,
            _ => Instant::now() + limits.idle_timeout,
        }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        let s = self.lock();
        let now = Instant::now();
        match (s.phase, s.head_since) {
            (Phase::Waiting, Some(t)) if now >= t + limits.header_read_timeout => {
                Some("request head not complete within the header read timeout")
            }
            (Phase::Waiting, None) if now >= s.idle_since + limits.idle_timeout => {
                Some("idle longer than the keep-alive timeout")
            }
            _ => None,
        }
    }

    /// Since when the connection has waited without a request being worked on (None: working, or
    /// already chosen): the longest waiting is closed first to make room.
    fn waiting_since(&self) -> Option<Instant> {
        let s = self.lock();
        if s.evicting {
            return None;
        }
        match s.phase {
            Phase::Waiting => Some(s.head_since.unwrap_or(s.idle_since)),
            Phase::Reading(t) => Some(t),
            Phase::Working | Phase::Polling(_) => None,
        }
    }

    /// Since when a long poll is held, if one is and it has not been cut yet.
    fn polling_since(&self) -> Option<Instant> {
        let phase = self.lock().phase;
        match phase {
            Phase::Polling(t) if self.cut_sender().is_some() => Some(t),
            _ => None,
        }
    }

    fn is_polling(&self) -> bool {
        matches!(self.lock().phase, Phase::Polling(_))
    }

    fn cut_sender(&self) -> MutexGuard<'_, Option<oneshot::Sender<()>>> {
        self.cut.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the held long poll now (its handler answers what it has at once); false when none is.
    fn cut_poll(&self) -> bool {
        let Some(cut) = self.cut_sender().take() else {
            return false;
        };
        self.lock().close_after_reply = true;
        let _ = cut.send(());
        true
    }

    fn mark_evicting(&self) {
        self.lock().evicting = true;
    }

    /// An eviction request arrived: close unless the handler began working (or polling) since it
    /// was chosen.
    fn accept_eviction(&self) -> bool {
        let mut s = self.lock();
        s.evicting = false;
        matches!(s.phase, Phase::Waiting | Phase::Reading(_))
    }
}

/// Marks the end of a request, however it ends (a dropped service future included).
struct RequestGuard(Arc<Slot>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // A poll still held ends with its request (dropping the sender wakes its handler).
        self.0.cut_sender().take();
        let mut s = self.0.lock();
        s.phase = Phase::Waiting;
        s.idle_since = Instant::now();
        s.close_after_reply = false;
    }
}

/// Put in each request's extensions: the handler calls [`WorkStarted::begin`] once it has the whole
/// body and starts doing what was asked, after which the connection is never closed to make room;
/// or [`WorkStarted::begin_poll`] for a long poll.
#[derive(Clone)]
pub(crate) struct WorkStarted {
    slot: Arc<Slot>,
    polls: Arc<Budget>,
    /// The client's pid (`SO_PEERCRED`), for its share of the long-poll budget.
    client: Option<i32>,
}

impl WorkStarted {
    pub fn begin(self) {
        self.slot.lock().phase = Phase::Working;
    }

    /// Starts a long poll of `method`, under the long-poll budget; an `Unavailable` error naming
    /// the limit reached (`LONG_POLLS_FULL`) otherwise, whose reply then closes the connection (a
    /// refused poller comes back later; its connection must not sit idle meanwhile).
    pub fn begin_poll(self, method: &str) -> crate::Result<LongPoll> {
        let place = match self.polls.take(self.client, method) {
            Ok(place) => place,
            Err(refused) => {
                self.slot.lock().close_after_reply = true;
                return Err(refused);
            }
        };
        let (tx, rx) = oneshot::channel();
        *self.slot.cut_sender() = Some(tx);
        self.slot.lock().phase = Phase::Polling(Instant::now());
        self.slot.poll_started.notify_one();
        Ok(LongPoll {
            cut: rx,
            _place: place,
        })
    }

    /// This request's long poll was cut short or refused: its reply closes the connection.
    pub fn close_after_reply(&self) -> bool {
        self.slot.lock().close_after_reply
    }
}

/// A held long poll: its place in the budget, kept until its handler ends, and the signal that
/// cuts it short.
pub(crate) struct LongPoll {
    cut: oneshot::Receiver<()>,
    _place: Place,
}

impl LongPoll {
    /// Completes when the poll must be answered now: its place is needed, its client hung up, or
    /// its request is gone.
    pub async fn cut(&mut self) {
        let _ = (&mut self.cut).await;
    }
}

/// The admitted connections and the cap on them.
pub(crate) struct Connections {
    limits: Limits,
    permits: Arc<Semaphore>,
    /// The long-poll budget ([`Limits::effective_max_long_polls`]).
    polls: Arc<Budget>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
}

/// A connection's place under the cap; dropping it (after the socket) makes room for the next.
pub(crate) struct Admission {
    id: u64,
    slot: Arc<Slot>,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.connections.slots().remove(&self.id);
    }
}

impl Connections {
    pub fn new(limits: Limits, max_connections: usize) -> Arc<Connections> {
        Arc::new(Connections {
            polls: Budget::new(
                limits.effective_max_long_polls(max_connections),
                limits.max_long_polls_per_client,
            ),
            limits,
            permits: Arc::new(Semaphore::new(max_connections)),
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for one more connection: at once under the cap; at the cap, after closing the
    /// connection that has waited longest without a request being worked on. None when every
    /// connection stayed at work for [`Limits::admit_wait`].
    pub async fn admit(self: &Arc<Connections>) -> Option<Admission> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(self.register(permit));
        }
        let deadline = Instant::now() + self.limits.admit_wait;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = if self.evict_longest_waiting() {
                EVICT_SETTLE.min(deadline - now)
            } else {
                deadline - now
            };
            if let Ok(Ok(permit)) =
                tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await
            {
                return Some(self.register(permit));
            }
        }
    }

    fn register(self: &Arc<Connections>, permit: OwnedSemaphorePermit) -> Admission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new());
        self.slots().insert(id, slot.clone());
        Admission {
            id,
            slot,
            connections: self.clone(),
            _permit: permit,
        }
    }

    /// Asks the connection that has waited longest without completing a request to close, or
    /// else cuts the oldest long poll (answered at once, its connection then closed); false when
    /// there is neither (every connection is in a call or already asked).
    fn evict_longest_waiting(&self) -> bool {
        let slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        let oldest = |since: fn(&Slot) -> Option<Instant>| {
            slots
                .iter()
                .filter_map(|s| since(s).map(|t| (t, s.clone())))
                .min_by_key(|(t, _)| *t)
                .map(|(_, s)| s)
        };
        if let Some(slot) = oldest(Slot::waiting_since) {
            slot.mark_evicting();
            slot.evict.notify_one();
            return true;
        }
        match oldest(Slot::polling_since) {
            Some(slot) => {
                tracing::debug!("answering the oldest long poll now to admit a new connection");
                slot.cut_poll()
            }
            None => false,
        }
    }
}

/// Serves one admitted connection until it ends, times out, is evicted or the server shuts down.
pub(crate) async fn serve_connection<H, F>(
    stream: UnixStream,
    admission: Admission,
    watcher: Watcher,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let limits = admission.connections.limits;
    let polls = admission.connections.polls.clone();
    let client = stream.peer_cred().ok().and_then(|c| c.pid());
    let slot = admission.slot.clone();
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let request = slot.begin_request();
            req.extensions_mut().insert(WorkStarted {
                slot: slot.clone(),
                polls: polls.clone(),
                client,
            });
            let reply = handler(req);
            async move {
                let reply = reply.await;
                drop(request);
                Ok::<_, Infallible>(reply)
            }
        })
    };
    let stream = Arc::new(stream);
    let io = TokioIo::new(Watched {
        inner: stream.clone(),
        slot: slot.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // A client may shut down its write side once its request is out and still wait for the
        // reply (without this, hyper drops the call on that EOF, after its side effects).
        .half_close(true)
        // Off: the watchdog below does it, with separate head and idle deadlines (see the top).
        .header_read_timeout(None)
        .serve_connection(io, service);
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    loop {
        let deadline = slot.deadline(&limits);
        let polling = slot.is_polling();
        tokio::select! {
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!("connection ended: {e}");
                }
                break;
            }
            _ = slot.evict.notified() => {
                if slot.accept_eviction() {
                    tracing::debug!("closing the longest-waiting connection to admit a new one");
                    break;
                }
            }
            _ = slot.head_started.notified() => {}
            _ = slot.poll_started.notified() => {}
            _ = hung_up(&stream), if polling => {
                if slot.cut_poll() {
                    tracing::debug!("a long poll's client hung up: ending the poll and its connection");
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if let Some(why) = slot.expired(&limits) {
                    tracing::debug!("closing connection: {why}");
                    break;
                }
            }
        }
    }
    // The socket closes here, before `admission` (declared earlier) lets the next one in.
}

/// Completes when the peer closed its socket (not merely shut down its write side, which a
/// half-closing client does and still waits for its reply). Bytes sent ahead (a pipelined request)
/// are left for hyper and end the watch: that client is there.
async fn hung_up(stream: &UnixStream) {
    loop {
        let Ok(ready) = stream.ready(Interest::READABLE).await else {
            return;
        };
        if !ready.is_read_closed() {
            // Readable may be left over from the request's last read: look without taking. When
            // nothing is there, `try_io` clears the readiness and the next wait is for real.
            let mut byte = [0u8; 1];
            let peeked = stream.try_io(Interest::READABLE, || {
                rustix::net::recv(
                    stream,
                    &mut byte[..],
                    rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
                )
                .map(|(n, _)| n)
                .map_err(io::Error::from)
            });
            match peeked {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(0) => {}
                Ok(_) => return std::future::pending().await,
                Err(_) => return,
            }
        }
        // End of file: hung up, or half-closed? A closed peer also shows as write-closed (HUP).
        match stream.ready(Interest::WRITABLE).await {
            Ok(w) if !w.is_write_closed() => return std::future::pending().await,
            _ => return,
        }
    }
}

/// The connection's socket, telling its slot when request bytes arrive. Shared (`Arc`) with the
/// connection's loop, which watches it for a hang-up while a long poll is held, so reads and
/// writes go through the `&UnixStream` readiness API.
struct Watched {
    inner: Arc<UnixStream>,
    slot: Arc<Slot>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.inner.poll_read_ready(cx))?;
            match self.inner.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        self.slot.on_read();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = rustix::net::shutdown(&*self.inner, rustix::net::Shutdown::Write);
        Poll::Ready(match shut {
            Err(rustix::io::Errno::NOTCONN) => Ok(()),
            other => other.map_err(io::Error::from),
        })
    }
}
