//! Tracing layer: one OpenTelemetry CLIENT span per attempt, and W3C trace
//! context on the wire.
//!
//! | Span part | Value |
//! |---|---|
//! | name | `<package>.<Service>/<Method>` |
//! | kind | `CLIENT` |
//! | parent | the caller's current `opentelemetry::Context` |
//! | attributes (default) | `rpc.system = "grpc"`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address`, `server.port`, `ameide.request_id` (`server.port` left out for a Unix socket); on a hedged call's attempts (gRFC A6), `ameide.attempt` (1, 2, …) and `ameide.hedge` (true after the first); for a `static:`, `dns:` or resolver target, the replica the attempt went to: `network.peer.address`, `network.peer.port` |
//! | attributes (`OTEL_SEMCONV_STABILITY_OPT_IN=rpc`) | `rpc.system.name = "grpc"`, `rpc.method = "<package>.<Service>/<Method>"`, `rpc.response.status_code = "<CODE>"`, `error.type` on errors, `server.*`, `ameide.request_id` |
//! | `rpc/dup` | both sets; `rpc.method` takes the stable (full) value, `rpc.service` keeps the short form |
//! | status | `ERROR` with the status message on any non-OK code |
//! | ends | when the response stream ends, fails, or is dropped |
//!
//! Headers injected from the attempt span: `traceparent`, `tracestate` (when
//! non-empty) and `baggage` (the parent context's baggage plus
//! `ameide.session_id` when a session id is set). The layer depends on the
//! `opentelemetry` API only: it uses the global tracer provider unless given
//! one; the application installs exporters.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::HeaderValue;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use percent_encoding::utf8_percent_encode;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{BoxError, HttpRequest, HttpResponse, names, status_from_error, trailers_only_status};
use crate::call::SessionId;

pub use crate::telemetry::SemconvMode;
use crate::telemetry::propagation::{BAGGAGE_VALUE, inject};
use crate::telemetry::{
    SdkTracer, Side, SpanBody, end_dropped, end_span, global_tracer, provider_tracer,
    rpc_attributes,
};

struct TracingConfig {
    tracer: Arc<SdkTracer>,
    semconv: SemconvMode,
    session_id: Option<Arc<str>>,
    /// `baggage: ameide.session_id=…` for the configured session, built once.
    session_baggage: Option<HeaderValue>,
    server: Option<(StringValue, u16)>,
}

/// Creates one CLIENT span per attempt and injects W3C trace context.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::layers::{HttpRequest, SemconvMode, TracingLayer};
/// use tower::{Layer, ServiceExt};
///
/// // With an OpenTelemetry SDK provider, each attempt is a CLIENT span whose
/// // context goes on the wire as traceparent.
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let server = tower::service_fn(|request: HttpRequest| async move {
///     let traceparent = request.headers()["traceparent"].to_str().unwrap().to_owned();
///     assert!(traceparent.starts_with("00-") && traceparent.len() == 55, "{traceparent}");
///     Ok::<_, std::convert::Infallible>(tonic::Status::ok("").into_http())
/// });
/// let layer = TracingLayer::new()
///     .with_tracer_provider(&provider)
///     .with_semconv(SemconvMode::Stable)
///     .with_server("api.ameide.io", 443);
/// let request = http::Request::builder()
///     .uri("/ameide_core_proto.graph.v1.GraphService/ListRepositories")
///     .body(tonic::body::Body::empty())
///     .unwrap();
/// let response = layer.layer(server).oneshot(request).await.unwrap();
/// assert_eq!(response.headers()["grpc-status"], "0");
/// # }
/// ```
#[derive(Clone)]
pub struct TracingLayer {
    config: Arc<TracingConfig>,
}

impl fmt::Debug for TracingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingLayer")
            .field("semconv", &self.config.semconv)
            .field("session_id", &self.config.session_id)
            .field("server", &self.config.server)
            .finish_non_exhaustive()
    }
}

