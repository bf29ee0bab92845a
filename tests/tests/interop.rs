//! Interop with real gRPC peers installed from the package registries: a
//! Python grpcio server and client (stubs generated from the bundle with
//! grpcio-tools) and a Node @grpc/grpc-js server (the bundle loaded with
//! @grpc/proto-loader). Each asserts what the *other* implementation saw.

use std::time::{Duration, Instant};

use ameide_sdk::proto::graph::v1::{
    DeleteElementRequest, GetElementRequest, GetRepositoryRequest, ListRepositoriesRequest,
};
use ameide_sdk::proto::inference::v1::GenerateRequest;
use ameide_sdk::{AmeideClient, IntoAmeideResult};
use ameide_tests::interop::{Peer, python};
use tonic::Code;

const UNICODE_MESSAGE: &str = "tab\there\r\nline two \u{1F980} \u{2713} \u{fc}n\u{ef}";

fn client(peer: &Peer, timeout: Duration) -> AmeideClient {
    AmeideClient::builder()
        .endpoint(peer.endpoint())
        .tenant_id("tenant-interop")
        .user_id("user-interop")
        .bearer_token("interop-token")
        .timeout(timeout)
        .build()
        .unwrap()
}

fn metadata<'a>(call: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    call["metadata"][key].as_str()
}

