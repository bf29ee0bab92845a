//! Metrics layer: gRPC's per-attempt metrics (gRFC A66) for every attempt
//! that passes, through the OpenTelemetry metrics API.
//!
//! | Question | Answer |
//! |---|---|
//! | Records? | `grpc.client.attempt.started` as the attempt starts; `grpc.client.attempt.duration` and the sent and received message sizes as it ends (the instruments: `telemetry::metrics`) |
//! | Ends when? | trailers (or a trailers-only response), an error, or the attempt or its response stream dropped unfinished (`DEADLINE_EXCEEDED` when the call's deadline has passed, as the call says; else `CANCELLED`) |
//! | Sizes? | message bytes as framed by gRPC (compressed if compressed), the 5-byte prefixes left out; a unary or server-streaming request's from its replay buffer's exact length, any other request counted as it is sent |
//! | Where? | per attempt, beside the tracing layer, under retry: a call with three attempts records three attempts |
//! | Provider? | the global `MeterProvider` by default (as read when the layer is built), or one given; with none installed, OpenTelemetry's no-op instruments |
//! | Not here | `grpc.client.call.duration`: once per call, recorded by [`AmeideClient`](crate::AmeideClient)'s metadata layer when the status reaches the caller |

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http_body::Frame;
use opentelemetry::metrics::MeterProvider;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{BoxError, HttpRequest, HttpResponse, status_from_error, trailers_only_status};
use crate::call::CallState;
use crate::telemetry::SemconvMode;
use crate::telemetry::metrics::{
    ClientMetrics, CountedBody, MessageBytes, global_meter, grpc_method, observe_frame,
    provider_meter,
};

/// Records gRPC's per-attempt metrics (gRFC A66) of every attempt.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::layers::{HttpRequest, MetricsLayer};
/// use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
/// use tower::{Layer, ServiceExt};
///
/// let exporter = InMemoryMetricExporter::default();
/// let provider = SdkMeterProvider::builder()
///     .with_reader(PeriodicReader::builder(exporter.clone()).build())
///     .build();
/// let server = tower::service_fn(|_request: HttpRequest| async {
///     Ok::<_, std::convert::Infallible>(tonic::Status::unavailable("down").into_http())
/// });
/// let service = MetricsLayer::with_meter_provider("http://backend:9000", &provider).layer(server);
/// let request = http::Request::builder()
///     .uri("/ameide_core_proto.graph.v1.GraphService/ListRepositories")
///     .body(tonic::body::Body::empty())
///     .unwrap();
/// service.oneshot(request).await.unwrap();
/// provider.force_flush().unwrap();
///
/// let metrics = exporter.get_finished_metrics().unwrap();
/// let names: Vec<String> = metrics
///     .iter()
///     .flat_map(|rm| rm.scope_metrics())
///     .flat_map(|sm| sm.metrics())
///     .map(|m| m.name().to_owned())
///     .collect();
/// assert!(names.contains(&"grpc.client.attempt.started".to_owned()), "{names:?}");
/// assert!(names.contains(&"grpc.client.attempt.duration".to_owned()), "{names:?}");
/// # }
/// ```
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<ClientMetrics>,
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl MetricsLayer {
    /// Records through the global `MeterProvider` (as installed now), with
    /// `target` as `grpc.target`.
    pub fn new(target: impl AsRef<str>) -> Self {
        MetricsLayer {
            metrics: ClientMetrics::new(
                &global_meter(),
                target.as_ref(),
                SemconvMode::from_env(),
                false,
            ),
        }
    }

    /// Records through `provider`, with `target` as `grpc.target`.
    pub fn with_meter_provider<P: MeterProvider + ?Sized>(
        target: impl AsRef<str>,
        provider: &P,
    ) -> Self {
        MetricsLayer {
            metrics: ClientMetrics::new(
                &provider_meter(provider),
                target.as_ref(),
                SemconvMode::from_env(),
                false,
            ),
        }
    }

    /// The layer over instruments the client shares with its metadata layer.
    pub(crate) fn from_metrics(metrics: Arc<ClientMetrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<ClientMetrics>,
}

impl<S> fmt::Debug for MetricsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsService").finish_non_exhaustive()
    }
}

