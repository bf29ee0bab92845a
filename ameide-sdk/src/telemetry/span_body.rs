//! A response body that ends its span when the stream ends, with the
//! status the trailers (or an error) carry.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http_body::Frame;
use opentelemetry::Context;
use pin_project_lite::pin_project;
use tonic::{Code, Status};

use crate::grpc_headers::grpc_code;

use super::*;

/// Ends the span of an attempt (or its response stream, `what`) dropped
/// before it ended: cut by the call's deadline, or cancelled by its caller.
pub(crate) fn end_dropped(
    cx: &Context,
    semconv: SemconvMode,
    side: Side,
    cut: &crate::call::Cut,
    what: &str,
) {
    match cut.code() {
        Code::DeadlineExceeded => end_span(
            cx,
            semconv,
            side,
            Code::DeadlineExceeded,
            &format!("{what} cut by the call's deadline"),
        ),
        code => end_span(
            cx,
            semconv,
            side,
            code,
            &format!("{what} dropped before it ended"),
        ),
    }
}

pin_project! {
    /// Ends the attempt span when the response stream ends.
    pub(crate) struct SpanBody {
        #[pin]
        inner: tonic::body::Body,
        span: Option<Context>,
        semconv: SemconvMode,
        side: Side,
        cut: crate::call::Cut,
    }

    impl PinnedDrop for SpanBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cx) = this.span.take() {
                end_dropped(&cx, *this.semconv, *this.side, this.cut, "response stream");
            }
        }
    }
}

impl SpanBody {
    /// Wraps `body` so that `span` ends with the call's status when the
    /// stream ends; dropped unfinished, with `DEADLINE_EXCEEDED` when `cut`
    /// says the call was cut, else `CANCELLED`.
    pub(crate) fn wrap(
        body: tonic::body::Body,
        span: Context,
        semconv: SemconvMode,
        side: Side,
        cut: crate::call::Cut,
    ) -> tonic::body::Body {
        tonic::body::Body::new(SpanBody {
            inner: body,
            span: Some(span),
            semconv,
            side,
            cut,
        })
    }
}

impl http_body::Body for SpanBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(span) = this.span.take()
                {
                    match grpc_code(trailers) {
                        Some(Code::Ok) => end_span(&span, *this.semconv, *this.side, Code::Ok, ""),
                        Some(code) => {
                            let message = trailers
                                .get("grpc-message")
                                .map(|m| crate::peer::decode_message(m.as_bytes()))
                                .unwrap_or_default();
                            end_span(&span, *this.semconv, *this.side, code, &message)
                        }
                        None => end_span(
                            &span,
                            *this.semconv,
                            *this.side,
                            Code::Unknown,
                            "trailers without grpc-status",
                        ),
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(span) = this.span.take() {
                    end_span(
                        &span,
                        *this.semconv,
                        *this.side,
                        status.code(),
                        status.message(),
                    );
                }
            }
            Poll::Ready(None) => {
                if let Some(span) = this.span.take() {
                    end_span(
                        &span,
                        *this.semconv,
                        *this.side,
                        Code::Unknown,
                        "response stream ended without grpc-status",
                    );
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
