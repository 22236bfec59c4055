//! Serves plugins on a unix socket.
//!
//! The life of a plugin process: [`Server::bind`] first (so the engine's "is the socket there?" check
//! passes at once, and SIGTERM is caught from then on), then any slow start-up work, then
//! [`Server::serve`] until SIGTERM or SIGINT, after which in-flight requests get a moment to finish
//! and the socket file is removed.
//!
//! Every connection is bounded (see [`Limits`] and `connections.rs`): a cap on connections, deadlines
//! for a request's head, its body and an idle keep-alive connection, and a body size limit. A
//! request's handler runs to the end even if its client goes away, so a call that started is never
//! left half done by a dropped connection. Long polls (`Instance.Changes`, `Group.Events`) are the
//! exception, having nothing to leave half done: they have a budget of their own, end when their
//! client hangs up, and are answered early when their connection is needed.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

pub use super::connections::Limits;
use super::connections::{serve_connection, Connections, LongPoll, WorkStarted};
use super::messages::*;
use super::open_files;
use super::{CONTENT_TYPE, MAX_CHANGES_WAIT, MAX_REQUEST_BYTES};
use crate::spi::flavor::FlavorPlugin;
use crate::spi::group::GroupPlugin;
use crate::spi::instance::InstancePlugin;
use crate::spi::{FLAVOR, GROUP, INSTANCE};
use crate::{Error, ErrorKind, Result};

/// How long in-flight requests may run on after SIGTERM before the process exits anyway: a managed
/// plugin must be gone well within the engine's patience.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(700);

/// How long the accept loop pauses after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The implementations one plugin process serves, by interface and sub-type (`""` is the default).
#[derive(Default, Clone)]
pub struct Plugins {
    instance: BTreeMap<String, Arc<dyn InstancePlugin>>,
    flavor: BTreeMap<String, Arc<dyn FlavorPlugin>>,
    group: BTreeMap<String, Arc<dyn GroupPlugin>>,
}

impl Plugins {
    pub fn new() -> Plugins {
        Plugins::default()
    }
    pub fn instance(self, p: impl InstancePlugin) -> Plugins {
        self.instance_type("", Arc::new(p))
    }
    pub fn flavor(self, p: impl FlavorPlugin) -> Plugins {
        self.flavor_type("", Arc::new(p))
    }
    pub fn group(self, p: impl GroupPlugin) -> Plugins {
        self.group_type("", Arc::new(p))
    }
    /// Adds a sub-type, reached by clients as `<plugin>/<sub_type>`.
    pub fn instance_type(mut self, sub_type: &str, p: Arc<dyn InstancePlugin>) -> Plugins {
        self.instance.insert(sub_type.to_string(), p);
        self
    }
    pub fn flavor_type(mut self, sub_type: &str, p: Arc<dyn FlavorPlugin>) -> Plugins {
        self.flavor.insert(sub_type.to_string(), p);
        self
    }
    pub fn group_type(mut self, sub_type: &str, p: Arc<dyn GroupPlugin>) -> Plugins {
        self.group.insert(sub_type.to_string(), p);
        self
    }

    pub(crate) fn instances(&self) -> &BTreeMap<String, Arc<dyn InstancePlugin>> {
        &self.instance
    }
    pub(crate) fn flavors(&self) -> &BTreeMap<String, Arc<dyn FlavorPlugin>> {
        &self.flavor
    }
    pub(crate) fn groups(&self) -> &BTreeMap<String, Arc<dyn GroupPlugin>> {
        &self.group
    }

    /// The `Implements` list of `Plugin.Activate`.
    pub fn implements(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.group.is_empty() {
            v.push(GROUP.to_string());
        }
        if !self.instance.is_empty() {
            v.push(INSTANCE.to_string());
        }
        if !self.flavor.is_empty() {
            v.push(FLAVOR.to_string());
        }
        v
    }
}

/// A bound, not yet serving, plugin socket. Dropped without serving (a start refused after the
/// bind: a locked store, a bad directory), it removes its socket file, so no dead socket is left
/// for discovery to find.
pub struct Server {
    listener: UnixListener,
    socket: SocketFile,
    sigterm: Signal,
    sigint: Signal,
    limits: Limits,
}

