//! Rust services on ameide-sdk: the inbound layer, and propagation through an
//! outbound AmeideClient call made while handling a request. Two real tonic
//! servers on loopback, chained.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ameide_sdk::proto::agents::v1::agents_service_server::{AgentsService, AgentsServiceServer};
use ameide_sdk::proto::agents::v1::{PublishAgentRequest, PublishAgentResponse};
use ameide_sdk::proto::inference::v1::inference_service_client::InferenceServiceClient;
use ameide_sdk::proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use ameide_sdk::proto::inference::v1::{ListAgentsRequest, ListAgentsResponse};
use ameide_sdk::server::{InboundContext, InboundLayer};
use ameide_sdk::{AmeideClient, CallOptions};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
struct Seen {
    request_id: String,
    trace_id: Option<String>,
    remaining: Option<Duration>,
    tenant: Option<String>,
    user: Option<String>,
    session: Option<String>,
}

fn seen(ctx: &InboundContext) -> Seen {
    Seen {
        request_id: ctx.request_id().to_owned(),
        trace_id: ctx.trace_id().map(|t| t.to_string()),
        remaining: ctx.remaining(),
        tenant: ctx.tenant_id().map(str::to_owned),
        user: ctx.user_id().map(str::to_owned),
        session: ctx.session_id().map(str::to_owned),
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

struct Downstream {
    log: Log,
}

#[tonic::async_trait]
impl InferenceService for Downstream {
    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let ctx = InboundContext::of(&request)
            .expect("the inbound layer attached a context")
            .clone();
        self.log.0.lock().unwrap().push(seen(&ctx));
        Ok(Response::new(ListAgentsResponse::default()))
    }
}

struct Upstream {
    log: Log,
    downstream: AmeideClient,
}

#[tonic::async_trait]
impl AgentsService for Upstream {
    async fn publish_agent(
        &self,
        request: Request<PublishAgentRequest>,
    ) -> Result<Response<PublishAgentResponse>, Status> {
        let ctx = InboundContext::current().expect("handler runs inside the inbound context");
        self.log.0.lock().unwrap().push(seen(&ctx));
        let forward = request.get_ref().note == "forward identity";
        let outbound = if forward {
            ctx.forward_identity()
                .into_request(ListAgentsRequest::default())
                .map_err(|e| Status::internal(e.to_string()))?
        } else {
            Request::new(ListAgentsRequest::default())
        };
        self.downstream.inference().list_agents(outbound).await?;
        Ok(Response::new(PublishAgentResponse::default()))
    }
}

async fn serve<S, P, T, Sp>(service: S, provider: &P) -> SocketAddr
where
    P: opentelemetry::trace::TracerProvider<Tracer = T>,
    T: opentelemetry::trace::Tracer<Span = Sp> + Send + Sync + 'static,
    Sp: opentelemetry::trace::Span + Send + Sync + 'static,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    ameide_tests::serve_inbound(InboundLayer::new().with_tracer_provider(provider), service).await
}

