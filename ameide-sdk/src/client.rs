//! [`AmeideClient`]: the layered channel and one typed client per roster service.
//!
//! The stack, outermost first (contract §4; the table in [`crate::layers`] says what each does):
//!
//! ```text
//! AmeideChannel ─ closed? ─ in-flight limit ─ metadata → auth → timeout → retry → tracing → user layers… → transport
//! ```
//!
//! The in-flight limit ([`InFlightLimit`], `gate.rs`) is not a layer: it works in
//! `AmeideChannel::poll_ready`, so that a call waiting for a place has built
//! nothing yet.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::trace::{Tracer, TracerProvider};
use tokio::sync::OwnedSemaphorePermit;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::auth::{BoxFuture, TokenProvider};
use crate::call::CallStart;
use crate::codec::CodecOptions;
use crate::config::{
    AmeideConfig, ConfigError, ConfigErrorKind, validate_endpoint, validate_timeout,
};
use crate::gate::{Acquire, Admission, Admitted, Gate, InFlightLimit};
use crate::layers::{
    AuthLayer, BoxError, HttpRequest, HttpResponse, MetadataLayer, RequestIdGenerator, RetryLayer,
    RetryPolicy, SemconvMode, TimeoutLayer, TracingLayer,
};
use crate::transport::{
    BoxTransport, TransportOptions, TransportSlot, closed_status, http2_transport,
};

/// The layered channel every typed client runs on. Cheap to clone.
///
/// It is a `tower::Service` speaking tonic's body type, so any generated tonic
/// client can be built on it: `SomeServiceClient::new(client.channel())`.
pub struct AmeideChannel {
    service: BoxTransport,
    /// Limits and compression of the typed clients made on this channel
    /// (behind an `Arc`: typed clients hold the channel by value).
    codec: Arc<CodecOptions>,
    /// The decoding limit the stack checks unless a call says otherwise.
    stack_decode_limit: usize,
    closed: Arc<AtomicBool>,
    gate: Option<Gate>,
    /// This instance's way through the gate, from `poll_ready` to `call`.
    admission: Admission,
    /// `service` was polled ready for the next call.
    inner_ready: bool,
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

/// The Ameide client: one layered channel, a typed client per roster service.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use ameide_sdk::{AmeideClient, IntoAmeideResult};
/// use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
///
/// let client = AmeideClient::builder()
///     .endpoint("http://envoy-grpc:9000")
///     .user_id("user-1")
///     .bearer_token("t0k3n")
///     .build()?;
/// let repos = client.graph().list_repositories(ListRepositoriesRequest::default()).await.into_ameide()?;
/// println!("{} repositories", repos.get_ref().repositories.len());
/// client.close();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmeideClient {
    channel: AmeideChannel,
    slot: TransportSlot,
    endpoint: Arc<str>,
}

impl fmt::Debug for AmeideClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmeideClient")
            .field("endpoint", &self.endpoint)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Sets a typed client up with its channel's [`CodecOptions`].
macro_rules! configure_client {
    ($channel:expr, $client:expr) => {{
        let codec: &CodecOptions = &*$channel.codec;
        let mut client = $client
            .max_decoding_message_size(codec.max_decoding_message_size)
            .max_encoding_message_size(codec.max_encoding_message_size);
        for &encoding in codec.accept_compressed {
            client = client.accept_compressed(encoding);
        }
        if let Some(encoding) = codec.send_compressed {
            client = client.send_compressed(encoding);
        }
        client
    }};
}

ameide_proto::__ameide_client_set!(AmeideClient, AmeideChannel, configure_client);

impl AmeideClient {
    /// Starts a builder with the contract's defaults.
    pub fn builder() -> AmeideClientBuilder {
        AmeideClientBuilder::new()
    }

    /// The layered channel, for building other tonic clients on the same stack.
    pub fn channel(&self) -> AmeideChannel {
        self.channel.clone()
    }