fn assert_peer_saw_the_contract_metadata(peer: &Peer, method: &str, budget: Duration) {
    let calls = peer.calls(method);
    assert_eq!(
        calls.len(),
        2,
        "the first attempt fails UNAVAILABLE and is retried: {calls:#?}"
    );
    for call in &calls {
        assert_eq!(metadata(call, "x-tenant-id"), Some("tenant-interop"));
        assert_eq!(metadata(call, "x-user-id"), Some("user-interop"));
        assert_eq!(
            metadata(call, "authorization"),
            Some("Bearer interop-token")
        );
        let left = call["time_remaining"]
            .as_f64()
            .expect("the peer saw a deadline");
        assert!(
            left > 0.0 && left <= budget.as_secs_f64() + 0.05,
            "deadline left {left} s of {budget:?}"
        );
    }
    let id = metadata(&calls[0], "x-request-id").expect("a request id");
    assert_eq!(id.len(), 36);
    assert_eq!(
        metadata(&calls[1], "x-request-id"),
        Some(id),
        "same request id on the retry"
    );
    assert_eq!(metadata(&calls[0], "grpc-previous-rpc-attempts"), None);
    assert_eq!(metadata(&calls[1], "grpc-previous-rpc-attempts"), Some("1"));
    let (first, second) = (
        calls[0]["time_remaining"].as_f64().unwrap(),
        calls[1]["time_remaining"].as_f64().unwrap(),
    );
    assert!(
        second < first,
        "the retry carries a smaller budget ({second} < {first})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_server_sees_tenant_user_request_id_bearer_deadline_and_retries() {
    let peer = Peer::python();
    let response = client(&peer, Duration::from_secs(2))
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .unwrap();
    assert_eq!(response.get_ref().repositories[0].key, "from-python");
    assert_peer_saw_the_contract_metadata(&peer, "ListRepositories", Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_error_details_sent_by_grpcio_are_decoded() {
    let peer = Peer::python();
    let err = client(&peer, Duration::from_secs(2))
        .graph()
        .get_repository(GetRepositoryRequest {
            repository_id: "repo-7".into(),
            ..Default::default()
        })
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "repository is locked");
    let info = err.error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("REPOSITORY_LOCKED", "graph.ameide.io")
    );
    assert_eq!(
        info.metadata.get("repository").map(String::as_str),
        Some("repo-7")
    );
    assert_eq!(
        err.bad_request().expect("BadRequest").field_violations[0].field,
        "repository_id"
    );
    assert_eq!(
        err.retry_info().expect("RetryInfo").retry_delay,
        Some(Duration::from_secs(3))
    );
    assert_eq!(err.attempts(), 1, "FAILED_PRECONDITION is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_grpcio_server_ends_in_deadline_exceeded_on_time() {
    let peer = Peer::python();
    let started = Instant::now();
    let err = client(&peer, Duration::from_millis(500))
        .graph()
        .get_element(GetElementRequest::default())
        .await
        .into_ameide()
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(800),
        "took {took:?}"
    );
    let left = peer.calls_at_least("GetElement", 1).await[0]["time_remaining"]
        .as_f64()
        .unwrap();
    assert!(left <= 0.5, "grpcio saw {left} s left of a 500 ms budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_message_with_controls_and_non_bmp_characters_survives_from_grpcio() {
    let peer = Peer::python();
    let err = client(&peer, Duration::from_secs(2))
        .graph()
        .delete_element(DeleteElementRequest::default())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), UNICODE_MESSAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_from_grpcio() {
    let peer = Peer::python();
    let mut stream = client(&peer, Duration::from_secs(2))
        .inference()
        .generate(GenerateRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Some(token) = stream.message().await.unwrap() {
        text.push_str(&token.token);
    }
    assert_eq!(text, "Hello from grpcio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_server_sees_the_same_metadata_deadline_and_retries() {
    let peer = Peer::node();
    let client = client(&peer, Duration::from_secs(2));
    let response = client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .unwrap();
    assert_eq!(response.get_ref().repositories[0].key, "from-node");
    assert_peer_saw_the_contract_metadata(&peer, "ListRepositories", Duration::from_secs(2));

    let err = client
        .graph()
        .delete_element(DeleteElementRequest::default())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), UNICODE_MESSAGE);

    let started = Instant::now();
    let slow = AmeideClient::builder()
        .endpoint(peer.endpoint())
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let err = slow
        .graph()
        .get_element(GetElementRequest::default())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(700));

    let mut stream = ameide_tests::calls::generate(&client).await;
    let mut text = String::new();
    while let Some(token) = stream.message().await.unwrap() {
        text.push_str(&token.token);
    }
    assert_eq!(text, "Hello from grpc-js");
}

mod grpcio_client {
    //! A grpcio client calling a Rust server built on the SDK's inbound layer.
    use super::*;
    use ameide_sdk::proto::graph::v1::graph_service_server::{GraphService, GraphServiceServer};
    use ameide_sdk::proto::graph::v1::{GetRepositoryResponse, Repository};
    use ameide_sdk::server::{InboundContext, InboundLayer};
    use tonic::{Request, Response, Status};

    struct Echo;

    #[tonic::async_trait]
    impl GraphService for Echo {
        async fn get_repository(
            &self,
            request: Request<GetRepositoryRequest>,
        ) -> Result<Response<GetRepositoryResponse>, Status> {
            let ctx = InboundContext::of(&request)
                .cloned()
                .ok_or_else(|| Status::internal("no context"))?;
            let remaining = ctx
                .remaining()
                .map_or("none".to_owned(), |d| d.as_millis().to_string());
            Ok(Response::new(GetRepositoryResponse {
                repository: Some(Repository {
                    repository_id: ctx.tenant_id().unwrap_or("-").to_owned(),
                    key: ctx.user_id().unwrap_or("-").to_owned(),
                    description: format!(
                        "{}|{}|{remaining}",
                        ctx.request_id(),
                        ctx.session_id().unwrap_or("-")
                    ),
                    ..Default::default()
                }),
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpcio_client_calls_a_rust_server_on_the_inbound_layer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(InboundLayer::new())
                .add_service(GraphServiceServer::new(Echo))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let p = python();
        let output = tokio::process::Command::new(&p.python)
            .arg(ameide_tests::workspace_root().join("interop/python/client.py"))
            .arg(&p.stubs)
            .arg(port.to_string())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            seen["repository_id"], "tenant-py",
            "tenant read by the inbound layer"
        );
        assert_eq!(seen["key"], "user-py");
        let description = seen["description"].as_str().unwrap();
        let parts: Vec<&str> = description.split('|').collect();
        assert_eq!(parts[0], "py-req-1");
        assert_eq!(parts[1], "py-session", "session from grpcio's baggage");
        let remaining: u64 = parts[2].parse().expect("a deadline from grpcio's timeout");
        assert!(
            remaining <= 2500 && remaining > 1500,
            "{remaining} ms of grpcio's 2.5 s"
        );
        assert_eq!(
            seen["echoed_request_id"], "py-req-1",
            "the request id is echoed to grpcio"
        );
        assert_eq!(
            seen["generated_request_id"].as_str().map(str::len),
            Some(36),
            "a generated id is echoed"
        );
    }
}

/// gzip both ways with grpcio: the SDK compresses the request (grpcio must
/// decompress it to echo it), grpcio compresses the response (the SDK
/// advertised gzip and decodes it). grpcio has no zstd; `codec_on_the_wire.rs`
/// covers zstd on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compression_interoperates_with_grpcio_both_ways() {
    use ameide_sdk::proto::graph::v1::{CreateElementRequest, Element};
    use tonic::codec::CompressionEncoding;

    let peer = Peer::python();
    let base = client(&peer, Duration::from_secs(5));
    let gzip = base
        .with_codec(
            base.codec()
                .with_send_compressed(Some(CompressionEncoding::Gzip)),
        )
        .unwrap();
    let description = "a compressible description ".repeat(8_000);
    let mut request = tonic::Request::new(CreateElementRequest {
        element: Some(Element {
            description: description.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-interop-compress", "gzip".parse().unwrap());
    let response = gzip
        .graph()
        .create_element(request)
        .await
        .into_ameide()
        .expect("gzip both ways");
    assert_eq!(
        response
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip"),
        "grpcio compressed the response"
    );
    let element = response.into_inner().element.expect("echoed element");
    assert_eq!(element.description, description);
    let calls = peer.calls_at_least("CreateElement", 1).await;
    assert_eq!(calls.len(), 1);
}
