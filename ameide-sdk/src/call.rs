//! Per-call options a caller attaches to one request, and the per-call state the
//! layers share through request extensions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
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
    pub(crate) request_id: Option<String>,
    session_id: Option<String>,
    headers: Vec<(String, String)>,
    safe_retries: Option<bool>,
    idle_timeout: Option<Duration>,
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

    /// Runs this call **without the client's whole-call deadline**, guarded
    /// by an idle timeout instead: the call ends with `DEADLINE_EXCEEDED`
    /// ("idle timeout") when nothing arrives from the server within `idle` —
    /// neither the response headers nor a message of the stream — and lives
    /// as long as the server keeps sending. For long-lived streams (a
    /// `Generate` streaming tokens for minutes, a watch). No `grpc-timeout`
    /// is sent, unless [`timeout`](Self::timeout) is set too: then both
    /// apply. A call made while serving an inbound request still ends at
    /// that request's deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// let request = ameide_sdk::CallOptions::new()
    ///     .idle_timeout(Duration::from_secs(30))
    ///     .into_request(())?;
    /// assert!(request.metadata().get("grpc-timeout").is_none());
    /// let bad = ameide_sdk::CallOptions::new().idle_timeout(Duration::ZERO).into_request(());
    /// assert!(bad.unwrap_err().to_string().contains("idle timeout"));
    /// # Ok::<(), ameide_sdk::ConfigError>(())
    /// ```
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
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

    /// Safe-retry mode for this call (see `layers::RetryPolicy::with_safe_retries`),
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
        if let Some(idle) = self.idle_timeout {
            crate::config::validate_timeout("per-call idle timeout", idle)?;
            request.extensions_mut().insert(IdleTimeout(idle));
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

/// The bundle's method of a request: from its [`CallState`] (looked up once
/// per call by the metadata layer), else from the method table (a layer used
/// alone). The method table is a binary search over the paths; every layer
/// asking it again per call cost about 400 instructions each.
pub(crate) fn method_of(
    request: &http::Request<tonic::body::Body>,
) -> Option<&'static ameide_proto::MethodInfo> {
    match request.extensions().get::<CallState>() {
        Some(state) => state.method(),
        None => ameide_proto::method(request.uri().path()),
    }
}

/// The call's deadline as the layers under the timeout layer see it: the
/// [`CallState`]'s, else a [`Deadline`] extension (layers used alone).
pub(crate) fn deadline_of(
    request: &http::Request<tonic::body::Body>,
) -> Option<tokio::time::Instant> {
    deadline_in(request.extensions().get::<CallState>(), request)
}

/// [`deadline_of`] for a caller that has looked the [`CallState`] up already.
pub(crate) fn deadline_in(
    state: Option<&CallState>,
    request: &http::Request<tonic::body::Body>,
) -> Option<tokio::time::Instant> {
    state
        .and_then(CallState::deadline)
        .or_else(|| request.extensions().get::<Deadline>().map(|d| d.0))
}

/// How an attempt dropped unfinished ended: `DEADLINE_EXCEEDED` when the
/// timeout layer cut the call (its deadline passed, or under an idle
/// timeout nothing arrived for that long; the caller is told
/// DEADLINE_EXCEEDED either way), else `CANCELLED` (the caller went away).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cut {
    deadline: Option<tokio::time::Instant>,
    state: Option<CallState>,
}

impl Cut {
    /// What the layers under the timeout layer know of a request: its
    /// deadline and (in a client's stack) its call state.
    pub(crate) fn of(
        state: Option<&CallState>,
        request: &http::Request<tonic::body::Body>,
    ) -> Self {
        Cut {
            deadline: deadline_in(state, request),
            state: state.cloned(),
        }
    }

    /// The code of an attempt or stream dropped unfinished now.
    pub(crate) fn code(&self) -> tonic::Code {
        let past = self
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d);
        if past || self.state.as_ref().is_some_and(CallState::was_cut) {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Cancelled
        }
    }
}

