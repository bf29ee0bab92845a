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
//! | replicas | each hedge goes to another replica than the call's last attempts, when the target has one (`static:`, `dns:`, a resolver; not under `pick_first`, which keeps every call on its one replica) |
//! | history | every attempt in the error's history, in the order they ended; attempts cancelled by the commit as `CANCELLED`; `delay_before` the time since the attempt before started |
//! | all failed | the last failure, with every attempt in the error's history |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use super::RetryLayer;
use super::attempts::{attempt_request, record_success};
use super::hints::{Pushback, pushback};
use super::policy::MAX_HINT_WITHOUT_DEADLINE;
use crate::call::{AttemptRecord, CallState, Deadline, StopReason};
use crate::config_error::{ConfigError, ConfigErrorKind};
use crate::layers::replay::*;
use crate::layers::{
    BoxError, Delivery, HttpRequest, HttpResponse, classify_error, status_response,
    trailers_only_status,
};

/// gRFC A6's limit on hedged attempts (it clamps larger values; this SDK
/// refuses them at build, so that a setting is never silently changed).
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::layers::{retry::MAX_HEDGED_ATTEMPTS, HedgingPolicy};
/// assert_eq!(MAX_HEDGED_ATTEMPTS, 5);
/// assert!(HedgingPolicy::new(MAX_HEDGED_ATTEMPTS, Duration::ZERO).validate().is_ok());
/// assert!(HedgingPolicy::new(MAX_HEDGED_ATTEMPTS + 1, Duration::ZERO).validate().is_err());
/// ```
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
    /// Checked by [`validate`](Self::validate) when a client or layer takes it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::HedgingPolicy;
    /// // Every attempt at once: the fastest of two replicas answers.
    /// let race = HedgingPolicy::new(2, Duration::ZERO);
    /// assert_eq!((race.max_attempts(), race.hedging_delay()), (2, Duration::ZERO));
    /// ```
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
    ///
    /// ```
    /// let policy = ameide_sdk::layers::HedgingPolicy::new(4, std::time::Duration::from_millis(5));
    /// assert_eq!(policy.max_attempts(), 4);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The time between two attempts' starts (tokio's timers tick in
    /// milliseconds: a delay under 1 ms fires at the next millisecond).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = ameide_sdk::layers::HedgingPolicy::new(2, Duration::from_millis(15));
    /// assert_eq!(policy.hedging_delay(), Duration::from_millis(15));
    /// ```
    pub fn hedging_delay(&self) -> Duration {
        self.hedging_delay
    }

    /// The codes after which the next hedge goes at once.
    ///
    /// ```
    /// use ameide_sdk::layers::HedgingPolicy;
    /// let none = HedgingPolicy::new(2, std::time::Duration::ZERO).with_non_fatal_codes([]);
    /// // Then any failure commits the call to it (gRFC A6's default).
    /// assert!(none.non_fatal_codes().is_empty());
    /// ```
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
    pub(crate) every_safe_method: Option<Arc<HedgingPolicy>>,
    pub(crate) per_method: Vec<(&'static str, Arc<HedgingPolicy>)>,
}