impl Server {
    /// Binds `path` (mode 0600), creating its directory. A socket file nobody listens on is stale
    /// and is replaced; a live listener is a `Conflict` error and is left alone.
    pub fn bind(path: impl AsRef<Path>) -> Result<Server> {
        let path = path.as_ref().to_path_buf();
        // Catch the signals before anything slow can happen: as PID 1 in a managed plugin an
        // unhandled SIGTERM is ignored, and the engine would wait 10 s and SIGKILL.
        let sigterm = signal(SignalKind::terminate())?;
        let sigint = signal(SignalKind::interrupt())?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::internal(format!(
                    "cannot create the socket directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        remove_if_stale(&path)?;
        let std_listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| Error::internal(format!("cannot listen on {}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std_listener.set_nonblocking(true)?;
        let socket = SocketFile {
            inode: std::fs::metadata(&path)?.ino(),
            path,
        };
        let listener = UnixListener::from_std(std_listener)?;
        Ok(Server {
            listener,
            socket,
            sigterm,
            sigint,
            limits: Limits::default(),
        })
    }

    /// Serves under `limits` instead of [`Limits::default`].
    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn serve(self, plugins: Plugins) -> Result<()> {
        let Server {
            listener,
            socket,
            mut sigterm,
            mut sigint,
            limits,
        } = self;
        let stop = async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        run(listener, socket, limits, plugins, stop).await
    }

    /// Serves until `stop` completes (for embedding and tests).
    pub async fn serve_until(self, plugins: Plugins, stop: impl Future<Output = ()>) -> Result<()> {
        run(self.listener, self.socket, self.limits, plugins, stop).await
    }
}

async fn run(
    listener: UnixListener,
    socket: SocketFile,
    limits: Limits,
    plugins: Plugins,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let max_connections = limits.effective_max_connections(open_files::soft_limit());
    let router = Arc::new(Router {
        plugins,
        body_read_timeout: limits.body_read_timeout,
        stopping,
    });
    if max_connections < limits.max_connections {
        tracing::warn!(
            "serving at most {max_connections} connections, not {}: the open-file limit \
             (ulimit -n) leaves no more room",
            limits.max_connections
        );
    }
    let connections = Connections::new(limits, max_connections);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let max_long_polls = limits.effective_max_long_polls(max_connections);
    tracing::info!(socket = %socket.path.display(), implements = ?router.plugins.implements(), max_connections, max_long_polls, "serving");
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let admission = tokio::select! {
            _ = &mut stop => break,
            admitted = connections.admit() => admitted,
        };
        let Some(admission) = admission else {
            tracing::warn!(
                "{max_connections} connections are all in calls; closing a new one unanswered"
            );
            continue;
        };
        let router = router.clone();
        let handler = move |req| {
            let router = router.clone();
            async move { router.handle(req).await }
        };
        tokio::spawn(serve_connection(
            stream,
            admission,
            graceful.watcher(),
            handler,
        ));
    }
    drop(listener);
    drop(socket);
    // Long polls (`Instance.Changes`) end now rather than hold the exit up for the grace period.
    let _ = stopping_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}

/// Binds `socket` and serves one instance plugin until SIGTERM/SIGINT: the one call a plugin author
/// needs.
pub async fn serve_instance(socket: impl AsRef<Path>, plugin: impl InstancePlugin) -> Result<()> {
    Server::bind(socket)?
        .serve(Plugins::new().instance(plugin))
        .await
}

/// As [`serve_instance`], for a flavor plugin.
pub async fn serve_flavor(socket: impl AsRef<Path>, plugin: impl FlavorPlugin) -> Result<()> {
    Server::bind(socket)?
        .serve(Plugins::new().flavor(plugin))
        .await
}

/// As [`serve_instance`], for a group plugin.
pub async fn serve_group(socket: impl AsRef<Path>, plugin: impl GroupPlugin) -> Result<()> {
    Server::bind(socket)?
        .serve(Plugins::new().group(plugin))
        .await
}

fn remove_if_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::conflict(format!(
            "{} exists and is not a socket; move it away or choose another socket path",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::conflict(format!(
            "another process is already listening on {}; stop it or serve under another --name",
            path.display()
        ))),
        Err(e) => {
            tracing::info!(socket = %path.display(), "removing stale socket ({e})");
            std::fs::remove_file(path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
            Ok(())
        }
    }
}

/// The socket file a server bound; removed when dropped (after serving, or when a start is refused
/// after the bind), but only if it is still the one we bound: a successor may already have
/// replaced it.
struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path)
            .map(|m| m.ino() == self.inode)
            .unwrap_or(false)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Router {
    plugins: Plugins,
    body_read_timeout: Duration,
    /// Turns true when the server stops taking connections.
    stopping: tokio::sync::watch::Receiver<bool>,
}

type Reply = Response<Full<Bytes>>;

impl Router {
    async fn handle(self: Arc<Router>, mut req: Request<Incoming>) -> Reply {
        let work = req.extensions_mut().remove::<WorkStarted>();
        let path = req.uri().path().trim_start_matches('/').to_string();
        if req.method() == Method::GET && path == "metrics" {
            return Response::builder()
                .status(StatusCode::OK)
                .header(hyper::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                .body(Full::new(Bytes::from(crate::metrics::render())))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        }
        if req.method() != Method::POST {
            return error_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{} /{path}: plugin calls are POST requests", req.method()),
            );
        }
        let too_big = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > MAX_REQUEST_BYTES);
        if too_big {
            return too_large(&path);
        }
        let body = Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect();
        let body = match tokio::time::timeout(self.body_read_timeout, body).await {
            Err(_) => {
                return error_reply(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "the request body of /{path} did not arrive within {:?}",
                        self.body_read_timeout
                    ),
                )
            }
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return too_large(&path)
            }
            Ok(Err(e)) => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                )
            }
        };
        tracing::debug!(method = %path, bytes = body.len(), "call");
        // A long poll starts (or is refused) once its request says how long it may wait.
        let poll_work = match &work {
            Some(work) if is_long_poll(&path) => Some(work.clone()),
            Some(work) => {
                work.clone().begin();
                None
            }
            None => None,
        };
        // On a task of its own so that it finishes even if the client goes away meanwhile: a
        // provision cut off halfway would leave what it made behind, unrecorded.
        let call = {
            let router = self.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = router.route(&path, &body, poll_work).await;
                crate::metrics::served(&metric_method(&path), started.elapsed(), &result);
                result
            })
        };
        let result = call.await.unwrap_or_else(|e| {
            Err(Error::internal(format!(
                "the handler of /{path} failed: {e}"
            )))
        });
        let mut reply = match result {
            Ok(json) => Response::builder()
                .status(StatusCode::OK)
                .header(hyper::header::CONTENT_TYPE, reply_type(&path))
                .body(Full::new(json))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(e) => {
                if e.kind == ErrorKind::Internal {
                    tracing::warn!(method = %path, "{}", e.message);
                } else {
                    tracing::debug!(method = %path, "{}", e.message);
                }
                error_reply(
                    StatusCode::from_u16(e.kind.status())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &e.message,
                )
            }
        };
        // A poll answered early to make room, or refused over the budget, closes its connection:
        // that is the room, and a refused poller comes back later rather than sit idle on it.
        if work.as_ref().is_some_and(WorkStarted::close_after_reply) {
            reply.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
        reply
    }

    /// `work`: for a long poll, what starts it (see [`start_poll`]); `None` for other calls.
    async fn route(&self, path: &str, body: &[u8], work: Option<WorkStarted>) -> Result<Bytes> {
        let (iface, method) = path.split_once('.').unwrap_or((path, ""));
        match iface {
            // InfraKit v0.5's JSON-RPC: every call is `POST /`, answered 200 whatever happened.
            "" => Ok(super::v05::server::handle(&self.plugins, body).await),
            "Plugin" if method == "Activate" => reply(&ActivateResponse {
                implements: self.plugins.implements(),
            }),
            "Instance" if !self.plugins.instance.is_empty() => {
                dispatch_instance(
                    &self.plugins.instance,
                    method,
                    path,
                    body,
                    self.stopping.clone(),
                    work,
                )
                .await
            }
            "Flavor" if !self.plugins.flavor.is_empty() => {
                dispatch_flavor(&self.plugins.flavor, method, path, body).await
            }
            "Group" if !self.plugins.group.is_empty() => {
                dispatch_group(&self.plugins.group, method, path, body, work).await
            }
            "Instance" | "Flavor" | "Group" => Err(Error::not_found(format!(
                "this plugin does not implement {iface} (it implements: {})",
                self.plugins.implements().join(", ")
            ))),
            _ => Err(unknown_method(path, &[])),
        }
    }
}

