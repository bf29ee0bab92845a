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
    safe_retries: Option<bool>,
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

    /// Safe-retry mode for this call (see [`RetryPolicy::with_safe_retries`](crate::layers::RetryPolicy::with_safe_retries)),
    /// whatever the client's policy says.
    pub fn safe_retries(mut self, safe: bool) -> Self {
        self.safe_retries = Some(safe);
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
        if let Some(safe) = self.safe_retries {
            request.extensions_mut().insert(SafeRetries(safe));
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

/// Per-call safe-retry mode, set by [`CallOptions::safe_retries`]; read by the retry layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SafeRetries(pub(crate) bool);

/// Per-call session id, set by [`CallOptions::session_id`]; read by the tracing layer.
#[derive(Debug, Clone)]
pub(crate) struct SessionId(pub(crate) Arc<str>);

/// When the call began, if it began before the metadata layer saw it: set by
/// [`AmeideChannel`](crate::AmeideChannel) for a call that waited for an
/// in-flight permit, so the wait counts against the call's deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallStart(pub(crate) tokio::time::Instant);

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

/// Why the retry loop stopped making attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The attempt limit was reached.
    Exhausted,
    /// The status is not retried (by code, or by safe-retry mode for this method).
    NotRetryable,
    /// The retry token bucket for this target is too low (gRFC A6 throttling).
    Throttled,
    /// The next delay would end past the call's deadline.
    Deadline,
    /// Response headers arrived: the call was handed to the caller.
    Committed,
    /// The server's `grpc-retry-pushback-ms` said not to retry.
    PushbackSaidNo,
    /// The call cannot be replayed (client or bidi streaming, an unknown method, a large request).
    NotReplayable,
}

impl StopReason {
    /// A short lower-case name, e.g. `exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Exhausted => "exhausted",
            StopReason::NotRetryable => "not retryable",
            StopReason::Throttled => "throttled",
            StopReason::Deadline => "deadline",
            StopReason::Committed => "committed",
            StopReason::PushbackSaidNo => "pushback said no",
            StopReason::NotReplayable => "not replayable",
        }
    }

    pub(crate) fn from_str(s: &str) -> Option<Self> {
        [
            StopReason::Exhausted,
            StopReason::NotRetryable,
            StopReason::Throttled,
            StopReason::Deadline,
            StopReason::Committed,
            StopReason::PushbackSaidNo,
            StopReason::NotReplayable,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One attempt of a call, as the retry loop saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The attempt's status code (`OK` for the attempt that committed).
    pub code: tonic::Code,
    /// Its status message.
    pub message: String,
    /// How long the loop waited before making it (zero for the first).
    pub delay_before: Duration,
    /// `true` when the server refused this attempt's stream before processing
    /// it (`REFUSED_STREAM`, or a stream above a graceful `GOAWAY`): the loop
    /// sends it once more at once, without counting it against `max_attempts`.
    pub refused: bool,
}

/// State shared by the layers of one call (cloned with the request extensions
/// into every attempt).
#[derive(Debug, Clone)]
pub(crate) struct CallState(Arc<CallStateInner>);

/// `CallStateInner::attempts` of a call that was never sent.
const UNSENT: u32 = u32::MAX;

#[derive(Debug)]
struct CallStateInner {
    start: Instant,
    request_id: Arc<str>,
    attempts: AtomicU32,
    retryable: AtomicU8,
    history: std::sync::Mutex<History>,
    stop: std::sync::Mutex<Option<StopReason>>,
    /// The call's deadline as nanoseconds after `start`; `u64::MAX` when unset.
    deadline_nanos: AtomicU64,
}

/// The attempt history: the first attempt inline (most calls have one, and
/// recording it then costs no allocation), the rest in a vector.
#[derive(Debug, Default)]
struct History {
    first: Option<AttemptRecord>,
    rest: Vec<AttemptRecord>,
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
            history: std::sync::Mutex::new(History::default()),
            stop: std::sync::Mutex::new(None),
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

    /// Records that the call ends without being sent (its deadline passed
    /// before it reached the retry layer, e.g. while it waited in line).
    pub(crate) fn record_unsent(&self) {
        self.0.attempts.store(UNSENT, Ordering::Relaxed);
    }

    /// Attempts made so far: 0 for a call never sent, else at least 1.
    pub(crate) fn attempts(&self) -> u32 {
        match self.0.attempts.load(Ordering::Relaxed) {
            UNSENT => 0,
            n => n.max(1),
        }
    }

    /// Appends one attempt to the history.
    pub(crate) fn record_history(&self, record: AttemptRecord) {
        if let Ok(mut h) = self.0.history.lock() {
            match h.first {
                None => h.first = Some(record),
                Some(_) => h.rest.push(record),
            }
        }
    }

    /// The attempts so far.
    pub(crate) fn history(&self) -> Vec<AttemptRecord> {
        self.0
            .history
            .lock()
            .map(|h| h.first.iter().chain(&h.rest).cloned().collect())
            .unwrap_or_default()
    }

    /// Records why the loop stopped.
    pub(crate) fn record_stop(&self, reason: StopReason) {
        if let Ok(mut s) = self.0.stop.lock() {
            *s = Some(reason);
        }
    }

    /// Why the loop stopped, if it did.
    pub(crate) fn stop(&self) -> Option<StopReason> {
        self.0.stop.lock().ok().and_then(|s| *s)
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
    pub(crate) const STOP: &str = "ameide-sdk-stop";
    pub(crate) const HISTORY: &str = "ameide-sdk-history-bin";
}

/// Attempt history as text: one `code,delay_ms,message` line per attempt, the
/// message percent-encoded, `delay_ms` suffixed `r` for a refused stream. Carried in the failed status's metadata.
pub(crate) fn encode_history(history: &[AttemptRecord]) -> String {
    use percent_encoding::{CONTROLS, utf8_percent_encode};
    const SET: &percent_encoding::AsciiSet = &CONTROLS.add(b',').add(b'%');
    history
        .iter()
        .map(|r| {
            format!(
                "{},{}{},{}",
                r.code as i32,
                r.delay_before.as_millis(),
                if r.refused { "r" } else { "" },
                utf8_percent_encode(&r.message, SET)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The inverse of [`encode_history`]; malformed lines are skipped.
pub(crate) fn decode_history(text: &str) -> Vec<AttemptRecord> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ',');
            let code = tonic::Code::from_i32(parts.next()?.parse().ok()?);
            let delay = parts.next()?;
            let (delay, refused) = match delay.strip_suffix('r') {
                Some(d) => (d, true),
                None => (delay, false),
            };
            let delay = Duration::from_millis(delay.parse().ok()?);
            let message = percent_encoding::percent_decode_str(parts.next().unwrap_or_default())
                .decode_utf8_lossy()
                .into_owned();
            Some(AttemptRecord {
                code,
                message,
                delay_before: delay,
                refused,
            })
        })
        .collect()
}
