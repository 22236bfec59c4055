//! The EC2 clients: one per [`Location`] (region and endpoint), all sharing one SDK
//! configuration (the credential chain and its cache, retries, timeouts), one bound on requests in
//! flight, and one count of requests by operation. Also where SDK errors become InfraKit errors a
//! user can act on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, Region, RuntimeComponents};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use infrakit_sdk::{Error, ErrorKind, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::properties::Location;

/// Attempts per request (the first and the retries) unless AWS_MAX_ATTEMPTS says otherwise. The
/// SDK's standard retry mode backs off exponentially with jitter and retries throttling
/// (`RequestLimitExceeded`), 5xx answers and connection errors.
pub const MAX_ATTEMPTS: u32 = 5;
/// EC2 requests in flight at once, across every location (a bound a real account's API rate
/// limits are comfortable with; batching keeps the number of requests small anyway).
pub const MAX_IN_FLIGHT: usize = 16;
/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt may take (a DescribeInstances page of 1,000 takes a few seconds).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request may take, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(180);

/// The EC2 API as the plugin uses it.
pub struct Ec2 {
    base: SdkConfig,
    home: Option<Location>,
    clients: Mutex<HashMap<Location, aws_sdk_ec2::Client>>,
    in_flight: Arc<Semaphore>,
    calls: Calls,
}

impl Ec2 {
    /// Loads the SDK's configuration from the environment (region, endpoint, profile, credential
    /// chain). Nothing is requested from AWS here: credentials are looked up on the first request.
    pub async fn from_env() -> Ec2 {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            loader = loader.retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        }
        let base = loader.load().await;
        let home = base.region().map(|r| Location {
            region: r.to_string(),
            endpoint: base.endpoint_url().map(str::to_string),
        });
        Ec2 {
            base,
            home,
            clients: Mutex::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            calls: Calls::default(),
        }
    }

    /// The plugin's own location (AWS_REGION or the profile's region, AWS_ENDPOINT_URL), if any.
    pub fn home(&self) -> Option<&Location> {
        self.home.as_ref()
    }

    /// Where properties that name `region` and `endpoint` (or not) send their requests.
    pub fn locate(&self, region: Option<&str>, endpoint: Option<&str>) -> Result<Location> {
        let region = match (region, &self.home) {
            (Some(r), _) => r.to_string(),
            (None, Some(home)) => home.region.clone(),
            (None, None) => return Err(Error::invalid(
                "instance-aws: no region: set Region in the instance properties, or AWS_REGION \
                     (or a profile's region) in the plugin's environment",
            )),
        };
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| self.home.as_ref().and_then(|h| h.endpoint.clone()));
        Ok(Location { region, endpoint })
    }

    /// The client for `location`, made on first use.
    pub fn client(&self, location: &Location) -> aws_sdk_ec2::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(location.clone())
            .or_insert_with(|| {
                let mut config = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(Region::new(location.region.clone()))
                    .interceptor(CountCalls(self.calls.clone()));
                config.set_endpoint_url(location.endpoint.clone());
                let config = config.build();
                aws_sdk_ec2::Client::from_conf(config)
            })
            .clone()
    }

    /// A permit to send one request (bounds the requests in flight). `None` only if the
    /// semaphore were closed, which nothing does: then the request goes ahead unbounded.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().acquire_owned().await.ok()
    }

    /// Requests sent so far (attempts, retries included), by operation.
    pub fn calls(&self) -> Vec<(String, u64)> {
        self.calls.snapshot()
    }
}

/// Requests sent by operation: kept for [`Ec2::calls`] and exported as the Prometheus counter
/// `infrakit_aws_requests_total{operation}` on the plugin's `GET /metrics`.
#[derive(Clone)]
struct Calls {
    family: Family<Vec<(String, String)>, Counter>,
}

impl Default for Calls {
    fn default() -> Calls {
        static FAMILY: std::sync::OnceLock<Family<Vec<(String, String)>, Counter>> =
            std::sync::OnceLock::new();
        let family = FAMILY
            .get_or_init(|| {
                let family = Family::default();
                infrakit_sdk::metrics::register(
                    "aws_requests",
                    "EC2 API requests sent (every attempt, retries included), by operation",
                    family.clone(),
                );
                family
            })
            .clone();
        Calls { family }
    }
}