    /// A clone of this client whose typed clients use `codec` (message size
    /// limits, compression): for one call or a group of calls. It shares the
    /// connection, the layers and the retry budget with this client.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::AmeideClient;
    /// use ameide_sdk::tonic::codec::CompressionEncoding;
    /// let client = AmeideClient::builder().endpoint("http://127.0.0.1:50051").build().unwrap();
    /// let big = client
    ///     .with_codec(
    ///         client
    ///             .codec()
    ///             .with_max_decoding_message_size(64 << 20)
    ///             .with_send_compressed(CompressionEncoding::Zstd),
    ///     )
    ///     .unwrap();
    /// assert_eq!(big.codec().max_decoding_message_size, 64 << 20);
    /// assert_eq!(client.codec().max_decoding_message_size, 4 << 20);
    /// assert!(client.with_codec(client.codec().with_max_decoding_message_size(0)).is_err());
    /// # }
    /// ```
    pub fn with_codec(&self, codec: CodecOptions) -> Result<AmeideClient, ConfigError> {
        codec.validate()?;
        let mut client = self.clone();
        client.channel.codec = Arc::new(codec);
        Ok(client)
    }

    /// The limits and compression of this client's typed clients.
    pub fn codec(&self) -> CodecOptions {
        *self.channel.codec
    }

    /// The endpoint the client was built for.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Releases the transport. Every later call, through any clone of this
    /// client or of its typed clients, fails at once with `CANCELLED`
    /// ("AmeideClient is closed…"). Calls already in flight finish.
    pub fn close(&self) {
        self.channel.closed.store(true, Ordering::Release);
        self.slot.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.channel.closed.load(Ordering::Acquire)
    }
}

type UserLayer = Box<dyn FnOnce(BoxTransport) -> BoxTransport + Send>;

/// Builds an [`AmeideClient`]. Setters never fail; [`build`](Self::build)
/// validates everything and names the first bad value.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use ameide_sdk::AmeideClient;
///
/// let err = AmeideClient::builder().endpoint("localhost:50051").build().unwrap_err();
/// assert!(err.to_string().contains("localhost:50051"));
///
/// let client = AmeideClient::builder()
///     .endpoint("http://127.0.0.1:50051")
///     .tenant_id("tenant-a")
///     .timeout(Duration::from_secs(2))
///     .header("x-team", "core")
///     .build()
///     .unwrap();
/// assert_eq!(client.endpoint(), "http://127.0.0.1:50051");
/// # }
/// ```
pub struct AmeideClientBuilder {
    config: AmeideConfig,
    /// What the setters set, applied over `config` at build: a setter wins
    /// over [`config`](Self::config) whatever the order of the calls.
    explicit: Explicit,
    token_provider: Option<Arc<dyn TokenProvider>>,
    retry: RetryPolicy,
    retry_layer: Option<RetryLayer>,
    safe_retries: Option<bool>,
    generator: Option<RequestIdGenerator>,
    tracing: Option<TracingLayer>,
    semconv: Option<SemconvMode>,
    user_layers: Vec<UserLayer>,
    transport: Option<BoxTransport>,
    transport_options: TransportOptions,
    in_flight_limit: Option<InFlightLimit>,
    codec: CodecOptions,
}

