//! Contract §8: nothing of the SDK's own crosses a hop. A service that hands a
//! downstream failure back to its caller (`?` in a handler) sends the code,
//! message and details it received, and none of the SDK's per-call facts;
//! the middle service still gets every fact in-process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::agents::v1::agents_service_client::AgentsServiceClient;
use ameide_sdk::proto::agents::v1::agents_service_server::{AgentsService, AgentsServiceServer};
use ameide_sdk::proto::agents::v1::{PublishAgentRequest, PublishAgentResponse};
use ameide_sdk::proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use ameide_sdk::proto::inference::v1::{ListAgentsRequest, ListAgentsResponse};
use ameide_sdk::server::InboundLayer;
use ameide_sdk::{AmeideClient, CallOptions, Error, IntoAmeideResult, StopReason};
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

/// Always UNAVAILABLE, so the middle service's client makes every attempt.
struct Down;

#[tonic::async_trait]
impl InferenceService for Down {
    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Err(Status::unavailable("downstream is draining"))
    }
}

/// What the middle service's handler saw of its failed downstream call.
#[derive(Debug, Clone)]
struct MiddleSaw {
    request_id: Option<String>,
    attempts: u32,
    history: usize,
    stop: Option<StopReason>,
    elapsed: Option<Duration>,
    metadata_keys: Vec<String>,
}

struct Middle {
    downstream: AmeideClient,
    saw: Arc<Mutex<Option<MiddleSaw>>>,
}

#[tonic::async_trait]
impl AgentsService for Middle {
    async fn publish_agent(
        &self,
        _: Request<PublishAgentRequest>,
    ) -> Result<Response<PublishAgentResponse>, Status> {
        let result = self
            .downstream
            .inference()
            .list_agents(ListAgentsRequest::default())
            .await;
        if let Err(status) = &result {
            let err = Error::from(status.clone());
            *self.saw.lock().unwrap() = Some(MiddleSaw {
                request_id: err.request_id().map(str::to_owned),
                attempts: err.attempts(),
                history: err.history().len(),
                stop: err.stop_reason(),
                elapsed: err.elapsed(),
                metadata_keys: keys(status),
            });
        }
        // The everyday way a handler hands a downstream failure on.
        result?;
        Ok(Response::new(PublishAgentResponse::default()))
    }
}

fn keys(status: &Status) -> Vec<String> {
    status
        .metadata()
        .keys()
        .map(|k| match k {
            tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_owned(),
            tonic::metadata::KeyRef::Binary(k) => k.as_str().to_owned(),
        })
        .collect()
}

async fn serve<S>(service: S) -> SocketAddr
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
    ameide_tests::serve_inbound(InboundLayer::new(), service).await
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(10))
        .with_throttling(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_on_status_carries_no_sdk_facts_while_the_middle_service_has_them_all() {
    let down = serve(InferenceServiceServer::new(Down)).await;
    let saw = Arc::new(Mutex::new(None));
    let downstream = AmeideClient::builder()
        .endpoint(format!("http://{down}"))
        .retry_policy(fast_retries())
        .build()
        .unwrap();
    let middle = serve(AgentsServiceServer::new(Middle {
        downstream,
        saw: saw.clone(),
    }))
    .await;

    // The caller speaks plain tonic, so it sees exactly what crossed the hop.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{middle}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = AgentsServiceClient::new(channel);
    let mut request = Request::new(PublishAgentRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "hop-1".parse().unwrap());
    let status = raw.publish_agent(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "downstream is draining");
    let crossed = keys(&status);
    assert!(
        crossed.iter().all(|k| !k.starts_with("ameide-sdk")),
        "SDK bookkeeping crossed the hop: {crossed:?}"
    );

    let middle_saw = saw.lock().unwrap().clone().expect("the middle service ran");
    assert_eq!(middle_saw.request_id.as_deref(), Some("hop-1"));
    assert_eq!(middle_saw.attempts, 3);
    assert_eq!(middle_saw.history, 3);
    assert_eq!(middle_saw.stop, Some(StopReason::Exhausted));
    assert!(middle_saw.elapsed.is_some());
    assert!(
        middle_saw
            .metadata_keys
            .iter()
            .all(|k| !k.starts_with("ameide-sdk")),
        "{:?}",
        middle_saw.metadata_keys
    );

    // Through an AmeideClient, the caller gets its own facts, not the middle's.
    let caller = AmeideClient::builder()
        .endpoint(format!("http://{middle}"))
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    let request = CallOptions::new()
        .request_id("hop-2")
        .into_request(PublishAgentRequest::default())
        .unwrap();
    let err = caller
        .agents()
        .publish_agent(request)
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.request_id(), Some("hop-2"));
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(err.history().len(), 1, "{err}");
}
