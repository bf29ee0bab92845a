//! The subchannel against real peers (issue 24): a connect owned by no
//! call's deadline and shared by every waiter, gRPC's connection backoff,
//! `grpc-timeout` computed when the stream is created, flow control that no
//! unread stream can stall, and the server's stream limit honoured by
//! opening another connection (Debian's nginx with
//! `http2_max_concurrent_streams`).

use std::time::{Duration, Instant};

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::inference::v1::GenerateResponse;
use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{AmeideClient, TransportOptions};
use ameide_tests::nginx::{self, Certs, Nginx};
use ameide_tests::relay::{Mode, Relay};
use ameide_tests::{calls, paths};
use tonic::Code;

async fn upstream() -> (MockServer, std::net::SocketAddr) {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let addr = serve_tcp(server.clone()).await.expect("upstream");
    (server, addr)
}

fn client(endpoint: String, timeout: Duration, options: TransportOptions) -> AmeideClient {
    AmeideClient::builder()
        .endpoint(endpoint)
        .timeout(timeout)
        .transport_options(options)
        .build()
        .unwrap()
}

/// 50 concurrent calls: every one UNAVAILABLE with `cause` in its message.
async fn fifty_fail_naming(client: &AmeideClient, cause: &str) {
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { calls::read(&client).await })
        })
        .collect();
    for call in calls {
        let err = call.await.unwrap().expect_err("no connection");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.message().contains(cause), "{err}");
    }
}

/// A TLS handshake slower (300 ms) than every call's budget (200 ms): the
/// connect is no call's, so it completes, and the calls after it succeed.
/// One connection is made for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_slower_than_every_calls_budget_completes_for_the_calls_after_it() {
    let Some(bin) = nginx::binary("a_connect_slower_than_every_calls_budget_completes") else {
        return;
    };
    let (server, addr) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let proxy = Nginx::start(&bin, &certs.grpc_tls_server(addr, "", ""));
    let upstream_addr = format!("127.0.0.1:{}", proxy.port).parse().unwrap();
    let relay = Relay::start(Mode::Forward {
        upstream: upstream_addr,
        delay: Duration::from_millis(300),
    })
    .await;
    let client = client(
        format!("https://localhost:{}", relay.addr.port()),
        Duration::from_millis(200),
        TransportOptions::default().with_ca_certificate_pem(Some(certs.read("ca.pem"))),
    );
    let started = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..20 {
        let code = calls::read(&client)
            .await
            .map_or_else(|e| e.code(), |()| Code::Ok);
        codes.push((started.elapsed(), code));
        if code == Code::Ok && codes.iter().filter(|(_, c)| *c == Code::Ok).count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ok = codes.iter().filter(|(_, c)| *c == Code::Ok).count();
    assert!(ok >= 3, "later calls succeed: {codes:?}");
    assert_eq!(codes[0].1, Code::DeadlineExceeded, "{codes:?}");
    assert_eq!(
        relay.accepted().len(),
        1,
        "one connect for every call: {codes:?}"
    );
    assert!(server.attempts().len() >= 3);
}

/// Nothing listens: 50 callers with a 3 s budget each get UNAVAILABLE naming
/// the refused connect, by their deadline, none DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_to_a_closed_port_all_name_the_connect_failure() {
    let addr = ameide_tests::closed_addr();
    let client = client(
        format!("http://{addr}"),
        Duration::from_secs(3),
        TransportOptions::default(),
    );
    let started = Instant::now();
    fifty_fail_naming(&client, "TCP connect failed").await;
    assert!(started.elapsed() < Duration::from_millis(3600));
}

/// A listener that accepts and never answers: 50 callers share one connect;
/// when it times out (1 s) and the next is due after their deadline
/// (1.5 s), each fails at once with UNAVAILABLE naming the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_while_the_connect_hangs_share_one_connect() {
    let relay = Relay::start(Mode::Hang).await;
    let client = AmeideClient::builder()
        .endpoint(format!("http://{}", relay.addr))
        .timeout(Duration::from_millis(1500))
        .retry_policy(RetryPolicy::disabled())
        .transport_options(TransportOptions::default().with_connect_timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    let started = Instant::now();
    fifty_fail_naming(&client, "connect timeout").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "failed when the connect did, before the deadline: {took:?}"
    );
    assert_eq!(relay.accepted().len(), 1, "one connect for all 50 callers");
}