impl fmt::Debug for AmeideClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmeideClientBuilder")
            .field("config", &self.config)
            .field("retry", &self.retry)
            .field("user_layers", &self.user_layers.len())
            .field("custom_transport", &self.transport.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for AmeideClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AmeideClientBuilder {
    /// The contract's defaults: `https://api.ameide.io:443`, 5 s, 3 attempts, no tenant/user/session.
    pub fn new() -> Self {
        AmeideClientBuilder {
            config: AmeideConfig::default(),
            explicit: Explicit::default(),
            token_provider: None,
            retry: RetryPolicy::default(),
            retry_layer: None,
            safe_retries: None,
            generator: None,
            tracing: None,
            semconv: None,
            user_layers: Vec::new(),
            transport: None,
            transport_options: TransportOptions::default(),
            in_flight_limit: None,
            codec: CodecOptions::default(),
        }
    }

    /// Starts from `config` (e.g. [`AmeideConfig::from_env`]) instead of the
    /// contract's defaults. Values set with the builder's own setters win
    /// over it whatever the order of the calls; a second `config` replaces
    /// the first.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::{AmeideClient, AmeideConfig};
    /// let from_env = AmeideConfig { endpoint: "http://envoy-grpc:9000".into(), ..AmeideConfig::default() };
    /// let client = AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051") // set first, still wins
    ///     .config(from_env)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.endpoint(), "http://127.0.0.1:50051");
    /// # }
    /// ```
    pub fn config(mut self, config: AmeideConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the endpoint: `https://host[:port]` (TLS) or `http://host[:port]` (h2c).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.explicit.endpoint = Some(endpoint.into());
        self
    }

    /// Sends `x-tenant-id` on every call (system/bootstrap callers only).
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.explicit.tenant_id = Some(tenant_id.into());
        self
    }

    /// Sends `x-user-id` on every call.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.explicit.user_id = Some(user_id.into());
        self
    }

    /// Sends `ameide.session_id` in `baggage` on every call.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.explicit.session_id = Some(session_id.into());
        self
    }

    /// Sets the whole-call timeout (all attempts, streams included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.explicit.timeout = Some(timeout);
        self
    }

    /// Sends an extra header on every call; the name is lower-cased.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.explicit.headers.push((name.into(), value.into()));
        self
    }

    /// Sends `authorization: Bearer <token>` with a fixed token.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.explicit.auth_token = Some(crate::auth::AccessToken::new(token));
        self
    }

    /// Asks `provider` for the token of every call (wins over a static token).
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token_provider = Some(Arc::new(provider));
        self
    }

    /// Replaces the retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Switches safe-retry mode on or off for every call (see
    /// [`RetryPolicy::with_safe_retries`]); `CallOptions::safe_retries` overrides it per call.
    /// It wins over the policy given to [`retry_policy`](Self::retry_policy) or
    /// [`retry_layer`](Self::retry_layer), in whatever order they are called.
    pub fn safe_retries(mut self, safe: bool) -> Self {
        self.safe_retries = Some(safe);
        self
    }

    /// Replaces the retry layer itself (for an injected sleeper or jitter source).
    pub fn retry_layer(mut self, layer: RetryLayer) -> Self {
        self.retry_layer = Some(layer);
        self
    }

    /// Generates request ids with `generator` instead of UUID v4.
    pub fn request_id_generator(mut self, generator: RequestIdGenerator) -> Self {
        self.generator = Some(generator);
        self
    }

    /// Creates spans with `provider` instead of the global tracer provider.
    pub fn tracer_provider<P, T, S>(mut self, provider: &P) -> Self
    where
        P: TracerProvider<Tracer = T>,
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        self.tracing = Some(TracingLayer::new().with_tracer_provider(provider));
        self
    }

    /// Overrides `OTEL_SEMCONV_STABILITY_OPT_IN` for this client.
    pub fn semconv(mut self, mode: SemconvMode) -> Self {
        self.semconv = Some(mode);
        self
    }

    /// Changes how the default transport connects (keepalive, CA certificate, …).
    pub fn transport_options(mut self, options: TransportOptions) -> Self {
        self.transport_options = options;
        self
    }

    /// Message size limits and compression for every typed client (see
    /// [`crate::codec`]); [`AmeideClient::with_codec`] changes them for a clone.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::{AmeideClient, CodecOptions};
    /// let client = AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .codec(CodecOptions::default().with_max_decoding_message_size(8 << 20))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.codec().max_decoding_message_size, 8 << 20);
    /// # }
    /// ```
    pub fn codec(mut self, codec: CodecOptions) -> Self {
        self.codec = codec;
        self
    }

    /// Opt in to a cap on the calls the client keeps on the wire at once
    /// (over all clones and connections); `None`, the default, sends every
    /// call at once, as the TypeScript, Go and Python SDKs do.
    /// [`InFlightLimit::DEFAULT`] (128) is the measured setting. The rules are
    /// in [`InFlightLimit`].
    ///
    /// Calls past the limit wait in line, first come first served; the wait
    /// counts against their deadline, and one whose deadline passes in line
    /// fails with `DEADLINE_EXCEEDED` without being sent. A unary call keeps
    /// its place until its response headers arrive; a streaming call is
    /// delayed by at most [`InFlightLimit::max_wait`] and keeps no place.
    ///
    /// Why you might: past a few hundred calls in flight, a client core spends more on
    /// each call (the state of every call in flight no longer fits the CPU
    /// caches, and the allocator works harder), so the *rate falls* as more
    /// callers pile in; with the limit, the rate at 1,024 callers stays close
    /// to the rate at 64 (`docs/BENCHMARKS.md`).
    ///
    /// The cost: a limit caps throughput at `max_calls / latency` (Little's
    /// law). 128 calls at a 1 ms round trip (in a cluster) is 128,000 calls/s;
    /// at a 50 ms round trip (across regions) it is 2,560 calls/s per client.
    /// Raise `max_calls`, or turn the limit off, for high-rate use over a slow
    /// link. And as with any limit on calls in flight, a cycle (calls through
    /// this client waiting on calls that need this client, e.g. a service
    /// calling itself through its own client while handling) can wait until
    /// deadlines once every place is taken by it. That silent cap, and that
    /// the other SDKs have no such limit, are why it is off by default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use ameide_sdk::{AmeideClient, InFlightLimit};
    ///
    /// let client = AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .in_flight_limit(Some(InFlightLimit { max_calls: 1024, max_wait: Duration::from_millis(5) }))
    ///     .build()
    ///     .unwrap();
    /// # let _ = client;
    /// let err = AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .in_flight_limit(Some(InFlightLimit { max_calls: 0, ..Default::default() }))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("max_calls 0"));
    /// # }
    /// ```
    pub fn in_flight_limit(mut self, limit: Option<InFlightLimit>) -> Self {
        self.in_flight_limit = limit;
        self
    }

    /// Appends a user layer after the built-in ones (before the transport).
    /// Layers run in the order they are added, once per attempt.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxTransport> + Send + 'static,
        L::Service: Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
        <L::Service as Service<HttpRequest>>::Error: Into<BoxError>,
        <L::Service as Service<HttpRequest>>::Future: Send + 'static,
    {
        self.user_layers.push(Box::new(move |inner: BoxTransport| {
            BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into))
        }));
        self
    }

    /// Uses `transport` instead of a tonic `Channel`: any tower service speaking
    /// tonic's body type (an in-memory duplex connection, a custom or
    /// load-balanced channel). The endpoint is then only used for span attributes.
    pub fn transport<T>(mut self, transport: T) -> Self
    where
        T: Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
        T::Error: Into<BoxError>,
        T::Future: Send + 'static,
    {
        self.transport = Some(BoxCloneSyncService::new(transport.map_err(Into::into)));
        self
    }

    /// Validates the configuration and builds the client. Must run inside a
    /// Tokio runtime when the default transport is used.
    pub fn build(self) -> Result<AmeideClient, ConfigError> {
        let config = self.explicit.apply(self.config);
        let uri = validate_endpoint(&config.endpoint)?;
        validate_timeout("timeout", config.timeout)?;
        self.retry.validate()?;
        self.transport_options.validate()?;
        self.codec.validate()?;
        let gate = match self.in_flight_limit {
            Some(limit) => {
                limit.validate()?;
                Some(Gate::new(limit, config.timeout))
            }
            None => None,
        };

        let mut metadata = MetadataLayer::builder()
            .max_decoding_message_size(self.codec.max_decoding_message_size);
        if let Some(tenant) = &config.tenant_id {
            metadata = metadata.tenant_id(tenant);
        }
        if let Some(user) = &config.user_id {
            metadata = metadata.user_id(user);
        }
        for (name, value) in &config.headers {
            metadata = metadata.header(name, value);
        }
        if let Some(generator) = self.generator {
            metadata = metadata.request_id_generator(generator);
        }
        let metadata = metadata.build()?;

        let auth = match (self.token_provider, &config.auth_token) {
            (Some(provider), _) => Some(AuthLayer::from_arc(provider).max_wait(config.timeout)),
            (None, Some(token)) => Some(AuthLayer::static_token(token)?),
            (None, None) => None,
        };

        // Clients for the same target share one throttling bucket.
        let mut retry = match self.retry_layer {
            Some(layer) => layer,
            None => RetryLayer::new(self.retry)?,
        }
        .for_target(&config.endpoint);
        if let Some(safe) = self.safe_retries {
            retry = retry.safe_retries(safe);
        }

        let port = crate::config::port_of(&uri);
        let mut tracing = self
            .tracing
            .unwrap_or_default()
            .with_server(uri.host().unwrap_or_default(), port);
        if let Some(mode) = self.semconv {
            tracing = tracing.with_semconv(mode);
        }
        if let Some(session) = &config.session_id {
            crate::config::header_value("session id", session)?;
            tracing = tracing.with_session_id(session);
        }

        let transport = match self.transport {
            Some(transport) => transport,
            None => {
                let (options, ca_file) = with_tls_files(self.transport_options, &config.tls)?;
                http2_transport(&config.endpoint, &options, ca_file.as_deref())?
            }
        };
        let slot = TransportSlot::new(transport);
        let layers = BuiltIn {
            metadata,
            auth,
            timeout: TimeoutLayer::new(config.timeout),
            retry,
            tracing,
        };
        // Without user layers the built-in stack sits on the slot itself: one
        // box (and, per call, one boxed future and one clone) less.
        let service = if self.user_layers.is_empty() {
            layers.stack(slot.clone())
        } else {
            let mut below: BoxTransport = BoxCloneSyncService::new(slot.clone());
            for wrap in self.user_layers.into_iter().rev() {
                below = wrap(below);
            }
            layers.stack(below)
        };
        let channel = AmeideChannel {
            service,
            codec: Arc::new(self.codec),
            stack_decode_limit: self.codec.max_decoding_message_size,
            closed: Arc::new(AtomicBool::new(false)),
            gate,
            admission: Admission::default(),
            inner_ready: false,
        };
        Ok(AmeideClient {
            channel,
            slot,
            endpoint: Arc::from(config.endpoint.as_str()),
        })
    }
}

