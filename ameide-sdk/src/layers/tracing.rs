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
use std::future::Future;
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
use opentelemetry::{Context, InstrumentationScope, KeyValue, StringValue, Value};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{
    BoxError, HttpRequest, HttpResponse, grpc_code, names, status_from_error, trailers_only_status,
};
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
    tracer: Arc<BoxedTracer>,
    semconv: SemconvMode,
    session_id: Option<Arc<str>>,
    /// `baggage: ameide.session_id=…` for the configured session, built once.
    session_baggage: Option<HeaderValue>,
    server: Option<(StringValue, u16)>,
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

/// The SDK's tracer from the global provider (client and server spans alike).
pub(crate) fn global_tracer() -> Arc<BoxedTracer> {
    Arc::new(opentelemetry::global::tracer_with_scope(scope()))
}

/// The SDK's tracer from an explicit provider.
pub(crate) fn provider_tracer<P, T, S>(provider: &P) -> Arc<BoxedTracer>
where
    P: TracerProvider<Tracer = T>,
    T: Tracer<Span = S> + Send + Sync + 'static,
    S: opentelemetry::trace::Span + Send + Sync + 'static,
{
    Arc::new(BoxedTracer::new(Box::new(
        provider.tracer_with_scope(scope()),
    )))
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
        let mut attributes = Vec::with_capacity(8);
        let name = rpc_attributes(request.uri().path(), config.semconv, &mut attributes);
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
                (StringValue::from(h.to_owned()), port)
            })
        });
        if let Some((address, port)) = server {
            attributes.push(KeyValue::new("server.address", Value::String(address)));
            attributes.push(KeyValue::new("server.port", i64::from(port)));
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
        let parent = Context::current();
        let span = config.tracer.build_with_context(
            config
                .tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes(attributes),
            &parent,
        );
        let cx = parent.with_span(span);
        let per_call_session = request.extensions().get::<SessionId>().map(|s| s.0.clone());
        match (&config.session_baggage, per_call_session) {
            // The common case: the client's session, no other baggage: one
            // prebuilt header value, no formatting per attempt.
            (Some(baggage), None)
                if cx.baggage().is_empty() && !request.headers().contains_key(names::BAGGAGE) =>
            {
                inject(&cx, request, None);
                request
                    .headers_mut()
                    .insert(names::BAGGAGE, baggage.clone());
            }
            (_, per_call) => {
                let session = per_call.or_else(|| config.session_id.clone());
                inject(&cx, request, session);
            }
        }
        (cx, config.semconv)
    }
}

fn inject(cx: &Context, request: &mut HttpRequest, session_id: Option<Arc<str>>) {
    let span = cx.span();
    let sc = span.span_context();
    let headers = request.headers_mut();
    if sc.is_valid() {
        let traceparent = format_traceparent(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        );
        if let Ok(mut v) = HeaderValue::from_bytes(&traceparent) {
            // Unique per attempt: never-indexed (see the metadata layer).
            v.set_sensitive(true);
            headers.insert(names::TRACEPARENT, v);
        }
        let state = sc.trace_state().header();
        if !state.is_empty()
            && let Ok(v) = HeaderValue::try_from(state)
        {
            headers.insert(names::TRACESTATE, v);
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
        .get(names::BAGGAGE)
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
        headers.insert(names::BAGGAGE, v);
    }
}

/// `00-<trace id>-<span id>-<flags>` in lower-case hex, without `format!`.
/// Pushes the `rpc.*` attributes of `path` and returns the span name
/// (`<package>.<Service>/<Method>`). Bundle methods get their names as
/// `&'static str` from the method table: no allocation per span.
pub(crate) fn rpc_attributes(
    path: &str,
    semconv: SemconvMode,
    attributes: &mut Vec<KeyValue>,
) -> Cow<'static, str> {
    let known = ameide_proto::method(path);
    let (full_method, service, method): (StringValue, StringValue, StringValue) = match known {
        Some(info) => (
            StringValue::from(&info.path[1..]),
            StringValue::from(info.service),
            StringValue::from(info.method),
        ),
        None => {
            let full = path.strip_prefix('/').unwrap_or(path);
            let (service, method) = full.split_once('/').unwrap_or((full, ""));
            (
                StringValue::from(full.to_owned()),
                StringValue::from(service.to_owned()),
                StringValue::from(method.to_owned()),
            )
        }
    };
    if semconv.legacy() {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        attributes.push(KeyValue::new("rpc.service", service));
        if !semconv.stable() {
            attributes.push(KeyValue::new("rpc.method", method));
        }
    }
    if semconv.stable() {
        attributes.push(KeyValue::new("rpc.system.name", "grpc"));
        attributes.push(KeyValue::new("rpc.method", full_method.clone()));
    }
    match known {
        Some(info) => Cow::Borrowed(&info.path[1..]),
        None => Cow::Owned(full_method.as_str().to_owned()),
    }
}

fn format_traceparent(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(3, &trace_id);
    put(36, &span_id);
    put(53, &[flags]);
    out
}

/// Which end of the call a span describes; it decides which codes mark the span as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Any non-OK code is an error (the caller did not get what it asked for).
    Client,
    /// Only codes that mean the server failed (OpenTelemetry's gRPC server rule):
    /// `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`.
    Server,
}

impl Side {
    fn is_error(self, code: Code) -> bool {
        match self {
            Side::Client => code != Code::Ok,
            Side::Server => matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
        }
    }
}

pub(crate) fn end_span(cx: &Context, semconv: SemconvMode, side: Side, code: Code, message: &str) {
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
    if side.is_error(code) {
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
    type Future = TracingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let (cx, semconv) = self.start_span(&mut request);
        // A span nobody records (a no-op tracer, a sampler that said no) has
        // nothing to end: the response passes through unwrapped.
        let span = cx.span().is_recording().then_some(cx);
        TracingFuture {
            inner: self.inner.call(request),
            span,
            semconv,
        }
    }
}

pin_project! {
    /// The response future of [`TracingService`]: ends the span on a
    /// trailers-only response or an error, or hands it to the response body.
    pub struct TracingFuture<F> {
        #[pin]
        inner: F,
        span: Option<Context>,
        semconv: SemconvMode,
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
                    Ok(response.map(|body| SpanBody::wrap(body, span, semconv, Side::Client)))
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

pin_project! {
    /// Ends the attempt span when the response stream ends.
    pub(crate) struct SpanBody {
        #[pin]
        inner: tonic::body::Body,
        span: Option<Context>,
        semconv: SemconvMode,
        side: Side,
    }

    impl PinnedDrop for SpanBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cx) = this.span.take() {
                end_span(&cx, *this.semconv, *this.side, Code::Cancelled, "response stream dropped before it ended");
            }
        }
    }
}

impl SpanBody {
    /// Wraps `body` so that `span` ends with the call's status when the stream ends.
    pub(crate) fn wrap(
        body: tonic::body::Body,
        span: Context,
        semconv: SemconvMode,
        side: Side,
    ) -> tonic::body::Body {
        tonic::body::Body::new(SpanBody {
            inner: body,
            span: Some(span),
            semconv,
            side,
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

#[cfg(test)]
mod tests {
    use super::*;

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
