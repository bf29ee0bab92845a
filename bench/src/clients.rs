//! The measured clients. Every one calls the same two methods with the same
//! payload on its own HTTP/2 connection (the pool on several).
//!
//! | name | what |
//! |---|---|
//! | `raw` | stock tonic: `tonic::client::Grpc` on a plain `Channel` with tonic-prost's default codec, the code tonic-build generates with its defaults |
//! | `raw+headers` | `raw` sending, by hand, the metadata the contract puts on every call |
//! | `raw-boxed` | `raw` behind one `BoxCloneSyncService`: the baseline of the per-layer rows |
//! | `metadata`, `auth`, `timeout`, `retry`, `tracing` | one built-in layer alone on a raw channel, boxed like `raw-boxed` (`tracing` with the global, no-op tracer) |
//! | `tracing+otel` | the tracing layer exporting to the in-process OpenTelemetry pipeline |
//! | `sdk` | `AmeideClient`, default stack: tenant, user, session, static token, contract timeout and retry, tracing on the global (no-op) tracer |
//! | `sdk+metrics` | `sdk` recording gRPC's metrics (gRFC A66) into a real OpenTelemetry SDK `MeterProvider` (a manual reader: every measurement aggregated, nothing exported per call) |
//! | `sdk+otel` | `sdk` with spans exported to the in-process OpenTelemetry pipeline and metrics recorded as in `sdk+metrics` |
//! | `sdk-pool` | `sdk` over `--pool` connections |
//! | `sdk-limited` | `sdk` with the opt-in in-flight limit (`in_flight_limit(Some(InFlightLimit::DEFAULT))`: 128 calls on the wire, the rest wait in line); every other `sdk` row has no limit, the default |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ameide_sdk::auth::AccessToken;
use ameide_sdk::layers::{
    AuthLayer, BoxError, HttpRequest, HttpResponse, MetadataLayer, RetryLayer, RetryPolicy,
    TimeoutLayer, TracingLayer,
};
use ameide_sdk::proto::graph::v1::GetRepositoryRequest;
use ameide_sdk::proto::graph::v1::graph_service_client::GraphServiceClient;
use ameide_sdk::proto::inference::v1::GenerateRequest;
use ameide_sdk::proto::inference::v1::inference_service_client::InferenceServiceClient;
use ameide_sdk::{AmeideChannel, AmeideClient, TransportOptions};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// Every client name, in the order they are measured and reported.
pub const ALL: &[&str] = &[
    "raw",
    "raw+headers",
    "raw-boxed",
    "metadata",
    "auth",
    "timeout",
    "retry",
    "tracing",
    "tracing+otel",
    "sdk",
    "sdk+metrics",
    "sdk+otel",
    "sdk-pool",
    "sdk-limited",
];

/// The per-layer rows and the baseline they are compared with.
pub const LAYERS: &[&str] = &[
    "metadata",
    "auth",
    "timeout",
    "retry",
    "tracing",
    "tracing+otel",
];

type BoxChan = BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>;

