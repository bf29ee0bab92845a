//! HTTP/2 transport faults on a real loopback connection: REFUSED_STREAM,
//! GOAWAY (graceful and abrupt), a dropped connection, a stream cut after N
//! messages. The server is the testkit's raw-h2 `H2FaultServer`, so every
//! assertion is about what reached the wire; a stream above a graceful
//! GOAWAY's last-stream-id needs a frame-level server (`frames` below).

use std::time::Duration;

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::testkit::{H2FaultServer, StreamFault};
use ameide_sdk::{AmeideClient, AmeideClientBuilder};
use ameide_tests::paths;
use tokio_stream::StreamExt;
use tonic::Code;

fn client(server: &H2FaultServer) -> AmeideClientBuilder {
    AmeideClient::builder()
        .endpoint(server.endpoint())
        .timeout(Duration::from_secs(5))
        .retry_policy(
            RetryPolicy::default()
                .with_initial_backoff(Duration::from_millis(1))
                .with_throttling(None),
        )
}

use ameide_tests::calls::{read as list, write as create};

#[tokio::test]
async fn raw_tonic_reports_refused_stream_as_unavailable_under_our_features() {
    // What tonic itself says, for the record: with tonic's `server` feature on
    // (ameide-sdk's default) it maps REFUSED_STREAM to UNAVAILABLE; without
    // it the h2 error would surface as UNKNOWN. The SDK maps h2 reasons itself,
    // so its answer does not depend on the feature set.
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Refuse);
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw =
        ameide_sdk::proto::graph::v1::graph_service_client::GraphServiceClient::new(channel);
    let status = raw
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(server.seen().len(), 1, "raw tonic does not retry");
}

#[tokio::test]
async fn refused_stream_is_sent_again_once_even_with_retries_off() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Refuse);
    let client = client(&server)
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    list(&client).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].fault, StreamFault::Refuse);
    assert_eq!(seen[1].fault, StreamFault::Ok);
    // gRFC A6: the resend says it is one; neither is a policy retry.
    assert_eq!(seen[0].headers.get("grpc-transparent-retry-attempts"), None);
    assert_eq!(
        seen[1]
            .headers
            .get("grpc-transparent-retry-attempts")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert_eq!(seen[1].headers.get("grpc-previous-rpc-attempts"), None);
}

#[tokio::test]
async fn a_second_refusal_is_not_transparent() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Refuse);
    server.push(StreamFault::Refuse);
    let client = client(&server)
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    let err = list(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(server.seen().len(), 2);
    let refused: Vec<bool> = err.history().iter().map(|r| r.refused).collect();
    assert_eq!(refused, [true, true], "{err}");
    assert!(err.to_string().contains("(refused)"), "{err}");
}

#[tokio::test]
async fn refused_non_idempotent_call_is_replayed_in_safe_mode() {
    // The server never processed it, so even CreateElement may go again.
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Refuse);
    let client = client(&server).safe_retries(true).build().unwrap();
    create(&client).await.unwrap();
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn graceful_goaway_finishes_the_call_and_the_next_one_reconnects() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::GoAway);
    let client = client(&server)
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    list(&client).await.unwrap();
    // The channel notices the GOAWAY and reconnects; give it a moment to see
    // the connection close before the next call picks a connection.
    let mut ok = false;
    for _ in 0..50 {
        if list(&client).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "calls after a GOAWAY must succeed on a new connection");
    let seen = server.seen();
    assert_eq!(seen[0].connection, 0);
    assert_eq!(
        seen.last().unwrap().connection,
        1,
        "the call after GOAWAY used a new connection: {seen:?}"
    );
}

#[tokio::test]
async fn abrupt_goaway_fails_unavailable_and_safe_mode_does_not_resend_a_create() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::GoAwayAbrupt);
    let client = client(&server).safe_retries(true).build().unwrap();
    let err = create(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(
        server.seen().len(),
        1,
        "a stream the server had accepted may have been processed: never sent twice in safe mode"
    );
}

#[tokio::test]
async fn abrupt_goaway_on_a_read_is_retried_on_a_new_connection() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::GoAwayAbrupt);
    let client = client(&server).safe_retries(true).build().unwrap();
    list(&client).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].connection, 1);
}

#[tokio::test]
async fn dropped_connection_in_safe_mode_sends_a_create_once() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Drop);
    let client = client(&server).safe_retries(true).build().unwrap();
    let err = create(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn dropped_connection_in_contract_mode_retries_a_create() {
    // The contract default retries UNAVAILABLE for every method: the
    // trade-off safe mode exists for.
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::Drop);
    let client = client(&server).build().unwrap();
    create(&client).await.unwrap();
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn stream_cut_after_two_messages_reports_internal_and_is_not_replayed() {
    let server = H2FaultServer::start().await.unwrap();
    server.push(StreamFault::CutAfter(2));
    let client = client(&server).build().unwrap();
    let mut stream = ameide_tests::calls::generate(&client).await;
    let mut messages = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(_)) => messages += 1,
            Some(Err(status)) => break ameide_sdk::Error::from(status),
            None => panic!("the stream ended cleanly after a reset"),
        }
    };
    assert_eq!(messages, 2);
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert_eq!(server.seen().len(), 1);
    assert_eq!(server.seen()[0].path, paths::GENERATE);
}