impl Calls {
    fn count(&self, operation: &str) {
        self.family
            .get_or_create(&vec![("operation".to_string(), operation.to_string())])
            .inc();
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for op in OPERATIONS {
            let labels = vec![("operation".to_string(), op.to_string())];
            let n = self.family.get_or_create(&labels).get();
            if n > 0 {
                out.push((op.to_string(), n));
            }
        }
        out
    }
}

/// The operations the plugin uses (for [`Calls::snapshot`]).
const OPERATIONS: [&str; 4] = [
    "RunInstances",
    "DescribeInstances",
    "TerminateInstances",
    "CreateTags",
];

/// Counts every attempt the SDK transmits, by operation: retries are requests too.
#[derive(Debug)]
struct CountCalls(Calls);

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Calls")
    }
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "infrakit-count-calls"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map(|m| m.name())
            .unwrap_or("unknown");
        self.0.count(operation);
        Ok(())
    }
}

/// An SDK error as an InfraKit error: what failed, where, why, and what to do about it. The kind
/// says whose fault it is (the spec's: `Invalid`; the network's or AWS's for now: `Unavailable`).
pub fn error<E, R>(what: &str, location: &Location, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = &e {
        let err = service.err();
        let Some(code) = err.code() else {
            // No EC2 error code: not EC2's own refusal (an emulator's crash page, a proxy's).
            return Error::internal(format!(
                "{what} ({location}) failed without an EC2 error code: {}",
                DisplayErrorContext(&e)
            ));
        };
        let message = err.message().unwrap_or_default();
        let (kind, advice) = classify(code);
        return Error::new(
            kind,
            format!("EC2 refused {what} ({location}): {code}: {message}{advice}"),
        );
    }
    let detail = DisplayErrorContext(&e).to_string();
    let lower = detail.to_lowercase();
    if lower.contains("credential") {
        return Error::invalid(format!(
            "{what} ({location}): no usable AWS credentials: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, in the plugin's environment, or run it on an \
             instance with an IAM role ({detail})"
        ));
    }
    match &e {
        SdkError::TimeoutError(_) => Error::unavailable(format!(
            "{what} ({location}): EC2 did not answer in time (after the SDK's retries); check the \
             network and the Endpoint ({detail})"
        )),
        SdkError::DispatchFailure(_) => Error::unavailable(format!(
            "{what} ({location}): cannot reach EC2 (after the SDK's retries): check the Endpoint, \
             the region's name and the network ({detail})"
        )),
        _ => Error::internal(format!("{what} ({location}): {detail}")),
    }
}

/// The kind of an EC2 error code, and advice to append to its message.
fn classify(code: &str) -> (ErrorKind, &'static str) {
    match code {
        "RequestLimitExceeded" | "Throttling" | "ServiceUnavailable" | "Unavailable"
        | "InternalError" | "InsufficientInstanceCapacity" | "InsufficientCapacity" => {
            (ErrorKind::Unavailable, " (EC2 is busy or short of capacity; retried later)")
        }
        "InvalidIPAddress.InUse" => (
            ErrorKind::Unavailable,
            " (a pet's address is still held, e.g. by its predecessor while it terminates; retried later)",
        ),
        "AuthFailure" | "UnauthorizedOperation" | "Blocked" | "OptInRequired" => (
            ErrorKind::Invalid,
            " (check the plugin's credentials and that their IAM policy allows what docs/ec2.md lists)",
        ),
        c if c.starts_with("InvalidAMIID") => (
            ErrorKind::Invalid,
            " (check ImageId: the AMI must exist in this region and be visible to the account)",
        ),
        c if c.contains("NotFound") => (ErrorKind::NotFound, ""),
        c if c.starts_with("Invalid")
            || c.starts_with("Missing")
            || c.starts_with("Unsupported")
            || c.contains("Malformed") =>
        {
            (ErrorKind::Invalid, " (check the instance properties)")
        }
        _ => (ErrorKind::Internal, ""),
    }
}
