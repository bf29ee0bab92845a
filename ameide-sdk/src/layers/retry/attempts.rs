//! The retry loop: one attempt after another until the call commits, its
//! status is not retryable, the policy or the throttle says stop, or the
//! deadline would pass.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use super::RetryLayer;
use super::hints::Pushback;
use super::hints::{pushback, retry_info_delay};
use super::policy::MAX_HINT_WITHOUT_DEADLINE;
use crate::call::{AttemptRecord, CallState, Deadline, SafeRetries, StopReason};
use crate::grpc_timeout::encode_grpc_timeout;
use crate::layers::replay::*;
use crate::layers::{
    BoxError, Delivery, HttpRequest, HttpResponse, classify_error, names, status_response,
    trailers_only_status,
};

pub(crate) fn attempt_request(
    parts: &http::request::Parts,
    bytes: &Bytes,
    attempt: u32,
    remaining: Option<Duration>,
    headers: http::HeaderMap,
    extensions: http::Extensions,
    transparent: bool,
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
    if transparent {
        // gRFC A6: the server may see how many transparent resends came before.
        request.headers_mut().insert(
            crate::transport::connection::TRANSPARENT_ATTEMPTS,
            HeaderValue::from_static("1"),
        );
    }
    request
}

/// The retry loop of one call, as a future that is boxed on every call.
///
/// An `async` block over the arguments rather than an `async fn`: an `async
/// fn` keeps its arguments' slots in the future beside the locals they move
/// into, and the request's parts are taken apart here for the same reason
/// (each of these was hundreds of bytes written to the heap per call).
pub(crate) fn retry_loop<S>(
    mut inner: S,
    request: HttpRequest,
    layer: RetryLayer,
    state: Option<CallState>,
) -> impl Future<Output = Result<HttpResponse, BoxError>> + Send + 'static
where
    S: Service<HttpRequest, Response = HttpResponse> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let (mut parts, body) = request.into_parts();
    async move {
        let policy = &layer.policy;
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
        let method = match &state {
            Some(state) => state.method(),
            None => ameide_proto::method(parts.uri.path()),
        };
        let method_is_safe = method.is_some_and(|m| m.idempotency.is_safe_to_repeat());
        let known = KnownExtensions::capture(&parts.extensions);
        let mut first_extensions = known
            .as_ref()
            .map(|_| std::mem::take(&mut parts.extensions));
        let replay_headers = ReplayHeaders::capture(&parts.headers);
        // The first attempt sends the original map, later ones a rebuilt one.
        let mut first_headers = Some(std::mem::take(&mut parts.headers));
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
            // The request lives in the attempt's future only, not beside it.
            let sent = {
                let request = attempt_request(
                    &parts,
                    &bytes,
                    attempt,
                    remaining,
                    headers,
                    extensions,
                    transparent_used,
                );
                (&mut inner).oneshot(request)
            };
            let failed = match sent.await {
                Ok(response) => match trailers_only_status(&response) {
                    Some(status) if status.code() != Code::Ok => Failed {
                        status,
                        response: Some(response),
                        delivery: Delivery::Maybe,
                        permanent: false,
                    },
                    // Headers without a status (committed), or a trailers-only OK.
                    status => {
                        record_success(&layer, state.as_ref(), delay_before, status.is_none());
                        return Ok(response);
                    }
                },
                Err(error) => {
                    let failure = classify_error(error.into());
                    Failed {
                        status: failure.status,
                        response: None,
                        delivery: failure.delivery,
                        permanent: failure.permanent,
                    }
                }
            };
            let facts = Attempted {
                layer: &layer,
                state: state.as_ref(),
                safe,
                method_is_safe,
                attempt,
                deadline,
                delay_before,
                transparent_used,
            };
            let delay = match after_failure(failed, &facts, &mut backoff_step) {
                Next::Resend => {
                    transparent_used = true;
                    if let Some(state) = &state {
                        state.record_transparent_retry();
                    }
                    delay_before = Duration::ZERO;
                    continue;
                }
                Next::Stop(response) => return Ok(response),
                Next::Wait(delay) => delay,
            };
            let slept = Instant::now();
            layer.sleeper.sleep(delay).await;
            if let Some(state) = &state {
                state.add_retry_delay(slept.elapsed());
            }
            delay_before = delay;
            attempt = attempt.saturating_add(1);
        }
    }
}

