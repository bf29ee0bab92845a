//! Keepalive by gRFC A8 against a real grpc-go server (Debian's grpc-go,
//! `tests/go/grpcserver`), which enforces its ping policy as in production
//! and reports every PING it receives: a quiet stream within the policy
//! survives; a client whose interval breaks it is sent GOAWAY
//! ENHANCE_YOUR_CALM `too_many_pings`, and its next connection pings half
//! as often. The five-minute run with both sides' defaults is
//! `cargo xtask keepalive-soak` (ignored here).

use std::time::{Duration, Instant};

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::inference::v1::GenerateRequest;
use ameide_sdk::{AmeideClient, CallOptions, TransportOptions};
use ameide_tests::grpc_go::{self, GoServer, gaps};
use tonic::Code;

fn client(server: &GoServer, keepalive: Option<Duration>) -> AmeideClient {
    AmeideClient::builder()
        .endpoint(server.endpoint())
        .transport_options(TransportOptions::default().with_keepalive_interval(keepalive))
        // The lost stream is the measurement, not something to retry.
        .retry_policy(RetryPolicy::disabled())
        .build()
        .unwrap()
}

/// A server stream whose one message comes after `quiet`: Ok, or the status.
async fn quiet_stream(client: &AmeideClient, quiet: Duration) -> Result<usize, tonic::Status> {
    let mut request = CallOptions::new()
        .timeout(quiet + Duration::from_secs(30))
        .into_request(GenerateRequest::default())
        .unwrap();
    request.metadata_mut().insert(
        "x-test-delay-ms",
        quiet.as_millis().to_string().parse().unwrap(),
    );
    let mut stream = client.inference().generate(request).await?.into_inner();
    let mut messages = 0;
    while stream.message().await?.is_some() {
        messages += 1;
    }
    Ok(messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_within_the_servers_policy_survives() {
    let Some(bin) = grpc_go::binary("a_quiet_stream_within_the_servers_policy_survives") else {
        return;
    };
    let server = GoServer::start(&bin, &["-min-time", "5s"]);
    let client = client(&server, Some(Duration::from_secs(10)));
    let messages = quiet_stream(&client, Duration::from_secs(25))
        .await
        .expect("the quiet stream survives");
    assert_eq!(messages, 1);
    assert_eq!(server.connections(), vec![1]);
    let pings = server.pings(1);
    assert!(pings.len() >= 2, "pinged while quiet: {pings:?}");
    assert!(
        gaps(&pings).iter().all(|g| *g >= 9_500),
        "every 10 s: {pings:?}"
    );
    assert!(!server.closed(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pings_doubles_the_interval_of_the_next_connection() {
    let Some(bin) = grpc_go::binary("too_many_pings_doubles_the_interval_of_the_next_connection")
    else {
        return;
    };
    // The server allows a ping per 15 s; the client pings every 10 s.
    let server = GoServer::start(&bin, &["-min-time", "15s"]);
    let client = client(&server, Some(Duration::from_secs(10)));
    let started = Instant::now();
    let err = quiet_stream(&client, Duration::from_secs(60))
        .await
        .expect_err("the server closes the connection after three strikes");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took >= Duration::from_secs(35) && took < Duration::from_secs(50),
        "GOAWAY after the fourth ping: {took:?}"
    );
    assert!(server.closes(1).await);
    let first = server.pings(1);
    assert!(
        gaps(&first).iter().all(|g| (9_000..12_000).contains(g)),
        "{first:?}"
    );

    // The next connection pings every 20 s, within the policy: the same
    // quiet stream survives it.
    let messages = quiet_stream(&client, Duration::from_secs(42))
        .await
        .expect("the next connection keeps to the policy");
    assert_eq!(messages, 1);
    assert_eq!(server.connections(), vec![1, 2]);
    let second = server.pings(2);
    assert!(!second.is_empty(), "still pinging: {second:?}");
    assert!(
        gaps(&second).iter().all(|g| *g >= 19_000),
        "doubled: {second:?}"
    );
    if let Some(first_ping) = second.first() {
        let opened = server
            .events()
            .iter()
            .find(|e| e.what == "open" && e.conn == 2)
            .map(|e| e.at_ms)
            .unwrap();
        assert!(first_ping - opened >= 19_000, "{opened} then {second:?}");
    }
    assert!(!server.closed(2));
}

/// Both sides' defaults (grpc-go: one ping per 5 minutes, the SDK: none): a
/// stream silent for 5 minutes survives. Run by `cargo xtask keepalive-soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "five minutes: cargo xtask keepalive-soak"]
async fn default_settings_survive_a_stream_silent_for_five_minutes() {
    let Some(bin) = grpc_go::binary("default_settings_survive_a_stream_silent_for_five_minutes")
    else {
        return;
    };
    let server = GoServer::start(&bin, &[]);
    let client = AmeideClient::builder()
        .endpoint(server.endpoint())
        .build()
        .unwrap();
    let messages = quiet_stream(&client, Duration::from_secs(305))
        .await
        .expect("a stream silent for 5 minutes survives");
    assert_eq!(messages, 1);
    assert_eq!(server.connections(), vec![1]);
    assert!(!server.closed(1));
}

/// The control for the soak above: the SDK's old default (a ping every 60 s
/// while a call is in flight) against grpc-go's default policy. The server
/// closes the connection with GOAWAY `too_many_pings` at the fourth ping,
/// about 240 s in, and the stream is lost. Run by `cargo xtask keepalive-soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "four minutes: cargo xtask keepalive-soak"]
async fn pings_every_minute_break_the_default_policy_at_four_minutes() {
    let Some(bin) = grpc_go::binary("pings_every_minute_break_the_default_policy_at_four_minutes")
    else {
        return;
    };
    let server = GoServer::start(&bin, &[]);
    let client = client(&server, Some(Duration::from_secs(60)));
    let started = Instant::now();
    let err = quiet_stream(&client, Duration::from_secs(270))
        .await
        .expect_err("the default policy closes the connection");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        took >= Duration::from_secs(230) && took < Duration::from_secs(260),
        "{took:?}"
    );
    assert!(server.closes(1).await);
    assert_eq!(server.pings(1).len(), 4, "{:?}", server.pings(1));
}
