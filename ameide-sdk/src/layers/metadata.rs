//! Metadata layer: the outermost layer, once per call.
//!
//! On the way in it sets `x-tenant-id` and `x-user-id` (only when configured),
//! the extra headers (lower-cased, validated when the layer is built), and
//! `x-request-id`: kept when the caller set one, generated otherwise. Being
//! outside the retry layer, every attempt carries the same values.
//!
//! On the way out it stamps a failed call's status with the request id, the
//! attempt count, the elapsed time and the retry verdict (see [`crate::Error`]),
//! and puts a [`crate::CallInfo`] into a successful response's extensions.
//! A value the caller set per call (same header name) wins over the layer's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tower::{Layer, Service};

use super::{BoxError, HttpRequest, HttpResponse, grpc_code, names, status_from_error};
use crate::call::{CallFacts, CallInfo, CallState};
use crate::config::{ConfigError, header_value, validate_header};
use crate::telemetry::metrics::{ClientMetrics, grpc_method};

/// What recording the call's duration needs (when metrics are on).
struct CallEnd {
    metrics: Arc<ClientMetrics>,
    method: &'static str,
}

impl CallEnd {
    /// Records the call's end, and the committed attempt's if the metrics
    /// layer handed it over (`rcvd`: its response message bytes).
    fn record(self, code: tonic::Code, state: &CallState, rcvd: u64) {
        let now = Instant::now();
        let attempt = state
            .take_committed_attempt()
            .map(|(at, sent)| (now.saturating_duration_since(at), sent, rcvd));
        self.metrics.call_ended(
            self.method,
            code,
            now.saturating_duration_since(state.start()),
            attempt,
        );
        self.metrics.call_retries(self.method, state);
    }
}

pub use crate::request_id::RequestIdGenerator;

/// Builds a [`MetadataLayer`]; every value is validated by [`build`](Self::build).
#[derive(Debug, Default)]
pub struct MetadataLayerBuilder {
    tenant_id: Option<String>,
    user_id: Option<String>,
    headers: Vec<(String, String)>,
    generator: Option<RequestIdGenerator>,
    max_decoding_message_size: Option<usize>,
    accept_compressed: Option<&'static [CompressionEncoding]>,
    metrics: Option<Arc<ClientMetrics>>,
}

impl MetadataLayerBuilder {
    /// The response encodings the client accepts (default gzip and zstd,
    /// as [`CodecOptions::accept_compressed`](crate::CodecOptions)): a
    /// response compressed otherwise fails `UNIMPLEMENTED` here, with the
    /// call's facts, and every compressed message of an accepted one is
    /// checked as it arrives.
    ///
    /// ```
    /// use ameide_sdk::layers::MetadataLayer;
    /// use ameide_sdk::tonic::codec::CompressionEncoding;
    /// let layer = MetadataLayer::builder().accept_compressed(&[CompressionEncoding::Gzip]).build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn accept_compressed(mut self, encodings: &'static [CompressionEncoding]) -> Self {
        self.accept_compressed = Some(encodings);
        self
    }

    /// The largest response message, checked on the wire before tonic
    /// decodes it (default 4 MiB; see [`crate::CodecOptions`]).
    pub fn max_decoding_message_size(mut self, bytes: usize) -> Self {
        self.max_decoding_message_size = Some(bytes);
        self
    }

    /// Sends `x-tenant-id` (system/bootstrap callers only; user traffic is routed by token).
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Sends `x-user-id`.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Sends an extra header on every call; the name is lower-cased.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Generates request ids with `generator` instead of UUID v4.
    pub fn request_id_generator(mut self, generator: RequestIdGenerator) -> Self {
        self.generator = Some(generator);
        self
    }

    /// Records `grpc.client.call.duration` (and its stable-convention twin)
    /// of every call with these instruments.
    pub(crate) fn call_metrics(mut self, metrics: Arc<ClientMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Validates everything; an invalid name or value is an error naming it.
    ///
    /// ```
    /// use ameide_sdk::layers::MetadataLayer;
    /// assert!(MetadataLayer::builder().header("X-Team", "core").build().is_ok());
    /// let err = MetadataLayer::builder().tenant_id("bad\nvalue").build().unwrap_err();
    /// assert!(err.to_string().contains("tenant id"));
    /// ```
    pub fn build(self) -> Result<MetadataLayer, ConfigError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let (name, value) = validate_header(name, value)?;
            headers.insert(name, value);
        }
        let tenant = self
            .tenant_id
            .map(|t| header_value("tenant id", &t))
            .transpose()?;
        let user = self
            .user_id
            .map(|u| header_value("user id", &u))
            .transpose()?;
        Ok(MetadataLayer {
            config: Arc::new(MetadataConfig {
                tenant,
                user,
                headers,
                generator: self.generator.unwrap_or_else(RequestIdGenerator::uuid_v4),
                decode_limit: self
                    .max_decoding_message_size
                    .unwrap_or(crate::codec::DEFAULT_MAX_DECODING_MESSAGE_SIZE),
                accept: self
                    .accept_compressed
                    .unwrap_or(crate::codec::DEFAULT_ACCEPT_COMPRESSED),
                metrics: self.metrics,
            }),
        })
    }
}

