//! Tracing layer: one OpenTelemetry CLIENT span per attempt, and W3C trace
//! context on the wire.
//!
//! | Span part | Value |
//! |---|---|
//! | name | `<package>.<Service>/<Method>` |
//! | kind | `CLIENT` |
//! | parent | the caller's current `opentelemetry::Context` |
//! | attributes (default) | `rpc.system = "grpc"`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address`, `server.port`, `ameide.request_id` |
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

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::HeaderValue;
use http_body::Frame;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanKind, Status as SpanStatus, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{BoxError, HttpRequest, HttpResponse, status_from_error, trailers_only_status};
use crate::auth::BoxFuture;
use crate::call::SessionId;
use crate::error::canonical_code_name;

/// Which RPC semantic conventions the spans follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemconvMode {
    /// The experimental names the other Ameide SDKs emit (default).
    Legacy,
    /// The stable names only (`OTEL_SEMCONV_STABILITY_OPT_IN=rpc`).
    Stable,
    /// Both (`OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup`, which wins over `rpc`).
    Duplicate,
}

impl SemconvMode {
    /// Reads `OTEL_SEMCONV_STABILITY_OPT_IN`.
    ///
    /// ```
    /// use ameide_sdk::layers::SemconvMode;
    /// assert_eq!(SemconvMode::parse("http,rpc"), SemconvMode::Stable);
    /// assert_eq!(SemconvMode::parse("rpc, rpc/dup"), SemconvMode::Duplicate);
    /// assert_eq!(SemconvMode::parse("http"), SemconvMode::Legacy);
    /// ```
    pub fn from_env() -> Self {
        std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN")
            .map(|v| Self::parse(&v))
            .unwrap_or(SemconvMode::Legacy)
    }

    /// Parses a comma-separated opt-in list.
    pub fn parse(value: &str) -> Self {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items.contains(&"rpc/dup") {
            SemconvMode::Duplicate
        } else if items.contains(&"rpc") {
            SemconvMode::Stable
        } else {
            SemconvMode::Legacy
        }
    }

    fn legacy(self) -> bool {
        matches!(self, SemconvMode::Legacy | SemconvMode::Duplicate)
    }

    fn stable(self) -> bool {
        matches!(self, SemconvMode::Stable | SemconvMode::Duplicate)
    }
}

struct TracingConfig {
    tracer: BoxedTracer,
    semconv: SemconvMode,
    session_id: Option<Arc<str>>,
    server: Option<(String, u16)>,
}

