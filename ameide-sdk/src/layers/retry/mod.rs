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

mod attempts;
mod backoff;
mod hedging;
mod hints;
mod policy;
mod throttle;

use attempts::retry_loop;
pub use backoff::{Jitter, Sleeper};
pub(crate) use backoff::{TokioSleeper, UniformJitter};
pub(crate) use hedging::HedgeAttempt;
pub use hedging::{HedgingPolicy, MAX_HEDGED_ATTEMPTS};
#[cfg(feature = "fuzzing")]
pub(crate) use hints::parse_pushback;
pub use policy::{
    MAX_BACKOFF, MAX_HINT_WITHOUT_DEADLINE, MAX_JITTER, MAX_MULTIPLIER, MAX_REPLAY_BYTES,
    RetryPolicy,
};
pub use throttle::{Throttle, ThrottleConfig};

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::auth::BoxFuture;
use crate::call::{CallState, StopReason};
use crate::config_error::ConfigError;
use crate::layers::{BoxError, HttpRequest, HttpResponse};

/// Retries per a [`RetryPolicy`], driven by the bundle's method table.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ameide_sdk::ConfigError> {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use ameide_sdk::layers::{HttpRequest, RetryLayer, RetryPolicy};
/// use tower::{Layer, ServiceExt};
///
/// // UNAVAILABLE once, then OK; the retry says which attempt it is.
/// let seen = Arc::new(AtomicU32::new(0));
/// let counter = seen.clone();
/// let flaky = tower::service_fn(move |request: HttpRequest| {
///     let n = counter.fetch_add(1, Ordering::SeqCst);
///     async move {
///         let status = if n == 0 {
///             tonic::Status::unavailable("warming up")
///         } else {
///             assert_eq!(request.headers()["grpc-previous-rpc-attempts"], "1");
///             tonic::Status::ok("")
///         };
///         Ok::<_, std::convert::Infallible>(status.into_http())
///     }
/// });
/// let policy = RetryPolicy::default().with_initial_backoff(Duration::from_millis(1));
/// let service = RetryLayer::new(policy)?.with_jitter(|_min: f64, _max: f64| 1.0).layer(flaky);
/// let request = http::Request::builder()
///     .uri("/ameide_core_proto.graph.v1.GraphService/ListRepositories")
///     .body(tonic::body::Body::empty())
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.headers()["grpc-status"], "0");
/// assert_eq!(seen.load(Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    sleeper: Arc<dyn Sleeper>,
    jitter: Arc<dyn Jitter>,
    throttle: Option<Arc<Throttle>>,
    hedging: Option<Arc<hedging::Hedging>>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("hedging", &self.hedging)
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
            hedging: None,
        })
    }

    /// Hedges every method the bundle marks `NO_SIDE_EFFECTS` or
    /// `IDEMPOTENT` (with one request message) by `policy` (gRFC A6; see
    /// [`HedgingPolicy`]) instead of retrying it; other methods keep the
    /// retry policy. A method given its own policy with
    /// [`with_method_hedging`](Self::with_method_hedging) keeps that one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::{HedgingPolicy, RetryLayer, RetryPolicy};
    /// let layer = RetryLayer::new(RetryPolicy::default())?
    ///     .with_hedging(HedgingPolicy::new(3, Duration::from_millis(20)))?;
    /// # drop(layer);
    /// assert!(RetryLayer::new(RetryPolicy::default())?
    ///     .with_hedging(HedgingPolicy::new(9, Duration::ZERO))
    ///     .is_err());
    /// # Ok::<(), ameide_sdk::ConfigError>(())
    /// ```
    pub fn with_hedging(mut self, policy: HedgingPolicy) -> Result<Self, ConfigError> {
        policy.validate()?;
        let mut hedging = self.hedging.as_deref().cloned().unwrap_or_default();
        hedging.every_safe_method = Some(Arc::new(policy));
        self.hedging = Some(Arc::new(hedging));
        Ok(self)
    }

    /// Hedges the method `path` (`/package.Service/Method`) by `policy`
    /// instead of retrying it. A method the bundle does not mark
    /// `NO_SIDE_EFFECTS` or `IDEMPOTENT`, one that streams its requests, or
    /// an unknown path is a configuration error naming it: a hedged call
    /// runs on several replicas.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::{HedgingPolicy, RetryLayer, RetryPolicy};
    /// let policy = HedgingPolicy::new(2, Duration::from_millis(10));
    /// let layer = RetryLayer::new(RetryPolicy::default())?;
    /// let read = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
    /// assert!(layer.clone().with_method_hedging(read, policy.clone()).is_ok());
    /// let write = "/ameide_core_proto.graph.v1.GraphService/CreateElement";
    /// let err = layer.with_method_hedging(write, policy).unwrap_err();
    /// assert!(err.to_string().contains("NO_SIDE_EFFECTS or IDEMPOTENT"));
    /// # Ok::<(), ameide_sdk::ConfigError>(())
    /// ```
    pub fn with_method_hedging(
        mut self,
        path: &str,
        policy: HedgingPolicy,
    ) -> Result<Self, ConfigError> {
        policy.validate()?;
        let path = hedging::hedgeable_method(path)?;
        let mut hedging = self.hedging.as_deref().cloned().unwrap_or_default();
        hedging.per_method.retain(|(p, _)| *p != path);
        hedging.per_method.push((path, Arc::new(policy)));
        self.hedging = Some(Arc::new(hedging));
        Ok(self)
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
        let method = crate::call::method_of(&request);
        let replayable = method.is_some_and(|m| m.kind.has_single_request());
        let state = request.extensions().get::<CallState>().cloned();
        if let (Some(hedging), Some(method)) = (&self.layer.hedging, method)
            && let Some(policy) = hedging.policy_for(method)
        {
            let policy = policy.clone();
            return Box::pin(hedging::hedge_loop(
                self.inner.clone(),
                request,
                self.layer.clone(),
                policy,
                state,
            ));
        }
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
