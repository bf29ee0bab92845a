//! Per-call options a caller attaches to one request, and the per-call state the
//! layers share through request extensions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;

use crate::config::{ConfigError, validate_header};

/// Per-call overrides: a timeout, a request id, a session id, extra metadata.
///
/// Values are validated when applied, so a bad header is an error, never a panic.
/// A request id or header the caller sets per call wins over the client's.
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::CallOptions;
/// use ameide_sdk::proto::graph::v1::GetElementRequest;
///
/// let request = CallOptions::new()
///     .timeout(Duration::from_secs(2))
///     .request_id("req-42")
///     .header("x-debug", "1")
///     .into_request(GetElementRequest { element_id: "el-1".into(), ..Default::default() })?;
/// assert_eq!(request.metadata().get("x-request-id").unwrap(), "req-42");
///
/// let bad = CallOptions::new().header("bad name", "x").into_request(());
/// assert!(bad.unwrap_err().to_string().contains("bad name"));
/// # Ok::<(), ameide_sdk::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    timeout: Option<Duration>,
    request_id: Option<String>,
    session_id: Option<String>,
    headers: Vec<(String, String)>,
}

impl CallOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whole-call timeout for this call, all attempts included, instead of the client's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Request id for this call instead of a generated one; sent as `x-request-id`.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Session id for this call, sent as `ameide.session_id` in `baggage`.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Extra metadata for this call; the name is lower-cased.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Wraps `message` in a `tonic::Request` carrying these options.
    pub fn into_request<T>(&self, message: T) -> Result<tonic::Request<T>, ConfigError> {
        let mut request = tonic::Request::new(message);
        self.apply(&mut request)?;
        Ok(request)
    }

    /// Applies these options to an existing `tonic::Request`.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ConfigError> {
        for (name, value) in &self.headers {
            let (name, value) = validate_header(name, value)?;
            request.metadata_mut().as_mut().insert(name, value);
        }
        if let Some(id) = &self.request_id {
            let value = crate::config::header_value("request id", id)?;
            request.metadata_mut().as_mut().insert(
                HeaderName::from_static(crate::contract::HEADER_REQUEST_ID),
                value,
            );
        }
        if let Some(timeout) = self.timeout {
            crate::config::validate_timeout("per-call timeout", timeout)?;
            request.extensions_mut().insert(CallTimeout(timeout));
        }
        if let Some(session) = &self.session_id {
            crate::config::header_value("session id", session)?;
            request
                .extensions_mut()
                .insert(SessionId(Arc::from(session.as_str())));
        }
        Ok(())
    }
}

/// Per-call timeout, set by [`CallOptions::timeout`]; read by the timeout layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallTimeout(pub(crate) Duration);

/// Per-call session id, set by [`CallOptions::session_id`]; read by the tracing layer.
#[derive(Debug, Clone)]
pub(crate) struct SessionId(pub(crate) Arc<str>);

/// The absolute deadline of the call, set by the timeout layer for the retry
/// layer when no [`CallState`] travels with the request (layers used alone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub(crate) Instant);

/// What the SDK knows about a finished call, in the extensions of a successful
/// `tonic::Response` (errors carry the same facts in [`crate::Error`]).
///
/// ```no_run
/// # async fn demo(client: ameide_sdk::AmeideClient) -> Result<(), ameide_sdk::Error> {
/// use ameide_sdk::{CallInfo, IntoAmeideResult};
/// let response = client.graph().list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default()).await.into_ameide()?;
/// let info = response.extensions().get::<CallInfo>().unwrap();
/// println!("request {} took {} attempt(s)", info.request_id, info.attempts);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The `x-request-id` the call carried on every attempt.
    pub request_id: Arc<str>,
    /// How many attempts were made, the first one included.
    pub attempts: u32,
    /// Time from the call's start until its response headers arrived.
    pub elapsed: Duration,
}

/// State shared by the layers of one call (cloned with the request extensions
/// into every attempt).
#[derive(Debug, Clone)]
pub(crate) struct CallState(Arc<CallStateInner>);

#[derive(Debug)]
struct CallStateInner {
    start: Instant,
    request_id: Arc<str>,
    attempts: AtomicU32,
    retryable: AtomicU8,
    /// The call's deadline as nanoseconds after `start`; `u64::MAX` when unset.
    deadline_nanos: AtomicU64,
}

const RETRYABLE_UNKNOWN: u8 = 0;
const RETRYABLE_NO: u8 = 1;
const RETRYABLE_YES: u8 = 2;

impl CallState {
    pub(crate) fn new(start: Instant, request_id: Arc<str>) -> Self {
        CallState(Arc::new(CallStateInner {
            start,
            request_id,
            attempts: AtomicU32::new(0),
            retryable: AtomicU8::new(RETRYABLE_UNKNOWN),
            deadline_nanos: AtomicU64::new(u64::MAX),
        }))
    }

    pub(crate) fn start(&self) -> Instant {
        self.0.start
    }

    pub(crate) fn request_id(&self) -> &str {
        &self.0.request_id
    }

    /// The request id, shared (no copy).
    pub(crate) fn request_id_arc(&self) -> Arc<str> {
        self.0.request_id.clone()
    }

    /// Records the call's deadline (set by the timeout layer, read by retry).
    pub(crate) fn set_deadline(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.0.start).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.0.deadline_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The call's deadline, if the timeout layer set one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.0.deadline_nanos.load(Ordering::Relaxed) {
            u64::MAX => None,
            nanos => self
                .0
                .start
                .checked_add(std::time::Duration::from_nanos(nanos)),
        }
    }

    /// Records that attempt `n` (1-based) is being made.
    pub(crate) fn record_attempt(&self, n: u32) {
        self.0.attempts.store(n, Ordering::Relaxed);
    }

    /// Attempts made so far; at least 1 once the call reached the transport.
    pub(crate) fn attempts(&self) -> u32 {
        self.0.attempts.load(Ordering::Relaxed).max(1)
    }

    /// Records the retry policy's verdict on the final status.
    pub(crate) fn record_retryable(&self, retryable: bool) {
        let value = if retryable {
            RETRYABLE_YES
        } else {
            RETRYABLE_NO
        };
        self.0.retryable.store(value, Ordering::Relaxed);
    }

    /// The retry policy's verdict, if a retry layer ran.
    pub(crate) fn retryable(&self) -> Option<bool> {
        match self.0.retryable.load(Ordering::Relaxed) {
            RETRYABLE_YES => Some(true),
            RETRYABLE_NO => Some(false),
            _ => None,
        }
    }
}

/// Header names the SDK adds to an error's metadata so that [`crate::Error`]
/// can be rebuilt from a plain `tonic::Status`.
pub(crate) mod stamp {
    pub(crate) const REQUEST_ID: &str = "ameide-sdk-request-id";
    pub(crate) const ATTEMPTS: &str = "ameide-sdk-attempts";
    pub(crate) const ELAPSED_US: &str = "ameide-sdk-elapsed-us";
    pub(crate) const RETRYABLE: &str = "ameide-sdk-retryable";
}
