//! Quickstart: an `AmeideClient` against an embedded Ameide server.
//!
//! `cargo run --example quickstart` starts a small in-process server on a
//! loopback port that really implements two services: graph repositories kept
//! in memory (whose first `ListRepositories` fails with UNAVAILABLE, as a
//! restarting backend would) and an inference `Generate` that streams tokens.
//! It then builds a client with a tenant, a user and a static token, makes
//! unary and streaming calls, and prints what happened on both sides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ameide_sdk::proto::graph::v1::graph_service_server::{GraphService, GraphServiceServer};
use ameide_sdk::proto::graph::v1::{
    CreateRepositoryRequest, CreateRepositoryResponse, GetRepositoryRequest, GetRepositoryResponse,
    ListRepositoriesRequest, ListRepositoriesResponse, Repository,
};
use ameide_sdk::proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use ameide_sdk::proto::inference::v1::{FinishReason, GenerateRequest, GenerateResponse};
use ameide_sdk::{AmeideClient, CallInfo, CallOptions, IntoAmeideResult};
use futures_util::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// What the server saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    method: &'static str,
    tenant: String,
    user: String,
    request_id: String,
    auth: String,
    timeout: String,
    previous_attempts: String,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn record<T>(&self, method: &'static str, request: &Request<T>) {
        let get = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let auth = match request.metadata().get("authorization") {
            Some(v) => {
                let v = v.to_str().unwrap_or("");
                format!("{}…", &v[..v.len().min(10)])
            }
            None => "-".into(),
        };
        self.0.lock().unwrap().push(Seen {
            method,
            tenant: get("x-tenant-id"),
            user: get("x-user-id"),
            request_id: get("x-request-id"),
            auth,
            timeout: get("grpc-timeout"),
            previous_attempts: get("grpc-previous-rpc-attempts"),
        });
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Graph repositories in memory. The first ListRepositories fails once.
struct Graph {
    log: Log,
    repositories: Mutex<Vec<Repository>>,
    fail_next_list: AtomicBool,
}

#[tonic::async_trait]
impl GraphService for Graph {
    async fn create_repository(
        &self,
        request: Request<CreateRepositoryRequest>,
    ) -> Result<Response<CreateRepositoryResponse>, Status> {
        self.log.record("graph.CreateRepository", &request);
        let mut repo = request
            .into_inner()
            .repository
            .ok_or_else(|| Status::invalid_argument("repository is required"))?;
        let mut repos = self.repositories.lock().unwrap();
        repo.repository_id = format!("repo-{}", repos.len() + 1);
        repos.push(repo.clone());
        Ok(Response::new(CreateRepositoryResponse {
            repository: Some(repo),
        }))
    }

    async fn get_repository(
        &self,
        request: Request<GetRepositoryRequest>,
    ) -> Result<Response<GetRepositoryResponse>, Status> {
        self.log.record("graph.GetRepository", &request);
        let id = request.into_inner().repository_id;
        let repos = self.repositories.lock().unwrap();
        match repos.iter().find(|r| r.repository_id == id) {
            Some(repo) => Ok(Response::new(GetRepositoryResponse {
                repository: Some(repo.clone()),
            })),
            None => Err(Status::not_found(format!(
                "repository {id:?} does not exist"
            ))),
        }
    }

    async fn list_repositories(
        &self,
        request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<ListRepositoriesResponse>, Status> {
        self.log.record("graph.ListRepositories", &request);
        if self.fail_next_list.swap(false, Ordering::SeqCst) {
            return Err(Status::unavailable("graph backend is restarting"));
        }
        Ok(Response::new(ListRepositoriesResponse {
            repositories: self.repositories.lock().unwrap().clone(),
            pagination: None,
        }))
    }
}

/// Streams a canned answer token by token.
struct Inference {
    log: Log,
}

#[tonic::async_trait]
impl InferenceService for Inference {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<BoxStream<GenerateResponse>>, Status> {
        self.log.record("inference.Generate", &request);
        let prompt = request.into_inner().prompt;
        let answer = format!("You asked: \"{prompt}\". Ameide answers, one token at a time.");
        let tokens: Vec<String> = answer.split_inclusive(' ').map(str::to_owned).collect();
        let last = tokens.len() - 1;
        let stream =
            tokio_stream::iter(tokens.into_iter().enumerate()).then(move |(i, token)| async move {
                tokio::time::sleep(Duration::from_millis(15)).await;
                Ok(GenerateResponse {
                    token,
                    index: i as i32,
                    finish_reason: if i == last {
                        FinishReason::Stop as i32
                    } else {
                        FinishReason::Unspecified as i32
                    },
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn start_server(log: Log) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let graph = Graph {
        log: log.clone(),
        repositories: Mutex::new(Vec::new()),
        fail_next_list: AtomicBool::new(true),
    };
    let router = tonic::transport::Server::builder()
        .add_service(GraphServiceServer::new(graph))
        .add_service(InferenceServiceServer::new(Inference { log }));
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

fn print_seen(log: &Log) {
    for (n, seen) in log.take().iter().enumerate() {
        println!(
            "     server saw attempt {}: {} tenant={} user={} request-id={} auth={} grpc-timeout={} previous-attempts={}",
            n + 1,
            seen.method,
            seen.tenant,
            seen.user,
            seen.request_id,
            seen.auth,
            seen.timeout,
            seen.previous_attempts
        );
    }
}

fn print_info<T>(response: &Response<T>) {
    let info = response
        .extensions()
        .get::<CallInfo>()
        .expect("the SDK attaches CallInfo");
    println!(
        "     client: request-id={} attempts={} took {:?}",
        info.request_id, info.attempts, info.elapsed
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log = Log::default();
    let addr = start_server(log.clone()).await?;
    println!("Embedded Ameide server on http://{addr} (graph + inference)\n");

    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .tenant_id("acme-system")
        .user_id("ada")
        .bearer_token("quickstart-token")
        .timeout(Duration::from_secs(5))
        .build()?;
    println!(
        "AmeideClient: tenant=acme-system user=ada, static bearer token, 5 s timeout, 3 attempts\n"
    );

    walkthrough(&client, &log).await?;
    Ok(())
}

/// The calls. Returning `ameide_sdk::Result` lets `?` turn each typed call's
/// `tonic::Status` into `ameide_sdk::Error` (request id, attempts, history).
async fn walkthrough(client: &AmeideClient, log: &Log) -> ameide_sdk::Result<()> {
    println!("1. graph.CreateRepository (unary)");
    let created = client
        .graph()
        .create_repository(CreateRepositoryRequest {
            repository: Some(Repository {
                key: "enterprise-arch".into(),
                display_name: "Enterprise architecture".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let repo = created.get_ref().repository.clone().unwrap_or_default();
    println!(
        "     created {} {:?}",
        repo.repository_id, repo.display_name
    );
    print_info(&created);
    print_seen(log);

    println!("\n2. graph.ListRepositories (the server fails the first attempt with UNAVAILABLE)");
    let listed = client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await?;
    println!(
        "     {} repository(ies) after a retry; same request id on both attempts",
        listed.get_ref().repositories.len()
    );
    print_info(&listed);
    print_seen(log);

    println!("\n3. inference.Generate (server streaming), with a per-call request id");
    let request = CallOptions::new()
        .request_id("quickstart-generate-1")
        .into_request(GenerateRequest {
            prompt: "what is Ameide?".into(),
            ..Default::default()
        })?;
    let response = client.inference().generate(request).await?;
    print_info(&response);
    let mut stream = response.into_inner();
    print!("     tokens: ");
    let mut count = 0;
    while let Some(token) = stream.next().await {
        let token = token?;
        print!("{}", token.token);
        count += 1;
    }
    println!("\n     ({count} messages)");
    print_seen(log);

    println!("\n4. graph.GetRepository for a missing id (NOT_FOUND is not retried)");
    let missing = client
        .graph()
        .get_repository(GetRepositoryRequest {
            repository_id: "repo-404".into(),
            ..Default::default()
        })
        .await
        .into_ameide();
    match missing {
        Ok(_) => println!("     unexpectedly found"),
        Err(err) => println!("     error: {err}"),
    }
    print_seen(log);

    println!("\n5. close(), then one more call");
    client.close();
    match client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
    {
        Ok(_) => println!("     unexpectedly succeeded"),
        Err(err) => println!("     error: {err}"),
    }
    Ok(())
}