#[derive(Debug)]
struct MetadataConfig {
    tenant: Option<HeaderValue>,
    user: Option<HeaderValue>,
    headers: HeaderMap,
    generator: RequestIdGenerator,
    decode_limit: usize,
    accept: &'static [CompressionEncoding],
    metrics: Option<Arc<ClientMetrics>>,
}

/// Sets tenant, user, extra headers and the request id; stamps errors.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::layers::{HttpRequest, MetadataLayer};
/// use tower::{Layer, ServiceExt};
///
/// let server = tower::service_fn(|request: HttpRequest| async move {
///     assert_eq!(request.headers()["x-tenant-id"], "tenant-a");
///     assert_eq!(request.headers()["x-team"], "core");
///     assert_eq!(request.headers()["x-request-id"].len(), 36); // a UUID v4
///     Ok::<_, std::convert::Infallible>(tonic::Status::unavailable("down").into_http())
/// });
/// let layer = MetadataLayer::builder().tenant_id("tenant-a").header("X-Team", "core").build().unwrap();
/// let request = http::Request::builder()
///     .uri("/ameide_core_proto.graph.v1.GraphService/ListRepositories")
///     .body(tonic::body::Body::empty())
///     .unwrap();
/// // A failed call comes back as an error stamped with the SDK's facts.
/// let error = layer.layer(server).oneshot(request).await.unwrap_err();
/// let error = ameide_sdk::Error::from(*error.downcast::<tonic::Status>().unwrap());
/// assert_eq!(error.code(), tonic::Code::Unavailable);
/// assert_eq!(error.request_id().map(str::len), Some(36));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MetadataLayer {
    config: Arc<MetadataConfig>,
}

impl MetadataLayer {
    /// Starts a builder.
    pub fn builder() -> MetadataLayerBuilder {
        MetadataLayerBuilder::default()
    }
}

