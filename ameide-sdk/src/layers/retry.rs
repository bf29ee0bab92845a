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

use super::timeout::encode_grpc_timeout;
use super::{
    BoxError, HttpRequest, HttpResponse, names, status_from_error, status_response,
    trailers_only_status,
};
use crate::auth::BoxFuture;
use crate::call::{CallState, Deadline};
use crate::config::{ConfigError, ConfigErrorKind};

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

    /// Checks every parameter; the error names the bad one and the valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::new(ConfigErrorKind::Retry, m));
        if !(1..=10).contains(&self.max_attempts) {
            return err(format!(
                "retry max_attempts {} must be within 1..=10",
                self.max_attempts
            ));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return err(format!(
                "retry initial_backoff {:?} must be > 0 and <= max_backoff {:?}",
                self.initial_backoff, self.max_backoff
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return err(format!(
                "retry multiplier {} must be a finite number >= 1",
                self.multiplier
            ));
        }
        let (lo, hi) = self.jitter;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
            return err(format!(
                "retry jitter [{lo}, {hi}] must satisfy 0 <= min <= max"
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

    /// The delay before attempt `attempt` (≥ 2), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(2).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()))
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
        self(min, max).clamp(min, max)
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
            policy: Arc::new(policy),
            sleeper: Arc::new(TokioSleeper),
            jitter: Arc::new(UniformJitter),
        })
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
        if !replayable || self.layer.policy.max_attempts <= 1 {
            if let Some(state) = &state {
                state.record_attempt(1);
            }
            let future = self.inner.call(request);
            return Box::pin(async move { future.await.map_err(Into::into) });
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(retry_loop(inner, request, self.layer.clone(), state))
    }
}

enum Buffered {
    Complete(Bytes),
    TooLarge(tonic::body::Body),
}

async fn buffer(mut body: tonic::body::Body, limit: usize) -> Result<Buffered, Status> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
            if collected.len() > limit {
                let prefix = collected.freeze();
                return Ok(Buffered::TooLarge(tonic::body::Body::new(PrefixBody {
                    prefix: Some(prefix),
                    rest: body,
                })));
            }
        }
    }
    Ok(Buffered::Complete(collected.freeze()))
}

fn attempt_request(
    parts: &http::request::Parts,
    body: tonic::body::Body,
    attempt: u32,
    remaining: Option<Duration>,
) -> HttpRequest {
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    if let Some(remaining) = remaining {
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
    let (parts, body) = request.into_parts();
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

    let mut attempt = 1;
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            return Ok(status_response(Status::deadline_exceeded(
                "deadline exceeded before the next attempt",
            )));
        }
        record(attempt);
        let request = attempt_request(
            &parts,
            tonic::body::Body::new(http_body_util::Full::new(bytes.clone())),
            attempt,
            remaining,
        );
        let outcome = match (&mut inner).oneshot(request).await {
            Ok(response) => match trailers_only_status(&response) {
                None => return Ok(response), // committed: headers arrived without a status
                Some(status) if status.code() == Code::Ok => return Ok(response),
                Some(status) => (status, Some(response)),
            },
            Err(error) => (status_from_error(error.into()), None),
        };
        let (status, response) = outcome;
        let retryable = policy.retries(status.code());
        let finish = |status: Status, response: Option<HttpResponse>| {
            if let Some(state) = &state {
                state.record_retryable(retryable);
            }
            Ok(response.unwrap_or_else(|| status_response(status)))
        };
        if !retryable || attempt >= policy.max_attempts {
            return finish(status, response);
        }
        let (lo, hi) = policy.jitter;
        let factor = layer.jitter.factor(lo, hi).clamp(lo, hi);
        let delay = policy.base_delay(attempt + 1).mul_f64(factor);
        if deadline.is_some_and(|d| Instant::now() + delay >= d) {
            ::tracing::debug!(attempt, ?delay, code = ?status.code(), "not retrying: the backoff would outlive the deadline");
            return finish(status, response);
        }
        ::tracing::debug!(attempt, ?delay, code = ?status.code(), "retrying");
        layer.sleeper.sleep(delay).await;
        attempt += 1;
    }
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
