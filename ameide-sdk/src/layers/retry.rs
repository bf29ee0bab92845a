//! Retry layer: replays a call on retryable codes until it is committed.
//!
//! | Rule | Default (contract §4) |
//! |---|---|
//! | attempts | at most 3, the first included |
//! | delay before attempt *n* ≥ 2 | `min(250 ms × 2^(n−2), 5 s)` × a random factor in [0.5, 1.5] |
//! | retried codes | `UNAVAILABLE`, `DEADLINE_EXCEEDED` (from the server, while budget remains), `ABORTED`, `RESOURCE_EXHAUSTED`; a transport error before any response counts as `UNAVAILABLE` |
//! | replayable calls | unary and server-streaming (one request message, buffered up to 4 MiB); client- and bidi-streaming calls, unknown paths and larger requests are sent once |
//! | committed | once response headers without a status arrived: the response (and its stream) is handed to the caller and never retried |
//! | on the wire | `grpc-timeout` = remaining budget on every attempt; `grpc-previous-rpc-attempts` on retries |
//! | budget | a delay that would end past the call's deadline is not slept: the last status is returned at once |
//! | exhausted | the caller gets the last attempt's original status (the metadata layer attaches the attempt count) |
//! | server hints (beyond the contract) | `grpc-retry-pushback-ms` ≥ 0: wait exactly that long and restart the backoff; negative or malformed: do not retry. `google.rpc.RetryInfo`: wait at least its delay. A hinted delay past the deadline fails at once with the last status |
//! | throttling (beyond the contract, on by default) | gRFC A6 token bucket per target ([`ThrottleConfig`]: 10 tokens, 0.1 per success); a retry needs more than half the tokens; only failures the server (or a proxy for it) answered with are charged, transport failures are not; `with_throttling(None)` switches it off |
//! | safe-retry mode (off by default) | DEADLINE_EXCEEDED, ABORTED and server-sent UNAVAILABLE retried only for `NO_SIDE_EFFECTS`/`IDEMPOTENT` methods; per client or per call |
//! | history | every attempt's code, message and preceding delay, and the [`crate::StopReason`], reach [`crate::Error`] |
//!
//! Sleep and randomness are injectable ([`Sleeper`], [`Jitter`]) so tests can
//! drive time (tokio's paused clock works with the default sleeper too).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::Frame;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceExt};

use super::{
    BoxError, Delivery, HttpRequest, HttpResponse, classify_error, names, status_response,
    trailers_only_status,
};
use crate::auth::BoxFuture;
use crate::call::{AttemptRecord, CallState, Deadline, SafeRetries, StopReason};
use crate::config_error::{ConfigError, ConfigErrorKind};
use crate::grpc_timeout::encode_grpc_timeout;

/// When and how often to retry.
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::layers::RetryPolicy;
/// let policy = RetryPolicy::default();
/// assert_eq!(policy.max_attempts(), 3);
/// assert_eq!(policy.base_delay(2), Duration::from_millis(250));
/// assert_eq!(policy.base_delay(3), Duration::from_millis(500));
/// assert!(policy.retries(tonic::Code::Unavailable));
/// assert!(!policy.retries(tonic::Code::Internal));
///
/// let custom = RetryPolicy::default().with_max_attempts(5).with_initial_backoff(Duration::from_millis(100));
/// assert!(custom.validate().is_ok());
/// assert!(RetryPolicy::default().with_max_attempts(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    multiplier: f64,
    max_backoff: Duration,
    jitter: (f64, f64),
    retryable: Vec<Code>,
    max_replay_bytes: usize,
    safe: bool,
    throttle: Option<ThrottleConfig>,
}

