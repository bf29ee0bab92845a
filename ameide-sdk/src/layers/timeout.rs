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

use http::HeaderValue;
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
/// use std::time::Duration;
/// let layer = ameide_sdk::layers::TimeoutLayer::new(Duration::from_secs(5));
/// # let _ = layer;
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
    if let Some(inbound) = crate::server::inbound_deadline() {
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

/// Encodes a duration as a `grpc-timeout` value: at most 8 digits and a unit,
/// rounded up so that a tiny remaining budget is never sent as zero.
struct Encoded {
    buf: [u8; 9],
    len: usize,
}

impl AsRef<[u8]> for Encoded {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (size, unit) in units {
        let value = nanos.div_ceil(size);
        if value <= MAX {
            // At most 8 digits and a unit: write them into a stack buffer.
            let mut buf = [0u8; 9];
            let mut len = 0;
            let mut digits = [0u8; 8];
            let mut n = value;
            let mut count = 0;
            loop {
                digits[count] = b'0' + (n % 10) as u8;
                count += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for d in digits[..count].iter().rev() {
                buf[len] = *d;
                len += 1;
            }
            buf[len] = unit as u8;
            len += 1;
            // Owned by the Bytes itself: one allocation, and the per-attempt
            // copies the retry layer makes are reference counts.
            let mut value =
                HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(Encoded { buf, len }))
                    .expect("digits and a unit letter form a valid header value");
            // Unique per attempt: keep it out of the HPACK dynamic table.
            value.set_sensitive(true);
            return value;
        }
    }
    HeaderValue::from_static("99999999H")
}

/// Decodes a `grpc-timeout` value; `None` when malformed.
pub(crate) fn decode_grpc_timeout(value: &str) -> Option<Duration> {
    // Bytes, not string slices: a non-ASCII value must be rejected, not split
    // inside a character (found by the property tests).
    let bytes = value.as_bytes();
    if bytes.len() < 2 || bytes.len() > 9 {
        return None;
    }
    let (digits, unit) = bytes.split_at(bytes.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b"n" => Duration::from_nanos(n),
        b"u" => Duration::from_micros(n),
        b"m" => Duration::from_millis(n),
        b"S" => Duration::from_secs(n),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_within_one_unit() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(250),
            Duration::from_secs(5),
            Duration::from_secs(4 * 3600),
            Duration::from_secs(100 * 24 * 3600),
        ] {
            let encoded = encode_grpc_timeout(d);
            let text = encoded.to_str().unwrap();
            assert!(text.len() <= 9, "{text}");
            let decoded = decode_grpc_timeout(text).unwrap();
            assert!(decoded >= d, "{d:?} -> {text} -> {decoded:?}");
        }
        assert_eq!(encode_grpc_timeout(Duration::from_millis(5000)), "5000000u");
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "1n");
    }

    #[test]
    fn malformed_grpc_timeout_is_rejected() {
        for bad in [
            "",
            "5",
            "S",
            "1x",
            "-1S",
            "123456789S",
            "1.5S",
            "１S",
            "n*Æ",
            "1Æ",
            "Æ",
        ] {
            assert_eq!(decode_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
