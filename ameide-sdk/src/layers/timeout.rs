//! Timeout layer: one deadline for the whole call, every attempt and the whole
//! response stream included.
//!
//! | Question | Answer |
//! |---|---|
//! | Which timeout? | the per-call one ([`CallOptions::timeout`](crate::CallOptions::timeout), or a `grpc-timeout` the caller set with `tonic::Request::set_timeout`), else the layer's |
//! | Counted from? | the call's start (the metadata layer's clock), so token fetching counts too |
//! | On the wire? | `grpc-timeout` with the remaining budget; the retry layer refreshes it on every attempt |
//! | On expiry? | `DEADLINE_EXCEEDED` from the SDK itself, before or after the response headers (a stream is cut with that status) — never tonic's `CANCELLED` |
//! | Long-lived streams? | opt-in, per call ([`CallOptions::idle_timeout`](crate::CallOptions::idle_timeout)) or per client for the streaming methods ([`TimeoutLayer::stream_idle_timeout`], [`AmeideClientBuilder::stream_idle_timeout`](crate::AmeideClientBuilder::stream_idle_timeout)): no whole-call deadline and no `grpc-timeout`; the call ends with `DEADLINE_EXCEEDED` ("idle timeout") when nothing arrives within the idle timeout, the wait for the headers and every gap between messages alike. An explicit per-call timeout, and the deadline of an inbound request being served, still apply on top |
//! | Not covered | nothing after the response stream has ended |

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::grpc_timeout::{decode_grpc_timeout, encode_grpc_timeout};
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tower::{Layer, Service};

use super::{BoxError, HttpRequest, HttpResponse, names, status_response};
use crate::call::{CallState, CallTimeout, Deadline, IdleTimeout};

/// Enforces a whole-call deadline and sends it as `grpc-timeout`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use ameide_sdk::layers::{HttpRequest, TimeoutLayer};
/// use tower::{Layer, ServiceExt};
///
/// // A server slower than the budget; it sees the budget as grpc-timeout.
/// let slow = tower::service_fn(|request: HttpRequest| async move {
///     assert!(request.headers().contains_key("grpc-timeout"));
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::convert::Infallible>(tonic::Status::ok("").into_http())
/// });
/// let service = TimeoutLayer::new(Duration::from_millis(50)).layer(slow);
/// let request = http::Request::builder()
///     .uri("/ameide_core_proto.graph.v1.GraphService/ListRepositories")
///     .body(tonic::body::Body::empty())
///     .unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// // DEADLINE_EXCEEDED (4) from the SDK itself, at the budget.
/// assert_eq!(response.headers()["grpc-status"], "4");
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
    stream_idle: Option<Duration>,
}

impl TimeoutLayer {
    /// A layer with `timeout` as the default whole-call timeout.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer {
            timeout,
            stream_idle: None,
        }
    }

    /// Streaming methods of the roster (server, client and bidi streaming)
    /// run without the default whole-call deadline, guarded by `idle`
    /// instead (see [`CallOptions::idle_timeout`](crate::CallOptions::idle_timeout),
    /// which does the same for one call and wins over this). A call with its
    /// own per-call timeout keeps it. Unary calls are not affected.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use ameide_sdk::layers::{HttpRequest, TimeoutLayer};
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, ServiceExt};
    ///
    /// // A Generate stream that sends headers, then goes silent.
    /// let silent = tower::service_fn(|request: HttpRequest| async move {
    ///     assert!(!request.headers().contains_key("grpc-timeout"));
    ///     let (_tx, body) = tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>(1);
    ///     std::mem::forget(_tx);
    ///     let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body));
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
    /// });
    /// let service = TimeoutLayer::new(Duration::from_secs(5))
    ///     .stream_idle_timeout(Duration::from_secs(60))
    ///     .layer(silent);
    /// let request = http::Request::builder()
    ///     .uri("/ameide_core_proto.inference.v1.InferenceService/Generate")
    ///     .body(tonic::body::Body::empty())
    ///     .unwrap();
    /// let started = tokio::time::Instant::now();
    /// let body = service.oneshot(request).await.unwrap().into_body();
    /// let err = body.collect().await.unwrap_err();
    /// // Not cut at the 5 s whole-call timeout: at the 60 s idle timeout.
    /// assert_eq!(started.elapsed(), Duration::from_secs(60));
    /// assert!(err.to_string().contains("idle timeout"), "{err}");
    /// # }
    /// ```
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle = Some(idle);
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeout: self.timeout,
            stream_idle: self.stream_idle,
        }
    }
}

