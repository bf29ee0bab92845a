//! Message limits and compression as a server sees them, over the SDK's own
//! transport (loopback TCP): what the request carried, what the limit did.

use std::time::Duration;

use ameide_sdk::proto::graph::v1::{CreateElementRequest, Element};
use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{AmeideClient, CodecOptions, IntoAmeideResult};
use tonic::Code;
use tonic::codec::CompressionEncoding;

const CREATE: &str = "/ameide_core_proto.graph.v1.GraphService/CreateElement";
const LIST: &str = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";

async fn client_for(server: &MockServer, codec: CodecOptions) -> AmeideClient {
    let addr = serve_tcp(server.clone()).await.unwrap();
    AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .timeout(Duration::from_secs(5))
        .codec(codec)
        .build()
        .unwrap()
}

fn big_element() -> CreateElementRequest {
    CreateElementRequest {
        element: Some(Element {
            description: "zstd likes repetition ".repeat(4_000),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_uncompressed_by_default_and_compressed_when_asked() {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let client = client_for(&server, CodecOptions::default()).await;
    client
        .graph()
        .create_element(big_element())
        .await
        .into_ameide()
        .unwrap();
    for encoding in [CompressionEncoding::Zstd, CompressionEncoding::Gzip] {
        let compressed = client
            .with_codec(client.codec().with_send_compressed(Some(encoding)))
            .unwrap();
        compressed
            .graph()
            .create_element(big_element())
            .await
            .into_ameide()
            .unwrap();
    }
    let seen = server.attempts_for(CREATE);
    assert_eq!(seen.len(), 3);
    let plain = prost::Message::encode_to_vec(&big_element()).len();
    assert_eq!(seen[0].header("grpc-encoding"), None);
    assert_eq!(seen[0].messages[0].len(), plain);
    for (attempt, name) in seen[1..].iter().zip(["zstd", "gzip"]) {
        assert_eq!(attempt.header("grpc-encoding"), Some(name));
        assert!(
            attempt.wire_lengths[0] < plain / 10,
            "{name}: {} of {plain} bytes",
            attempt.wire_lengths[0]
        );
        // The server decompressed it back to the request.
        assert_eq!(attempt.messages[0].len(), plain);
    }
    // Both encodings are advertised on every call.
    for attempt in &seen {
        let accept = attempt.header("grpc-accept-encoding").unwrap_or_default();
        assert!(
            accept.contains("gzip") && accept.contains("zstd"),
            "{accept:?}"
        );
    }
}

use ameide_tests::calls::repositories;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoding_limit_is_set_once_and_its_error_keeps_the_request_id() {
    let server = MockServer::new();
    let big = repositories(25_000); // ~5.5 MiB
    assert!(prost::Message::encoded_len(&big) > 5 << 20);
    server.fallback(Reply::message(&big));
    let client = client_for(&server, CodecOptions::default()).await;
    let err = client
        .graph()
        .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .expect_err("over the default 4 MiB");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("max_decoding_message_size"), "{err}");
    assert!(err.request_id().is_some(), "{err}");
    // The same response is too large again: not retryable, whatever the
    // code's default (issue 25).
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().ends_with("not retryable]"), "{err}");

    // Raised for a clone (one call), and client-wide.
    let raised = CodecOptions::default().with_max_decoding_message_size(8 << 20);
    let response = client
        .with_codec(raised)
        .unwrap()
        .graph()
        .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .expect("the limit raised for this call");
    assert_eq!(response.get_ref().repositories.len(), 25_000);
    let wide = client_for(&server, raised).await;
    wide.graph()
        .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .expect("the limit raised client-wide");
    assert_eq!(
        server.attempts_for(LIST).len(),
        3,
        "the limit is not a retryable failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encoding_limit_is_an_error_with_the_request_id_and_nothing_is_sent() {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let client = client_for(
        &server,
        CodecOptions::default().with_max_encoding_message_size(1024),
    )
    .await;
    let err = client
        .graph()
        .create_element(big_element())
        .await
        .into_ameide()
        .expect_err("over the 1 KiB encoding limit");
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.request_id().is_some(), "{err}");
    assert!(server.attempts_for(CREATE).is_empty());
}