/// The longest `max_backoff` accepted (with the other bounds below, checked
/// by [`RetryPolicy::validate`]).
///
/// ```
/// use ameide_sdk::layers::{retry, RetryPolicy};
/// let too_long = RetryPolicy::default().with_max_backoff(retry::MAX_BACKOFF * 2);
/// assert!(too_long.validate().unwrap_err().to_string().contains("max_backoff"));
/// let too_steep = RetryPolicy::default().with_multiplier(retry::MAX_MULTIPLIER * 2.0);
/// assert!(too_steep.validate().is_err());
/// let too_wide = RetryPolicy::default().with_jitter(0.5, retry::MAX_JITTER + 1.0);
/// assert!(too_wide.validate().is_err());
/// let too_big = RetryPolicy::default().with_max_replay_bytes(retry::MAX_REPLAY_BYTES + 1);
/// assert!(too_big.validate().is_err());
/// assert_eq!(retry::MAX_HINT_WITHOUT_DEADLINE.as_secs(), 3600);
/// ```
pub const MAX_BACKOFF: Duration = crate::config::MAX_TIMEOUT;
/// The largest backoff multiplier accepted.
pub const MAX_MULTIPLIER: f64 = 100.0;
/// The largest jitter factor accepted.
pub const MAX_JITTER: f64 = 10.0;
/// The largest request buffered for replay.
pub const MAX_REPLAY_BYTES: usize = 256 * 1024 * 1024;
/// Without a deadline (the layer used alone), a server's retry hint longer
/// than this stops retrying instead of sleeping.
pub const MAX_HINT_WITHOUT_DEADLINE: Duration = Duration::from_secs(3600);

/// gRFC A6 retry throttling: a token bucket per target. Every failed attempt
/// with a retryable code (or a pushback) costs one token, every success adds
/// `token_ratio`; retries are allowed only while more than half of
/// `max_tokens` remain. When a target is failing broadly, clients back off
/// together instead of tripling its load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Bucket size (and starting level), 1 ..= 1000.
    pub max_tokens: f64,
    /// Tokens a success adds back, in (0, 1].
    pub token_ratio: f64,
}

