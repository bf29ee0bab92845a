//! A Rust service on ameide-sdk: an in-memory `AgentsService` whose
//! `PublishAgent` asks an `InferenceService` (a second small server) for
//! release notes through `AmeideClient`.
//!
//! `cargo run --example agents_service` starts both on loopback behind the
//! SDK's inbound layer, installs an OpenTelemetry SDK that prints every span,
//! and plays a caller: the output shows one request id and one trace id
//! flowing across both hops, and the deadline shrinking on the way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use ameide_sdk::proto::agents::v1::agents_service_server::{AgentsService, AgentsServiceServer};
use ameide_sdk::proto::agents::v1::{
    Agent, AgentState, CreateAgentRequest, CreateAgentResponse, PublishAgentRequest,
    PublishAgentResponse,
};
use ameide_sdk::proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use ameide_sdk::proto::inference::v1::{GenerateRequest, GenerateResponse};
use ameide_sdk::server::{InboundContext, InboundLayer};
use ameide_sdk::{AmeideClient, CallOptions};
use futures_util::StreamExt;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Prints each finished span: what an exporter would ship to a collector.
#[derive(Debug)]
struct PrintExporter;

impl SpanExporter for PrintExporter {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        for span in batch {
            println!(
                "   span  {:<6} {:<62} trace={} span={} parent={}",
                format!("{:?}", span.span_kind).to_uppercase(),
                span.name,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                span.parent_span_id
            );
        }
        Ok(())
    }
}

fn describe(service: &str, ctx: &InboundContext) {
    println!(
        "[{service}] request-id={} trace={} deadline left={:?} tenant={:?} session={:?}",
        ctx.request_id(),
        ctx.trace_id()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
        ctx.remaining()
            .map(|d| Duration::from_millis(d.as_millis() as u64)),
        ctx.tenant_id(),
        ctx.session_id()
    );
}

/// Writes short release notes, streamed token by token.
struct Inference;

#[tonic::async_trait]
impl InferenceService for Inference {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<BoxStream<GenerateResponse>>, Status> {
        if let Some(ctx) = InboundContext::of(&request) {
            describe("inference", ctx);
        }
        let prompt = request.into_inner().prompt;
        let words: Vec<String> = format!("Release notes: {prompt} is now live.")
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        let stream = tokio_stream::iter(words.into_iter().enumerate().map(|(i, token)| {
            Ok(GenerateResponse {
                token,
                index: i as i32,
                ..Default::default()
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Agents in memory; publishing asks inference for release notes.
struct Agents {
    agents: Mutex<HashMap<String, Agent>>,
    inference: AmeideClient,
}

#[tonic::async_trait]
impl AgentsService for Agents {
    async fn create_agent(
        &self,
        request: Request<CreateAgentRequest>,
    ) -> Result<Response<CreateAgentResponse>, Status> {
        let mut agent = request
            .into_inner()
            .agent
            .ok_or_else(|| Status::invalid_argument("agent is required"))?;
        let mut agents = self.agents.lock().unwrap();
        agent.agent_id = format!("agent-{}", agents.len() + 1);
        agent.state = AgentState::Draft as i32;
        agents.insert(agent.agent_id.clone(), agent.clone());
        Ok(Response::new(CreateAgentResponse { agent: Some(agent) }))
    }

    async fn publish_agent(
        &self,
        request: Request<PublishAgentRequest>,
    ) -> Result<Response<PublishAgentResponse>, Status> {
        let ctx = InboundContext::of(&request)
            .cloned()
            .ok_or_else(|| Status::internal("no inbound context"))?;
        describe("agents", &ctx);
        let agent_id = request.into_inner().agent_id;
        let name = {
            let agents = self.agents.lock().unwrap();
            agents
                .get(&agent_id)
                .map(|a| a.display_name.clone())
                .ok_or_else(|| Status::not_found(format!("agent {agent_id:?} does not exist")))?
        };
        // The outbound call continues this request: same request id, a child
        // span of this server span, the inbound deadline. Tenant/user are
        // forwarded explicitly, as this service decides to.
        let outbound = ctx
            .forward_identity()
            .into_request(GenerateRequest {
                prompt: name.clone(),
                ..Default::default()
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut stream = self
            .inference
            .inference()
            .generate(outbound)
            .await?
            .into_inner();
        let mut notes = String::new();
        while let Some(token) = stream.next().await {
            notes.push_str(&token?.token);
        }
        let mut agents = self.agents.lock().unwrap();
        let agent = agents
            .get_mut(&agent_id)
            .ok_or_else(|| Status::not_found("agent vanished"))?;
        agent.state = AgentState::Published as i32;
        agent.published_version += 1;
        agent.description = notes;
        Ok(Response::new(PublishAgentResponse {
            version: agent.published_version,
            agent: Some(agent.clone()),
        }))
    }
}

async fn serve<S>(service: S) -> std::io::Result<SocketAddr>
where
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = tonic::transport::Server::builder()
        .layer(InboundLayer::new())
        .add_service(service);
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The application installs the exporter; the SDK only uses the API.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(PrintExporter)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let inference_addr = serve(InferenceServiceServer::new(Inference)).await?;
    let inference = AmeideClient::builder()
        .endpoint(format!("http://{inference_addr}"))
        .build()?;
    let agents_addr = serve(AgentsServiceServer::new(Agents {
        agents: Mutex::new(HashMap::new()),
        inference,
    }))
    .await?;
    println!("agents service on {agents_addr}, inference service on {inference_addr}\n");

    let caller = AmeideClient::builder()
        .endpoint(format!("http://{agents_addr}"))
        .tenant_id("acme")
        .user_id("ada")
        .session_id("session-42")
        .timeout(Duration::from_secs(3))
        .build()?;
    let created = caller
        .agents()
        .create_agent(CreateAgentRequest {
            agent: Some(Agent {
                display_name: "Architecture assistant".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .agent
        .unwrap_or_default();
    println!("created {} ({})\n", created.agent_id, created.display_name);

    println!("caller: PublishAgent with request id demo-publish-1, inside a root span, 3 s budget");
    let tracer = opentelemetry::global::tracer("caller");
    let root = tracer.start("publish-from-the-ui");
    let cx = opentelemetry::Context::current_with_span(root);
    println!("caller: trace={}", cx.span().span_context().trace_id());
    let request = CallOptions::new()
        .request_id("demo-publish-1")
        .into_request(PublishAgentRequest {
            agent_id: created.agent_id.clone(),
            ..Default::default()
        })?;
    let published = {
        let _attached = cx.clone().attach();
        caller.agents().publish_agent(request).await?
    };
    cx.span().end();
    let agent = published.into_inner().agent.unwrap_or_default();
    println!(
        "\npublished {} v{}: {:?}",
        agent.agent_id, agent.published_version, agent.description
    );
    let _ = provider.shutdown();
    Ok(())
}
