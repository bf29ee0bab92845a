//! The loopback server process: a plain tonic echo of two roster methods,
//! `GraphService.GetRepository` (unary) and `InferenceService.Generate`
//! (server streaming, `max_tokens` small messages), on one worker thread.

use ameide_sdk::proto::graph::v1::graph_service_server::{GraphService, GraphServiceServer};
use ameide_sdk::proto::graph::v1::{GetRepositoryRequest, GetRepositoryResponse, Repository};
use ameide_sdk::proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use ameide_sdk::proto::inference::v1::{GenerateRequest, GenerateResponse};
use tonic::{Request, Response, Status};

struct Echo;

/// Unary calls served, for the balancing phase's spread (printed when a
/// line arrives on stdin).
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The tail-latency phase's slow replica: every `SLOW.0`-th unary call
/// waits `SLOW.1` ms before answering (0: never).
static SLOW: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

#[tonic::async_trait]
impl GraphService for Echo {
    async fn get_repository(
        &self,
        request: Request<GetRepositoryRequest>,
    ) -> Result<Response<GetRepositoryResponse>, Status> {
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(&(every, ms)) = SLOW.get()
            && every > 0
            && n % every == every - 1
        {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let id = request.into_inner().repository_id;
        // The soak exercises the error path: every tenth of its ids fails.
        if id.starts_with("soak-") && id.ends_with('0') {
            return Err(Status::not_found(format!("repository {id} does not exist")));
        }
        Ok(Response::new(GetRepositoryResponse {
            repository: Some(Repository {
                repository_id: id,
                key: "bench".into(),
                display_name: "Benchmark repository".into(),
                ..Default::default()
            }),
        }))
    }
}

type TokenStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<GenerateResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl InferenceService for Echo {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<TokenStream>, Status> {
        let n = request.into_inner().max_tokens;
        if !(1..=100_000).contains(&n) {
            return Err(Status::invalid_argument(
                "max_tokens must be within 1..=100000",
            ));
        }
        let tokens = (0..n).map(move |index| {
            Ok(GenerateResponse {
                token: "tok".into(),
                index,
                finish_reason: 0,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(tokens))))
    }
}

/// Binds `addr` (127.0.0.1:0 by default), prints the port on stdout, serves
/// until killed; prints the unary calls served so far for each line read on
/// stdin. `slow` (`EVERY:MS`) delays every EVERY-th unary call by MS ms.
pub fn serve(addr: Option<&str>, slow: Option<&str>) -> Result<(), ameide_sdk::layers::BoxError> {
    let addr: std::net::SocketAddr = addr.unwrap_or("127.0.0.1:0").parse()?;
    if let Some(slow) = slow {
        let (every, ms) = slow
            .split_once(':')
            .and_then(|(e, m)| Some((e.parse().ok()?, m.parse().ok()?)))
            .ok_or("the slow setting is EVERY:MS")?;
        let _ = SLOW.set((every, ms));
    }
    std::thread::spawn(|| {
        use std::io::BufRead;
        for _ in std::io::stdin().lock().lines().map_while(Result::ok) {
            println!("{}", CALLS.load(std::sync::atomic::Ordering::Relaxed));
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", listener.local_addr()?.port());
        // TCP_NODELAY like the clients: without it a stream's small frames
        // wait on Nagle + delayed ACK (40 ms stalls on loopback).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(GraphServiceServer::new(Echo))
            .add_service(InferenceServiceServer::new(Echo))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
