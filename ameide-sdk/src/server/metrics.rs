//! The inbound layer's metrics (gRFC A66, server side): the request body
//! that counts received message bytes ([`InboundBody`], shared with the
//! client's metrics layer), and the response body that counts sent ones and
//! records the call when its status goes out.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::telemetry::metrics::{MessageBytes, ServerMetrics, observe_frame};

pub use crate::telemetry::metrics::CountedBody as InboundBody;

/// What recording a server call's end needs.
pub(super) struct ServerCallEnd {
    pub(super) metrics: Arc<ServerMetrics>,
    pub(super) method: &'static str,
    pub(super) start: Instant,
    pub(super) rcvd: Arc<AtomicU64>,
}

impl ServerCallEnd {
    pub(super) fn record(self, code: Code, sent: u64) {
        let elapsed: Duration = self.start.elapsed();
        self.metrics.call_ended(
            self.method,
            code,
            elapsed,
            sent,
            self.rcvd.load(Ordering::Relaxed),
        );
    }
}

pin_project! {
    /// The response body: counts sent message bytes; records the call with
    /// its trailers' status, an error's, or `CANCELLED` when dropped unfinished.
    pub(super) struct ServerCallBody<B> {
        #[pin]
        inner: B,
        bytes: MessageBytes,
        end: Option<ServerCallEnd>,
    }

    impl<B> PinnedDrop for ServerCallBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(end) = this.end.take() {
                end.record(Code::Cancelled, this.bytes.total());
            }
        }
    }
}

impl<B> ServerCallBody<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::wire_types::BoxError>,
{
    pub(super) fn wrap(inner: B, end: ServerCallEnd) -> tonic::body::Body {
        tonic::body::Body::new(ServerCallBody {
            inner,
            bytes: MessageBytes::default(),
            end: Some(end),
        })
    }
}

impl<B> http_body::Body for ServerCallBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<crate::wire_types::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(Status::from_error(error.into()))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        };
        if let Some(code) = observe_frame(&polled, this.bytes, Code::Unknown)
            && let Some(end) = this.end.take()
        {
            end.record(code, this.bytes.total());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
