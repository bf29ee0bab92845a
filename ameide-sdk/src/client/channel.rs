//! [`AmeideChannel`]: the layered channel every typed client runs on: the
//! closed check and the per-call codec limit in front of the in-flight
//! admission ([`Admit`], `gate.rs`) and the stack.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tower::Service;

use crate::codec::CodecOptions;
use crate::gate::Admit;
pub use crate::gate::ResponseFuture;
use crate::layers::{BoxError, HttpRequest, HttpResponse};
use crate::transport::{BoxTransport, closed_status};

/// The closed check, right under the metadata layer: a call after
/// [`AmeideClient::close`](crate::AmeideClient::close) fails `CANCELLED`
/// with the call's facts (its request id, zero attempts), like every other
/// failure, and asks no token provider.
#[derive(Clone)]
pub(crate) struct ClosedLayer(pub(crate) Arc<AtomicBool>);

impl<S> tower::Layer<S> for ClosedLayer {
    type Service = ClosedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClosedService {
            inner,
            closed: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct ClosedService<S> {
    inner: S,
    closed: Arc<AtomicBool>,
}

impl<S> Service<HttpRequest> for ClosedService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ClosedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        if self.closed.load(Ordering::Acquire) {
            if let Some(state) = request.extensions().get::<crate::call::CallState>() {
                state.record_unsent();
            }
            return ClosedFuture { inner: None };
        }
        ClosedFuture {
            inner: Some(self.inner.call(request)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's future, or (`None`) the closed client's refusal.
    pub(crate) struct ClosedFuture<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F, E> std::future::Future for ClosedFuture<F>
where
    F: std::future::Future<Output = Result<HttpResponse, E>>,
    E: Into<BoxError>,
{
    type Output = Result<HttpResponse, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(Box::new(closed_status()))),
        }
    }
}

/// The layered channel every typed client runs on. Cheap to clone.
///
/// It is a `tower::Service` speaking tonic's body type, so any generated tonic
/// client can be built on it: `SomeServiceClient::new(client.channel())`.
pub struct AmeideChannel {
    /// The in-flight admission over the layered stack.
    pub(super) service: Admit<BoxTransport>,
    /// Limits and compression of the typed clients made on this channel
    /// (behind an `Arc`: typed clients hold the channel by value).
    pub(super) codec: Arc<CodecOptions>,
    /// The decoding limit the stack checks unless a call says otherwise.
    pub(super) stack_decode_limit: usize,
    pub(super) closed: Arc<AtomicBool>,
}

impl Clone for AmeideChannel {
    fn clone(&self) -> Self {
        AmeideChannel {
            service: self.service.clone(),
            codec: self.codec.clone(),
            stack_decode_limit: self.stack_decode_limit,
            closed: self.closed.clone(),
        }
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
            // Refused under the metadata layer (`ClosedLayer`): no place in
            // the in-flight limit to wait for.
            return Poll::Ready(Ok(()));
        }
        self.service.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        if self.closed.load(Ordering::Acquire) {
            // Past the gate, straight to the stack, whose closed check
            // refuses it with the call's facts (rare: a clone of the stack).
            let stack = self.service.bypass().clone();
            return ResponseFuture::ungated(Box::pin(tower::ServiceExt::oneshot(stack, request)));
        }
        if self.codec.max_decoding_message_size != self.stack_decode_limit {
            request.extensions_mut().insert(crate::codec::DecodeLimit(
                self.codec.max_decoding_message_size,
            ));
        }
        self.service.call(request)
    }
}
