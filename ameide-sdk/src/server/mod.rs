//! Server side: the inbound layer for tonic servers and the request context it
//! gives handlers, so that calls made while handling a request continue it.
//!
//! | Inbound | Becomes | Outbound calls through [`AmeideClient`](crate::AmeideClient) made while handling |
//! |---|---|---|
//! | `x-request-id` (generated when absent, echoed in the response) | [`InboundContext::request_id`] | carry the same `x-request-id` (unless the call sets its own) |
//! | `traceparent`, `tracestate` | a SERVER span, child of the caller's span | get CLIENT spans that are children of that SERVER span: same trace id |
//! | `baggage` (`ameide.session_id`) | [`InboundContext::session_id`], the span context's baggage | carry the same baggage |
//! | `grpc-timeout` | [`InboundContext::deadline`] | get a deadline no later than it: min(remaining inbound budget, client timeout) |
//! | `x-tenant-id`, `x-user-id` | [`InboundContext::tenant_id`], [`InboundContext::user_id`] | **not** forwarded automatically; forward them explicitly with [`InboundContext::forward_identity`] |
//!
//! Why tenant and user are explicit: they decide what a call may touch.
//! Forwarding them silently would let any upstream's claimed identity flow
//! into every downstream call, including the service's own system calls;
//! correlation data (request id, trace, session) and the time budget are safe
//! to carry along and are carried automatically.
//!
//! A malformed `traceparent`, `tracestate`, `baggage` entry, `grpc-timeout` or
//! `x-request-id` is ignored with a `tracing` warning: never an error, never a panic.
//!
//! # Bounds on what the caller sends
//!
//! Inbound values are carried into downstream calls, echoed back and logged,
//! so each is bounded and checked first (the warnings quote at most 64
//! characters of a value, escaped):
//!
//! | Value | Accepted | Otherwise |
//! |---|---|---|
//! | `x-request-id` | 1 ..= [`MAX_REQUEST_ID_BYTES`] of `A-Z a-z 0-9 - _ . : / + = @` | replaced by a generated id (that one is echoed and forwarded) |
//! | `x-tenant-id`, `x-user-id` | 1 ..= [`MAX_IDENTITY_BYTES`] of visible ASCII and spaces | ignored (`None`) |
//! | `traceparent` | the W3C layout, at most 512 bytes | a new trace starts |
//! | `tracestate` | at most 512 bytes and 32 members (W3C) | dropped |
//! | `baggage` | at most 8,192 bytes (W3C); the first 64 entries | dropped whole / the rest dropped |
//! | `ameide.session_id` in `baggage` | as a request id, at most [`MAX_IDENTITY_BYTES`] | no session |
//! | `grpc-timeout` | at most 8 digits and a unit (the gRPC spec) | no deadline |
//!
//! The context travels in a tokio task-local around the handler's future (and
//! in the request's extensions). Work spawned onto other tasks does not see
//! it; wrap it with [`InboundContext::scope`].
//!
//! ```no_run
//! use ameide_sdk::server::{InboundContext, InboundLayer};
//! # async fn serve(agents: impl ameide_sdk::proto::agents::v1::agents_service_server::AgentsService) -> Result<(), Box<dyn std::error::Error>> {
//! use ameide_sdk::proto::agents::v1::agents_service_server::AgentsServiceServer;
//! ameide_sdk::tonic::transport::Server::builder()
//!     .layer(InboundLayer::new())
//!     .add_service(AgentsServiceServer::new(agents))
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::HeaderValue;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{
    SpanContext, SpanKind, TraceContextExt, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, StringValue};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

use crate::grpc_headers::{grpc_code, names};
pub use crate::inbound::InboundContext;
use crate::inbound::{INBOUND, Inner};
use crate::request_id::RequestIdGenerator;
use crate::telemetry::SemconvMode;
use crate::telemetry::metrics::{
    OTHER_METHOD, ServerMetrics, global_meter, grpc_method, provider_meter,
};
use crate::telemetry::{
    SdkTracer, Side, SpanBody, end_span, global_tracer, provider_tracer, rpc_attributes,
};
use crate::wire_types::BoxError;
use opentelemetry::metrics::MeterProvider;

mod metrics;
mod values;