/// The service produced by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Duration,
    stream_idle: Option<Duration>,
}

impl<S> TimeoutService<S> {
    /// The idle timeout this call runs under instead of the whole-call
    /// deadline: its own, else the layer's for a streaming method without a
    /// timeout of its own.
    fn idle_of(&self, request: &HttpRequest) -> Option<Duration> {
        if let Some(idle) = request.extensions().get::<IdleTimeout>() {
            return Some(idle.0);
        }
        let idle = self.stream_idle?;
        let streaming = crate::call::method_of(request)
            .is_some_and(|m| m.kind != ameide_proto::StreamingKind::Unary);
        (streaming && explicit_timeout(request).is_none()).then_some(idle)
    }
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "deadline exceeded: the call's {timeout:?} budget (all attempts included) ran out"
    ))
}

fn idle_exceeded(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "deadline exceeded: idle timeout, nothing arrived from the server within {idle:?} \
         (the call runs without a whole-call deadline)"
    ))
}

/// What ends a call when its timer fires: the idle timeout, unless the hard
/// deadline has come.
fn expired(idle: Option<Duration>, deadline: Instant, timeout: Duration) -> Status {
    match idle {
        Some(idle) if Instant::now() < deadline => idle_exceeded(idle),
        _ => deadline_exceeded(timeout),
    }
}

impl<S> Service<HttpRequest> for TimeoutService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let now = Instant::now();
        let idle = self.idle_of(&request);
        let (deadline, timeout, hard) = match idle {
            None => {
                let (deadline, timeout) = call_deadline(&request, self.timeout);
                (deadline, timeout, true)
            }
            Some(_) => match idle_call_deadline(&request) {
                Some((deadline, timeout)) => (deadline, timeout, true),
                None => (crate::time::far_future(now), crate::time::FAR, false),
            },
        };
        if hard {
            match request.extensions().get::<CallState>() {
                Some(state) => state.set_deadline(deadline),
                None => {
                    request.extensions_mut().insert(Deadline(deadline));
                }
            }
        }
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            if let Some(state) = request.extensions().get::<CallState>() {
                state.record_unsent();
            }
            return TimeoutFuture {
                inner: None,
                sleep: None,
                deadline,
                timeout,
                idle,
                idle_state: None,
            };
        }
        if hard {
            request
                .headers_mut()
                .insert(names::GRPC_TIMEOUT, encode_grpc_timeout(remaining));
        } else {
            request.headers_mut().remove(names::GRPC_TIMEOUT);
        }
        let wake = match idle {
            Some(idle) => crate::time::add(now, idle).min(deadline),
            None => deadline,
        };
        // An idle cut comes before any deadline: the layers below learn from
        // the call's state that it was a cut, not the caller going away.
        let idle_state = idle.and_then(|_| request.extensions().get::<CallState>().cloned());
        TimeoutFuture {
            inner: Some(self.inner.call(request)),
            sleep: Some(tokio::time::sleep_until(wake)),
            deadline,
            timeout,
            idle,
            idle_state,
        }
    }
}

/// A timeout the caller gave this call: per call, or as a `grpc-timeout` of its own.
fn explicit_timeout(request: &HttpRequest) -> Option<Duration> {
    request
        .extensions()
        .get::<CallTimeout>()
        .map(|t| t.0)
        .or_else(|| {
            request
                .headers()
                .get(names::GRPC_TIMEOUT)
                .and_then(|v| v.to_str().ok())
                .and_then(decode_grpc_timeout)
        })
}

fn call_start(request: &HttpRequest) -> Instant {
    match request.extensions().get::<CallState>() {
        Some(state) => state.start(),
        None => request
            .extensions()
            .get::<crate::call::CallStart>()
            .map_or_else(Instant::now, |start| start.0),
    }
}

