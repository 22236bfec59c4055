//! Prometheus metrics of a plugin process: one registry per process, served as the Prometheus
//! text format on `GET /metrics` of every plugin socket (and, for the group plugin, on an opt-in
//! TCP listener). The protocol's own metrics live here (every call served, every call made, by
//! method and outcome, with latency histograms); a plugin adds its own with [`register`].
//!
//! Encoding is prometheus-client's (the project's choice of crate: maintained by the Prometheus
//! organisation, OpenMetrics-conformant text, no global macros).
//!
//! Label values: prometheus-client writes them as given, so every one is made with [`label`],
//! which escapes `\`, `"` and newlines (one stray quote would make a scraper reject the whole
//! page). And none comes straight from a request: a method a client names is counted under its
//! own name only if the protocol has it, otherwise as [`OTHER`] (a client naming endless distinct
//! paths must not grow the registry, or `/metrics`, without bound).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

/// Labels as name/value pairs (a `Family` key); build each pair with [`label`].
pub type Labels = Vec<(String, String)>;

/// The label value under which calls to methods the protocol does not have are counted.
pub const OTHER: &str = "other";

/// A label pair, its value escaped for the text format (`\` -> `\\`, `"` -> `\"`, newline ->
/// `\n`), as the exposition format asks.
pub fn label(name: &str, value: &str) -> (String, String) {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    (name.to_string(), escaped)
}

/// Latency buckets from 0.5 ms to about 33 s (doubling), for calls and actions alike.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

struct Rpc {
    served: Family<Labels, Counter>,
    served_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    made: Family<Labels, Counter>,
    made_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::with_prefix("infrakit")))
}

fn rpc() -> &'static Rpc {
    static RPC: OnceLock<Rpc> = OnceLock::new();
    RPC.get_or_init(|| {
        let rpc = Rpc {
            served: Family::default(),
            served_seconds: Family::new_with_constructor(latency_histogram),
            made: Family::default(),
            made_seconds: Family::new_with_constructor(latency_histogram),
        };
        register(
            "rpc_served",
            "Plugin calls this process answered, by method (Interface.Method) and outcome (ok or the error kind)",
            rpc.served.clone(),
        );
        register(
            "rpc_served_duration_seconds",
            "How long this process took to answer a plugin call, by method",
            rpc.served_seconds.clone(),
        );
        register(
            "rpc_made",
            "Plugin calls this process made, by plugin, method and outcome",
            rpc.made.clone(),
        );
        register(
            "rpc_made_duration_seconds",
            "How long a plugin call this process made took, by plugin and method",
            rpc.made_seconds.clone(),
        );
        rpc
    })
}

/// Adds a metric to the process's registry (name without the `infrakit_` prefix).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    match registry().lock() {
        Ok(mut r) => r.register(name, help, metric),
        Err(poisoned) => poisoned.into_inner().register(name, help, metric),
    }
}

/// Every metric of this process in the Prometheus text format.
pub fn render() -> String {
    rpc();
    let mut out = String::new();
    let r = match registry().lock() {
        Ok(r) => r,
        Err(poisoned) => poisoned.into_inner(),
    };
    if encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn outcome<T>(r: &crate::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{:?}", e.kind).to_lowercase(),
    }
}

/// Records a call this process answered; `method` is one the protocol has, or [`OTHER`] (the
/// server maps what a client sent).
pub fn served<T>(method: &str, took: Duration, result: &crate::Result<T>) {
    let rpc = rpc();
    let m = vec![label("method", method)];
    let mut with_outcome = m.clone();
    with_outcome.push(label("outcome", &outcome(result)));
    rpc.served.get_or_create(&with_outcome).inc();
    rpc.served_seconds
        .get_or_create(&m)
        .observe(took.as_secs_f64());
}

/// Records a call this process made to `plugin`.
pub fn made<T>(plugin: &str, method: &str, took: Duration, result: &crate::Result<T>) {
    let rpc = rpc();
    let m = vec![label("plugin", plugin), label("method", method)];
    let mut with_outcome = m.clone();
    with_outcome.push(label("outcome", &outcome(result)));
    rpc.made.get_or_create(&with_outcome).inc();
    rpc.made_seconds
        .get_or_create(&m)
        .observe(took.as_secs_f64());
}

/// Serves `GET /metrics` (and nothing else) on TCP `addr`, for a Prometheus that cannot reach a
/// unix socket. Binds before returning: a taken or forbidden address is an error at start, not a
/// warning later. The listener lives as long as the returned task.
pub async fn serve_tcp(addr: std::net::SocketAddr) -> crate::Result<tokio::task::JoinHandle<()>> {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::{Method, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::invalid(format!(
            "cannot listen for metrics on {addr}: {e} (choose another --metrics-listen address)"
        ))
    })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served beyond this host (anyone who can reach {addr} can read them)");
    }
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let reply = if req.method() == Method::GET && req.uri().path() == "/metrics"
                        {
                            Response::builder()
                                .status(StatusCode::OK)
                                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                                .body(Full::new(Bytes::from(render())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"only GET /metrics here\n")))
                        };
                        Ok::<_, std::convert::Infallible>(
                            reply.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                        )
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                // A scrape is one short request: a connection that idles is cut.
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_show_in_the_text_format() {
        served::<()>("Instance.Provision", Duration::from_millis(3), &Ok(()));
        made::<()>(
            "flavor-vanilla",
            "Flavor.Healthy",
            Duration::from_millis(1),
            &Err(crate::Error::unavailable("x")),
        );
        let text = render();
        assert!(
            text.contains(
                r#"infrakit_rpc_served_total{method="Instance.Provision",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"infrakit_rpc_made_total{plugin="flavor-vanilla",method="Flavor.Healthy",outcome="unavailable"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("infrakit_rpc_served_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("m", r#"a"b\c"#).1, r#"a\"b\\c"#);
        assert_eq!(label("m", "x\ny").1, r"x\ny");
        made::<()>("we\"ird\\", "Flavor.Healthy", Duration::ZERO, &Ok(()));
        let text = render();
        assert!(text.contains(r#"plugin="we\"ird\\""#), "{text}");
    }
}