pub use metrics::InboundBody;
use metrics::{ServerCallBody, ServerCallEnd};

use values::*;
pub use values::{MAX_IDENTITY_BYTES, MAX_REQUEST_ID_BYTES};
pub(crate) use values::{parse_traceparent, valid_request_id};

/// Reads the inbound metadata into an [`InboundContext`], starts a SERVER span,
/// echoes `x-request-id`, and runs the handler inside that context.
///
/// ```
/// use ameide_sdk::server::InboundLayer;
/// let layer = InboundLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct InboundLayer {
    config: Arc<Config>,
}

struct Config {
    tracer: Arc<SdkTracer>,
    semconv: SemconvMode,
    generator: RequestIdGenerator,
    /// The meter the metrics come from, kept so that a later
    /// [`InboundLayer::with_semconv`] rebuilds them in its mode.
    meter: opentelemetry::metrics::Meter,
    metrics: Arc<ServerMetrics>,
}

impl fmt::Debug for InboundLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundLayer")
            .field("semconv", &self.config.semconv)
            .finish_non_exhaustive()
    }
}

impl Default for InboundLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl InboundLayer {
    /// Uses the global tracer and meter providers (as installed now),
    /// `OTEL_SEMCONV_STABILITY_OPT_IN` and UUID v4 request ids.
    pub fn new() -> Self {
        let semconv = SemconvMode::from_env();
        let meter = global_meter();
        InboundLayer {
            config: Arc::new(Config {
                tracer: global_tracer(),
                semconv,
                generator: RequestIdGenerator::uuid_v4(),
                metrics: ServerMetrics::new(&meter, semconv),
                meter,
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            tracer: self.config.tracer.clone(),
            semconv: self.config.semconv,
            generator: self.config.generator.clone(),
            meter: self.config.meter.clone(),
            metrics: self.config.metrics.clone(),
        };
        f(&mut config);
        InboundLayer {
            config: Arc::new(config),
        }
    }

    /// Records gRPC's server metrics (gRFC A66: `grpc.server.call.started`,
    /// `grpc.server.call.duration`, the sent and received message sizes) with
    /// `provider` instead of the global `MeterProvider`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    /// use tower::{Layer, ServiceExt};
    ///
    /// let exporter = InMemoryMetricExporter::default();
    /// let provider = SdkMeterProvider::builder()
    ///     .with_reader(PeriodicReader::builder(exporter.clone()).build())
    ///     .build();
    /// let handler = tower::service_fn(|_request: http::Request<_>| async {
    ///     Ok::<_, std::convert::Infallible>(tonic::Status::not_found("no").into_http::<tonic::body::Body>())
    /// });
    /// let service = ameide_sdk::server::InboundLayer::new()
    ///     .with_meter_provider(&provider)
    ///     .layer(handler);
    /// let request = http::Request::builder()
    ///     .uri("/ameide_core_proto.graph.v1.GraphService/GetRepository")
    ///     .body(tonic::body::Body::empty())
    ///     .unwrap();
    /// service.oneshot(request).await.unwrap();
    /// provider.force_flush().unwrap();
    /// let names: Vec<String> = exporter.get_finished_metrics().unwrap().iter()
    ///     .flat_map(|rm| rm.scope_metrics()).flat_map(|sm| sm.metrics())
    ///     .map(|m| m.name().to_owned()).collect();
    /// assert!(names.contains(&"grpc.server.call.started".to_owned()), "{names:?}");
    /// assert!(names.contains(&"grpc.server.call.duration".to_owned()), "{names:?}");
    /// # }
    /// ```
    pub fn with_meter_provider<P: MeterProvider + ?Sized>(self, provider: &P) -> Self {
        let meter = provider_meter(provider);
        self.edit(|c| {
            c.metrics = ServerMetrics::new(&meter, c.semconv);
            c.meter = meter;
        })
    }

    /// Creates SERVER spans with `provider` instead of the global one.
    pub fn with_tracer_provider<P, T, S>(self, provider: &P) -> Self
    where
        P: TracerProvider<Tracer = T>,
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        let tracer = provider_tracer(provider);
        self.edit(|c| c.tracer = tracer)
    }

    /// Overrides the semantic-convention mode read from the environment,
    /// for the spans and for the `rpc.server.call.duration` metric (in
    /// whichever order it and [`with_meter_provider`](Self::with_meter_provider) are called).
    pub fn with_semconv(self, mode: SemconvMode) -> Self {
        self.edit(|c| {
            c.semconv = mode;
            c.metrics = ServerMetrics::new(&c.meter, mode);
        })
    }

    /// Generates missing request ids with `generator`.
    pub fn request_id_generator(self, generator: RequestIdGenerator) -> Self {
        self.edit(|c| c.generator = generator)
    }
}

impl<S> Layer<S> for InboundLayer {
    type Service = InboundService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InboundService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service produced by [`InboundLayer`].
#[derive(Clone)]
pub struct InboundService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for InboundService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundService").finish_non_exhaustive()
    }
}