impl Default for ThrottleConfig {
    /// 10 tokens, 0.1 per success: after 5 straight failures retries pause
    /// until about 10 successes have come back per token spent.
    fn default() -> Self {
        ThrottleConfig {
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        use crate::contract as c;
        RetryPolicy {
            max_attempts: c::RETRY_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(c::RETRY_INITIAL_BACKOFF_MS),
            multiplier: c::RETRY_BACKOFF_MULTIPLIER,
            max_backoff: Duration::from_millis(c::RETRY_MAX_BACKOFF_MS),
            jitter: (c::RETRY_JITTER_MIN, c::RETRY_JITTER_MAX),
            retryable: vec![
                Code::Unavailable,
                Code::DeadlineExceeded,
                Code::Aborted,
                Code::ResourceExhausted,
            ],
            max_replay_bytes: 4 * 1024 * 1024,
            safe: false,
            throttle: Some(ThrottleConfig::default()),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn disabled() -> Self {
        Self::default().with_max_attempts(1)
    }

    /// Sets the attempt limit (the first attempt included).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the delay before the second attempt (before jitter).
    pub fn with_initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// Sets the growth factor of the delay.
    pub fn with_multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }

    /// Sets the delay cap (before jitter).
    pub fn with_max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Sets the range of the random factor each delay is multiplied by.
    pub fn with_jitter(mut self, min: f64, max: f64) -> Self {
        self.jitter = (min, max);
        self
    }

    /// Sets the codes that are retried.
    pub fn with_retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable = codes.into_iter().collect();
        self
    }

    /// Sets the largest request that is buffered for replay; larger ones are sent once.
    pub fn with_max_replay_bytes(mut self, bytes: usize) -> Self {
        self.max_replay_bytes = bytes;
        self
    }

    /// Safe-retry mode: DEADLINE_EXCEEDED, ABORTED and UNAVAILABLE sent by the
    /// server are retried only for `NO_SIDE_EFFECTS` and `IDEMPOTENT` methods,
    /// because the server may have acted on the request. UNAVAILABLE from the
    /// transport (the request never got a response: connect failure, refused
    /// stream) and RESOURCE_EXHAUSTED stay retryable for every method. Off by
    /// default, which is the contract's behaviour: fewer spurious failures, at
    /// the price of possibly repeating a non-idempotent write.
    pub fn with_safe_retries(mut self, safe: bool) -> Self {
        self.safe = safe;
        self
    }

    /// Sets (or with `None` switches off) retry throttling.
    pub fn with_throttling(mut self, throttle: Option<ThrottleConfig>) -> Self {
        self.throttle = throttle;
        self
    }

    /// Whether safe-retry mode is on.
    pub fn safe_retries(&self) -> bool {
        self.safe
    }

    /// Checks every parameter; the error names the bad one and the valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::new(ConfigErrorKind::Retry, m));
        if !(1..=10).contains(&self.max_attempts) {
            return err(format!(
                "retry max_attempts {} must be within 1..=10",
                self.max_attempts
            ));
        }
        if self.max_backoff > MAX_BACKOFF {
            return err(format!(
                "retry max_backoff {:?} must be at most {MAX_BACKOFF:?}",
                self.max_backoff
            ));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return err(format!(
                "retry initial_backoff {:?} must be > 0 and <= max_backoff {:?}",
                self.initial_backoff, self.max_backoff
            ));
        }
        if !(self.multiplier.is_finite() && (1.0..=MAX_MULTIPLIER).contains(&self.multiplier)) {
            return err(format!(
                "retry multiplier {} must be within 1..={MAX_MULTIPLIER}",
                self.multiplier
            ));
        }
        let (lo, hi) = self.jitter;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= MAX_JITTER) {
            return err(format!(
                "retry jitter [{lo}, {hi}] must satisfy 0 <= min <= max <= {MAX_JITTER}"
            ));
        }
        if self.retryable.contains(&Code::Ok) {
            return err("retry codes must not include OK: an OK call is never retried".into());
        }
        if self.max_replay_bytes > MAX_REPLAY_BYTES {
            return err(format!(
                "retry max_replay_bytes {} must be at most {MAX_REPLAY_BYTES}",
                self.max_replay_bytes
            ));
        }
        if let Some(t) = self.throttle
            && !(t.max_tokens.is_finite()
                && (1.0..=1000.0).contains(&t.max_tokens)
                && t.token_ratio > 0.0
                && t.token_ratio <= 1.0)
        {
            return err(format!(
                "retry throttling max_tokens {} must be within 1..=1000 and token_ratio {} within (0, 1]",
                t.max_tokens, t.token_ratio
            ));
        }
        Ok(())
    }

    /// The attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether `code` is retried.
    pub fn retries(&self, code: Code) -> bool {
        self.retryable.contains(&code)
    }

    /// The jitter range.
    pub fn jitter(&self) -> (f64, f64) {
        self.jitter
    }

    /// The delay before attempt `attempt` (≥ 2), before jitter: never more
    /// than `max_backoff`, whatever the parameters (the arithmetic saturates).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(2).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        crate::time::secs_f64(secs).min(self.max_backoff)
    }

    /// The delay before attempt `attempt` (≥ 2) with jitter `factor`: the
    /// base delay times the factor, the factor held inside the policy's
    /// jitter range (a factor that is not a number counts as 1).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::RetryPolicy;
    /// let policy = RetryPolicy::default(); // 250 ms ×2 up to 5 s, jitter [0.5, 1.5]
    /// assert_eq!(policy.delay(2, 1.0), Duration::from_millis(250));
    /// assert_eq!(policy.delay(3, 99.0), Duration::from_millis(750), "factor held to 1.5");
    /// assert_eq!(policy.delay(u32::MAX, f64::NAN), Duration::from_secs(5), "capped, NaN is 1");
    /// ```
    pub fn delay(&self, attempt: u32, factor: f64) -> Duration {
        let (lo, hi) = self.jitter;
        let factor = if factor.is_finite() { factor } else { 1.0 };
        crate::time::mul_f64(self.base_delay(attempt), factor.clamp(lo, hi))
    }
}

/// The token bucket of one target (see [`ThrottleConfig`]).
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    tokens: std::sync::Mutex<f64>,
}

impl Throttle {
    fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config,
            tokens: std::sync::Mutex::new(config.max_tokens),
        }
    }

    /// The bucket shared by every retry layer for `target` with the same
    /// configuration (clients built separately for one target share it).
    pub fn for_target(target: &str, config: ThrottleConfig) -> Arc<Throttle> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock, Weak};
        static BUCKETS: OnceLock<Mutex<HashMap<String, Weak<Throttle>>>> = OnceLock::new();
        let key = format!("{target}|{}|{}", config.max_tokens, config.token_ratio);
        let mut buckets = BUCKETS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = buckets.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let bucket = Arc::new(Throttle::new(config));
        buckets.insert(key, Arc::downgrade(&bucket));
        bucket
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allows_retry(&self) -> bool {
        self.tokens() > self.config.max_tokens / 2.0
    }

    fn failure(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t - 1.0).max(0.0);
    }

    fn success(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + self.config.token_ratio).min(self.config.max_tokens);
    }
}