/// Fills the TLS options the builder left unset from the files the
/// configuration names (`AMEIDE_TLS_*`); returns the CA file's path for
/// error messages.
fn with_tls_files(
    mut options: TransportOptions,
    files: &crate::config::TlsFiles,
) -> Result<(TransportOptions, Option<std::path::PathBuf>), ConfigError> {
    let mut ca_file = None;
    if options.ca_certificate_pem.is_none()
        && let Some(path) = &files.ca_file
    {
        options.ca_certificate_pem =
            Some(crate::transport::tls::read_file("CA certificate", path)?);
        ca_file = Some(path.clone());
    }
    if options.client_identity.is_none() {
        match (&files.client_cert_file, &files.client_key_file) {
            (Some(cert), Some(key)) => {
                options.client_identity = Some(crate::ClientIdentity::from_files(cert, key)?);
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::new(
                    ConfigErrorKind::Tls,
                    "a client certificate file and a client key file go together: set both for mutual TLS, or neither",
                ));
            }
        }
    }
    if options.trust_roots == crate::TrustRoots::default()
        && let Some(roots) = files.roots
    {
        options.trust_roots = roots;
    }
    Ok((options, ca_file))
}

/// The values the builder's setters gave, kept apart from the base
/// configuration so that they win over [`AmeideClientBuilder::config`]
/// whatever the order of the calls.
#[derive(Default)]
struct Explicit {
    endpoint: Option<String>,
    tenant_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    timeout: Option<Duration>,
    auth_token: Option<crate::auth::AccessToken>,
    headers: Vec<(String, String)>,
}