impl<S> InboundService<S> {
    pub(crate) fn start<B>(&self, request: &mut http::Request<B>) -> InboundContext {
        let config = &self.config;
        let now = Instant::now();
        let tenant_id = identity(request, crate::contract::HEADER_TENANT);
        let user_id = identity(request, crate::contract::HEADER_USER);

        let received_id = header(request, crate::contract::HEADER_REQUEST_ID)
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let received_id = match received_id {
            Some(id) if valid_request_id(id) => Some(Arc::<str>::from(id)),
            Some(id) => {
                ::tracing::warn!(
                    value = %crate::peer::loggable(id.as_bytes()),
                    bytes = id.len(),
                    "replacing an inbound x-request-id that is too long or holds characters outside A-Z a-z 0-9 - _ . : / + = @"
                );
                None
            }
            None => None,
        };
        let request_id = match received_id {
            Some(id) => id,
            None => {
                let id = config.generator.generate();
                match HeaderValue::from_str(&id) {
                    Ok(value) if !id.is_empty() => {
                        request.headers_mut().insert(names::REQUEST_ID, value);
                    }
                    _ => {
                        ::tracing::warn!(generated = ?id, "request id generator returned an invalid value")
                    }
                }
                Arc::from(id)
            }
        };

        let deadline = header(request, "grpc-timeout").and_then(|value| {
            let parsed = crate::grpc_timeout::decode_grpc_timeout(value);
            if parsed.is_none() {
                ::tracing::warn!(
                    value = %crate::peer::loggable(value.as_bytes()),
                    "ignoring malformed inbound grpc-timeout"
                );
            }
            parsed.and_then(|d| now.checked_add(d))
        });

        let mut parent = Context::new();
        if let Some(value) = header(request, "traceparent") {
            match parse_traceparent(value) {
                Some(remote) => {
                    let state = header(request, "tracestate")
                        .map_or_else(TraceState::default, parse_tracestate);
                    let remote = SpanContext::new(
                        remote.trace_id(),
                        remote.span_id(),
                        remote.trace_flags(),
                        true,
                        state,
                    );
                    parent = parent.with_remote_span_context(remote);
                }
                None => ::tracing::warn!(
                    value = %crate::peer::loggable(value.as_bytes()),
                    "ignoring malformed inbound traceparent"
                ),
            }
        }
        let baggage = header(request, "baggage")
            .map(parse_baggage)
            .unwrap_or_default();
        let session_id = baggage
            .iter()
            .find(|kv| kv.key.as_str() == crate::contract::SESSION_BAGGAGE_KEY)
            .map(|kv| kv.value.as_str().into_owned())
            .filter(|id| {
                let ok = valid_identity(id);
                if !ok {
                    ::tracing::warn!(
                        value = %crate::peer::loggable(id.as_bytes()),
                        "ignoring an inbound session id that is empty, too long or not visible ASCII"
                    );
                }
                ok
            });
        if !baggage.is_empty() {
            parent = parent.with_baggage(baggage);
        }

        // A no-op tracer starts no span: the caller's trace context (and
        // baggage) is what handlers and their outgoing calls carry on.
        let otel = if config.tracer.creates_spans() {
            let mut attributes = Vec::with_capacity(6);
            let path = request.uri().path();
            let known = ameide_proto::method(path);
            let name = rpc_attributes(path, known, config.semconv, &mut attributes);
            // The peer picks the path: a method outside the roster gives the
            // span the metrics' bounded name, not the raw path.
            let name = if known.is_some() {
                name
            } else {
                std::borrow::Cow::Borrowed(OTHER_METHOD)
            };
            attributes.push(KeyValue::new(
                "ameide.request_id",
                StringValue::from(request_id.clone()),
            ));
            config
                .tracer
                .start(name, SpanKind::Server, attributes, &parent)
        } else {
            parent
        };
        InboundContext {
            inner: Arc::new(Inner {
                tenant_id,
                user_id,
                request_id,
                session_id,
                deadline,
                otel,
            }),
        }
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for InboundService<S>
where
    S: Service<http::Request<InboundBody<B>>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = InboundFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = grpc_method(ameide_proto::method(request.uri().path()));
        self.config.metrics.call_started(method);
        let rcvd = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let end = ServerCallEnd {
            metrics: self.config.metrics.clone(),
            method,
            start: Instant::now(),
            rcvd: rcvd.clone(),
        };
        let context = self.start(&mut request);
        request.extensions_mut().insert(context.clone());
        let otel = context.inner.otel.clone();
        let echo = HeaderValue::from_str(&context.inner.request_id).ok();
        let request = request.map(|body| InboundBody::new(body, rcvd));
        let future = INBOUND.scope(context, self.inner.call(request).with_context(otel.clone()));
        // Only a span of ours is ended (never the caller's remote context).
        let span = self.config.tracer.creates_spans().then_some(otel);
        InboundFuture {
            inner: future,
            span,
            echo,
            semconv: self.config.semconv,
            end: Some(end),
        }
    }
}