/// A call whose connect took 600 ms tells the server the budget left when
/// its stream was created, not the one it had before the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_budget_left_after_the_connect() {
    let (server, addr) = upstream().await;
    let relay = Relay::start(Mode::Forward {
        upstream: addr,
        delay: Duration::from_millis(600),
    })
    .await;
    let client = client(
        format!("http://{}", relay.addr),
        Duration::from_secs(4),
        TransportOptions::default(),
    );
    calls::read(&client).await.expect("the call goes through");
    let seen = server.attempts();
    let sent = ameide_tests::grpc_timeout(seen[0].header("grpc-timeout").unwrap());
    assert!(
        sent <= Duration::from_millis(3400),
        "grpc-timeout {sent:?} after a 600 ms connect wait with a 4 s budget"
    );
    assert!(sent >= Duration::from_millis(3000), "{sent:?}");
}

/// A server that accepts and closes has not connected: the next connects
/// follow the backoff (1 s, then 1.6 s, ±20 %), not back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_closes_is_reconnected_after_the_backoff() {
    let relay = Relay::start(Mode::Close).await;
    let client = AmeideClient::builder()
        .endpoint(format!("http://{}", relay.addr))
        .timeout(Duration::from_secs(3))
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap();
    let err = calls::read(&client).await.expect_err("no server");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("SETTINGS"), "{err}");
    let accepted = relay.accepted();
    assert!(
        (2..=3).contains(&accepted.len()),
        "connects within 3 s: {}",
        accepted.len()
    );
    let gaps: Vec<Duration> = accepted.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(750) && gaps[0] <= Duration::from_millis(1400),
        "{gaps:?}"
    );
    if let Some(second) = gaps.get(1) {
        assert!(*second >= Duration::from_millis(1200), "{gaps:?}");
    }
}

/// Three server streams nobody reads, each holding 3 × 1 MiB, do not stall
/// the connection: a unary call with a 64 KiB response still goes through
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_streams_never_stall_other_calls() {
    let server = MockServer::new();
    let big = GenerateResponse {
        token: "t".repeat(1 << 20),
        ..Default::default()
    };
    let message = bytes::Bytes::from(prost::Message::encode_to_vec(&big));
    for _ in 0..3 {
        server.push(paths::GENERATE, Reply::messages(vec![message.clone(); 3]));
    }
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::message(&calls::repositories(310)),
    );
    let addr = serve_tcp(server.clone()).await.unwrap();
    let client = client(
        format!("http://{addr}"),
        Duration::from_secs(10),
        TransportOptions::default(),
    );
    let mut unread = Vec::new();
    for _ in 0..3 {
        unread.push(calls::generate(&client).await);
    }
    // Let the servers' data fill what the windows allow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let response = client
        .graph()
        .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
        .await
        .expect("the unary call is not stalled");
    let took = started.elapsed();
    assert!(
        prost::Message::encoded_len(response.get_ref()) >= 64 << 10,
        "a 64 KiB response"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    drop(unread);
}