impl Default for TracingLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TracingLayer {
    /// Uses the global tracer provider and `OTEL_SEMCONV_STABILITY_OPT_IN`.
    pub fn new() -> Self {
        TracingLayer {
            config: Arc::new(TracingConfig {
                tracer: global_tracer(),
                semconv: SemconvMode::from_env(),
                session_id: None,
                session_baggage: None,
                server: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut TracingConfig)) -> Self {
        let config = Arc::get_mut(&mut self.config);
        match config {
            Some(config) => f(config),
            None => {
                let old = &self.config;
                let mut copy = TracingConfig {
                    tracer: old.tracer.clone(),
                    semconv: old.semconv,
                    session_id: old.session_id.clone(),
                    session_baggage: old.session_baggage.clone(),
                    server: old.server.clone(),
                };
                f(&mut copy);
                self.config = Arc::new(copy);
            }
        }
        self
    }

    /// Uses `provider` instead of the global tracer provider.
    pub fn with_tracer_provider<P, T, S>(self, provider: &P) -> Self
    where
        P: TracerProvider<Tracer = T>,
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        let tracer = provider_tracer(provider);
        self.edit(|c| c.tracer = tracer)
    }

    /// Overrides the semantic-convention mode read from the environment.
    pub fn with_semconv(self, mode: SemconvMode) -> Self {
        self.edit(|c| c.semconv = mode)
    }

    /// Sends `ameide.session_id` in `baggage` on every call (a per-call session id wins).
    pub fn with_session_id(self, session_id: impl Into<String>) -> Self {
        let id: Arc<str> = Arc::from(session_id.into());
        let baggage = HeaderValue::try_from(format!(
            "{}={}",
            crate::contract::SESSION_BAGGAGE_KEY,
            utf8_percent_encode(&id, BAGGAGE_VALUE)
        ))
        .ok();
        self.edit(|c| {
            c.session_id = Some(id);
            c.session_baggage = baggage;
        })
    }

    /// Sets `server.address` and `server.port` (otherwise taken from the request URI).
    pub fn with_server(self, address: impl Into<String>, port: u16) -> Self {
        let address = StringValue::from(Arc::<str>::from(address.into()));
        self.edit(|c| c.server = Some((address, port)))
    }
}

impl<S> Layer<S> for TracingLayer {
    type Service = TracingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracingService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service produced by [`TracingLayer`].
#[derive(Clone)]
pub struct TracingService<S> {
    inner: S,
    config: Arc<TracingConfig>,
}

impl<S> fmt::Debug for TracingService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingService").finish_non_exhaustive()
    }
}

impl<S> TracingService<S> {
    /// Starts the attempt's span (none for a no-op tracer) and returns the
    /// context whose trace context goes on the wire.
    fn start_span(&self, request: &mut HttpRequest) -> Context {
        let config = &self.config;
        let parent = Context::current();
        if !config.tracer.creates_spans() {
            return parent;
        }
        let mut attributes = Vec::with_capacity(8);
        let known = crate::call::method_of(request);
        let name = rpc_attributes(request.uri().path(), known, config.semconv, &mut attributes);
        let server = config.server.clone().or_else(|| {
            let uri = request.uri();
            uri.host().map(|h| {
                let port = crate::config::port_of(uri);
                (StringValue::from(h.to_owned()), port)
            })
        });
        if let Some((address, port)) = server {
            attributes.push(KeyValue::new("server.address", Value::String(address)));
            // 0: none (a Unix socket, a resolver's name without a port).
            if port != 0 {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(state) = request.extensions().get::<crate::call::CallState>() {
            attributes.push(KeyValue::new(
                "ameide.request_id",
                StringValue::from(state.request_id_arc()),
            ));
        } else if let Some(id) = request
            .headers()
            .get(names::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("ameide.request_id", id.to_owned()));
        }
        if let Some(hedge) = request
            .extensions()
            .get::<crate::layers::retry::HedgeAttempt>()
        {
            // A hedged call's attempt: which one, and whether it is a hedge.
            attributes.push(KeyValue::new("ameide.attempt", i64::from(hedge.0)));
            attributes.push(KeyValue::new("ameide.hedge", hedge.0 > 1));
        }
        config
            .tracer
            .start(name, SpanKind::Client, attributes, &parent)
    }

    /// Puts `cx`'s trace context and the baggage (with the session id) on
    /// the request.
    fn inject(&self, cx: &Context, request: &mut HttpRequest) {
        let config = &self.config;
        let per_call_session = request.extensions().get::<SessionId>().map(|s| s.0.clone());
        match (&config.session_baggage, per_call_session) {
            // The common case: the client's session, no other baggage: one
            // prebuilt header value, no formatting per attempt.
            (Some(baggage), None)
                if cx.baggage().is_empty() && !request.headers().contains_key(names::BAGGAGE) =>
            {
                inject(cx, request, None);
                request
                    .headers_mut()
                    .insert(names::BAGGAGE, baggage.clone());
            }
            (_, per_call) => {
                let session = per_call.or_else(|| config.session_id.clone());
                inject(cx, request, session);
            }
        }
    }
}

impl<S> Service<HttpRequest> for TracingService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = TracingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let cx = self.start_span(&mut request);
        self.inject(&cx, &mut request);
        // A span nobody records (a no-op tracer, a sampler that said no) has
        // nothing to end: the response passes through unwrapped. Without a
        // span of ours, `cx` is the caller's: never ours to end.
        let span = (self.config.tracer.creates_spans() && cx.span().is_recording()).then_some(cx);
        let cut = match &span {
            Some(_) => crate::call::Cut::of(
                request.extensions().get::<crate::call::CallState>(),
                &request,
            ),
            None => crate::call::Cut::default(),
        };
        TracingFuture {
            inner: self.inner.call(request),
            span,
            semconv: self.config.semconv,
            cut,
        }
    }
}