/// A frame-level HTTP/2 server, for the one fault h2's server API cannot
/// script: a graceful GOAWAY whose last-stream-id is *below* a stream the
/// client has already opened. On its first connection it waits until two
/// streams (1 and 3) have arrived, answers stream 1, and sends
/// `GOAWAY(last_stream_id = 1, NO_ERROR)`: stream 3 was never processed. Later
/// connections answer every stream. It records (connection, stream) for every
/// request whose HEADERS arrived.
mod frames {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;

    pub struct GoAwayBelowServer {
        pub port: u16,
        pub seen: Arc<Mutex<Vec<(usize, u32)>>>,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// `:status: 200` (static index 8) and `content-type: application/grpc`
    /// (literal, static name index 31), HPACK without the dynamic table.
    fn response_headers() -> Vec<u8> {
        let mut block = vec![0x88, 0x0f, 0x10, 16];
        block.extend_from_slice(b"application/grpc");
        block
    }

    /// `grpc-status: 0` as a literal with a new name, not indexed.
    fn trailers() -> Vec<u8> {
        let mut block = vec![0x00, 11];
        block.extend_from_slice(b"grpc-status");
        block.extend_from_slice(&[1, b'0']);
        block
    }

    async fn answer(socket: &mut TcpStream, stream: u32) -> std::io::Result<()> {
        let mut out = frame(HEADERS, END_HEADERS, stream, &response_headers());
        // One empty protobuf message: not compressed, length 0.
        out.extend(frame(DATA, 0, stream, &[0, 0, 0, 0, 0]));
        out.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &trailers(),
        ));
        socket.write_all(&out).await
    }

    async fn connection(
        mut socket: TcpStream,
        index: usize,
        seen: Arc<Mutex<Vec<(usize, u32)>>>,
    ) -> std::io::Result<()> {
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await?;
        socket.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        let mut opened = Vec::new();
        let mut went_away = false;
        loop {
            let mut header = [0u8; 9];
            socket.read_exact(&mut header).await?;
            let len = (usize::from(header[0]) << 16)
                | (usize::from(header[1]) << 8)
                | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await?;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    socket.write_all(&frame(SETTINGS, ACK, 0, &[])).await?
                }
                PING if flags & ACK == 0 => {
                    socket.write_all(&frame(PING, ACK, 0, &payload)).await?
                }
                HEADERS => {
                    seen.lock().unwrap().push((index, stream));
                    opened.push(stream);
                }
                DATA if flags & END_STREAM != 0 => {
                    if index > 0 {
                        answer(&mut socket, stream).await?;
                    } else if opened.len() == 2 && !went_away {
                        // Both requests are complete: answer the first, and
                        // tell the client we never took the second.
                        let first = opened[0];
                        answer(&mut socket, first).await?;
                        let mut goaway = first.to_be_bytes().to_vec();
                        goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
                        socket.write_all(&frame(GOAWAY, 0, 0, &goaway)).await?;
                        went_away = true;
                    }
                }
                _ => {}
            }
        }
    }

    impl GoAwayBelowServer {
        pub async fn start() -> GoAwayBelowServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            tokio::spawn(async move {
                let mut index = 0;
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(connection(socket, index, record.clone()));
                    index += 1;
                }
            });
            GoAwayBelowServer { port, seen }
        }
    }
}

#[tokio::test]
async fn a_stream_above_a_graceful_goaway_is_replayed_even_for_a_create_in_safe_mode() {
    let server = frames::GoAwayBelowServer::start().await;
    let client = AmeideClient::builder()
        .endpoint(format!("http://127.0.0.1:{}", server.port))
        .timeout(Duration::from_secs(5))
        .safe_retries(true)
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    // Two creates at once, on one connection (streams 1 and 3). The server
    // answers stream 1 and sends GOAWAY(last_stream_id = 1): stream 3 was
    // never processed, so even a non-idempotent call in safe mode with
    // retries off goes again, on a new connection.
    let (first, second) = tokio::join!(create(&client), create(&client));
    first.unwrap();
    second.unwrap();
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(0, 1), (0, 3), (1, 1)],
        "stream 3 of connection 0 went again as stream 1 of connection 1"
    );
}

/// A deploy: nothing listens yet when the call starts; the server comes up
/// 600 ms later. The request never left the client, so it waits out the
/// connect backoff and goes as soon as the server is there, inside its
/// deadline, with retries off and the throttle untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_server_that_is_not_up_yet_goes_once_it_is() {
    use ameide_sdk::testkit::{MockServer, Reply, serve_tcp_at};
    let addr = ameide_tests::closed_addr();
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .timeout(Duration::from_secs(4))
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let late = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        serve_tcp_at(late, addr)
            .await
            .expect("the port is free again");
    });
    let started = std::time::Instant::now();
    list(&client).await.expect("sent once the server is up");
    assert!(started.elapsed() >= Duration::from_millis(600));
    let seen = server.attempts();
    assert_eq!(seen.len(), 1, "one request reached the server");
    let resends: u32 = seen[0]
        .header("grpc-transparent-retry-attempts")
        .expect("the request says it was held back")
        .parse()
        .unwrap();
    assert!(resends >= 1, "{resends}");
    assert_eq!(seen[0].header("grpc-previous-rpc-attempts"), None);
}

/// Nothing ever listens: the call fails at its deadline's edge with
/// UNAVAILABLE naming the connect failure (not DEADLINE_EXCEEDED, not at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_comes_up_is_unavailable_by_the_deadline() {
    let addr = ameide_tests::closed_addr();
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = list(&client).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("TCP connect failed"), "{err}");
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_millis(2300),
        "took {took:?}: {err}"
    );
    assert!(err.request_id().is_some());
}
