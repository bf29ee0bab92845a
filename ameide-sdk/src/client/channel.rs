//! [`AmeideChannel`]: the layered channel every typed client runs on, with
//! the closed check and the in-flight admission in front of the stack.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tower::{Service, ServiceExt};

use crate::auth::BoxFuture;
use crate::call::CallStart;
use crate::codec::CodecOptions;
use crate::gate::{Acquire, Admission, Admitted, Gate};
use crate::layers::{BoxError, HttpRequest, HttpResponse};
use crate::transport::{BoxTransport, closed_status};

/// The layered channel every typed client runs on. Cheap to clone.
///
/// It is a `tower::Service` speaking tonic's body type, so any generated tonic
/// client can be built on it: `SomeServiceClient::new(client.channel())`.
pub struct AmeideChannel {
    pub(super) service: BoxTransport,
    /// Limits and compression of the typed clients made on this channel
    /// (behind an `Arc`: typed clients hold the channel by value).
    pub(super) codec: Arc<CodecOptions>,
    /// The decoding limit the stack checks unless a call says otherwise.
    pub(super) stack_decode_limit: usize,
    pub(super) closed: Arc<AtomicBool>,
    pub(super) gate: Option<Gate>,
    /// This instance's way through the gate, from `poll_ready` to `call`.
    pub(super) admission: Admission,
    /// `service` was polled ready for the next call.
    pub(super) inner_ready: bool,
}

impl Clone for AmeideChannel {
    fn clone(&self) -> Self {
        // A clone starts unready: readiness (and a place) belong to the instance polled.
        AmeideChannel {
            service: self.service.clone(),
            codec: self.codec.clone(),
            stack_decode_limit: self.stack_decode_limit,
            closed: self.closed.clone(),
            gate: self.gate.clone(),
            admission: Admission::default(),
            inner_ready: false,
        }
    }
}

/// Only a unary call keeps its place until its response headers arrive: it
/// ends by its deadline, so the place always comes back. A stream (a watch,
/// say) may live for hours; keeping a place for it would starve the rest.
fn is_unary(path: &str) -> bool {
    ameide_proto::method(path).is_some_and(|m| m.kind == ameide_proto::StreamingKind::Unary)
}

/// The response future of [`AmeideChannel`]: the layered stack's future, plus
/// the in-flight place a unary call keeps until its response headers arrive
/// (see [`InFlightLimit`]). Dropping it gives the place back.
///
/// ```
/// use ameide_sdk::layers::HttpRequest;
/// use ameide_sdk::{AmeideChannel, ResponseFuture};
///
/// fn takes<S: tower::Service<HttpRequest, Future = ResponseFuture>>(_: &S) {}
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = ameide_sdk::AmeideClient::builder()
///     .endpoint("http://127.0.0.1:50051")
///     .build()
///     .unwrap();
/// let channel: AmeideChannel = client.channel();
/// takes(&channel);
/// # }
/// ```
pub struct ResponseFuture {
    inner: BoxFuture<'static, Result<HttpResponse, BoxError>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("holds_place", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<HttpResponse, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        self.permit = None;
        Poll::Ready(result)
    }
}

impl fmt::Debug for AmeideChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmeideChannel")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Service<HttpRequest> for AmeideChannel {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        if let Some(gate) = &self.gate {
            // Still in line after `max_wait`: ready now, without readying the
            // stack (a call waiting on must not hold a slot of the transport's
            // request buffer); `call` waits on inside the call's deadline.
            if !std::task::ready!(self.admission.poll_admit(gate, cx)) {
                return Poll::Ready(Ok(()));
            }
        }
        if !self.inner_ready {
            std::task::ready!(self.service.poll_ready(cx))?;
            self.inner_ready = true;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let admitted = self.admission.take();
        if self.closed.load(Ordering::Acquire) {
            return ResponseFuture {
                inner: Box::pin(async { Err(Box::new(closed_status()) as BoxError) }),
                permit: None,
            };
        }
        if self.codec.max_decoding_message_size != self.stack_decode_limit {
            request.extensions_mut().insert(crate::codec::DecodeLimit(
                self.codec.max_decoding_message_size,
            ));
        }
        let unary = is_unary(request.uri().path());
        let permit = match admitted {
            Admitted::Free => None,
            Admitted::Place(permit, since) => {
                if let Some(since) = since {
                    // The wait counts against the call's deadline.
                    request.extensions_mut().insert(CallStart(since));
                }
                // A stream gives its place back as it starts.
                unary.then_some(permit)
            }
            Admitted::InLine(acquire, since) => {
                request.extensions_mut().insert(CallStart(since));
                if unary {
                    return self.wait_then_call(acquire, request);
                }
                None
            }
        };
        let inner = if std::mem::take(&mut self.inner_ready) {
            self.service.call(request)
        } else {
            // Not readied by poll_ready: ready a clone now.
            Box::pin(self.service.clone().oneshot(request))
        };
        ResponseFuture { inner, permit }
    }
}

impl AmeideChannel {
    /// A unary call still in line after `max_wait`: wait on, in the same place,
    /// until the call's deadline. One whose deadline passes in line still goes
    /// down the stack, where the timeout layer fails it with
    /// `DEADLINE_EXCEEDED` (request id and all) without sending it.
    fn wait_then_call(&mut self, acquire: Acquire, request: HttpRequest) -> ResponseFuture {
        let timeout = self.gate.as_ref().map_or(Duration::ZERO, Gate::timeout);
        let (deadline, _) = crate::layers::timeout::call_deadline(&request, timeout);
        let service = self.service.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let permit = tokio::time::timeout_at(deadline, acquire)
                    .await
                    .ok()
                    .and_then(Result::ok);
                let response = service.oneshot(request).await;
                drop(permit);
                response
            }),
            permit: None,
        }
    }
}