/// The request bytes of an attempt: known up front, or counted as sent.
enum Sent {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl Sent {
    fn of(request: &mut HttpRequest, info: Option<&'static ameide_proto::MethodInfo>) -> Sent {
        let single = info.is_some_and(|m| {
            matches!(
                m.kind,
                ameide_proto::StreamingKind::Unary | ameide_proto::StreamingKind::ServerStreaming
            )
        });
        if single && let Some(exact) = http_body::Body::size_hint(request.body()).exact() {
            // One message: the buffer is its 5-byte prefix and the message.
            return Sent::Known(exact.saturating_sub(5));
        }
        let counted = Arc::new(AtomicU64::new(0));
        let body = std::mem::take(request.body_mut());
        *request.body_mut() = tonic::body::Body::new(CountedBody::new(body, counted.clone()));
        Sent::Counted(counted)
    }

    fn get(&self) -> u64 {
        match self {
            Sent::Known(n) => *n,
            Sent::Counted(n) => n.load(Ordering::Relaxed),
        }
    }
}

/// What recording the attempt's end needs.
struct AttemptEnd {
    metrics: Arc<ClientMetrics>,
    method: &'static str,
    start: Instant,
    sent: Sent,
    /// The call's record, when its metadata layer records the committed
    /// attempt's end: a response with a body is handed over to it.
    hand_over: Option<CallState>,
    /// Whether an attempt dropped unfinished was cut by the timeout layer.
    cut: crate::call::Cut,
}

impl AttemptEnd {
    fn record(self, code: Code, rcvd: u64) {
        self.metrics.attempt_ended(
            self.method,
            code,
            self.start.elapsed(),
            self.sent.get(),
            rcvd,
        );
    }
}

impl<S> Service<HttpRequest> for MetricsService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let info = crate::call::method_of(&request);
        let method = grpc_method(info);
        self.metrics.attempt_started(method);
        let sent = Sent::of(&mut request, info);
        // One look-up of the call's record serves both.
        let state = request.extensions().get::<CallState>();
        let hand_over = match &sent {
            Sent::Known(_) => state.filter(|state| state.records_attempts()).cloned(),
            Sent::Counted(_) => None,
        };
        let cut = crate::call::Cut::of(state, &request);
        MetricsFuture {
            inner: self.inner.call(request),
            end: Some(AttemptEnd {
                metrics: self.metrics.clone(),
                method,
                start: Instant::now(),
                sent,
                hand_over,
                cut,
            }),
        }
    }
}

pin_project! {
    /// The response future of [`MetricsService`]: records the attempt's end
    /// on a trailers-only response or an error, or hands it to the body.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        end: Option<AttemptEnd>,
    }

    impl<F> PinnedDrop for MetricsFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(end) = this.project().end.take() {
                let code = end.cut.code();
                end.record(code, 0);
            }
        }
    }
}

impl<F, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<HttpResponse, E>>,
    E: Into<BoxError>,
{
    type Output = Result<HttpResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(mut end) = this.end.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        Poll::Ready(match result {
            Ok(response) => match trailers_only_status(&response) {
                Some(status) => {
                    end.record(status.code(), 0);
                    Ok(response)
                }
                None => match end.hand_over.take() {
                    // The metadata layer counts the response's message bytes
                    // anyway and sees its end: it records this attempt's end
                    // with the call's (no body wrapper here).
                    Some(state) => {
                        state.hand_over_attempt(end.start, end.sent.get());
                        Ok(response)
                    }
                    None => Ok(response.map(|body| {
                        tonic::body::Body::new(AttemptBody {
                            inner: body,
                            bytes: MessageBytes::default(),
                            end: Some(end),
                        })
                    })),
                },
            },
            Err(error) => {
                let status = status_from_error(error.into());
                end.record(status.code(), 0);
                Err(Box::new(status) as BoxError)
            }
        })
    }
}

pin_project! {
    /// Counts the response's message bytes; records the attempt's end with
    /// the status of its trailers, its error, or `CANCELLED` when dropped
    /// unfinished.
    struct AttemptBody {
        #[pin]
        inner: tonic::body::Body,
        bytes: MessageBytes,
        end: Option<AttemptEnd>,
    }

    impl PinnedDrop for AttemptBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(end) = this.end.take() {
                let code = end.cut.code();
                end.record(code, this.bytes.total());
            }
        }
    }
}

impl http_body::Body for AttemptBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        // Ended without trailers (no grpc-status): UNKNOWN, as the metadata
        // layer tells the caller.
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
