//! The recording server's replies as they are on the wire, read by a raw
//! HTTP/2 client (the `h2` crate, not the SDK): what a parity case scripts
//! is what arrives, so a case tests the client, not the server's wording.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::tonic::codec::CompressionEncoding;
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
    raw_call_with(addr, path, &[], Bytes::from_static(&[0, 0, 0, 0, 0])).await
}

/// A raw request on a fresh HTTP/2 connection: the response future and the
/// request's send stream (still open, so a test can reset it).
async fn raw_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .send_request(request.body(()).unwrap(), false)
        .unwrap()
}

/// One POST of `body` (gRPC frames as given) with extra request headers.
async fn raw_call_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (
    http::StatusCode,
    http::HeaderMap,
    Vec<u8>,
    Option<http::HeaderMap>,
) {
    let (response, mut send) = raw_request(addr, path, headers).await;
    send.send_data(body, true).unwrap();
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn framed(flag: u8, payload: &[u8]) -> Bytes {
    let mut frame = vec![flag];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
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

/// A compressed reply: `grpc-encoding` in the headers, each message flagged
/// 1 and gzip inside; a compressed request is recorded decompressed.
#[tokio::test]
async fn compression_is_on_the_wire_both_ways() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::messages(vec![
            Bytes::from_static(b"hello"),
            Bytes::from_static(b"again"),
        ])
        .compressed(CompressionEncoding::Gzip),
    );
    let addr = serve_tcp(server.clone()).await.unwrap();
    let request = framed(1, &gzip(b"the request"));
    let (status, headers, body, trailers) = raw_call_with(
        addr,
        paths::LIST_REPOSITORIES,
        &[("grpc-encoding", "gzip")],
        request,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-encoding"], "gzip");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let mut rest = &body[..];
    let mut messages = Vec::new();
    while !rest.is_empty() {
        assert_eq!(rest[0], 1, "flagged compressed");
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        messages.push(gunzip(&rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    assert_eq!(messages, [b"hello".to_vec(), b"again".to_vec()]);
    let attempts = server.attempts();
    assert_eq!(attempts[0].messages, [Bytes::from_static(b"the request")]);
}

/// The trailers of a reply wait their delay after the last message.
#[tokio::test]
async fn trailers_wait_their_delay() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::ok().trailers_after(Duration::from_millis(300)),
    );
    let addr = serve_tcp(server).await.unwrap();
    let (response, mut send) = raw_request(addr, paths::LIST_REPOSITORIES, &[]).await;
    send.send_data(framed(0, b""), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let first = body.data().await.unwrap().unwrap();
    assert_eq!(&first[..], [0, 0, 0, 0, 0]);
    let message_at = Instant::now();
    assert!(body.data().await.is_none());
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    // The server's 300 ms run from its write; the message may reach the
    // client a little later on a loaded machine.
    assert!(
        message_at.elapsed() >= Duration::from_millis(250),
        "trailers {:?} after the message",
        message_at.elapsed()
    );
}

/// A stream the client resets (RST_STREAM CANCEL) before the reply is
/// done is recorded `cancelled`, before the headers and between messages;
/// a reply read to its trailers is not.
#[tokio::test]
async fn a_reset_by_the_client_is_recorded() {
    let server = MockServer::new();
    let slow = Reply::ok().after(Duration::from_secs(30));
    let dripping = Reply::messages(vec![Bytes::new(); 3]).every(Duration::from_secs(30));
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    server.push(paths::LIST_REPOSITORIES, slow);
    server.push(paths::LIST_REPOSITORIES, dripping);
    let addr = serve_tcp(server.clone()).await.unwrap();

    raw_call(addr, paths::LIST_REPOSITORIES).await;

    let (_response, mut send) = raw_request(addr, paths::LIST_REPOSITORIES, &[]).await;
    send.send_data(framed(0, b""), true).unwrap();
    wait_for_attempts(&server, 2).await;
    send.send_reset(h2::Reason::CANCEL);

    let (response, mut send) = raw_request(addr, paths::LIST_REPOSITORIES, &[]).await;
    send.send_data(framed(0, b""), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    assert!(body.data().await.is_some(), "the first message");
    drop(body);
    send.send_reset(h2::Reason::CANCEL);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen: Vec<bool> = server.attempts().iter().map(|a| a.cancelled).collect();
        if seen == [false, true, true] {
            break;
        }
        assert!(Instant::now() < deadline, "cancelled flags {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_attempts(server: &MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.attempts().len() < n {
        assert!(Instant::now() < deadline, "attempt {n} never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The raw HTTP/2 server's `Reset` fault: the request is read (and recorded,
/// messages and all), then the stream is reset with the scripted code.
#[tokio::test]
async fn a_scripted_reset_arrives_with_its_code_after_the_request_is_read() {
    use ameide_sdk::testkit::{H2FaultServer, StreamFault};
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Reset(0xb));
    let addr: SocketAddr = server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (response, mut send) = raw_request(addr, paths::LIST_REPOSITORIES, &[]).await;
    send.send_data(framed(0, b"hello"), true).unwrap();
    let err = response.await.unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].fault, StreamFault::Reset(0xb));
    assert_eq!(
        seen[0].messages.as_deref(),
        Some(&[Bytes::from_static(b"hello")][..])
    );
}

/// The HTTP/1.1 server of a parity case (`server.http1`): the HTTP/2
/// preface gets the case's answer byte for byte, then the connection closes,
/// or stays open and silent with `hold_open`.
#[tokio::test]
async fn an_http1_answer_arrives_as_written() {
    use ameide_sdk::testkit::RawTcpServer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad";
    for hold in [false, true] {
        let server = if hold {
            RawTcpServer::hold_open(answer.to_vec()).await.unwrap()
        } else {
            RawTcpServer::start(answer.to_vec()).await.unwrap()
        };
        let addr = server.endpoint().trim_start_matches("http://").to_owned();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; answer.len()];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);
        let mut more = [0u8; 1];
        let after = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut more)).await;
        match (hold, after) {
            (false, Ok(Ok(0))) => {}
            (true, Err(_)) => {}
            (hold, after) => panic!("hold_open {hold}: after the answer {after:?}"),
        }
    }
}