/// Sleeps between attempts. The default uses `tokio::time::sleep` (paused-clock aware).
pub trait Sleeper: Send + Sync + 'static {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Picks the random factor of each delay.
pub trait Jitter: Send + Sync + 'static {
    /// A factor in `[min, max]`.
    fn factor(&self, min: f64, max: f64) -> f64;
}

#[derive(Debug)]
struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[derive(Debug)]
struct UniformJitter;

impl Jitter for UniformJitter {
    fn factor(&self, min: f64, max: f64) -> f64 {
        min + fastrand::f64() * (max - min)
    }
}

impl<F: Fn(f64, f64) -> f64 + Send + Sync + 'static> Jitter for F {
    fn factor(&self, min: f64, max: f64) -> f64 {
        // The policy clamps again (and treats NaN as 1): a closure cannot
        // push a delay outside the range.
        self(min, max)
    }
}

/// Retries per a [`RetryPolicy`], driven by the bundle's method table.
///
/// ```
/// use ameide_sdk::layers::{RetryLayer, RetryPolicy};
/// let layer = RetryLayer::new(RetryPolicy::default())?.with_jitter(|_min: f64, _max: f64| 1.0);
/// # let _ = layer;
/// # Ok::<(), ameide_sdk::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    sleeper: Arc<dyn Sleeper>,
    jitter: Arc<dyn Jitter>,
    throttle: Option<Arc<Throttle>>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// A layer applying `policy`, after validating it.
    pub fn new(policy: RetryPolicy) -> Result<Self, ConfigError> {
        policy.validate()?;
        Ok(RetryLayer {
            throttle: policy.throttle.map(|c| Arc::new(Throttle::new(c))),
            policy: Arc::new(policy),
            sleeper: Arc::new(TokioSleeper),
            jitter: Arc::new(UniformJitter),
        })
    }

    /// Shares the throttling bucket with every other layer built for `target`
    /// (the client does this for its endpoint).
    pub fn for_target(mut self, target: &str) -> Self {
        self.throttle = self
            .policy
            .throttle
            .map(|c| Throttle::for_target(target, c));
        self
    }

    /// The throttling bucket, when throttling is on.
    pub fn throttle(&self) -> Option<&Arc<Throttle>> {
        self.throttle.as_ref()
    }

    /// Overrides the policy's safe-retry mode.
    pub(crate) fn safe_retries(mut self, safe: bool) -> Self {
        Arc::make_mut(&mut self.policy).safe = safe;
        self
    }

    /// Replaces how the layer sleeps between attempts.
    pub fn with_sleeper(mut self, sleeper: impl Sleeper) -> Self {
        self.sleeper = Arc::new(sleeper);
        self
    }

    /// Replaces how the layer picks the jitter factor.
    pub fn with_jitter(mut self, jitter: impl Jitter) -> Self {
        self.jitter = Arc::new(jitter);
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    layer: RetryLayer,
}

impl<S> fmt::Debug for RetryService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S> Service<HttpRequest> for RetryService<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let replayable =
            ameide_proto::method(request.uri().path()).is_some_and(|m| m.kind.has_single_request());
        let state = request.extensions().get::<CallState>().cloned();
        if !replayable {
            if let Some(state) = &state {
                state.record_attempt(1);
                state.record_stop(StopReason::NotReplayable);
            }
            let future = self.inner.call(request);
            return Box::pin(async move { future.await.map_err(Into::into) });
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(retry_loop(inner, request, self.layer.clone(), state))
    }
}

/// A request body read into memory for replay, or given back when too large.
pub(crate) enum Buffered {
    /// The whole body.
    Complete(Bytes),
    /// The bytes read so far, then the rest, unbuffered.
    TooLarge(tonic::body::Body),
}

/// Reads `body` into memory, up to `limit` bytes.
pub(crate) async fn buffer(mut body: tonic::body::Body, limit: usize) -> Result<Buffered, Status> {
    // A unary request is one data frame: keep it as is (no copy, no
    // allocation); only a body of several frames is gathered into one buffer.
    let mut single: Option<Bytes> = None;
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            if single.is_none() && collected.is_empty() {
                single = Some(data);
            } else {
                if let Some(first) = single.take() {
                    collected.extend_from_slice(&first);
                }
                collected.extend_from_slice(&data);
            }
            let len = single.as_ref().map_or(collected.len(), Bytes::len);
            if len > limit {
                let prefix = single.take().unwrap_or_else(|| collected.split().freeze());
                return Ok(Buffered::TooLarge(tonic::body::Body::new(PrefixBody {
                    prefix: Some(prefix),
                    rest: body,
                })));
            }
        }
    }
    Ok(Buffered::Complete(
        single.unwrap_or_else(|| collected.freeze()),
    ))
}