pin_project! {
    /// The response future of [`InboundService`].
    pub struct InboundFuture<F> {
        #[pin]
        inner: TaskLocalFuture<InboundContext, WithContext<F>>,
        span: Option<Context>,
        echo: Option<HeaderValue>,
        semconv: SemconvMode,
        end: Option<ServerCallEnd>,
    }

    impl<F> PinnedDrop for InboundFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(end) = this.project().end.take() {
                end.record(Code::Cancelled, 0);
            }
        }
    }
}

impl<F, ResBody, E> Future for InboundFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let span = this.span.take();
        let semconv = *this.semconv;
        let end = this.end.take();
        Poll::Ready(match result {
            Ok(response) => {
                let trailers_only = grpc_code(response.headers());
                let mut response = match (end, trailers_only) {
                    (Some(end), Some(code)) => {
                        end.record(code, 0);
                        response.map(tonic::body::Body::new)
                    }
                    (Some(end), None) => response.map(|body| ServerCallBody::wrap(body, end)),
                    (None, _) => response.map(tonic::body::Body::new),
                };
                if let Some(echo) = this.echo.take() {
                    response
                        .headers_mut()
                        .entry(names::REQUEST_ID)
                        .or_insert(echo);
                }
                let Some(span) = span else {
                    return Poll::Ready(Ok(response));
                };
                match grpc_code(response.headers()) {
                    Some(code) => {
                        let message = response
                            .headers()
                            .get("grpc-message")
                            .map(|m| crate::peer::decode_message(m.as_bytes()))
                            .unwrap_or_default();
                        end_span(&span, semconv, Side::Server, code, &message);
                        Ok(response)
                    }
                    None => Ok(response.map(|body| {
                        SpanBody::wrap(
                            body,
                            span,
                            semconv,
                            Side::Server,
                            crate::call::Cut::default(),
                        )
                    })),
                }
            }
            Err(error) => {
                if let Some(end) = end {
                    end.record(Code::Unknown, 0);
                }
                if let Some(span) = span {
                    end_span(
                        &span,
                        semconv,
                        Side::Server,
                        Code::Unknown,
                        "the service failed",
                    );
                }
                Err(error)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_accepts_valid_and_rejects_malformed() {
        let sc =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra")
                .is_some()
        );
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033zz-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn baggage_parsing_decodes_values_and_skips_malformed_entries() {
        let entries =
            parse_baggage("ameide.session_id=s%201;prop=x, team=core , =nokey, bad key=1, novalue");
        let pairs: Vec<(String, String)> = entries
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("ameide.session_id".to_string(), "s 1".to_string()),
                ("team".to_string(), "core".to_string())
            ]
        );
    }
}
