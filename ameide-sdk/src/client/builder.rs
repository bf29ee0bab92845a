//! [`AmeideClientBuilder`]: settings, validation, and the assembly of the
//! stack over the transport.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use opentelemetry::trace::{Tracer, TracerProvider};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::auth::TokenProvider;
use crate::codec::CodecOptions;
use crate::config::{AmeideConfig, ConfigError, ConfigErrorKind, validate_timeout};
use crate::gate::{Admit, Gate, InFlightLimit};
use crate::layers::{
    AuthLayer, BoxError, HedgingPolicy, HttpRequest, HttpResponse, MetadataLayer, MetricsLayer,
    RequestIdGenerator, RetryLayer, RetryPolicy, SemconvMode, TimeoutLayer, TracingLayer,
};
use crate::transport::{BoxTransport, Resolver, TransportOptions, TransportSlot, http2_transport};

use super::{AmeideChannel, AmeideClient};

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
    stream_idle: Option<Duration>,
    meter: Option<opentelemetry::metrics::Meter>,
    resolvers: Vec<(String, Arc<dyn Resolver>)>,
    hedging: Option<HedgingPolicy>,
    method_hedging: Vec<(String, HedgingPolicy)>,
    retry_metrics: bool,
    /// A bad list given to [`endpoints`](Self::endpoints), reported by `build`.
    endpoints_error: Option<ConfigError>,
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
            stream_idle: None,
            meter: None,
            resolvers: Vec::new(),
            hedging: None,
            method_hedging: Vec::new(),
            retry_metrics: false,
            endpoints_error: None,
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

    /// Sets the target, in one of grpc-go's forms:
    ///
    /// | Target | Connects to |
    /// |---|---|
    /// | `https://host[:port]`, `http://host[:port]` | one endpoint, TLS or h2c (the host's addresses tried with Happy Eyeballs) |
    /// | `static:///10.0.0.1:50051,10.0.0.2:50051` | each entry a replica (`https://` per entry for TLS); see [`endpoints`](Self::endpoints) |
    /// | `dns:///host:port` | every address of the name, resolved again as it changes ([`TransportOptions::tls`] for TLS) |
    /// | `unix:path`, `unix:///absolute/path` | a Unix domain socket (h2c, `:authority` `localhost`) |
    /// | `scheme:///name` | the addresses the [`resolver`](Self::resolver) registered for `scheme` gives |
    ///
    /// The replicas of `static:`, `dns:` and resolver targets are balanced
    /// by [`TransportOptions::load_balancing`]. Checked by [`build`](Self::build).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::AmeideClient;
    /// for target in ["dns:///orders.prod.svc.cluster.local:50051", "unix:///run/ameide/orders.sock"] {
    ///     assert!(AmeideClient::builder().endpoint(target).build().is_ok());
    /// }
    /// let err = AmeideClient::builder().endpoint("unix://host/run/x.sock").build().unwrap_err();
    /// assert!(err.to_string().contains("unix:///absolute/path"));
    /// # }
    /// ```
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.explicit.endpoint = Some(endpoint.into());
        self.endpoints_error = None;
        self
    }

    /// Sets the target to a static list of replicas, each
    /// `host:port` (h2c), `http://host:port` or `https://host:port` (all
    /// the same scheme), balanced by [`TransportOptions::load_balancing`]:
    /// the same as `endpoint("static:///a,b")`, which
    /// [`AmeideClient::endpoint`](crate::AmeideClient::endpoint) then
    /// returns. At most 64; an empty list, an empty entry or one with a
    /// `,` is a configuration error at [`build`](Self::build).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::AmeideClient;
    /// let client = AmeideClient::builder()
    ///     .endpoints(["10.0.0.7:50051", "10.0.0.8:50051"])
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.endpoint(), "static:///10.0.0.7:50051,10.0.0.8:50051");
    ///
    /// let err = AmeideClient::builder().endpoints(["10.0.0.7:1,10.0.0.8:1"]).build().unwrap_err();
    /// assert!(err.to_string().contains("\"10.0.0.7:1,10.0.0.8:1\""));
    /// # }
    /// ```
    pub fn endpoints<I>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let entries: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().trim().to_owned())
            .collect();
        let bad = |why: String| Some(ConfigError::new(ConfigErrorKind::Endpoint, why));
        self.endpoints_error = if entries.is_empty() {
            bad("endpoints() was given no endpoint".to_owned())
        } else if let Some(entry) = entries.iter().find(|e| e.is_empty() || e.contains(',')) {
            bad(format!(
                "endpoints() entry {:?} is not one endpoint: each entry is host:port, http://host:port or https://host:port",
                crate::peer::bounded(entry, 256)
            ))
        } else {
            None
        };
        self.explicit.endpoint = Some(format!("static:///{}", entries.join(",")));
        self
    }

    /// Registers `resolver` for targets `scheme:///name` (see
    /// [`Resolver`]): a service registry's addresses for `name`. The scheme
    /// is lower-case ASCII (letters, digits, `+`, `-`, `.`), not one of the
    /// SDK's own (`http`, `https`, `dns`, `static`, `unix`); checked by
    /// [`build`](Self::build). A second registration for a scheme replaces the first.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use ameide_sdk::{AddressStream, AmeideClient, Resolver};
    /// struct Registry;
    /// impl Resolver for Registry {
    ///     fn watch(&self, _name: &str) -> AddressStream {
    ///         Box::pin(tokio_stream::iter([Ok(vec!["10.0.0.7:50051".parse().unwrap()])]))
    ///     }
    /// }
    /// // One registry for every client: an Arc is a Resolver too.
    /// let registry = Arc::new(Registry);
    /// for service in ["orders", "billing"] {
    ///     let client = AmeideClient::builder()
    ///         .endpoint(format!("registry:///{service}"))
    ///         .resolver("registry", registry.clone())
    ///         .build()
    ///         .unwrap();
    ///     assert_eq!(client.endpoint(), format!("registry:///{service}"));
    /// }
    /// let err = AmeideClient::builder()
    ///     .endpoint("dns:///orders:50051")
    ///     .resolver("dns", Registry)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("not one of the SDK's own"));
    /// # }
    /// ```
    pub fn resolver(mut self, scheme: impl Into<String>, resolver: impl Resolver) -> Self {
        let scheme = scheme.into();
        self.resolvers.retain(|(s, _)| *s != scheme);
        self.resolvers.push((scheme, Arc::new(resolver)));
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

    /// Runs the streaming methods (server, client and bidi streaming) of
    /// this client without the whole-call [`timeout`](Self::timeout),
    /// guarded instead by an idle timeout: a stream ends with
    /// `DEADLINE_EXCEEDED` ("idle timeout") when nothing arrives from the
    /// server within `idle`, and lives as long as the server keeps sending.
    /// Unary calls keep the whole-call timeout; a call with its own
    /// [`CallOptions::timeout`](crate::CallOptions::timeout) keeps it;
    /// [`CallOptions::idle_timeout`](crate::CallOptions::idle_timeout) does
    /// the same for one call of any kind. Off by default (the contract's
    /// 5 s cuts every stream). `1 ms..=100 days`, checked at build.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .stream_idle_timeout(Duration::from_secs(30))
    ///     .build()
    ///     .unwrap();
    /// # drop(client);
    /// let err = ameide_sdk::AmeideClient::builder()
    ///     .stream_idle_timeout(Duration::ZERO)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("stream idle timeout"), "{err}");
    /// # }
    /// ```
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle = Some(idle);
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

    /// Hedges every method the bundle marks `NO_SIDE_EFFECTS` or
    /// `IDEMPOTENT` (gRFC A6, see [`HedgingPolicy`]): another attempt, to
    /// another replica, every `hedging_delay` while none has answered; the
    /// first answer wins and the others are cancelled. Those methods are
    /// then hedged instead of retried; every other method keeps the retry
    /// policy. Off by default. Checked by [`build`](Self::build).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use ameide_sdk::{AmeideClient, layers::HedgingPolicy};
    /// let client = AmeideClient::builder()
    ///     .endpoint("dns:///orders.prod.svc.cluster.local:50051")
    ///     .hedging(HedgingPolicy::new(3, Duration::from_millis(20)))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.endpoint(), "dns:///orders.prod.svc.cluster.local:50051");
    /// let err = AmeideClient::builder()
    ///     .hedging(HedgingPolicy::new(7, Duration::from_millis(20)))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("hedging max_attempts 7"));
    /// # }
    /// ```
    pub fn hedging(mut self, policy: HedgingPolicy) -> Self {
        self.hedging = Some(policy);
        self
    }

    /// Hedges one method (`/package.Service/Method`) by `policy`, over
    /// [`hedging`](Self::hedging)'s policy if both are set. A method the
    /// bundle does not mark `NO_SIDE_EFFECTS` or `IDEMPOTENT` is a
    /// configuration error at [`build`](Self::build) naming it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use ameide_sdk::{AmeideClient, layers::HedgingPolicy};
    /// let policy = HedgingPolicy::new(2, Duration::from_millis(10));
    /// let err = AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .hedging_for("/ameide_core_proto.graph.v1.GraphService/CreateElement", policy)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("cannot hedge \"/ameide_core_proto.graph.v1.GraphService/CreateElement\""));
    /// # }
    /// ```
    pub fn hedging_for(mut self, method: impl Into<String>, policy: HedgingPolicy) -> Self {
        self.method_hedging.push((method.into(), policy));
        self
    }

    /// Records gRFC A96's per-call retry metrics, with `grpc.method` and
    /// `grpc.target`: `grpc.client.call.retries`,
    /// `grpc.client.call.transparent_retries` and `grpc.client.call.hedges`
    /// (each only when not zero), and `grpc.client.call.retry_delay` (s,
    /// for a call that was retried or hedged: the time it had no attempt
    /// out). Off by default: gRPC keeps them experimental and off by default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .retry_metrics(true)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.endpoint(), "http://127.0.0.1:50051");
    /// # }
    /// ```
    pub fn retry_metrics(mut self, on: bool) -> Self {
        self.retry_metrics = on;
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

    /// Records gRPC's standard metrics (gRFC A66: `grpc.client.attempt.*`,
    /// `grpc.client.call.duration`; gRFC A94: `grpc.subchannel.*`, connects
    /// and connections per replica) with `provider` instead of the global
    /// `MeterProvider`. Without this, the client records through the global
    /// provider as installed when [`build`](Self::build) runs (OpenTelemetry's
    /// no-op until an application installs one), as it does for spans.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    /// let exporter = InMemoryMetricExporter::default();
    /// let provider = SdkMeterProvider::builder()
    ///     .with_reader(PeriodicReader::builder(exporter.clone()).build())
    ///     .build();
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:1")
    ///     .timeout(std::time::Duration::from_millis(50))
    ///     .meter_provider(&provider)
    ///     .build()
    ///     .unwrap();
    /// let _ = client.graph().list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default()).await;
    /// provider.force_flush().unwrap();
    /// let names: Vec<String> = exporter.get_finished_metrics().unwrap().iter()
    ///     .flat_map(|rm| rm.scope_metrics()).flat_map(|sm| sm.metrics())
    ///     .map(|m| m.name().to_owned()).collect();
    /// assert!(names.contains(&"grpc.client.call.duration".to_owned()), "{names:?}");
    /// // Nothing listens on port 1: the connect failed.
    /// assert!(names.contains(&"grpc.subchannel.connection_attempts_failed".to_owned()), "{names:?}");
    /// # }
    /// ```
    pub fn meter_provider<P: opentelemetry::metrics::MeterProvider + ?Sized>(
        mut self,
        provider: &P,
    ) -> Self {
        self.meter = Some(crate::telemetry::metrics::provider_meter(provider));
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

    /// Uses `transport` instead of the SDK's own HTTP/2 transport: any tower
    /// service speaking tonic's body type (a tonic `Channel`, an in-memory
    /// duplex connection, a custom or load-balanced channel). The endpoint is then only used for span attributes.
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
        if let Some(error) = self.endpoints_error {
            return Err(error);
        }
        let config = self.explicit.apply(self.config);
        let spec = crate::config::parse_target(&config.endpoint)?;
        for (scheme, _) in &self.resolvers {
            if !crate::config::is_resolver_scheme(scheme) {
                return Err(ConfigError::new(
                    ConfigErrorKind::Endpoint,
                    format!(
                        "cannot register a resolver for the scheme {:?}: a scheme is lower-case ASCII letters, digits, '+', '-' and '.', starting with a letter, and not one of the SDK's own ({})",
                        crate::peer::bounded(scheme, 64),
                        crate::config::OWN_SCHEMES.join(", ")
                    ),
                ));
            }
        }
        validate_timeout("timeout", config.timeout)?;
        if let Some(idle) = self.stream_idle {
            validate_timeout("stream idle timeout", idle)?;
        }
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

        let meter = self
            .meter
            .unwrap_or_else(crate::telemetry::metrics::global_meter);
        let metrics = crate::telemetry::metrics::ClientMetrics::new(
            &meter,
            &config.endpoint,
            self.semconv.unwrap_or_else(SemconvMode::from_env),
            self.retry_metrics,
        );
        let mut metadata = MetadataLayer::builder()
            .max_decoding_message_size(self.codec.max_decoding_message_size)
            .accept_compressed(self.codec.accept_compressed)
            .call_metrics(metrics.clone());
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
        if let Some(policy) = self.hedging {
            retry = retry.with_hedging(policy)?;
        }
        for (method, policy) in self.method_hedging {
            retry = retry.with_method_hedging(&method, policy)?;
        }

        // A static list's first entry names the server in spans.
        let (server, port) = spec.server();
        let mut tracing = self.tracing.unwrap_or_default().with_server(server, port);
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
                let subchannels =
                    crate::telemetry::metrics::SubchannelMetrics::new(&meter, &config.endpoint);
                let resolver = match &spec {
                    crate::config::TargetSpec::Resolver { scheme, .. } => self
                        .resolvers
                        .iter()
                        .find(|(s, _)| s == scheme)
                        .map(|(_, r)| r.clone()),
                    _ => None,
                };
                http2_transport(
                    &config.endpoint,
                    spec,
                    &options,
                    ca_file.as_deref(),
                    Some(subchannels),
                    resolver,
                )?
            }
        };
        let slot = TransportSlot::new(transport);
        let layers = BuiltIn {
            metadata,
            auth,
            timeout: match self.stream_idle {
                Some(idle) => TimeoutLayer::new(config.timeout).stream_idle_timeout(idle),
                None => TimeoutLayer::new(config.timeout),
            },
            retry,
            tracing,
            metrics: MetricsLayer::from_metrics(metrics),
        };
        // Without user layers the built-in stack sits on the slot itself: one
        // box (and, per call, one boxed future and one clone) less.
        let closed = Arc::new(AtomicBool::new(false));
        let service = if self.user_layers.is_empty() {
            layers.stack(slot.clone(), &closed)
        } else {
            let mut below: BoxTransport = BoxCloneSyncService::new(slot.clone());
            for wrap in self.user_layers.into_iter().rev() {
                below = wrap(below);
            }
            layers.stack(below, &closed)
        };
        let channel = AmeideChannel {
            service: Admit::new(service, gate),
            codec: Arc::new(self.codec),
            stack_decode_limit: self.codec.max_decoding_message_size,
            closed,
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
    metrics: MetricsLayer,
}

impl BuiltIn {
    fn stack<B>(self, below: B, closed: &Arc<AtomicBool>) -> BoxTransport
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
            .layer(super::channel::ClosedLayer(closed.clone()))
            .option_layer(self.auth)
            .layer(self.timeout)
            .layer(self.retry)
            .layer(self.tracing)
            .layer(self.metrics)
            .service(below);
        BoxCloneSyncService::new(stack.map_err(Into::<BoxError>::into))
    }
}