/// A copy of a request (method, URI, version, headers, extensions) with `bytes` as its body.
pub(crate) fn replay_request(parts: &http::request::Parts, bytes: &Bytes) -> HttpRequest {
    replay_with(
        parts,
        bytes,
        parts.headers.clone(),
        parts.extensions.clone(),
    )
}

fn replay_with(
    parts: &http::request::Parts,
    bytes: &Bytes,
    headers: http::HeaderMap,
    extensions: http::Extensions,
) -> HttpRequest {
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes.clone(),
    )));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = headers;
    *request.extensions_mut() = extensions;
    request
}

/// The request extensions when they are only the ones tonic and this crate
/// put there: kept as plain values, so that the first attempt can take the
/// original extensions without copying them (a copy is a map and a box per
/// entry) and only a replay rebuilds them. `None` when anything else is in
/// the extensions (a user's own type): then every attempt gets a full copy.
#[derive(Default)]
struct KnownExtensions {
    state: Option<CallState>,
    method: Option<tonic::GrpcMethod<'static>>,
    safe: Option<SafeRetries>,
    session: Option<crate::call::SessionId>,
    deadline: Option<Deadline>,
    timeout: Option<crate::call::CallTimeout>,
}

impl KnownExtensions {
    fn capture(extensions: &http::Extensions) -> Option<Self> {
        let known = KnownExtensions {
            state: extensions.get::<CallState>().cloned(),
            method: extensions.get::<tonic::GrpcMethod<'static>>().cloned(),
            safe: extensions.get::<SafeRetries>().copied(),
            session: extensions.get::<crate::call::SessionId>().cloned(),
            deadline: extensions.get::<Deadline>().copied(),
            timeout: extensions.get::<crate::call::CallTimeout>().copied(),
        };
        let count = [
            known.state.is_some(),
            known.method.is_some(),
            known.safe.is_some(),
            known.session.is_some(),
            known.deadline.is_some(),
            known.timeout.is_some(),
        ]
        .into_iter()
        .filter(|&present| present)
        .count();
        (count == extensions.len()).then_some(known)
    }

    fn build(&self) -> http::Extensions {
        let mut e = http::Extensions::new();
        if let Some(v) = &self.state {
            e.insert(v.clone());
        }
        if let Some(v) = &self.method {
            e.insert(v.clone());
        }
        if let Some(v) = self.safe {
            e.insert(v);
        }
        if let Some(v) = &self.session {
            e.insert(v.clone());
        }
        if let Some(v) = self.deadline {
            e.insert(v);
        }
        if let Some(v) = self.timeout {
            e.insert(v);
        }
        e
    }
}

/// The request headers kept for replays: one flat vector (a single
/// allocation, reference-counted values) instead of a second `HeaderMap`
/// (two allocations, one of them above a kilobyte). The first attempt sends
/// the original map; a replay rebuilds one from this.
struct ReplayHeaders(Vec<(http::HeaderName, HeaderValue)>);

impl ReplayHeaders {
    fn capture(headers: &http::HeaderMap) -> Self {
        ReplayHeaders(
            headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        )
    }

    fn rebuild(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::with_capacity(self.0.len() + 2);
        for (name, value) in &self.0 {
            headers.append(name.clone(), value.clone());
        }
        headers
    }
}

fn attempt_request(
    parts: &http::request::Parts,
    bytes: &Bytes,
    attempt: u32,
    remaining: Option<Duration>,
    headers: http::HeaderMap,
    extensions: http::Extensions,
) -> HttpRequest {
    // The first attempt keeps the grpc-timeout the timeout layer set a moment
    // ago (one header value less per call); later ones send what is left.
    let fresh = attempt == 1 && headers.contains_key(names::GRPC_TIMEOUT);
    let mut request = replay_with(parts, bytes, headers, extensions);
    if let Some(remaining) = remaining.filter(|_| !fresh) {
        request
            .headers_mut()
            .insert(names::GRPC_TIMEOUT, encode_grpc_timeout(remaining));
    }
    if attempt > 1 {
        request
            .headers_mut()
            .insert(names::PREVIOUS_ATTEMPTS, HeaderValue::from(attempt - 1));
    }
    request
}