impl<S> Layer<S> for MetadataLayer {
    type Service = MetadataService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetadataService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service produced by [`MetadataLayer`].
#[derive(Debug, Clone)]
pub struct MetadataService<S> {
    inner: S,
    config: Arc<MetadataConfig>,
}

const TENANT: HeaderName = HeaderName::from_static(crate::contract::HEADER_TENANT);
const USER: HeaderName = HeaderName::from_static(crate::contract::HEADER_USER);

impl<S> MetadataService<S> {
    fn prepare(&self, request: &mut HttpRequest) -> CallState {
        let config = &self.config;
        let headers = request.headers_mut();
        if let Some(tenant) = &config.tenant {
            headers.entry(TENANT).or_insert_with(|| tenant.clone());
        }
        if let Some(user) = &config.user {
            headers.entry(USER).or_insert_with(|| user.clone());
        }
        for (name, value) in &config.headers {
            headers.entry(name).or_insert_with(|| value.clone());
        }
        let existing = headers
            .get(names::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let request_id: Arc<str> = match existing {
            Some(id) => Arc::from(id),
            // Inside a request handled behind the inbound layer: continue its id.
            None => match crate::inbound::inbound_request_id()
                .filter(|id| HeaderValue::from_str(id).is_ok())
            {
                Some(id) => {
                    let value = HeaderValue::from_str(&id).expect("checked above");
                    headers.insert(names::REQUEST_ID, value);
                    id
                }
                None => {
                    let (mut value, id) = config.generator.generate_shared().unwrap_or_else(|bad| {
                        ::tracing::warn!(generated = ?bad, "request id generator returned an invalid header value; using a UUID v4 instead");
                        RequestIdGenerator::uuid_v4()
                            .generate_shared()
                            .expect("a UUID is a valid header value")
                    });
                    // A fresh id per call: never-indexed, so it does not churn the
                    // HPACK dynamic table and evict the stable headers.
                    value.set_sensitive(true);
                    headers.insert(names::REQUEST_ID, value);
                    id
                }
            },
        };
        // Taken out, not read: the call state carries it from here on, and an
        // extension the retry layer does not know would cost it a copy of the
        // whole extension map per attempt.
        let start = request
            .extensions_mut()
            .remove::<crate::call::CallStart>()
            .map_or_else(Instant::now, |start| start.0);
        let method = ameide_proto::method(request.uri().path());
        let state = CallState::new(start, request_id, method);
        // Taken out too (the retry layer need not copy it): a generated
        // client's stamp, filled so that errors tonic raises above the
        // layers carry this call's facts.
        if let Some(stamp) = request
            .extensions_mut()
            .remove::<ameide_proto::codec::ErrorStamp>()
        {
            state.fill_stamp(&stamp);
        }
        request.extensions_mut().insert(state.clone());
        state
    }
}

impl<S> Service<HttpRequest> for MetadataService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = MetadataFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let state = self.prepare(&mut request);
        let decode_limit = request
            .extensions()
            .get::<crate::codec::DecodeLimit>()
            .map_or(self.config.decode_limit, |l| l.0);
        let call = self.config.metrics.as_ref().map(|metrics| {
            state.set_records_attempts();
            CallEnd {
                metrics: metrics.clone(),
                method: grpc_method(state.method()),
            }
        });
        MetadataFuture {
            inner: self.inner.call(request),
            state: Some(state),
            decode_limit,
            accept: self.config.accept,
            call,
        }
    }
}

pin_project! {
    /// The response future of [`MetadataService`]: stamps errors, attaches [`CallInfo`].
    pub struct MetadataFuture<F> {
        #[pin]
        inner: F,
        state: Option<CallState>,
        decode_limit: usize,
        accept: &'static [CompressionEncoding],
        call: Option<CallEnd>,
    }

    impl<F> PinnedDrop for MetadataFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(call), Some(state)) = (this.call.take(), this.state.as_ref()) {
                call.record(tonic::Code::Cancelled, state, 0);
            }
        }
    }
}

impl<F, E> std::future::Future for MetadataFuture<F>
where
    F: std::future::Future<Output = Result<HttpResponse, E>>,
    E: Into<BoxError>,
{
    type Output = Result<HttpResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let Some(state) = this.state.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => finish(response, state, (*this.decode_limit, *this.accept), call),
            Err(error) => {
                let status = status_from_error(error.into());
                if let Some(call) = call {
                    call.record(status.code(), &state, 0);
                }
                Err(Box::new(stamp_status(status, &state)) as BoxError)
            }
        })
    }
}