impl Hedging {
    /// The policy of `method`, if it is hedged.
    pub(crate) fn policy_for(
        &self,
        method: &'static ameide_proto::MethodInfo,
    ) -> Option<&Arc<HedgingPolicy>> {
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

/// Which attempt of a hedged call a request is (on its extensions), for
/// the tracing layer to mark the hedges' spans.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HedgeAttempt(pub(crate) u32);

type AttemptFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

/// One attempt out: its number, when it started (after the one before,
/// for the history), and its future.
struct Out {
    attempt: u32,
    delay_before: Duration,
    future: AttemptFuture,
}

/// Records the attempts still out as cancelled (another answer committed
/// the call) and drops them: each is reset on the wire (RST_STREAM CANCEL).
fn cancel_rest(in_flight: Vec<Out>, state: Option<&CallState>) {
    if let Some(state) = state {
        for out in &in_flight {
            state.record_history(AttemptRecord {
                code: Code::Cancelled,
                message: format!(
                    "hedged attempt {} cancelled: another attempt committed the call",
                    out.attempt
                ),
                delay_before: out.delay_before,
                refused: false,
            });
        }
    }
    drop(in_flight);
}

/// The hedged call: attempts started by the policy's clock, the first
/// answer committing it (see the module's table).
pub(crate) fn hedge_loop<S>(
    inner: S,
    request: HttpRequest,
    layer: RetryLayer,
    policy: Arc<HedgingPolicy>,
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
        let mut in_flight: Vec<Out> = Vec::with_capacity(max as usize);
        let mut started = 0u32;
        let mut last_start: Option<Instant> = None;
        // When the next hedge may start; `None`: no more will.
        let mut next_at = Some(Instant::now());
        let mut last_failure: Option<HttpResponse> = None;
        let mut stop = StopReason::Exhausted;
        let mut transparent_used = false;
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if started == 0 && deadline.is_some_and(|d| d <= now) {
                if let Some(state) = &state {
                    state.record_stop(StopReason::Deadline);
                }
                return Ok(status_response(Status::deadline_exceeded(
                    "deadline exceeded before the first attempt",
                )));
            }
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
                let delay_before =
                    last_start.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                last_start = Some(now);
                in_flight.push(Out {
                    attempt: started,
                    delay_before,
                    future,
                });
                if let Some(state) = &state {
                    state.record_attempt(started);
                }
                next_at = (started < max).then(|| now + policy.hedging_delay);
            }
            // No hedge starts past the deadline (nor, without one, after a
            // peer-chosen wait longer than MAX_HINT_WITHOUT_DEADLINE).
            if let Some(at) = next_at {
                let too_late = match deadline {
                    Some(d) => at >= d,
                    None => at.saturating_duration_since(now) > MAX_HINT_WITHOUT_DEADLINE,
                };
                if too_late {
                    next_at = None;
                    stop = StopReason::Deadline;
                }
            }
            if in_flight.is_empty() {
                if next_at.is_none() || started >= max {
                    // Every attempt failed and no more will go.
                    if let Some(state) = &state {
                        // As the retry loop's verdict: the code was worth
                        // another attempt, unless the server said no.
                        state.record_retryable(stop != StopReason::PushbackSaidNo);
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
                for (i, out) in in_flight.iter_mut().enumerate() {
                    if let Poll::Ready(result) = out.future.as_mut().poll(cx) {
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
            let Out {
                attempt,
                delay_before,
                ..
            } = in_flight.swap_remove(i);
            let failure = match result {
                Ok(response) => match trailers_only_status(&response) {
                    Some(status) if status.code() != Code::Ok => {
                        (status, Some(response), Delivery::Maybe, false)
                    }
                    committed => {
                        // The first answer: the others are cancelled.
                        cancel_rest(in_flight, state.as_ref());
                        record_success(&layer, state.as_ref(), delay_before, committed.is_none());
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
                    delay_before,
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
                in_flight.push(Out {
                    attempt,
                    delay_before: Duration::ZERO,
                    future,
                });
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
                cancel_rest(in_flight, state.as_ref());
                if let Some(state) = &state {
                    state.record_retryable(false);
                    state.record_stop(StopReason::NotRetryable);
                }
                return Ok(response);
            }
            // Only while hedging goes on: a stop (pushback, throttle,
            // deadline) is final.
            if next_at.is_some() {
                match hint {
                    Some(Pushback::Stop) => {
                        stop = StopReason::PushbackSaidNo;
                        next_at = None;
                    }
                    // The server said exactly when.
                    Some(Pushback::Wait(exact)) => {
                        next_at = Some(crate::time::add(Instant::now(), exact))
                    }
                    // A non-fatal failure lets the next hedge go at once.
                    None => next_at = Some(Instant::now()),
                }
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
    let request = attempt_request(
        parts,
        bytes,
        attempt,
        remaining,
        headers,
        extensions,
        transparent,
    );
    let future = inner.clone().oneshot(request);
    Box::pin(async move { future.await.map_err(Into::into) })
}
