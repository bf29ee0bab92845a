//! gRFC A6 hedging: the same request sent again, to another replica, while
//! the first attempt is still out, and the first answer taken.
//!
//! | Rule (gRFC A6) | Here |
//! |---|---|
//! | which methods | only those the bundle marks `NO_SIDE_EFFECTS` or `IDEMPOTENT`, with one request message (unary, server streaming); per client ([`AmeideClientBuilder::hedging`](crate::AmeideClientBuilder::hedging): every such method) or per method ([`hedging_for`](crate::AmeideClientBuilder::hedging_for): a config error naming any other); a hedged method is not retried by the retry policy |
//! | attempts | the first at once, then one every `hedging_delay` (0: all at once) up to `max_attempts` (2 ..= 5) |
//! | commit | the first response headers (or a trailers-only OK) commit the call: every other attempt is cancelled (RST_STREAM CANCEL on the wire) |
//! | a failed attempt | a `non_fatal_codes` code lets the next hedge go at once; any other code commits the call to that failure and cancels the rest; a refused stream is resent once, transparently |
//! | throttle | every hedge after the first needs more than half the target's retry tokens; failures the server answered with charge the bucket, a success refills it |
//! | server pushback | `grpc-retry-pushback-ms` ≥ 0 delays the next hedge by exactly that; negative (or malformed) sends no more |
//! | deadline | one deadline for all the attempts; each carries what is left in `grpc-timeout`; no hedge starts past it |
//! | on the wire | `grpc-previous-rpc-attempts` on every hedge; one request id for all; the request buffered once and shared |
//! | replicas | each hedge goes to another replica than the attempts before it, when there is one |
//! | all failed | the last failure, with every attempt in the error's history |

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use super::RetryLayer;
use super::attempts::attempt_request;
use super::hints::{Pushback, pushback};
use crate::call::{AttemptRecord, CallState, Deadline, StopReason};
use crate::config_error::{ConfigError, ConfigErrorKind};
use crate::layers::replay::*;
use crate::layers::{
    BoxError, Delivery, HttpRequest, HttpResponse, classify_error, status_response,
    trailers_only_status,
};

/// gRFC A6's limit on hedged attempts (it clamps larger values; this SDK
/// refuses them at build, so that a setting is never silently changed).
pub const MAX_HEDGED_ATTEMPTS: u32 = 5;

/// A hedging policy (gRFC A6): how many attempts of a call may be out at
/// once, how far apart they start, and which failures let the next one go.
/// Opt-in, for methods that are safe to repeat (see the module's table).
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::layers::HedgingPolicy;
/// let policy = HedgingPolicy::new(3, Duration::from_millis(20));
/// assert_eq!(policy.max_attempts(), 3);
/// assert_eq!(policy.hedging_delay(), Duration::from_millis(20));
/// // A replica that is down does not fail a call another one can answer.
/// assert_eq!(policy.non_fatal_codes(), &[tonic::Code::Unavailable]);
/// assert!(policy.validate().is_ok());
///
/// let err = HedgingPolicy::new(6, Duration::ZERO).validate().unwrap_err();
/// assert!(err.to_string().contains("2..=5"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HedgingPolicy {
    max_attempts: u32,
    hedging_delay: Duration,
    non_fatal_codes: Vec<Code>,
}

impl HedgingPolicy {
    /// `max_attempts` attempts at most (2 ..= 5), one more every
    /// `hedging_delay` while none has answered (0: all at once); non-fatal
    /// code `UNAVAILABLE` (A6 leaves the list empty by default; a replica
    /// that is down should not fail a call another replica can answer).
    pub fn new(max_attempts: u32, hedging_delay: Duration) -> Self {
        HedgingPolicy {
            max_attempts,
            hedging_delay,
            non_fatal_codes: vec![Code::Unavailable],
        }
    }