async fn retry_loop<S>(
    mut inner: S,
    request: HttpRequest,
    layer: RetryLayer,
    state: Option<CallState>,
) -> Result<HttpResponse, BoxError>
where
    S: Service<HttpRequest, Response = HttpResponse> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let policy = &layer.policy;
    let (mut parts, body) = request.into_parts();
    let deadline = state
        .as_ref()
        .and_then(CallState::deadline)
        .or_else(|| parts.extensions.get::<Deadline>().map(|d| d.0));
    let record = |n: u32| {
        if let Some(state) = &state {
            state.record_attempt(n);
        }
    };
    let bytes = match buffer(body, policy.max_replay_bytes).await {
        Ok(Buffered::Complete(bytes)) => bytes,
        Ok(Buffered::TooLarge(body)) => {
            record(1);
            let request = http::Request::from_parts(parts, body);
            return inner.oneshot(request).await.map_err(Into::into);
        }
        Err(status) => return Ok(status_response(status)),
    };

    let safe = parts
        .extensions
        .get::<SafeRetries>()
        .map_or(policy.safe, |s| s.0);
    let method_is_safe =
        ameide_proto::method(parts.uri.path()).is_some_and(|m| m.idempotency.is_safe_to_repeat());
    let known = KnownExtensions::capture(&parts.extensions);
    let mut first_extensions = known
        .as_ref()
        .map(|_| std::mem::take(&mut parts.extensions));
    let replay_headers = ReplayHeaders::capture(&parts.headers);
    // The first attempt sends the original map, later ones a rebuilt one.
    let mut first_headers = Some(std::mem::take(&mut parts.headers));
    let throttle = layer.throttle.clone();
    let note = |record: AttemptRecord| {
        if let Some(state) = &state {
            state.record_history(record);
        }
    };
    let mut attempt = 1;
    let mut backoff_step = 2; // the attempt number the next computed delay is for
    let mut delay_before = Duration::ZERO;
    let mut transparent_used = false;
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            if let Some(state) = &state {
                state.record_stop(StopReason::Deadline);
            }
            return Ok(status_response(Status::deadline_exceeded(
                "deadline exceeded before the next attempt",
            )));
        }
        record(attempt);
        let extensions = match (first_extensions.take(), &known) {
            (Some(original), _) => original,
            (None, Some(known)) => known.build(),
            (None, None) => parts.extensions.clone(),
        };
        let headers = first_headers
            .take()
            .unwrap_or_else(|| replay_headers.rebuild());
        let mut request = attempt_request(&parts, &bytes, attempt, remaining, headers, extensions);
        if transparent_used {
            // gRFC A6: the server may see how many transparent resends came before.
            request.headers_mut().insert(
                crate::transport::connection::TRANSPARENT_ATTEMPTS,
                HeaderValue::from_static("1"),
            );
        }
        let mut permanent = false;
        let (status, response, delivery) = match (&mut inner).oneshot(request).await {
            Ok(response) => match trailers_only_status(&response) {
                None => {
                    // Committed: headers arrived without a status.
                    if let Some(t) = &throttle {
                        t.success();
                    }
                    note(AttemptRecord {
                        code: Code::Ok,
                        message: String::new(),
                        delay_before,
                        refused: false,
                    });
                    if let Some(state) = &state {
                        state.record_stop(StopReason::Committed);
                    }
                    return Ok(response);
                }
                Some(status) if status.code() == Code::Ok => {
                    if let Some(t) = &throttle {
                        t.success();
                    }
                    note(AttemptRecord {
                        code: Code::Ok,
                        message: String::new(),
                        delay_before,
                        refused: false,
                    });
                    return Ok(response);
                }
                Some(status) => (status, Some(response), Delivery::Maybe),
            },
            Err(error) => {
                let failure = classify_error(error.into());
                permanent = failure.permanent;
                (failure.status, None, failure.delivery)
            }
        };
        note(AttemptRecord {
            code: status.code(),
            message: status.message().to_owned(),
            delay_before,
            refused: delivery == Delivery::Refused,
        });
        if delivery == Delivery::Refused && !transparent_used {
            // The server never processed this stream: send it again at once,
            // once per call, without spending an attempt or a throttle token.
            ::tracing::debug!(attempt, code = ?status.code(), "transparent retry of a refused stream");
            transparent_used = true;
            delay_before = Duration::ZERO;
            continue;
        }
        let pushback = response.as_ref().and_then(pushback);
        let code_retryable = policy.retries(status.code());
        let allowed_by_safety = !safe
            || method_is_safe
            || match status.code() {
                Code::DeadlineExceeded | Code::Aborted => false,
                // UNAVAILABLE is safe only when the request provably did
                // not reach the server's application.
                Code::Unavailable => delivery != Delivery::Maybe,
                _ => true,
            };
        // Only failures the server (or a proxy answering for it) produced
        // charge the throttle: a transport failure (connection refused, a
        // connection lost, a deploy's closing connection) says nothing about
        // the target's load, and charging it would run the bucket dry exactly
        // when retries should carry a deploy.
        if response.is_some()
            && (code_retryable || pushback.is_some())
            && let Some(t) = &throttle
        {
            t.failure();
        }
        let stop = |reason: StopReason, status: Status, response: Option<HttpResponse>| {
            if let Some(state) = &state {
                state.record_retryable(code_retryable);
                state.record_stop(reason);
            }
            Ok(response.unwrap_or_else(|| status_response(status)))
        };
        if !code_retryable || !allowed_by_safety || permanent {
            return stop(StopReason::NotRetryable, status, response);
        }
        if pushback == Some(Pushback::Stop) {
            return stop(StopReason::PushbackSaidNo, status, response);
        }
        if attempt >= policy.max_attempts {
            return stop(StopReason::Exhausted, status, response);
        }
        if throttle.as_ref().is_some_and(|t| !t.allows_retry()) {
            return stop(StopReason::Throttled, status, response);
        }
        let mut delay = match pushback {
            Some(Pushback::Wait(exact)) => {
                // The server said exactly how long; the backoff starts over.
                backoff_step = 2;
                exact
            }
            _ => {
                let (lo, hi) = policy.jitter;
                let computed = policy.delay(backoff_step, layer.jitter.factor(lo, hi));
                backoff_step = backoff_step.saturating_add(1);
                computed
            }
        };
        if let Some(hint) = retry_info_delay(&status) {
            delay = delay.max(hint);
        }
        // Peer-chosen delays are bounded by the deadline (and, without one,
        // by MAX_HINT_WITHOUT_DEADLINE); the instant arithmetic saturates.
        let too_late = match deadline {
            Some(d) => Instant::now().checked_add(delay).is_none_or(|at| at >= d),
            None => delay > MAX_HINT_WITHOUT_DEADLINE,
        };
        if too_late {
            ::tracing::debug!(attempt, ?delay, code = ?status.code(), "not retrying: the delay would outlive the deadline");
            return stop(StopReason::Deadline, status, response);
        }
        ::tracing::debug!(attempt, ?delay, code = ?status.code(), "retrying");
        layer.sleeper.sleep(delay).await;
        delay_before = delay;
        attempt = attempt.saturating_add(1);
    }
}