/// The in-process OpenTelemetry pipeline: the SDK's tracer provider with a
/// simple span processor handing every ended span to an exporter that counts it.
pub struct Otel {
    /// The provider the `+otel` clients use.
    pub provider: SdkTracerProvider,
    /// The meter provider of `sdk+metrics` and `sdk+otel`: the OpenTelemetry
    /// SDK's, aggregating every measurement; its periodic reader exports
    /// once an hour (to nowhere), so nothing is exported per call.
    pub meters: SdkMeterProvider,
    exported: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingExporter(Arc<AtomicU64>);

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A metric exporter that drops what it is given.
#[derive(Debug)]
struct DropExporter;

impl PushMetricExporter for DropExporter {
    async fn export(&self, _metrics: &ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

impl Otel {
    pub fn new() -> Self {
        let exported = Arc::new(AtomicU64::new(0));
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(CountingExporter(exported.clone()))
            .build();
        let reader = PeriodicReader::builder(DropExporter)
            .with_interval(Duration::from_secs(3600))
            .build();
        let meters = SdkMeterProvider::builder().with_reader(reader).build();
        Otel {
            provider,
            meters,
            exported,
        }
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
}

/// A client of both methods on one channel type.
#[derive(Clone)]
pub enum Typed {
    /// Stock tonic (its default codec), not our generated stubs.
    Raw {
        grpc: tonic::client::Grpc<Channel>,
        headers: bool,
    },
    Boxed {
        graph: GraphServiceClient<BoxChan>,
        inference: InferenceServiceClient<BoxChan>,
    },
    Sdk {
        graph: GraphServiceClient<AmeideChannel>,
        inference: InferenceServiceClient<AmeideChannel>,
    },
}

async fn connect(endpoint: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(endpoint.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn boxed<L>(layer: L, channel: Channel) -> Typed
where
    L: tower::Layer<Channel>,
    L::Service:
        tower::Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<HttpRequest>>::Error: Into<BoxError>,
    <L::Service as tower::Service<HttpRequest>>::Future: Send + 'static,
{
    let service: BoxChan = BoxCloneSyncService::new(layer.layer(channel).map_err(Into::into));
    Typed::Boxed {
        graph: GraphServiceClient::new(service.clone()),
        inference: InferenceServiceClient::new(service),
    }
}

fn sdk_builder(endpoint: &str) -> ameide_sdk::AmeideClientBuilder {
    AmeideClient::builder()
        .endpoint(endpoint)
        .tenant_id("bench-tenant")
        .user_id("bench-user")
        .session_id("bench-session")
        .bearer_token("bench-token")
}

fn sdk(client: AmeideClient) -> Typed {
    Typed::Sdk {
        graph: GraphServiceClient::new(client.channel()),
        inference: InferenceServiceClient::new(client.channel()),
    }
}

fn tracing_layer(port: u16) -> TracingLayer {
    TracingLayer::new()
        .with_server("127.0.0.1", port)
        .with_session_id("bench-session")
}

/// The SDK client (`sdk`) for any endpoint: a `static:` list for the
/// balancing phase.
pub fn sdk_at(endpoint: &str) -> Result<Typed, BoxError> {
    Ok(sdk(sdk_builder(endpoint).build()?))
}

/// The `sdk` client for `endpoint`, hedging its reads by `policy` (gRFC A6).
pub fn sdk_hedged(
    endpoint: &str,
    policy: ameide_sdk::layers::HedgingPolicy,
) -> Result<Typed, BoxError> {
    Ok(sdk(sdk_builder(endpoint).hedging(policy).build()?))
}

/// Builds (and connects) the client called `name`.
pub async fn build(name: &str, port: u16, otel: &Otel, pool: usize) -> Result<Typed, BoxError> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let raw = |channel: Channel, headers| Typed::Raw {
        grpc: tonic::client::Grpc::new(channel),
        headers,
    };
    let timeout = Duration::from_millis(ameide_sdk::contract::DEFAULT_TIMEOUT_MS);
    Ok(match name {
        "raw" => raw(connect(&endpoint).await?, false),
        "raw+headers" => raw(connect(&endpoint).await?, true),
        "raw-boxed" => boxed(
            tower::layer::util::Identity::new(),
            connect(&endpoint).await?,
        ),
        "metadata" => boxed(
            MetadataLayer::builder()
                .tenant_id("bench-tenant")
                .user_id("bench-user")
                .build()?,
            connect(&endpoint).await?,
        ),
        "auth" => boxed(
            AuthLayer::static_token(&AccessToken::new("bench-token"))?,
            connect(&endpoint).await?,
        ),
        "timeout" => boxed(TimeoutLayer::new(timeout), connect(&endpoint).await?),
        "retry" => boxed(
            RetryLayer::new(RetryPolicy::default())?,
            connect(&endpoint).await?,
        ),
        "tracing" => boxed(tracing_layer(port), connect(&endpoint).await?),
        "tracing+otel" => boxed(
            tracing_layer(port).with_tracer_provider(&otel.provider),
            connect(&endpoint).await?,
        ),
        "sdk" => sdk(sdk_builder(&endpoint).build()?),
        "sdk+metrics" => sdk(sdk_builder(&endpoint)
            .meter_provider(&otel.meters)
            .build()?),
        "sdk+otel" => sdk(sdk_builder(&endpoint)
            .tracer_provider(&otel.provider)
            .meter_provider(&otel.meters)
            .build()?),
        "sdk-pool" => sdk(sdk_builder(&endpoint)
            .transport_options(TransportOptions::default().with_connections(pool))
            .build()?),
        "sdk-limited" => sdk(sdk_builder(&endpoint)
            .in_flight_limit(Some(ameide_sdk::InFlightLimit::DEFAULT))
            .build()?),
        other => {
            return Err(format!("unknown client {other:?} (known: {})", ALL.join(", ")).into());
        }
    })
}

fn sensitive(value: String) -> Result<tonic::metadata::AsciiMetadataValue, Status> {
    let mut v: tonic::metadata::AsciiMetadataValue = value
        .parse()
        .map_err(|_| Status::internal("header value is not ASCII"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// What `raw+headers` sends by hand: the seven metadata entries the
/// contract puts on every call (grpc-timeout through `set_timeout`).
fn contract_headers<T>(request: &mut Request<T>, n: u64) -> Result<(), Status> {
    request.set_timeout(Duration::from_millis(
        ameide_sdk::contract::DEFAULT_TIMEOUT_MS,
    ));
    let m = request.metadata_mut();
    m.insert(
        "x-tenant-id",
        tonic::metadata::AsciiMetadataValue::from_static("bench-tenant"),
    );
    m.insert(
        "x-user-id",
        tonic::metadata::AsciiMetadataValue::from_static("bench-user"),
    );
    m.insert("authorization", sensitive("Bearer bench-token".into())?);
    let id = n as u128 * 0x9e37_79b9_7f4a_7c15;
    m.insert("x-request-id", sensitive(format!("{id:032x}"))?);
    m.insert(
        "traceparent",
        sensitive(format!("00-{id:032x}-{:016x}-01", n + 1))?,
    );
    m.insert(
        "baggage",
        tonic::metadata::AsciiMetadataValue::from_static("ameide.session_id=bench-session"),
    );
    Ok(())
}

impl Typed {
    /// One `GetRepository` call for `repo-<n>`.
    pub async fn unary(&mut self, n: u64) -> Result<(), Status> {
        self.get_repository(format!("repo-{n}"), n).await
    }

    /// One `GetRepository` call for `id` (`n` seeds the hand-made headers).
    pub async fn get_repository(&mut self, id: String, n: u64) -> Result<(), Status> {
        let mut request = Request::new(GetRepositoryRequest {
            repository_id: id,
            ..Default::default()
        });
        match self {
            Typed::Raw { grpc, headers } => {
                if *headers {
                    contract_headers(&mut request, n)?;
                }
                stock::get_repository(grpc, request).await.map(drop)
            }
            Typed::Boxed { graph, .. } => graph.get_repository(request).await.map(drop),
            Typed::Sdk { graph, .. } => graph.get_repository(request).await.map(drop),
        }
    }

    /// One `Generate` stream of `messages` messages, read to the end; returns
    /// how many arrived.
    pub async fn stream(&mut self, n: u64, messages: i32) -> Result<u64, Status> {
        let mut request = Request::new(GenerateRequest {
            prompt: format!("prompt-{n}"),
            max_tokens: messages,
            ..Default::default()
        });
        let mut stream = match self {
            Typed::Raw { grpc, headers } => {
                if *headers {
                    contract_headers(&mut request, n)?;
                }
                stock::generate(grpc, request).await?.into_inner()
            }
            Typed::Boxed { inference, .. } => inference.generate(request).await?.into_inner(),
            Typed::Sdk { inference, .. } => inference.generate(request).await?.into_inner(),
        };
        let mut count = 0;
        while stream.message().await?.is_some() {
            count += 1;
        }
        Ok(count)
    }
}

/// What tonic-build generates for the two methods with its defaults
/// (`tonic_prost::ProstCodec::default()`, 8 KiB buffers), so `raw` is stock
/// tonic even though our generated stubs use a tuned codec.
mod stock {
    use ameide_sdk::proto::graph::v1::{GetRepositoryRequest, GetRepositoryResponse};
    use ameide_sdk::proto::inference::v1::{GenerateRequest, GenerateResponse};
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::Channel;
    use tonic::{GrpcMethod, Request, Response, Status, Streaming};

    async fn ready(grpc: &mut tonic::client::Grpc<Channel>) -> Result<(), Status> {
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))
    }

    pub async fn get_repository(
        grpc: &mut tonic::client::Grpc<Channel>,
        mut request: Request<GetRepositoryRequest>,
    ) -> Result<Response<GetRepositoryResponse>, Status> {
        ready(grpc).await?;
        const SERVICE: &str = "ameide_core_proto.graph.v1.GraphService";
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "GetRepository"));
        let path =
            PathAndQuery::from_static("/ameide_core_proto.graph.v1.GraphService/GetRepository");
        grpc.unary(request, path, tonic_prost::ProstCodec::default())
            .await
    }

    pub async fn generate(
        grpc: &mut tonic::client::Grpc<Channel>,
        mut request: Request<GenerateRequest>,
    ) -> Result<Response<Streaming<GenerateResponse>>, Status> {
        ready(grpc).await?;
        const SERVICE: &str = "ameide_core_proto.inference.v1.InferenceService";
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "Generate"));
        let path =
            PathAndQuery::from_static("/ameide_core_proto.inference.v1.InferenceService/Generate");
        grpc.server_streaming(request, path, tonic_prost::ProstCodec::default())
            .await
    }
}