/// The hard deadline of a call under an idle timeout, if it has one: its
/// explicit timeout, capped by the inbound request's deadline.
fn idle_call_deadline(request: &HttpRequest) -> Option<(Instant, Duration)> {
    let start = call_start(request);
    let own = explicit_timeout(request).map(|timeout| crate::time::add(start, timeout));
    let deadline = match (own, crate::inbound::inbound_deadline()) {
        (Some(own), Some(inbound)) => own.min(inbound),
        (own, inbound) => own.or(inbound)?,
    };
    Some((deadline, deadline.saturating_duration_since(start)))
}

/// The call's deadline and its timeout: the per-call timeout, else a
/// `grpc-timeout` the caller set, else `default`; counted from the call's
/// start and capped by the deadline of the inbound request being served.
pub(crate) fn call_deadline(request: &HttpRequest, default: Duration) -> (Instant, Duration) {
    let start = call_start(request);
    let timeout = explicit_timeout(request).unwrap_or(default);
    let mut deadline = crate::time::add(start, timeout);
    // A call made while serving a request never outlives the caller's deadline.
    if let Some(inbound) = crate::inbound::inbound_deadline() {
        deadline = deadline.min(inbound);
    }
    (deadline, timeout)
}

pin_project! {
    /// The response future of [`TimeoutService`]. Its one timer bounds the wait
    /// for the response and then moves into the response body, where it bounds
    /// the stream.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: Option<F>,
        // Inline, not boxed: one allocation less per call. The response body
        // gets its own timer for the same deadline.
        #[pin]
        sleep: Option<Sleep>,
        deadline: Instant,
        timeout: Duration,
        // Set for a call under an idle timeout: the timer waits for the
        // headers that long (at most until `deadline`), and the body's timer
        // is pushed back by every frame.
        idle: Option<Duration>,
        // Under an idle timeout, the call's state, marked cut when it fires.
        idle_state: Option<CallState>,
    }
}

impl<F, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<HttpResponse, E>>,
    E: Into<BoxError>,
{
    type Output = Result<HttpResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(status_response(deadline_exceeded(*this.timeout))));
        };
        let idle = *this.idle;
        match inner.poll(cx) {
            Poll::Ready(Ok(response)) => {
                let timeout = *this.timeout;
                let deadline = *this.deadline;
                let idle_state = this.idle_state.take();
                this.sleep.set(None);
                this.inner.set(None);
                let wake = match idle {
                    Some(idle) => crate::time::add(Instant::now(), idle).min(deadline),
                    None => deadline,
                };
                Poll::Ready(Ok(response.map(|body| {
                    tonic::body::Body::new(DeadlineBody {
                        inner: body,
                        sleep: tokio::time::sleep_until(wake),
                        deadline,
                        timeout,
                        idle,
                        idle_state,
                        done: false,
                    })
                })))
            }
            Poll::Ready(Err(error)) => {
                this.inner.set(None);
                if Instant::now() >= *this.deadline {
                    // tonic's own grpc-timeout timer fired together with ours.
                    return Poll::Ready(Ok(status_response(deadline_exceeded(*this.timeout))));
                }
                Poll::Ready(Err(error.into()))
            }
            Poll::Pending => match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
                Some(Poll::Ready(())) => {
                    if let Some(state) = this.idle_state.take() {
                        state.mark_cut();
                    }
                    this.inner.set(None);
                    Poll::Ready(Ok(status_response(expired(
                        idle,
                        *this.deadline,
                        *this.timeout,
                    ))))
                }
                _ => Poll::Pending,
            },
        }
    }
}

pin_project! {
    /// Cuts a response stream with DEADLINE_EXCEEDED when the deadline
    /// passes, or, under an idle timeout, when no frame came for that long.
    struct DeadlineBody {
        #[pin]
        inner: tonic::body::Body,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
        timeout: Duration,
        idle: Option<Duration>,
        idle_state: Option<CallState>,
        done: bool,
    }
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() {
                    *this.done = true;
                } else if let Some(idle) = *this.idle {
                    let wake = crate::time::add(Instant::now(), idle).min(*this.deadline);
                    this.sleep.as_mut().reset(wake);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    *this.done = true;
                    if let Some(state) = this.idle_state.take() {
                        state.mark_cut();
                    }
                    Poll::Ready(Some(Err(expired(
                        *this.idle,
                        *this.deadline,
                        *this.timeout,
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}
