//! The recording server's replies as they are on the wire, read by a raw
//! HTTP/2 client (the `h2` crate, not the SDK): what a parity case scripts
//! is what arrives, so a case tests the client, not the server's wording.

use std::net::SocketAddr;

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_tests::paths;
use bytes::Bytes;

/// One POST of an empty gRPC message to `path`; the response's status,
/// headers, body and trailers as they arrived.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
) -> (
    http::StatusCode,
    http::HeaderMap,
    Vec<u8>,
    Option<http::HeaderMap>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (parts.status, parts.headers, bytes, trailers)
}

#[tokio::test]
async fn an_http_page_arrives_as_written() {
    let server = MockServer::new();
    let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::http(502)
            .header("content-type", "text/html")
            .body(page),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::http(503));
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::http(200)
            .header("content-type", "application/json")
            .body("{}"),
    );
    let addr = serve_tcp(server.clone()).await.unwrap();

    let (status, headers, body, trailers) = raw_call(addr, paths::LIST_REPOSITORIES).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(body, page.as_bytes(), "the body as given, no gRPC framing");
    assert!(trailers.is_none(), "no trailers: {trailers:?}");
    assert!(!headers.contains_key("grpc-status"));

    let (status, headers, body, trailers) = raw_call(addr, paths::LIST_REPOSITORIES).await;
    assert_eq!(status, 503);
    assert!(
        !headers.contains_key("content-type"),
        "no content type unless scripted"
    );
    assert!(body.is_empty());
    assert!(trailers.is_none());

    let (status, headers, body, _) = raw_call(addr, paths::LIST_REPOSITORIES).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, b"{}");
    assert_eq!(
        server.attempts_for(paths::LIST_REPOSITORIES).len(),
        3,
        "each recorded"
    );
}

/// A gRPC reply next to it, for contrast: framing and trailers.
#[tokio::test]
async fn a_grpc_reply_is_framed_with_its_status_in_trailers() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let addr = serve_tcp(server).await.unwrap();
    let (status, headers, body, trailers) = raw_call(addr, paths::LIST_REPOSITORIES).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(body, [0, 0, 0, 0, 0], "one empty message, framed");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

/// Hand-written frames and their trailers arrive as written, an empty
/// trailers list as an empty trailers frame (no grpc-status in it).
#[tokio::test]
async fn hand_written_frames_and_trailers_arrive_as_written() {
    let server = MockServer::new();
    let grpc = || Reply::http(200).header("content-type", "application/grpc");
    server.push(
        paths::LIST_REPOSITORIES,
        grpc()
            .body(vec![0u8, 0, 0, 0, 10, 1, 2])
            .trailers([("grpc-status", "0"), ("x-extra", "1")]),
    );
    server.push(
        paths::LIST_REPOSITORIES,
        grpc().body(vec![0u8; 5]).trailers([]),
    );
    let addr = serve_tcp(server).await.unwrap();

    let (status, headers, body, trailers) = raw_call(addr, paths::LIST_REPOSITORIES).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(
        body,
        [0, 0, 0, 0, 10, 1, 2],
        "a frame cut short, as written"
    );
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-extra"], "1");

    let (_, _, body, trailers) = raw_call(addr, paths::LIST_REPOSITORIES).await;
    assert_eq!(body, [0; 5]);
    assert_eq!(trailers.expect("an empty trailers frame").len(), 0);
}