pin_project! {
    /// The response future of [`TracingService`]: ends the span on a
    /// trailers-only response or an error, or hands it to the response body.
    /// Dropped before either (the call's deadline cut it, its caller went
    /// away), it ends the span with `DEADLINE_EXCEEDED` or `CANCELLED`.
    pub struct TracingFuture<F> {
        #[pin]
        inner: F,
        span: Option<Context>,
        semconv: SemconvMode,
        cut: crate::call::Cut,
    }

    impl<F> PinnedDrop for TracingFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(span) = this.span.take() {
                end_dropped(&span, *this.semconv, Side::Client, this.cut, "attempt");
            }
        }
    }
}

impl<F, E> Future for TracingFuture<F>
where
    F: Future<Output = Result<HttpResponse, E>>,
    E: Into<BoxError>,
{
    type Output = Result<HttpResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let Some(span) = this.span.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        let semconv = *this.semconv;
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(peer) = response
                    .extensions()
                    .get::<crate::transport::balancer::PeerAddress>()
                {
                    // The replica a balanced target's attempt went to.
                    let span = span.span();
                    span.set_attribute(KeyValue::new(
                        "network.peer.address",
                        StringValue::from(peer.address.clone()),
                    ));
                    span.set_attribute(KeyValue::new("network.peer.port", i64::from(peer.port)));
                }
                if let Some(status) = trailers_only_status(&response) {
                    end_span(
                        &span,
                        semconv,
                        Side::Client,
                        status.code(),
                        status.message(),
                    );
                    Ok(response)
                } else {
                    let cut = this.cut.clone();
                    Ok(response.map(|body| SpanBody::wrap(body, span, semconv, Side::Client, cut)))
                }
            }
            Err(error) => {
                let status = status_from_error(error.into());
                end_span(
                    &span,
                    semconv,
                    Side::Client,
                    status.code(),
                    status.message(),
                );
                Err(Box::new(status) as BoxError)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::propagation::format_traceparent;

    #[test]
    fn traceparent_matches_the_w3c_layout() {
        let trace = opentelemetry::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let span = opentelemetry::SpanId::from_hex("b7ad6b7169203331").unwrap();
        let out = format_traceparent(trace.to_bytes(), span.to_bytes(), 1);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let expected = format!("00-{trace}-{span}-{:02x}", 0u8);
        assert_eq!(
            &format_traceparent(trace.to_bytes(), span.to_bytes(), 0)[..],
            expected.as_bytes()
        );
    }

    #[test]
    fn semconv_opt_in_parsing() {
        assert_eq!(SemconvMode::parse(""), SemconvMode::Legacy);
        assert_eq!(SemconvMode::parse("rpc"), SemconvMode::Stable);
        assert_eq!(SemconvMode::parse("rpc/dup,rpc"), SemconvMode::Duplicate);
        assert_eq!(SemconvMode::parse("http/dup"), SemconvMode::Legacy);
    }
}