fn finish(
    mut response: HttpResponse,
    state: CallState,
    (decode_limit, accept): (usize, &'static [CompressionEncoding]),
    mut call: Option<CallEnd>,
) -> Result<HttpResponse, BoxError> {
    // Trailers-only. A failure becomes the call's error here; an OK is handed
    // up with its headers sanitized, because tonic parses them again. Either
    // way the call ends here.
    let mut leading = None;
    if response.headers().contains_key(names::GRPC_STATUS)
        && !crate::grpc_headers::is_trailers_only(&response)
    {
        // Not the call's status: the trailers will carry it. Taken out, so
        // that tonic (which reads a grpc-status in the headers as the call's
        // end) waits for them too; kept in case none come.
        ::tracing::warn!(
            "the response's leading headers carry a grpc-status, yet the response goes on: the status in its trailers is the call's"
        );
        let mut kept = http::HeaderMap::new();
        for name in [
            names::GRPC_STATUS,
            names::GRPC_MESSAGE,
            names::GRPC_STATUS_DETAILS,
        ] {
            if let Some(value) = response.headers_mut().remove(&name) {
                kept.insert(name, value);
            }
        }
        leading = Some(kept);
    }
    let trailers_only = grpc_code(response.headers());
    if trailers_only == Some(tonic::Code::Ok) && answers_with_one(&state) {
        // OK with no body at all: the one response message is missing
        // (tonic would say so above the layers, without the facts).
        return Err(own_verdict(missing_message(), &state, call.take()));
    }
    if let Some(code) = trailers_only
        && let Some(call) = call.take()
    {
        call.record(code, &state, 0);
    }
    match trailers_only {
        None => {}
        Some(tonic::Code::Ok) => {
            if let Some(why) = crate::peer::sanitize(response.headers_mut()) {
                ::tracing::warn!("{why}");
            }
        }
        Some(_) => {
            if let Some(peer) = crate::peer::status_from_headers(response.headers()) {
                return Err(Box::new(stamp_peer_status(peer, &state)));
            }
        }
    }
    let mut frames = crate::codec::FrameCheck::new(decode_limit);
    let encoding = response.headers().get("grpc-encoding");
    match encoding.map(|e| e.as_bytes()) {
        None | Some(b"identity") => frames = frames.uncompressed_only(),
        Some(_) if trailers_only.is_some() => {}
        Some(name) => {
            // Checked here, as the messages arrive: tonic's errors about
            // them are raised above the layers, where they are recorded too
            // late for the call metric (and, mid-stream, without the facts).
            let accepted = accept
                .iter()
                .copied()
                .find(|e| crate::codec::encoding_name(*e).as_bytes() == name);
            match accepted {
                Some(encoding) => frames = frames.check_compressed(encoding),
                None => {
                    let status = Status::unimplemented(format!(
                        "the response is compressed with {:?}, which this client does not accept ({})",
                        String::from_utf8_lossy(&name[..name.len().min(64)]),
                        accept
                            .iter()
                            .map(|e| crate::codec::encoding_name(*e))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    return Err(own_verdict(status, &state, call.take()));
                }
            }
        }
    }
    response.extensions_mut().insert(CallInfo {
        request_id: state.request_id_arc(),
        attempts: state.attempts(),
        elapsed: state.start().elapsed(),
    });
    Ok(response.map(|body| {
        tonic::body::Body::new(StampBody {
            inner: body,
            state,
            frames,
            // A trailers-only response ended with its headers: its (empty)
            // body is over, and no trailers are to come.
            failed: trailers_only.is_some(),
            call,
            leading,
        })
    }))
}

/// Whether the call's method answers with one message (unary, client
/// streaming), as the bundle says.
fn answers_with_one(state: &CallState) -> bool {
    state.method().is_some_and(|m| m.kind.has_single_response())
}

/// A single-response call that got a second message.
fn too_many_messages() -> Status {
    Status::internal(
        "the response has 2 messages, but the method answers with one: the server broke the method's shape",
    )
}

/// A single-response call that ended OK without its message.
fn missing_message() -> Status {
    Status::internal("the server ended the call OK without its response message")
}

/// The client's own verdict on a response, before its body is handed up:
/// not retryable (the same response fails the same way), recorded with its
/// code, stamped with the facts.
fn own_verdict(status: Status, state: &CallState, call: Option<CallEnd>) -> BoxError {
    state.record_retryable(false);
    if let Some(call) = call {
        call.record(status.code(), state, 0);
    }
    Box::new(stamp_status(status, state))
}

/// A status a peer sent, stamped; details the peer garbled are reported.
fn stamp_peer_status(peer: crate::peer::PeerStatus, state: &CallState) -> Status {
    let mut facts = CallFacts::of(state);
    facts.details_error = peer.details_error.map(Into::into);
    facts.attach(peer.status)
}

/// Attaches the call's facts to an error status, in-process (as its source,
/// never as metadata: see [`CallFacts`]).
pub(crate) fn stamp_status(status: Status, state: &CallState) -> Status {
    CallFacts::of(state).attach(status)
}

pin_project! {
    /// Turns error trailers (and body errors, and framing the SDK rejects:
    /// see [`crate::codec`]) into a stamped status.
    struct StampBody {
        #[pin]
        inner: tonic::body::Body,
        state: CallState,
        frames: crate::codec::FrameCheck,
        failed: bool,
        // Recorded with the status the caller gets: the trailers' or the
        // error's, or CANCELLED when the stream is dropped unfinished.
        call: Option<CallEnd>,
        // A status taken out of the leading headers of a response that went
        // on: the call's if the response ends without trailers after all
        // (a server that sends headers then an empty end of stream, or a
        // body that does not report its end with the headers).
        leading: Option<http::HeaderMap>,
    }

    impl PinnedDrop for StampBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(call) = this.call.take() {
                // Dropped unfinished: by its caller (CANCELLED), or by tonic
                // after an error it raised above the layers (that error's code).
                let code = this.state.failed_above().unwrap_or(tonic::Code::Cancelled);
                call.record(code, this.state, this.frames.message_bytes());
            }
        }
    }
}

impl StampBody {
    fn ended(self: Pin<&mut Self>, code: tonic::Code) {
        let this = self.project();
        if let Some(call) = this.call.take() {
            call.record(code, this.state, this.frames.message_bytes());
        }
    }
}

impl http_body::Body for StampBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.as_mut().stamp_frame(cx);
        let code = match &polled {
            // Trailers without grpc-status never get here: they are UNKNOWN errors.
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| grpc_code(t).unwrap_or(tonic::Code::Unknown)),
            Poll::Ready(Some(Err(status))) => Some(status.code()),
            // The end after the trailers (already recorded), or after an error.
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code {
            self.ended(code);
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

impl StampBody {
    fn stamp_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let fail = |status: Status, failed: &mut bool, state: &CallState| {
            *failed = true;
            Poll::Ready(Some(Err(stamp_status(status, state))))
        };
        let mut next = http_body::Body::poll_frame(this.inner, cx);
        if let Poll::Ready(None) = next
            && let Some(leading) = this.leading.take()
        {
            // No trailers after all: the status of the leading headers ends
            // the call, read as trailers would be.
            next = Poll::Ready(Some(Ok(Frame::trailers(leading))));
        }
        match next {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(status) = this.frames.feed(data) {
                        // The client's own verdict on this response (over its
                        // size limit, a bad flag): the same response fails the
                        // same way, whatever its code says.
                        this.state.record_retryable(false);
                        return fail(status, this.failed, this.state);
                    }
                    if this.frames.messages() > 1 && answers_with_one(this.state) {
                        // A second message of a method that answers with one:
                        // tonic would take the first and drop the rest
                        // silently; grpc-go calls it a cardinality violation.
                        this.state.record_retryable(false);
                        return fail(too_many_messages(), this.failed, this.state);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(trailers) = frame.trailers_mut() {
                    // Whatever they say, nothing follows the trailers.
                    *this.failed = true;
                    match grpc_code(trailers) {
                        None => {
                            let status = tonic::Status::unknown(
                                "the response's trailers carry no grpc-status: the server or a proxy ended the call without saying how it went",
                            );
                            return fail(status, this.failed, this.state);
                        }
                        Some(tonic::Code::Ok) => {
                            if let Some(status) = this.frames.cut_off() {
                                return fail(status, this.failed, this.state);
                            }
                            if this.frames.messages() == 0 && answers_with_one(this.state) {
                                // tonic would say "Missing response message"
                                // above the layers; said here, it has the facts.
                                this.state.record_retryable(false);
                                return fail(missing_message(), this.failed, this.state);
                            }
                            // tonic parses OK trailers again: nothing it could panic on.
                            if let Some(why) = crate::peer::sanitize(trailers) {
                                ::tracing::warn!("{why}");
                            }
                        }
                        Some(_) => {
                            if let Some(peer) = crate::peer::status_from_headers(trailers) {
                                *this.failed = true;
                                let status = stamp_peer_status(peer, this.state);
                                return Poll::Ready(Some(Err(status)));
                            }
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => fail(status, this.failed, this.state),
            Poll::Ready(None) => match this.frames.cut_off() {
                Some(status) => fail(status, this.failed, this.state),
                // Ended without trailers: no grpc-status at all.
                None => fail(
                    tonic::Status::unknown(
                        "the response ended without trailers (no grpc-status): the server or a proxy cut the call short",
                    ),
                    this.failed,
                    this.state,
                ),
            },
            Poll::Pending => Poll::Pending,
        }
    }
}