/// What `grpc-retry-pushback-ms` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Wait exactly this long, then retry.
    Wait(Duration),
    /// Do not retry (a negative or malformed value).
    Stop,
}

fn pushback(response: &HttpResponse) -> Option<Pushback> {
    let value = response.headers().get("grpc-retry-pushback-ms")?;
    Some(parse_pushback(value.as_bytes()))
}

/// A `grpc-retry-pushback-ms` value: a non-negative integer waits that long
/// (any size: the loop caps it at the deadline); anything else says stop.
pub(crate) fn parse_pushback(value: &[u8]) -> Pushback {
    let parsed = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok());
    match parsed {
        Some(ms) if ms >= 0 => Pushback::Wait(Duration::from_millis(ms.unsigned_abs())),
        _ => Pushback::Stop,
    }
}

/// The delay of a `google.rpc.RetryInfo` detail, if the status carries one.
fn retry_info_delay(status: &Status) -> Option<Duration> {
    crate::peer::retry_delay(status.details())
}

pin_project! {
    /// The bytes already read, then the rest of the body.
    struct PrefixBody {
        prefix: Option<Bytes>,
        #[pin]
        rest: tonic::body::Body,
    }
}

impl http_body::Body for PrefixBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.rest.poll_frame(cx)
    }
}