/// The content type of a 200 reply: v0.5's JSON-RPC (`POST /`) gets plain JSON, as from v0.5.
fn reply_type(path: &str) -> &'static str {
    if path.is_empty() {
        "application/json; charset=utf-8"
    } else {
        CONTENT_TYPE
    }
}

/// The `method` label of a call: `Interface.Method` when the protocol has that method, whatever
/// this plugin implements (a fixed set), else [`crate::metrics::OTHER`].
fn metric_method(path: &str) -> String {
    let (iface, method) = path.split_once('.').unwrap_or((path, ""));
    let known = match iface {
        "Plugin" => method == "Activate",
        "Instance" => INSTANCE_METHODS.contains(&method),
        "Flavor" => FLAVOR_METHODS.contains(&method),
        "Group" => GROUP_METHODS.contains(&method),
        _ => false,
    };
    if known {
        path.to_string()
    } else {
        crate::metrics::OTHER.to_string()
    }
}

/// The calls that wait for news rather than do something: a budget of their own, and ended early
/// when their client hangs up or their connection is needed.
fn is_long_poll(path: &str) -> bool {
    matches!(path, "Instance.Changes" | "Group.Events")
}

/// Starts the long poll of a request that may wait `timeout` (none for a call that may not wait:
/// it is answered at once, like any short call, and needs no place among the long polls).
fn start_poll(
    work: Option<WorkStarted>,
    timeout: Duration,
    path: &str,
) -> Result<Option<LongPoll>> {
    match work {
        Some(work) if timeout.is_zero() => {
            work.begin();
            Ok(None)
        }
        Some(work) => work.begin_poll(path).map(Some),
        None => Ok(None),
    }
}

