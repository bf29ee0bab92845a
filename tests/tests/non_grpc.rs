//! Contract §8 / issue 14: a response that is not gRPC (a proxy's error page,
//! a wrong content type) is a gRPC status by gRPC's HTTP-to-gRPC mapping,
//! decided before any body byte is decoded, retried per the policy, with the
//! proxy's page quoted (bounded, one line) and the SDK's facts attached.

use std::time::{Duration, Instant};

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::testkit::{H2FaultServer, RawReply};
use ameide_sdk::{AmeideClient, Error, IntoAmeideResult, StopReason};
use tonic::Code;

fn page(status: u16) -> RawReply {
    RawReply::new(status)
        .header("content-type", "text/html")
        .header("x-proxy", "nginx")
        .data(format!(
            "<html>\r\n<head><title>{status}</title></head>\r\n<body><h1>{status} from the proxy</h1></body></html>"
        ))
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(10))
        .with_throttling(None)
}

/// One call with retries off: its error and how long it took.
async fn call_once(server: &H2FaultServer) -> (Error, Duration) {
    let client = AmeideClient::builder()
        .endpoint(server.endpoint())
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .unwrap_err();
    (err, started.elapsed())
}

async fn call(server: &H2FaultServer) -> Error {
    let client = AmeideClient::builder()
        .endpoint(server.endpoint())
        .timeout(Duration::from_secs(2))
        .retry_policy(fast_policy())
        .build()
        .unwrap();
    client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_502_is_unavailable_retried_and_carries_the_facts() {
    let server = H2FaultServer::start().await.unwrap();
    for _ in 0..3 {
        server.push_reply(page(502));
    }
    let err = call(&server).await;
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.attempts(), 3, "retried per the policy: {err}");
    assert_eq!(err.history().len(), 3);
    assert_eq!(err.stop_reason(), Some(StopReason::Exhausted));
    assert!(err.request_id().is_some(), "{err}");
    let m = err.message();
    assert!(
        m.starts_with("not a gRPC response: HTTP 502 Bad Gateway"),
        "{m}"
    );
    assert!(m.contains("content-type text/html"), "{m}");
    assert!(
        m.contains("<h1>502 from the proxy</h1>"),
        "the page is quoted: {m}"
    );
    assert!(!m.contains('\r') && !m.contains('\n'), "{m}");
    assert_eq!(
        err.status()
            .metadata()
            .get("x-proxy")
            .map(|v| v.to_str().unwrap()),
        Some("nginx"),
        "the proxy's headers stay in the status metadata"
    );
    // Every attempt really went out with the same request id.
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let ids: std::collections::HashSet<_> = seen
        .iter()
        .map(|s| s.headers.get("x-request-id").unwrap().clone())
        .collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_status_maps_as_grpc_says_and_only_retryable_codes_retry() {
    for (http, code, attempts) in [
        (400, Code::Internal, 1),
        (401, Code::Unauthenticated, 1),
        (403, Code::PermissionDenied, 1),
        (404, Code::Unimplemented, 1),
        (429, Code::Unavailable, 3),
        (503, Code::Unavailable, 3),
        (504, Code::Unavailable, 3),
        (500, Code::Unknown, 1),
        (418, Code::Unknown, 1),
    ] {
        let server = H2FaultServer::start().await.unwrap();
        for _ in 0..3 {
            server.push_reply(page(http));
        }
        let err = call(&server).await;
        assert_eq!(err.code(), code, "HTTP {http}: {err}");
        assert_eq!(err.attempts(), attempts, "HTTP {http}: {err}");
        assert_eq!(server.seen().len() as u32, attempts, "HTTP {http}");
        assert!(err.message().contains(&format!("HTTP {http}")), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_that_is_not_grpc_is_unknown_and_its_body_is_never_decoded_as_frames() {
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(
        RawReply::new(200)
            .header("content-type", "application/json")
            .data(r#"{"error":"wrong upstream"}"#),
    );
    let err = call(&server).await;
    assert_eq!(err.code(), Code::Unknown, "{err}");
    assert!(
        err.message().contains(r#"{"error":"wrong upstream"}"#),
        "{err}"
    );
    assert!(!err.message().contains("compression flag"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_speaks_grpc_is_trusted_whatever_its_http_status() {
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(
        RawReply::new(503)
            .header("content-type", "application/grpc")
            .header("grpc-status", "8")
            .header("grpc-message", "upstream overloaded")
            .trailers_only(),
    );
    let (err, _) = call_once(&server).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(err.message(), "upstream overloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_or_endless_page_is_quoted_briefly_and_does_not_hold_the_call() {
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(
        RawReply::new(503)
            .header("content-type", "text/plain")
            .data(vec![b'x'; 64 * 1024])
            .hang(),
    );
    let (err, took) = call_once(&server).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().len() < 400, "{}", err.message().len());
    assert!(err.message().ends_with('…'), "{err}");

    // A page that trickles and never ends: quoted as far as it came.
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(
        RawReply::new(502)
            .header("content-type", "text/html")
            .data("<html>partial")
            .hang(),
    );
    let (err, took) = call_once(&server).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(err.message().contains("<html>partial…"), "{err}");
}