struct Chain {
    upstream: SocketAddr,
    up_log: Log,
    down_log: Log,
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

async fn chain() -> Chain {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let (upstream, up_log, down_log) = two_hops(&provider).await;
    Chain {
        upstream,
        up_log,
        down_log,
        exporter,
        provider,
    }
}

/// Upstream → downstream, both servers and the upstream's client on
/// `provider`: the upstream's address and the two logs.
async fn two_hops<P, T, Sp>(provider: &P) -> (SocketAddr, Log, Log)
where
    P: opentelemetry::trace::TracerProvider<Tracer = T>,
    T: opentelemetry::trace::Tracer<Span = Sp> + Send + Sync + 'static,
    Sp: opentelemetry::trace::Span + Send + Sync + 'static,
{
    let (up_log, down_log) = (Log::default(), Log::default());
    let down_addr = serve(
        InferenceServiceServer::new(Downstream {
            log: down_log.clone(),
        }),
        provider,
    )
    .await;
    let downstream = AmeideClient::builder()
        .endpoint(format!("http://{down_addr}"))
        .tracer_provider(provider)
        .build()
        .unwrap();
    let upstream = serve(
        AgentsServiceServer::new(Upstream {
            log: up_log.clone(),
            downstream,
        }),
        provider,
    )
    .await;
    (upstream, up_log, down_log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chained_services_share_request_id_trace_session_and_deadline() {
    let c = chain().await;
    let caller = AmeideClient::builder()
        .endpoint(format!("http://{}", c.upstream))
        .tenant_id("tenant-1")
        .user_id("user-1")
        .session_id("sess-7")
        .timeout(Duration::from_secs(2))
        .tracer_provider(&c.provider)
        .build()
        .unwrap();
    let request = CallOptions::new()
        .request_id("req-chain-1")
        .into_request(PublishAgentRequest::default())
        .unwrap();
    caller.agents().publish_agent(request).await.unwrap();

    let up = c.up_log.0.lock().unwrap()[0].clone();
    let down = c.down_log.0.lock().unwrap()[0].clone();
    assert_eq!(up.request_id, "req-chain-1");
    assert_eq!(
        down.request_id, "req-chain-1",
        "the inbound request id flows downstream"
    );
    assert_eq!(up.session.as_deref(), Some("sess-7"));
    assert_eq!(
        down.session.as_deref(),
        Some("sess-7"),
        "session baggage flows downstream"
    );
    assert!(up.trace_id.is_some());
    assert_eq!(down.trace_id, up.trace_id, "same trace on both hops");

    let up_left = up
        .remaining
        .expect("upstream saw the caller's grpc-timeout");
    let down_left = down.remaining.expect("downstream got a deadline");
    assert!(up_left <= Duration::from_secs(2));
    assert!(
        down_left <= up_left,
        "downstream budget {down_left:?} must not exceed upstream's {up_left:?}"
    );
    assert!(
        down_left < Duration::from_secs(2),
        "the inbound 2 s wins over the client's 5 s default"
    );

    // Tenant and user are not forwarded unless the service says so.
    assert_eq!(up.tenant.as_deref(), Some("tenant-1"));
    assert_eq!(down.tenant, None);
    assert_eq!(down.user, None);

    // Span tree: caller CLIENT → upstream SERVER → upstream CLIENT → downstream SERVER.
    let spans = c.exporter.get_finished_spans().unwrap();
    let find = |kind: SpanKind, name: &str| {
        spans
            .iter()
            .filter(|s| s.span_kind == kind && s.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let publish = "ameide_core_proto.agents.v1.AgentsService/PublishAgent";
    let list = "ameide_core_proto.inference.v1.InferenceService/ListAgents";
    let caller_span = &find(SpanKind::Client, publish)[0];
    let up_server = &find(SpanKind::Server, publish)[0];
    let up_client = &find(SpanKind::Client, list)[0];
    let down_server = &find(SpanKind::Server, list)[0];
    assert_eq!(up_server.parent_span_id, caller_span.span_context.span_id());
    assert_eq!(up_client.parent_span_id, up_server.span_context.span_id());
    assert_eq!(down_server.parent_span_id, up_client.span_context.span_id());
    for span in [up_server, up_client, down_server] {
        assert_eq!(
            span.span_context.trace_id(),
            caller_span.span_context.trace_id()
        );
    }
}

/// With no tracer provider anywhere (OpenTelemetry's no-op tracer), neither
/// the inbound layer nor the client starts a span: the caller's trace
/// context passes through both hops unchanged, and the session with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tracer_the_callers_trace_context_flows_through_both_hops() {
    use opentelemetry::trace::noop::NoopTracerProvider;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Context, context::FutureExt};

    let noop = NoopTracerProvider::new();
    let (upstream, up_log, down_log) = two_hops(&noop).await;
    let caller = AmeideClient::builder()
        .endpoint(format!("http://{upstream}"))
        .session_id("sess-3")
        .tracer_provider(&noop)
        .build()
        .unwrap();
    let trace = TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128);
    let remote = SpanContext::new(
        trace,
        SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    caller
        .agents()
        .publish_agent(PublishAgentRequest::default())
        .with_context(Context::new().with_remote_span_context(remote))
        .await
        .unwrap();

    let up = up_log.0.lock().unwrap()[0].clone();
    let down = down_log.0.lock().unwrap()[0].clone();
    assert_eq!(up.trace_id, Some(trace.to_string()));
    assert_eq!(down.trace_id, Some(trace.to_string()));
    assert_eq!(up.session.as_deref(), Some("sess-3"));
    assert_eq!(down.session.as_deref(), Some("sess-3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_user_are_forwarded_when_the_service_asks() {
    let c = chain().await;
    let caller = AmeideClient::builder()
        .endpoint(format!("http://{}", c.upstream))
        .tenant_id("tenant-1")
        .user_id("user-1")
        .build()
        .unwrap();
    caller
        .agents()
        .publish_agent(PublishAgentRequest {
            note: "forward identity".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let down = c.down_log.0.lock().unwrap()[0].clone();
    assert_eq!(down.tenant.as_deref(), Some("tenant-1"));
    assert_eq!(down.user.as_deref(), Some("user-1"));
}

/// Captures what `tracing` writes while the guard lives (current-thread runtime only).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures WARN and above on this thread until the guard drops.
    fn install() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A downstream service behind the inbound layer on `provider`, and a plain
/// tonic channel to it: its log and the channel.
async fn downstream(provider: &SdkTracerProvider) -> (Log, tonic::transport::Channel) {
    let log = Log::default();
    let addr = serve(
        InferenceServiceServer::new(Downstream { log: log.clone() }),
        provider,
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (log, channel)
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_traceparent_and_grpc_timeout_are_ignored_with_a_warning() {
    let (captured, _guard) = Captured::install();

    let provider = SdkTracerProvider::builder().build();
    let (log, channel) = downstream(&provider).await;
    let mut raw = InferenceServiceClient::new(channel);
    let mut request = Request::new(ListAgentsRequest::default());
    request
        .metadata_mut()
        .insert("traceparent", "00-nothex-zz-01".parse().unwrap());
    request
        .metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    request
        .metadata_mut()
        .insert("baggage", "=broken,team=core".parse().unwrap());
    let response = raw
        .list_agents(request)
        .await
        .expect("malformed metadata is not an error");

    let handled = log.0.lock().unwrap()[0].clone();
    assert_eq!(
        handled.remaining, None,
        "a malformed grpc-timeout gives no deadline"
    );
    assert!(handled.trace_id.is_some(), "a fresh trace starts instead");
    let logs = captured.text();
    assert!(
        logs.contains("ignoring malformed inbound traceparent"),
        "{logs}"
    );
    assert!(
        logs.contains("ignoring malformed inbound grpc-timeout"),
        "{logs}"
    );
    assert!(
        logs.contains("ignoring malformed inbound baggage entry"),
        "{logs}"
    );
    assert!(response.metadata().get("x-request-id").is_some());
}

/// One 8 KiB `baggage` of 4,095 malformed entries from a peer writes one
/// warning, not one per entry (issue 25: it wrote 4,095).
#[tokio::test(flavor = "current_thread")]
async fn a_baggage_of_malformed_entries_writes_one_warning() {
    let (captured, _guard) = Captured::install();

    let provider = SdkTracerProvider::builder().build();
    let (_log, channel) = downstream(&provider).await;
    let mut raw = InferenceServiceClient::new(channel);
    let mut request = Request::new(ListAgentsRequest::default());
    let hostile = "a,".repeat(4095);
    assert!(
        hostile.len() <= 8192,
        "within the W3C limit, so it is parsed"
    );
    request
        .metadata_mut()
        .insert("baggage", hostile.parse().unwrap());
    raw.list_agents(request)
        .await
        .expect("malformed baggage is not an error");
    let logs = captured.text();
    let lines = logs.lines().filter(|l| l.contains("baggage")).count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} warning lines for one header: {}",
        &logs[..logs.len().min(2000)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_request_id_is_generated_once_and_echoed_back() {
    let provider = SdkTracerProvider::builder().build();
    let (log, channel) = downstream(&provider).await;
    let mut raw = InferenceServiceClient::new(channel);
    let response = raw.list_agents(ListAgentsRequest::default()).await.unwrap();
    let echoed = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let handled = log.0.lock().unwrap()[0].clone();
    assert_eq!(
        handled.request_id, echoed,
        "the handler saw the id that was echoed"
    );
    assert_eq!(echoed.len(), 36);

    // A request id the caller sent is kept and echoed unchanged.
    let mut request = Request::new(ListAgentsRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "caller-9".parse().unwrap());
    let response = raw.list_agents(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "caller-9");
    assert_eq!(log.0.lock().unwrap()[1].request_id, "caller-9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_echo_the_request_id_too() {
    struct Failing;
    #[tonic::async_trait]
    impl InferenceService for Failing {
        async fn list_agents(
            &self,
            _: Request<ListAgentsRequest>,
        ) -> Result<Response<ListAgentsResponse>, Status> {
            Err(Status::not_found("no agents here"))
        }
    }
    let provider = SdkTracerProvider::builder().build();
    let addr = serve(InferenceServiceServer::new(Failing), &provider).await;
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .build()
        .unwrap();
    let request = CallOptions::new()
        .request_id("err-1")
        .into_request(ListAgentsRequest::default())
        .unwrap();
    let status = client.inference().list_agents(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "err-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_inbound_values_are_replaced_or_dropped_not_forwarded() {
    let c = chain().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.upstream))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw =
        ameide_sdk::proto::agents::v1::agents_service_client::AgentsServiceClient::new(channel);
    for (n, bad_id) in ["a".repeat(300), "has space".into(), "semi;colon".into()]
        .into_iter()
        .enumerate()
    {
        let mut request = Request::new(PublishAgentRequest::default());
        let meta = request.metadata_mut();
        meta.insert("x-request-id", bad_id.parse().unwrap());
        meta.insert("x-tenant-id", "t".repeat(1000).parse().unwrap());
        meta.insert(
            "baggage",
            format!(
                "ameide.session_id={},x={}",
                "s".repeat(300),
                "v".repeat(9000)
            )
            .parse()
            .unwrap(),
        );
        meta.insert("tracestate", "k=v,".repeat(40).parse().unwrap());
        let response = raw.publish_agent(request).await.unwrap();
        let echoed = response
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        let up = c.up_log.0.lock().unwrap()[n].clone();
        let down = c.down_log.0.lock().unwrap()[n].clone();
        assert_ne!(up.request_id, bad_id);
        assert_eq!(up.request_id.len(), 36, "a generated UUID replaces it");
        assert_eq!(echoed, up.request_id, "the replacement is echoed");
        assert_eq!(
            down.request_id, up.request_id,
            "and forwarded, not the bad one"
        );
        assert_eq!(up.tenant, None, "a 1,000-byte tenant is ignored");
        assert_eq!(up.session, None, "baggage past 8 KiB is dropped whole");
        assert_eq!(down.session, None);
    }
    // A valid id of the longest accepted length is kept.
    let mut request = Request::new(PublishAgentRequest::default());
    let long_ok = "r".repeat(ameide_sdk::server::MAX_REQUEST_ID_BYTES);
    request
        .metadata_mut()
        .insert("x-request-id", long_ok.parse().unwrap());
    raw.publish_agent(request).await.unwrap();
    assert_eq!(c.down_log.0.lock().unwrap()[3].request_id, long_ok);
}

/// A peer picks the path: the server span of a method outside the roster is
/// named `other` (as the metrics' `grpc.method`), not after the raw path, so
/// span names stay a bounded set (issue 25).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_span_for_a_method_outside_the_roster_is_named_other() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let (_log, channel) = downstream(&provider).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    for n in 0..3 {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(format!("/evil.Service/Random{n}")).unwrap();
        let status = grpc
            .unary::<ListAgentsRequest, ListAgentsResponse, _>(
                Request::new(ListAgentsRequest::default()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    // A roster method keeps its name.
    InferenceServiceClient::new(channel)
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap();
    let names: Vec<String> = exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "other",
            "other",
            "other",
            "ameide_core_proto.inference.v1.InferenceService/ListAgents"
        ]
    );
}