/// Completes when `poll` is cut short (never without one).
async fn cut(poll: &mut Option<LongPoll>) {
    match poll {
        Some(p) => p.cut().await,
        None => std::future::pending().await,
    }
}

fn too_large(path: &str) -> Reply {
    error_reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body of /{path} is larger than the {MAX_REQUEST_BYTES} byte limit"),
    )
}

fn error_reply(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::to_vec(&ErrResponse {
        err: message.to_string(),
    })
    .unwrap_or_default();
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn reply<T: Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot encode the reply: {e}")))
}

/// Parses a request body; an empty body reads as `{}` (Docker's engine sends none to Activate).
fn parse<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("malformed JSON in the body of {path}: {e}")))
}

fn unknown_method(path: &str, known: &[&str]) -> Error {
    if known.is_empty() {
        Error::not_found(format!(
            "unknown method '{path}': calls are /Plugin.Activate or /<Instance|Flavor|Group>.<Method>"
        ))
    } else {
        let iface = path.split('.').next().unwrap_or("");
        Error::not_found(format!(
            "unknown method '{path}'; {iface} methods are: {}",
            known.join(", ")
        ))
    }
}

pub(crate) fn pick<'a, P: ?Sized>(
    map: &'a BTreeMap<String, Arc<P>>,
    sub_type: &str,
    what: &str,
) -> Result<&'a Arc<P>> {
    map.get(sub_type).ok_or_else(|| {
        let have: Vec<String> = map
            .keys()
            .map(|k| {
                if k.is_empty() {
                    "(default)".to_string()
                } else {
                    k.clone()
                }
            })
            .collect();
        if sub_type.is_empty() {
            Error::not_found(format!(
                "this plugin has no default {what}; name a sub-type (plugin/TYPE), one of: {}",
                have.join(", ")
            ))
        } else {
            Error::not_found(format!(
                "this plugin has no {what} sub-type '{sub_type}' (it has: {})",
                have.join(", ")
            ))
        }
    })
}