impl Explicit {
    fn apply(self, mut config: AmeideConfig) -> AmeideConfig {
        if let Some(endpoint) = self.endpoint {
            config.endpoint = endpoint;
        }
        if self.tenant_id.is_some() {
            config.tenant_id = self.tenant_id;
        }
        if self.user_id.is_some() {
            config.user_id = self.user_id;
        }
        if self.session_id.is_some() {
            config.session_id = self.session_id;
        }
        if let Some(timeout) = self.timeout {
            config.timeout = timeout;
        }
        if self.auth_token.is_some() {
            config.auth_token = self.auth_token;
        }
        // Extra headers add up: the configuration's, then the setters'.
        config.headers.extend(self.headers);
        config
    }
}

/// The built-in layers, in the order of the table at the top of this file.
struct BuiltIn {
    metadata: MetadataLayer,
    auth: Option<AuthLayer>,
    timeout: TimeoutLayer,
    retry: RetryLayer,
    tracing: TracingLayer,
}

impl BuiltIn {
    fn stack<B>(self, below: B) -> BoxTransport
    where
        B: Service<HttpRequest, Response = HttpResponse, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        B::Future: Send + 'static,
    {
        let stack = ServiceBuilder::new()
            .layer(self.metadata)
            .option_layer(self.auth)
            .layer(self.timeout)
            .layer(self.retry)
            .layer(self.tracing)
            .service(below);
        BoxCloneSyncService::new(stack.map_err(Into::<BoxError>::into))
    }
}