/// nginx allows 4 streams per connection: with 4 silent streams open, a
/// unary call goes through on a second connection; at the cap
/// (`max_connections` 2, both full) a call waits for room and ends at its
/// deadline, and no third connection is made; a waiting call goes as soon as
/// a stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_stream_limit_opens_another_connection_up_to_the_cap() {
    let Some(bin) = nginx::binary("the_servers_stream_limit_opens_another_connection") else {
        return;
    };
    let server = MockServer::new();
    server.fallback(Reply::ok());
    for _ in 0..8 {
        server.push(
            paths::GENERATE,
            Reply::messages(calls::tokens(["late"])).after(Duration::from_secs(8)),
        );
    }
    let addr = serve_tcp(server.clone()).await.unwrap();
    let proxy = Nginx::start(
        &bin,
        &format!(
            "server {{ listen 127.0.0.1:{{port}} http2; http2_max_concurrent_streams 4;\n location / {{ grpc_pass grpc://{addr}; grpc_read_timeout 30s; }} }}"
        ),
    );
    let relay = Relay::start(Mode::Forward {
        upstream: format!("127.0.0.1:{}", proxy.port).parse().unwrap(),
        delay: Duration::ZERO,
    })
    .await;
    let client = client(
        format!("http://{}", relay.addr),
        Duration::from_secs(20),
        TransportOptions::default().with_max_connections(2),
    );
    // The first connection, and its SETTINGS.
    calls::read(&client).await.expect("a first call");
    let open = |n: usize| {
        (0..n)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client
                        .inference()
                        .generate(ameide_sdk::proto::inference::v1::GenerateRequest::default())
                        .await;
                })
            })
            .collect::<Vec<_>>()
    };
    let first = open(4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = |budget| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let request = ameide_sdk::CallOptions::new()
                .timeout(budget)
                .into_request(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
                .unwrap();
            let result = client.graph().list_repositories(request).await;
            (result.map(drop), started.elapsed())
        }
    };
    let (result, took) = quick(Duration::from_secs(1)).await;
    result.expect("a unary call beside 4 silent streams");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    assert_eq!(relay.accepted().len(), 2, "a second connection");
    // Fill the second connection too: the cap is reached.
    let second = open(4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (result, took) = quick(Duration::from_millis(500)).await;
    let err = result.expect_err("no room and no more connections");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert_eq!(relay.accepted().len(), 2, "the cap holds");
    // A call waiting for room goes as soon as a stream ends.
    let waiting = tokio::spawn(quick(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "no room yet");
    let ended = Instant::now();
    second[0].abort();
    let (result, _) = waiting.await.unwrap();
    result.expect("sent in the room the ended stream left");
    assert!(
        ended.elapsed() < Duration::from_millis(800),
        "{:?}",
        ended.elapsed()
    );
    assert_eq!(relay.accepted().len(), 2, "the cap holds");
    for task in first.into_iter().chain(second) {
        task.abort();
    }
}

/// A subchannel that keeps 2 connections, whose second connect fails: it
/// tries again after the backoff while calls go on over the first, and the
/// pool is whole again without any call waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_extra_connection_is_made_again_after_the_backoff() {
    let (server, addr) = upstream().await;
    let relay = Relay::start(Mode::ForwardClosing {
        upstream: addr,
        nth: 2,
    })
    .await;
    let client = client(
        format!("http://{}", relay.addr),
        Duration::from_secs(2),
        TransportOptions::default().with_connections(2),
    );
    let started = Instant::now();
    let mut made = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        calls::read(&client)
            .await
            .expect("calls go on over the first connection");
        made += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = relay.accepted();
    assert_eq!(
        accepted.len(),
        3,
        "the failed connect was made again: {accepted:?}"
    );
    let gap = accepted[2] - accepted[1];
    assert!(
        gap >= Duration::from_millis(750) && gap <= Duration::from_millis(1500),
        "after the backoff: {gap:?}"
    );
    assert_eq!(
        server.attempts().len(),
        made,
        "every call reached the server"
    );
}

/// A relay in front of `upstream` that reports when the client's side of
/// its one connection ends (the client closed its socket).
async fn watched_relay(
    upstream: std::net::SocketAddr,
) -> (String, tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, watch) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut client_side, _) = listener.accept().await.unwrap();
        let mut server_side = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client_side, &mut server_side).await;
        let _ = ended.send(());
    });
    (format!("http://{addr}"), watch)
}

/// `close()` and dropping the client really release its connection: the
/// socket closes although the server keeps it open (the connection's task
/// holds no sender of its own; it did, and the connection outlived the
/// client until the server hung up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_drop_release_the_connection() {
    for close in [true, false] {
        let (_server, addr) = upstream().await;
        let (endpoint, watch) = watched_relay(addr).await;
        let client = client(
            endpoint,
            Duration::from_secs(5),
            TransportOptions::default(),
        );
        calls::read(&client).await.expect("a call over the relay");
        if close {
            client.close();
        } else {
            drop(client);
        }
        tokio::time::timeout(Duration::from_secs(3), watch)
            .await
            .unwrap_or_else(|_| panic!("close={close}: the connection is still open 3 s later"))
            .unwrap();
    }
}