const INSTANCE_METHODS: &[&str] = &[
    "Validate",
    "Provision",
    "Label",
    "Destroy",
    "DescribeInstances",
    "Changes",
];
const FLAVOR_METHODS: &[&str] = &[
    "Validate",
    "Prepare",
    "Healthy",
    "HealthyMany",
    "Leading",
    "Drain",
];
const GROUP_METHODS: &[&str] = &[
    "CommitGroup",
    "FreeGroup",
    "DescribeGroup",
    "DestroyGroup",
    "InspectGroups",
    "DestroyInstances",
    "Size",
    "SetSize",
    "UpdateCommand",
    "Events",
];

async fn dispatch_instance(
    map: &BTreeMap<String, Arc<dyn InstancePlugin>>,
    method: &str,
    path: &str,
    body: &[u8],
    mut stopping: tokio::sync::watch::Receiver<bool>,
    work: Option<WorkStarted>,
) -> Result<Bytes> {
    const WHAT: &str = "instance plugin";
    match method {
        "Validate" => {
            let r: InstanceValidateRequest = parse(path, body)?;
            let plugin = pick(map, &r.r#type, WHAT)?;
            match &r.allocation {
                Some(a) => plugin.validate_with_allocation(&r.properties, a).await?,
                None => plugin.validate(&r.properties).await?,
            }
            reply(&OkResponse { ok: true })
        }
        "Provision" => {
            let r: ProvisionRequest = parse(path, body)?;
            let id = pick(map, &r.r#type, WHAT)?.provision(r.spec).await?;
            reply(&ProvisionResponse { id: Some(id) })
        }
        "Label" => {
            let r: LabelRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?
                .label(&r.instance, r.labels)
                .await?;
            reply(&OkResponse { ok: true })
        }
        "Destroy" => {
            let r: DestroyRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?
                .destroy(&r.instance, r.context)
                .await?;
            reply(&OkResponse { ok: true })
        }
        "DescribeInstances" => {
            let r: DescribeInstancesRequest = parse(path, body)?;
            let plugin = pick(map, &r.r#type, WHAT)?;
            let descriptions = match &r.ids {
                Some(ids) => {
                    plugin
                        .describe_instances_by_id(&r.tags, r.properties, ids)
                        .await?
                }
                None => plugin.describe_instances(&r.tags, r.properties).await?,
            };
            reply(&DescribeInstancesResponse { descriptions })
        }
        "Changes" => {
            let r: ChangesRequest = parse(path, body)?;
            let timeout = Duration::from_millis(r.timeout_ms).min(MAX_CHANGES_WAIT);
            let plugin = pick(map, &r.r#type, WHAT)?;
            let mut poll = start_poll(work, timeout, path)?;
            let answered = tokio::select! {
                changes = plugin.changes(&r.cursor, timeout) => Some(changes?),
                _ = cut(&mut poll) => None,
                _ = stopping.wait_for(|s| *s) => return Err(Error::unavailable(
                    "the plugin is shutting down; ask its successor (the cursor will not be known there: Resync)",
                )),
            };
            match answered {
                Some(changes) => reply(&changes),
                // Cut short: answered with what there is now, as a poll that timed out would be.
                None => reply(&plugin.changes(&r.cursor, Duration::ZERO).await?),
            }
        }
        _ => Err(unknown_method(path, INSTANCE_METHODS)),
    }
}

async fn dispatch_flavor(
    map: &BTreeMap<String, Arc<dyn FlavorPlugin>>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Bytes> {
    const WHAT: &str = "flavor plugin";
    match method {
        "Validate" => {
            let r: FlavorValidateRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?
                .validate(&r.properties, &r.allocation)
                .await?;
            reply(&OkResponse { ok: true })
        }
        "Prepare" => {
            let r: PrepareRequest = parse(path, body)?;
            let spec = pick(map, &r.r#type, WHAT)?
                .prepare(&r.properties, r.spec, &r.allocation, &r.index)
                .await?;
            reply(&PrepareResponse { spec })
        }
        "Healthy" => {
            let r: FlavorInstanceRequest = parse(path, body)?;
            let health = pick(map, &r.r#type, WHAT)?
                .healthy(&r.properties, &r.instance)
                .await?;
            reply(&HealthyResponse { health })
        }
        "HealthyMany" => {
            let r: HealthyManyRequest = parse(path, body)?;
            let health = pick(map, &r.r#type, WHAT)?
                .healthy_many(&r.properties, &r.instances)
                .await?;
            reply(&HealthyManyResponse { health })
        }
        "Leading" => {
            let r: HealthyManyRequest = parse(path, body)?;
            let ids = pick(map, &r.r#type, WHAT)?
                .leading(&r.properties, &r.instances)
                .await?;
            reply(&LeadingResponse { ids })
        }
        "Drain" => {
            let r: FlavorInstanceRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?
                .drain(&r.properties, &r.instance)
                .await?;
            reply(&OkResponse { ok: true })
        }
        _ => Err(unknown_method(path, FLAVOR_METHODS)),
    }
}

async fn dispatch_group(
    map: &BTreeMap<String, Arc<dyn GroupPlugin>>,
    method: &str,
    path: &str,
    body: &[u8],
    work: Option<WorkStarted>,
) -> Result<Bytes> {
    const WHAT: &str = "group plugin";
    match method {
        "CommitGroup" => {
            let r: CommitGroupRequest = parse(path, body)?;
            let plugin = pick(map, &r.r#type, WHAT)?;
            let res = if r.expect.is_empty() {
                plugin.commit_group(r.spec, r.pretend).await?
            } else {
                plugin
                    .commit_group_expecting(r.spec, r.pretend, &r.expect)
                    .await?
            };
            reply(&CommitGroupResponse::from(res))
        }
        "FreeGroup" => {
            let r: GroupIdRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?.free_group(&r.id).await?;
            reply(&OkResponse { ok: true })
        }
        "DescribeGroup" => {
            let r: GroupIdRequest = parse(path, body)?;
            let description = pick(map, &r.r#type, WHAT)?.describe_group(&r.id).await?;
            reply(&DescribeGroupResponse { description })
        }
        "DestroyGroup" => {
            let r: GroupIdRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?.destroy_group(&r.id).await?;
            reply(&OkResponse { ok: true })
        }
        "InspectGroups" => {
            let r: TypeOnly = parse(path, body)?;
            let groups = pick(map, &r.type_, WHAT)?.inspect_groups().await?;
            reply(&InspectGroupsResponse { groups })
        }
        "DestroyInstances" => {
            let r: DestroyInstancesRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?
                .destroy_instances(&r.id, &r.instances)
                .await?;
            reply(&OkResponse { ok: true })
        }
        "Size" => {
            let r: GroupIdRequest = parse(path, body)?;
            let size = pick(map, &r.r#type, WHAT)?.size(&r.id).await?;
            reply(&SizeResponse { size })
        }
        "SetSize" => {
            let r: SetSizeRequest = parse(path, body)?;
            pick(map, &r.r#type, WHAT)?.set_size(&r.id, r.size).await?;
            reply(&OkResponse { ok: true })
        }
        "Events" => {
            let r: EventsRequest = parse(path, body)?;
            let timeout = Duration::from_millis(r.timeout_ms).min(MAX_CHANGES_WAIT);
            let group = (!r.id.is_empty()).then_some(r.id.as_str());
            let plugin = pick(map, &r.r#type, WHAT)?;
            let mut poll = start_poll(work, timeout, path)?;
            let answered = tokio::select! {
                batch = plugin.events(r.cursor, group, timeout) => Some(batch?),
                _ = cut(&mut poll) => None,
            };
            match answered {
                Some(batch) => reply(&batch),
                None => reply(&plugin.events(r.cursor, group, Duration::ZERO).await?),
            }
        }
        "UpdateCommand" => {
            let r: UpdateCommandRequest = parse(path, body)?;
            let details = pick(map, &r.r#type, WHAT)?
                .update_command(&r.id, r.command)
                .await?;
            reply(&DetailsResponse { details })
        }
        _ => Err(unknown_method(path, GROUP_METHODS)),
    }
}