/// Per-call timeout, set by [`CallOptions::timeout`]; read by the timeout layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallTimeout(pub(crate) Duration);

/// Per-call idle timeout, set by [`CallOptions::idle_timeout`]: no
/// whole-call deadline unless a timeout is set too; read by the timeout layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleTimeout(pub(crate) Duration);

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
/// use ameide_sdk::CallInfo;
/// let response = client.graph().list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default()).await?;
/// let info = response.extensions().get::<CallInfo>().unwrap();
/// println!("request {} took {} attempt(s)", info.request_id, info.attempts);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
}

/// One attempt of a call, as the retry loop saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// What an [`ErrorStamp`](ameide_proto::codec::ErrorStamp) filled by
/// [`CallState::fill_stamp`] does to an error: one the layers stamped already
/// stays as it is; one tonic raised above them (the response could not be
/// decoded or decompressed, or a unary response had no message) is the
/// client's own verdict on this response, not retryable (the same response
/// fails the same way), gets the call's facts, and its code is kept for
/// the call metric.
fn stamp_raised_above(
    call: &Arc<dyn std::any::Any + Send + Sync>,
    status: tonic::Status,
) -> tonic::Status {
    if facts_of(&status).is_some() {
        return status;
    }
    let Ok(inner) = call.clone().downcast::<CallStateInner>() else {
        return status;
    };
    let state = CallState(inner);
    state.record_retryable(false);
    let _ = state.0.failed_above.compare_exchange(
        NO_FAILURE_ABOVE,
        status.code() as i32,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    CallFacts::of(&state).attach(status)
}

/// `CallStateInner::attempts` of a call that was never sent.
const UNSENT: u32 = u32::MAX;

#[derive(Debug)]
struct CallStateInner {
    start: Instant,
    request_id: Arc<str>,
    /// The bundle's method of the call's path, looked up once per call.
    method: Option<&'static ameide_proto::MethodInfo>,
    attempts: AtomicU32,
    retryable: AtomicU8,
    history: std::sync::Mutex<History>,
    stop: std::sync::Mutex<Option<StopReason>>,
    /// The call's deadline as nanoseconds after `start`; `u64::MAX` when unset.
    deadline_nanos: AtomicU64,
    /// The metadata layer records the committed attempt's end (it has the
    /// metrics and sees the response stream end): set by it, read by the
    /// metrics layer, which then hands that attempt over instead of wrapping
    /// its response body.
    records_attempts: AtomicBool,
    /// The committed attempt handed over: its start (nanoseconds after
    /// `start`; `u64::MAX` when none) and its request message bytes.
    committed_start_nanos: AtomicU64,
    committed_sent: AtomicU64,
    /// The code of an error raised above the layers (tonic could not decode
    /// or decompress the response, or a unary response had no message), as
    /// `i32`; `NO_FAILURE_ABOVE` when none. The metadata layer's response
    /// body records it instead of CANCELLED when tonic then drops the body.
    failed_above: std::sync::atomic::AtomicI32,
    /// The timeout layer cut the call (its deadline, or its idle timeout).
    cut: AtomicBool,
    /// The replicas (subchannel ids) the balancer gave the last attempts,
    /// a ring of [`AVOIDED_REPLICAS`]; 0: none. A retry or a hedge prefers
    /// another.
    replicas: [std::sync::atomic::AtomicUsize; AVOIDED_REPLICAS],
    /// How many replicas were recorded (the ring's next slot).
    replica_turn: AtomicU32,
    /// The call is hedged (gRFC A6): its attempts after the first are hedges.
    hedged: AtomicBool,
    /// Transparent retries (refused streams sent again).
    transparent_retries: AtomicU32,
    /// Time with no attempt out, between attempts (gRFC A96's retry delay).
    retry_delay_nanos: AtomicU64,
}

/// How many of a call's last replicas a retry or hedge avoids (gRFC A6's
/// most hedged attempts, less the one being picked, and one to spare).
pub(crate) const AVOIDED_REPLICAS: usize = 4;

/// `CallStateInner::failed_above` when nothing failed above the layers.
const NO_FAILURE_ABOVE: i32 = -1;

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
    pub(crate) fn new(
        start: Instant,
        request_id: Arc<str>,
        method: Option<&'static ameide_proto::MethodInfo>,
    ) -> Self {
        CallState(Arc::new(CallStateInner {
            start,
            request_id,
            method,
            attempts: AtomicU32::new(0),
            retryable: AtomicU8::new(RETRYABLE_UNKNOWN),
            history: std::sync::Mutex::new(History::default()),
            stop: std::sync::Mutex::new(None),
            deadline_nanos: AtomicU64::new(u64::MAX),
            records_attempts: AtomicBool::new(false),
            committed_start_nanos: AtomicU64::new(u64::MAX),
            committed_sent: AtomicU64::new(0),
            failed_above: std::sync::atomic::AtomicI32::new(NO_FAILURE_ABOVE),
            cut: AtomicBool::new(false),
            replicas: Default::default(),
            replica_turn: AtomicU32::new(0),
            hedged: AtomicBool::new(false),
            transparent_retries: AtomicU32::new(0),
            retry_delay_nanos: AtomicU64::new(0),
        }))
    }

    /// Fills a generated client's [`ErrorStamp`](ameide_proto::codec::ErrorStamp)
    /// with this call: errors tonic raises above the layers then carry the
    /// call's facts.
    pub(crate) fn fill_stamp(&self, stamp: &ameide_proto::codec::ErrorStamp) {
        let call: Arc<dyn std::any::Any + Send + Sync> = self.0.clone();
        stamp.fill(call, stamp_raised_above);
    }

    /// The timeout layer cut the call (deadline or idle timeout).
    pub(crate) fn mark_cut(&self) {
        self.0.cut.store(true, Ordering::Relaxed);
    }

    /// The replicas the balancer gave the call's last attempts (0: none):
    /// a retry or a hedge prefers another.
    pub(crate) fn replicas(&self) -> [usize; AVOIDED_REPLICAS] {
        std::array::from_fn(|i| self.0.replicas[i].load(Ordering::Relaxed))
    }

    /// Records the replica an attempt goes to.
    pub(crate) fn set_replica(&self, id: usize) {
        // A load and a store: two attempts racing may share a slot, which
        // only forgets one replica of the ring.
        let turn = self.0.replica_turn.load(Ordering::Relaxed);
        self.0
            .replica_turn
            .store(turn.wrapping_add(1), Ordering::Relaxed);
        self.0.replicas[turn as usize % AVOIDED_REPLICAS].store(id, Ordering::Relaxed);
    }

    /// Marks the call hedged (gRFC A6).
    pub(crate) fn set_hedged(&self) {
        self.0.hedged.store(true, Ordering::Relaxed);
    }

    /// Whether the call is hedged.
    pub(crate) fn hedged(&self) -> bool {
        self.0.hedged.load(Ordering::Relaxed)
    }

    /// Counts a transparent retry (a refused stream sent again).
    pub(crate) fn record_transparent_retry(&self) {
        self.0.transparent_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The transparent retries of the call.
    pub(crate) fn transparent_retries(&self) -> u32 {
        self.0.transparent_retries.load(Ordering::Relaxed)
    }

    /// Adds time spent with no attempt out (a retry's backoff, a pushback).
    pub(crate) fn add_retry_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .retry_delay_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(nanos))
            });
    }

    /// The time the call spent with no attempt out.
    pub(crate) fn retry_delay(&self) -> Duration {
        Duration::from_nanos(self.0.retry_delay_nanos.load(Ordering::Relaxed))
    }

    /// Whether the timeout layer cut the call.
    pub(crate) fn was_cut(&self) -> bool {
        self.0.cut.load(Ordering::Relaxed)
    }

    /// The code of an error raised above the layers, if one was.
    pub(crate) fn failed_above(&self) -> Option<tonic::Code> {
        match self.0.failed_above.load(Ordering::Relaxed) {
            NO_FAILURE_ABOVE => None,
            code => Some(tonic::Code::from_i32(code)),
        }
    }

    pub(crate) fn start(&self) -> Instant {
        self.0.start
    }

    /// Says that the metadata layer records the committed attempt's end.
    pub(crate) fn set_records_attempts(&self) {
        self.0.records_attempts.store(true, Ordering::Relaxed);
    }

    /// Whether the metadata layer records the committed attempt's end.
    pub(crate) fn records_attempts(&self) -> bool {
        self.0.records_attempts.load(Ordering::Relaxed)
    }

    /// Hands the committed attempt (begun at `at`, `sent` request bytes)
    /// to the metadata layer, which records its end with the call's.
    pub(crate) fn hand_over_attempt(&self, at: Instant, sent: u64) {
        let nanos = at.saturating_duration_since(self.0.start).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.0.committed_sent.store(sent, Ordering::Relaxed);
        self.0.committed_start_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The committed attempt handed over, if one was: its start and sent bytes.
    pub(crate) fn take_committed_attempt(&self) -> Option<(Instant, u64)> {
        match self
            .0
            .committed_start_nanos
            .swap(u64::MAX, Ordering::Relaxed)
        {
            u64::MAX => None,
            nanos => Some((
                self.0.start + Duration::from_nanos(nanos),
                self.0.committed_sent.load(Ordering::Relaxed),
            )),
        }
    }

    /// The bundle's method of the call (kind, idempotency, names), if any.
    pub(crate) fn method(&self) -> Option<&'static ameide_proto::MethodInfo> {
        self.0.method
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

/// What the SDK knows about a failed call, carried *in-process* as the
/// source of its `tonic::Status` (see [`crate::Error`]).
///
/// tonic never writes a status's source on the wire, so a service that
/// returns a downstream failure to its own caller (`?` in a handler) sends
/// the code, message, details and metadata it received, and nothing of the
/// SDK's own bookkeeping (contract §8). Nor can a peer forge these facts: they
/// are never read from metadata.
#[derive(Debug, Clone)]
pub(crate) struct CallFacts {
    pub(crate) request_id: Arc<str>,
    pub(crate) attempts: u32,
    pub(crate) elapsed: Duration,
    pub(crate) retryable: Option<bool>,
    pub(crate) stop: Option<StopReason>,
    pub(crate) history: Vec<AttemptRecord>,
    /// Why the status details the peer sent were dropped, if they were.
    pub(crate) details_error: Option<Arc<str>>,
    /// The status as it was before the facts were attached, kept only when it
    /// had a source of its own (a transport error): the facts hand that source on.
    pub(crate) cause: Option<tonic::Status>,
}

impl CallFacts {
    /// The facts of `state` at this moment.
    pub(crate) fn of(state: &CallState) -> Self {
        CallFacts {
            request_id: state.request_id_arc(),
            attempts: state.attempts(),
            elapsed: state.start().elapsed(),
            retryable: state.retryable(),
            stop: state.stop(),
            history: state.history(),
            details_error: None,
            cause: None,
        }
    }

    /// Attaches these facts to `status` as its source, keeping any source it had
    /// reachable behind them.
    pub(crate) fn attach(mut self, mut status: tonic::Status) -> tonic::Status {
        if facts_of(&status).is_some() {
            // Already stamped (handed through a second metadata layer): the
            // first facts are the call's.
            return status;
        }
        if std::error::Error::source(&status).is_some() {
            self.cause = Some(status.clone());
        }
        status.set_source(Arc::new(self));
        status
    }
}

/// The facts attached to `status`, if the SDK attached any.
pub(crate) fn facts_of(status: &tonic::Status) -> Option<&CallFacts> {
    std::error::Error::source(status)?.downcast_ref::<CallFacts>()
}

impl std::fmt::Display for CallFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ameide-sdk call facts: request_id={}, attempts={}, elapsed={}ms",
            self.request_id,
            self.attempts,
            self.elapsed.as_millis()
        )
    }
}

impl std::error::Error for CallFacts {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_ref()
            .and_then(|status| std::error::Error::source(status))
    }
}