/// Creates one CLIENT span per attempt and injects W3C trace context.
///
/// ```
/// use ameide_sdk::layers::{SemconvMode, TracingLayer};
/// let layer = TracingLayer::new().with_semconv(SemconvMode::Stable).with_server("api.ameide.io", 443);
/// # let _ = layer;
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

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("ameide-sdk")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl TracingLayer {
    /// Uses the global tracer provider and `OTEL_SEMCONV_STABILITY_OPT_IN`.
    pub fn new() -> Self {
        TracingLayer {
            config: Arc::new(TracingConfig {
                tracer: opentelemetry::global::tracer_with_scope(scope()),
                semconv: SemconvMode::from_env(),
                session_id: None,
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
                    tracer: opentelemetry::global::tracer_with_scope(scope()),
                    semconv: old.semconv,
                    session_id: old.session_id.clone(),
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
        let tracer = BoxedTracer::new(Box::new(provider.tracer_with_scope(scope())));
        self.edit(|c| c.tracer = tracer)
    }

    /// Overrides the semantic-convention mode read from the environment.
    pub fn with_semconv(self, mode: SemconvMode) -> Self {
        self.edit(|c| c.semconv = mode)
    }

    /// Sends `ameide.session_id` in `baggage` on every call (a per-call session id wins).
    pub fn with_session_id(self, session_id: impl Into<String>) -> Self {
        let id: Arc<str> = Arc::from(session_id.into());
        self.edit(|c| c.session_id = Some(id))
    }

    /// Sets `server.address` and `server.port` (otherwise taken from the request URI).
    pub fn with_server(self, address: impl Into<String>, port: u16) -> Self {
        let address = address.into();
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

/// W3C baggage values: everything outside `baggage-octet` is percent-encoded.
const BAGGAGE_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%');

impl<S> TracingService<S> {
    fn start_span(&self, request: &mut HttpRequest) -> (Context, SemconvMode) {
        let config = &self.config;
        let path = request.uri().path();
        let full_method = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = full_method.split_once('/').unwrap_or((full_method, ""));
        let mut attributes = Vec::with_capacity(8);
        if config.semconv.legacy() {
            attributes.push(KeyValue::new("rpc.system", "grpc"));
            attributes.push(KeyValue::new("rpc.service", service.to_owned()));
            if !config.semconv.stable() {
                attributes.push(KeyValue::new("rpc.method", method.to_owned()));
            }
        }
        if config.semconv.stable() {
            attributes.push(KeyValue::new("rpc.system.name", "grpc"));
            attributes.push(KeyValue::new("rpc.method", full_method.to_owned()));
        }
        let server = config.server.clone().or_else(|| {
            let uri = request.uri();
            uri.host().map(|h| {
                let port = uri
                    .port_u16()
                    .unwrap_or(if uri.scheme_str() == Some("https") {
                        443
                    } else {
                        80
                    });
                (h.to_owned(), port)
            })
        });
        if let Some((address, port)) = server {
            attributes.push(KeyValue::new("server.address", address));
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(id) = request
            .headers()
            .get(crate::contract::HEADER_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("ameide.request_id", id.to_owned()));
        }
        let parent = Context::current();
        let span = config.tracer.build_with_context(
            config
                .tracer
                .span_builder(Cow::Owned(full_method.to_owned()))
                .with_kind(SpanKind::Client)
                .with_attributes(attributes),
            &parent,
        );
        let cx = parent.with_span(span);
        inject(&cx, request, self.session_id(request));
        (cx, config.semconv)
    }

    fn session_id(&self, request: &HttpRequest) -> Option<Arc<str>> {
        request
            .extensions()
            .get::<SessionId>()
            .map(|s| s.0.clone())
            .or_else(|| self.config.session_id.clone())
    }
}

fn inject(cx: &Context, request: &mut HttpRequest, session_id: Option<Arc<str>>) {
    let span = cx.span();
    let sc = span.span_context();
    let headers = request.headers_mut();
    if sc.is_valid() {
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        if let Ok(v) = HeaderValue::try_from(traceparent) {
            headers.insert("traceparent", v);
        }
        let state = sc.trace_state().header();
        if !state.is_empty()
            && let Ok(v) = HeaderValue::try_from(state)
        {
            headers.insert("tracestate", v);
        }
    }
    let mut entries: Vec<String> = cx
        .baggage()
        .iter()
        .filter(|(k, _)| k.as_str() != crate::contract::SESSION_BAGGAGE_KEY || session_id.is_none())
        .map(|(k, (v, _))| {
            format!(
                "{}={}",
                k.as_str(),
                utf8_percent_encode(v.as_str(), BAGGAGE_VALUE)
            )
        })
        .collect();
    if let Some(session) = session_id {
        entries.push(format!(
            "{}={}",
            crate::contract::SESSION_BAGGAGE_KEY,
            utf8_percent_encode(&session, BAGGAGE_VALUE)
        ));
    }
    if entries.is_empty() {
        return;
    }
    let existing = headers
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .map(str::to_owned);
    let mut value = existing.unwrap_or_default();
    for entry in entries {
        let key = entry.split('=').next().unwrap_or_default();
        let already = value
            .split(',')
            .any(|item| item.split('=').next().map(str::trim) == Some(key));
        if !already {
            if !value.is_empty() {
                value.push(',');
            }
            value.push_str(&entry);
        }
    }
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert("baggage", v);
    }
}

fn end_span(cx: &Context, semconv: SemconvMode, code: Code, message: &str) {
    let span = cx.span();
    if semconv.legacy() {
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    }
    if semconv.stable() {
        span.set_attribute(KeyValue::new(
            "rpc.response.status_code",
            canonical_code_name(code),
        ));
        if code != Code::Ok {
            span.set_attribute(KeyValue::new("error.type", canonical_code_name(code)));
        }
    }
    if code != Code::Ok {
        span.set_status(SpanStatus::error(message.to_owned()));
    }
    span.end();
}

impl<S> Service<HttpRequest> for TracingService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let (cx, semconv) = self.start_span(&mut request);
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    if let Some(status) = trailers_only_status(&response) {
                        end_span(&cx, semconv, status.code(), status.message());
                        return Ok(response);
                    }
                    Ok(response.map(|body| {
                        tonic::body::Body::new(SpanBody {
                            inner: body,
                            span: Some(cx),
                            semconv,
                        })
                    }))
                }
                Err(error) => {
                    let error = error.into();
                    let status = status_from_error(error);
                    end_span(&cx, semconv, status.code(), status.message());
                    Err(Box::new(status) as BoxError)
                }
            }
        })
    }
}

pin_project! {
    /// Ends the attempt span when the response stream ends.
    struct SpanBody {
        #[pin]
        inner: tonic::body::Body,
        span: Option<Context>,
        semconv: SemconvMode,
    }

    impl PinnedDrop for SpanBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cx) = this.span.take() {
                end_span(&cx, *this.semconv, Code::Cancelled, "response stream dropped before it ended");
            }
        }
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
                    match Status::from_header_map(trailers) {
                        Some(status) => {
                            end_span(&span, *this.semconv, status.code(), status.message())
                        }
                        None => end_span(
                            &span,
                            *this.semconv,
                            Code::Unknown,
                            "trailers without grpc-status",
                        ),
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(span) = this.span.take() {
                    end_span(&span, *this.semconv, status.code(), status.message());
                }
            }
            Poll::Ready(None) => {
                if let Some(span) = this.span.take() {
                    end_span(
                        &span,
                        *this.semconv,
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