    /// Replaces the codes that let the next hedge go at once (any other
    /// failure commits the call to it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::HedgingPolicy;
    /// use tonic::Code;
    /// let policy = HedgingPolicy::new(2, Duration::from_millis(5))
    ///     .with_non_fatal_codes([Code::Unavailable, Code::ResourceExhausted]);
    /// assert_eq!(policy.non_fatal_codes().len(), 2);
    /// assert!(HedgingPolicy::new(2, Duration::ZERO).with_non_fatal_codes([Code::Ok]).validate().is_err());
    /// ```
    pub fn with_non_fatal_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.non_fatal_codes = codes.into_iter().collect();
        self
    }

    /// The most attempts of one call.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The time between two attempts' starts.
    pub fn hedging_delay(&self) -> Duration {
        self.hedging_delay
    }

    /// The codes after which the next hedge goes at once.
    pub fn non_fatal_codes(&self) -> &[Code] {
        &self.non_fatal_codes
    }

    /// Checks the policy; the error names the bad value.
    /// [`AmeideClientBuilder::build`](crate::AmeideClientBuilder::build) calls it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::HedgingPolicy;
    /// assert!(HedgingPolicy::new(1, Duration::ZERO).validate().is_err());
    /// assert!(HedgingPolicy::new(2, Duration::from_secs(200 * 24 * 3600)).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::new(ConfigErrorKind::Retry, m));
        if !(2..=MAX_HEDGED_ATTEMPTS).contains(&self.max_attempts) {
            return err(format!(
                "hedging max_attempts {} must be within 2..={MAX_HEDGED_ATTEMPTS} (gRFC A6)",
                self.max_attempts
            ));
        }
        if self.hedging_delay > crate::config::MAX_TIMEOUT {
            return err(format!(
                "hedging_delay {:?} must be at most {:?}",
                self.hedging_delay,
                crate::config::MAX_TIMEOUT
            ));
        }
        if self.non_fatal_codes.contains(&Code::Ok) {
            return err("hedging non_fatal_codes must not include OK".into());
        }
        Ok(())
    }
}

/// The hedging policies of a client: one for every method safe to repeat,
/// and per-method ones that take precedence.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hedging {
    pub(crate) every_safe_method: Option<HedgingPolicy>,
    pub(crate) per_method: Vec<(&'static str, HedgingPolicy)>,
}

impl Hedging {
    /// The policy of `method`, if it is hedged.
    pub(crate) fn policy_for(
        &self,
        method: &'static ameide_proto::MethodInfo,
    ) -> Option<&HedgingPolicy> {
        if let Some((_, policy)) = self.per_method.iter().find(|(p, _)| *p == method.path) {
            return Some(policy);
        }
        self.every_safe_method
            .as_ref()
            .filter(|_| hedgeable(method))
    }
}

/// Whether gRFC A6 hedging may send `method` more than once: the bundle
/// says it has no side effects or is idempotent, and its one request can
/// be replayed.
pub(crate) fn hedgeable(method: &ameide_proto::MethodInfo) -> bool {
    method.idempotency.is_safe_to_repeat() && method.kind.has_single_request()
}

/// The method `path` names, if hedging may apply to it; else the error
/// that names it and why not.
pub(crate) fn hedgeable_method(path: &str) -> Result<&'static str, ConfigError> {
    let bad = |why: &str| {
        Err(ConfigError::new(
            ConfigErrorKind::Retry,
            format!("cannot hedge {:?}: {why}", crate::peer::bounded(path, 256)),
        ))
    };
    let Some(method) = ameide_proto::method(path) else {
        return bad("no such method in the bundle (expected /package.Service/Method)");
    };
    if !method.idempotency.is_safe_to_repeat() {
        return bad(
            "the bundle does not mark it NO_SIDE_EFFECTS or IDEMPOTENT, and a hedged call runs on several replicas",
        );
    }
    if !method.kind.has_single_request() {
        return bad("it streams its requests, which cannot be replayed");
    }
    Ok(method.path)
}