/// An attempt that answered (`committed`: response headers without a
/// status, else a trailers-only OK): the throttle's refill, the history,
/// and the stop reason.
#[inline]
pub(crate) fn record_success(
    layer: &RetryLayer,
    state: Option<&CallState>,
    delay_before: Duration,
    committed: bool,
) {
    if let Some(t) = &layer.throttle {
        t.success();
    }
    if let Some(state) = state {
        state.record_history(AttemptRecord {
            code: Code::Ok,
            message: String::new(),
            delay_before,
            refused: false,
        });
        if committed {
            state.record_stop(StopReason::Committed);
        }
    }
}

/// A failed attempt: its status, the response when the server (or a proxy)
/// answered, and what is known about its delivery.
struct Failed {
    status: Status,
    response: Option<HttpResponse>,
    delivery: Delivery,
    permanent: bool,
}

/// What the loop knows when an attempt has failed.
struct Attempted<'a> {
    layer: &'a RetryLayer,
    state: Option<&'a CallState>,
    safe: bool,
    method_is_safe: bool,
    attempt: u32,
    deadline: Option<Instant>,
    delay_before: Duration,
    transparent_used: bool,
}

/// What the loop does next.
enum Next {
    /// Send the request again at once, without spending an attempt.
    Resend,
    /// The call's answer.
    Stop(HttpResponse),
    /// Wait this long, then make the next attempt.
    Wait(Duration),
}

/// The decision after a failed attempt: a transparent resend, a stop (and
/// why), or the delay before the next attempt. Out of line and cold: a call
/// whose first attempt succeeds never runs it, and its code stays off that
/// call's path.
#[cold]
#[inline(never)]
fn after_failure(failed: Failed, facts: &Attempted<'_>, backoff_step: &mut u32) -> Next {
    let Failed {
        status,
        response,
        delivery,
        permanent,
    } = failed;
    let (layer, state, attempt) = (facts.layer, facts.state, facts.attempt);
    let policy = &layer.policy;
    if let Some(state) = state {
        state.record_history(AttemptRecord {
            code: status.code(),
            message: status.message().to_owned(),
            delay_before: facts.delay_before,
            refused: delivery == Delivery::Refused,
        });
    }
    if delivery == Delivery::Refused && !facts.transparent_used {
        // The server never processed this stream: send it again at once,
        // once per call, without spending an attempt or a throttle token.
        ::tracing::debug!(attempt, code = ?status.code(), "transparent retry of a refused stream");
        return Next::Resend;
    }
    let pushback = response.as_ref().and_then(pushback);
    let code_retryable = policy.retries(status.code());
    let allowed_by_safety = !facts.safe
        || facts.method_is_safe
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
        && let Some(t) = &layer.throttle
    {
        t.failure();
    }
    // The one verdict the error reports (`Error::is_retryable`, its
    // `Display`): whether this loop would have tried again had it had the
    // attempts, the budget and the throttle for it.
    let retryable =
        code_retryable && allowed_by_safety && !permanent && pushback != Some(Pushback::Stop);
    let stop = |reason: StopReason, status: Status, response: Option<HttpResponse>| {
        if let Some(state) = state {
            state.record_retryable(retryable);
            state.record_stop(reason);
        }
        Next::Stop(response.unwrap_or_else(|| status_response(status)))
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
    if layer.throttle.as_ref().is_some_and(|t| !t.allows_retry()) {
        return stop(StopReason::Throttled, status, response);
    }
    let mut delay = match pushback {
        Some(Pushback::Wait(exact)) => {
            // The server said exactly how long; the backoff starts over.
            *backoff_step = 2;
            exact
        }
        _ => {
            let (lo, hi) = policy.jitter;
            let computed = policy.delay(*backoff_step, layer.jitter.factor(lo, hi));
            *backoff_step = backoff_step.saturating_add(1);
            computed
        }
    };
    if let Some(hint) = retry_info_delay(&status) {
        delay = delay.max(hint);
    }
    // Peer-chosen delays are bounded by the deadline (and, without one,
    // by MAX_HINT_WITHOUT_DEADLINE); the instant arithmetic saturates.
    let too_late = match facts.deadline {
        Some(d) => Instant::now().checked_add(delay).is_none_or(|at| at >= d),
        None => delay > MAX_HINT_WITHOUT_DEADLINE,
    };
    if too_late {
        ::tracing::debug!(attempt, ?delay, code = ?status.code(), "not retrying: the delay would outlive the deadline");
        return stop(StopReason::Deadline, status, response);
    }
    ::tracing::debug!(attempt, ?delay, code = ?status.code(), "retrying");
    Next::Wait(delay)
}
