//! Timeout layer: one deadline for the whole call, every attempt and the whole
//! response stream included.
//!
//! | Question | Answer |
//! |---|---|
//! | Which timeout? | the per-call one ([`CallOptions::timeout`](crate::CallOptions::timeout), or a `grpc-timeout` the caller set with `tonic::Request::set_timeout`), else the layer's |
//! | Counted from? | the call's start (the metadata layer's clock), so token fetching counts too |
//! | On the wire? | `grpc-timeout` with the remaining budget; the retry layer refreshes it on every attempt |
//! | On expiry? | `DEADLINE_EXCEEDED` from the SDK itself, before or after the response headers (a stream is cut with that status) — never tonic's `CANCELLED` |
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
use crate::call::{CallState, CallTimeout, Deadline};

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
}

impl TimeoutLayer {
    /// A layer with `timeout` as the default whole-call timeout.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service produced by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Duration,
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "deadline exceeded: the call's {timeout:?} budget (all attempts included) ran out"
    ))
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
        let (deadline, timeout) = call_deadline(&request, self.timeout);
        match request.extensions().get::<CallState>() {
            Some(state) => state.set_deadline(deadline),
            None => {
                request.extensions_mut().insert(Deadline(deadline));
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
            };
        }
        request
            .headers_mut()
            .insert(names::GRPC_TIMEOUT, encode_grpc_timeout(remaining));
        TimeoutFuture {
            inner: Some(self.inner.call(request)),
            sleep: Some(tokio::time::sleep_until(deadline)),
            deadline,
            timeout,
        }
    }
}

/// The call's deadline and its timeout: the per-call timeout, else a
/// `grpc-timeout` the caller set, else `default`; counted from the call's
/// start and capped by the deadline of the inbound request being served.
pub(crate) fn call_deadline(request: &HttpRequest, default: Duration) -> (Instant, Duration) {
    let start = match request.extensions().get::<CallState>() {
        Some(state) => state.start(),
        None => request
            .extensions()
            .get::<crate::call::CallStart>()
            .map_or_else(Instant::now, |start| start.0),
    };
    let timeout = request
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
        .unwrap_or(default);
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
        match inner.poll(cx) {
            Poll::Ready(Ok(response)) => {
                let timeout = *this.timeout;
                let deadline = *this.deadline;
                this.sleep.set(None);
                this.inner.set(None);
                Poll::Ready(Ok(response.map(|body| {
                    tonic::body::Body::new(DeadlineBody {
                        inner: body,
                        sleep: tokio::time::sleep_until(deadline),
                        timeout,
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
                    this.inner.set(None);
                    Poll::Ready(Ok(status_response(deadline_exceeded(*this.timeout))))
                }
                _ => Poll::Pending,
            },
        }
    }
}

pin_project! {
    /// Cuts a response stream with DEADLINE_EXCEEDED when the deadline passes.
    struct DeadlineBody {
        #[pin]
        inner: tonic::body::Body,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
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
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() {
                    *this.done = true;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    *this.done = true;
                    Poll::Ready(Some(Err(deadline_exceeded(*this.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}