/// Which attempt of a hedged call a request is (on its extensions): the
/// tracing layer marks the hedges' spans.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HedgeAttempt(pub(crate) u32);

type AttemptFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

/// The hedged call: attempts started by the policy's clock, the first
/// answer committing it (see the module's table).
pub(crate) fn hedge_loop<S>(
    inner: S,
    request: HttpRequest,
    layer: RetryLayer,
    policy: HedgingPolicy,
    state: Option<CallState>,
) -> impl Future<Output = Result<HttpResponse, BoxError>> + Send + 'static
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let (mut parts, body) = request.into_parts();
    async move {
        let deadline = state
            .as_ref()
            .and_then(CallState::deadline)
            .or_else(|| parts.extensions.get::<Deadline>().map(|d| d.0));
        if let Some(state) = &state {
            state.set_hedged();
        }
        let bytes = match buffer(body, layer.policy.max_replay_bytes).await {
            Ok(Buffered::Complete(bytes)) => bytes,
            Ok(Buffered::TooLarge(body)) => {
                if let Some(state) = &state {
                    state.record_attempt(1);
                }
                let request = http::Request::from_parts(parts, body);
                return inner.oneshot(request).await.map_err(Into::into);
            }
            Err(status) => return Ok(status_response(status)),
        };
        let known = KnownExtensions::capture(&parts.extensions);
        let replay_headers = ReplayHeaders::capture(&parts.headers);
        let mut first_headers = Some(std::mem::take(&mut parts.headers));
        let max = policy.max_attempts;
        let mut in_flight: Vec<(u32, AttemptFuture)> = Vec::with_capacity(max as usize);
        let mut started = 0u32;
        // When the next hedge may start; `None`: no more will.
        let mut next_at = Some(Instant::now());
        let mut last_failure: Option<HttpResponse> = None;
        let mut stop = StopReason::Exhausted;
        let mut transparent_used = false;
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // Start the attempts that are due.
            while let Some(at) = next_at
                && at <= now
                && started < max
            {
                if started > 0 && layer.throttle.as_ref().is_some_and(|t| !t.allows_retry()) {
                    stop = StopReason::Throttled;
                    next_at = None;
                    break;
                }
                started += 1;
                if let (Some(state), Some(since)) = (&state, idle_since.take()) {
                    state.add_retry_delay(now.saturating_duration_since(since));
                }
                let remaining = deadline.map(|d| d.saturating_duration_since(now));
                let headers = first_headers
                    .take()
                    .unwrap_or_else(|| replay_headers.rebuild());
                let future = send(
                    &inner, &parts, &bytes, &known, started, remaining, headers, false,
                );
                in_flight.push((started, future));
                if let Some(state) = &state {
                    state.record_attempt(started);
                }
                next_at = (started < max).then(|| now + policy.hedging_delay);
            }
            if let (Some(at), Some(d)) = (next_at, deadline)
                && at >= d
            {
                // No hedge starts past the deadline.
                next_at = None;
            }
            if in_flight.is_empty() {
                if next_at.is_none() || started >= max {
                    // Every attempt failed and no more will go.
                    if let Some(state) = &state {
                        state.record_stop(stop);
                    }
                    return Ok(last_failure.unwrap_or_else(|| {
                        status_response(Status::unavailable("no hedged attempt was sent"))
                    }));
                }
                // Waiting for a pushback's delay with nothing out.
                idle_since.get_or_insert(now);
            }
            let first = std::future::poll_fn(|cx| {
                for (i, (_, future)) in in_flight.iter_mut().enumerate() {
                    if let Poll::Ready(result) = future.as_mut().poll(cx) {
                        return Poll::Ready((i, result));
                    }
                }
                Poll::Pending
            });
            let (i, result) = match next_at.filter(|_| started < max) {
                Some(at) => tokio::select! {
                    done = first => done,
                    () = tokio::time::sleep_until(at) => continue,
                },
                None => first.await,
            };
            let (attempt, _) = in_flight.swap_remove(i);
            let failure = match result {
                Ok(response) => match trailers_only_status(&response) {
                    Some(status) if status.code() != Code::Ok => {
                        (status, Some(response), Delivery::Maybe, false)
                    }
                    committed => {
                        // The first answer: the others are cancelled as
                        // they are dropped (RST_STREAM CANCEL).
                        drop(in_flight);
                        if let Some(t) = &layer.throttle {
                            t.success();
                        }
                        if let Some(state) = &state {
                            state.record_history(AttemptRecord {
                                code: Code::Ok,
                                message: String::new(),
                                delay_before: Duration::ZERO,
                                refused: false,
                            });
                            if committed.is_none() {
                                state.record_stop(StopReason::Committed);
                            }
                        }
                        return Ok(response);
                    }
                },
                Err(error) => {
                    let failure = classify_error(error);
                    (failure.status, None, failure.delivery, failure.permanent)
                }
            };
            let (status, response, delivery, permanent) = failure;
            if let Some(state) = &state {
                state.record_history(AttemptRecord {
                    code: status.code(),
                    message: status.message().to_owned(),
                    delay_before: Duration::ZERO,
                    refused: delivery == Delivery::Refused,
                });
            }
            if delivery == Delivery::Refused && !transparent_used {
                // Never processed: sent again at once, the same attempt.
                transparent_used = true;
                if let Some(state) = &state {
                    state.record_transparent_retry();
                }
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let future = send(
                    &inner,
                    &parts,
                    &bytes,
                    &known,
                    attempt,
                    remaining,
                    replay_headers.rebuild(),
                    true,
                );
                in_flight.push((attempt, future));
                continue;
            }
            let hint = response.as_ref().and_then(pushback);
            let non_fatal = policy.non_fatal_codes.contains(&status.code()) && !permanent;
            if response.is_some()
                && (non_fatal || hint.is_some())
                && let Some(t) = &layer.throttle
            {
                t.failure();
            }
            let response = response.unwrap_or_else(|| status_response(status));
            if !non_fatal {
                // A fatal failure commits the call to it.
                drop(in_flight);
                if let Some(state) = &state {
                    state.record_retryable(false);
                    state.record_stop(StopReason::NotRetryable);
                }
                return Ok(response);
            }
            if let Some(state) = &state {
                state.record_retryable(true);
            }
            match hint {
                Some(Pushback::Stop) => {
                    stop = StopReason::PushbackSaidNo;
                    next_at = None;
                }
                Some(Pushback::Wait(exact)) if started < max => {
                    next_at = Instant::now().checked_add(exact);
                }
                // A non-fatal failure lets the next hedge go at once.
                _ if next_at.is_some() => next_at = Some(Instant::now()),
                _ => {}
            }
            last_failure = Some(response);
        }
    }
}

/// One attempt's future: the request rebuilt from the shared buffer, with
/// `grpc-previous-rpc-attempts` on hedges and its extensions marking which
/// attempt it is (for the span and the balancer).
#[allow(clippy::too_many_arguments)]
fn send<S>(
    inner: &S,
    parts: &http::request::Parts,
    bytes: &bytes::Bytes,
    known: &Option<KnownExtensions>,
    attempt: u32,
    remaining: Option<Duration>,
    headers: http::HeaderMap,
    transparent: bool,
) -> AttemptFuture
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let mut extensions = match known {
        Some(known) => known.build(),
        None => parts.extensions.clone(),
    };
    extensions.insert(HedgeAttempt(attempt));
    let mut request = attempt_request(parts, bytes, attempt, remaining, headers, extensions);
    if transparent {
        request.headers_mut().insert(
            crate::transport::connection::TRANSPARENT_ATTEMPTS,
            HeaderValue::from_static("1"),
        );
    }
    let future = inner.clone().oneshot(request);
    Box::pin(async move { future.await.map_err(Into::into) })
}
