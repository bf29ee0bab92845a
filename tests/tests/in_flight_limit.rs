//! The in-flight limit (`AmeideClientBuilder::in_flight_limit`), seen from the
//! server: how many calls arrive at once, when a call that waited arrives and
//! with what `grpc-timeout`, what a stream does to the limit, and how a call
//! whose deadline passes in line ends. Paused clock, in-memory HTTP/2.

use std::time::Duration;

use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{AmeideClient, CallOptions, ConfigErrorKind, InFlightLimit, IntoAmeideResult};
use ameide_tests::calls::{generate, read_as, tokens};
use ameide_tests::{grpc_timeout, mock_client, paths};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;

fn limit(max_calls: usize, max_wait_ms: u64) -> Option<InFlightLimit> {
    Some(InFlightLimit {
        max_calls,
        max_wait: Duration::from_millis(max_wait_ms),
    })
}

/// Arrival offsets (ms from `t0`) of every attempt, sorted.
fn arrivals_ms(server: &MockServer, t0: Instant) -> Vec<u128> {
    let mut at: Vec<u128> = server
        .attempts()
        .iter()
        .map(|a| a.at.duration_since(t0).as_millis())
        .collect();
    at.sort_unstable();
    at
}

/// Starts `n` concurrent reads (`c0`, `c1`, …) and waits for all; each must succeed.
async fn reads_all_ok(client: &AmeideClient, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { read_as(&client, &format!("c{i}"), None).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().0, Code::Ok);
    }
}

/// Starts a read with request id `id` and lets it take its place before returning.
async fn started(
    client: &AmeideClient,
    id: &'static str,
) -> tokio::task::JoinHandle<(Code, Duration)> {
    let call = {
        let client = client.clone();
        tokio::spawn(async move { read_as(&client, id, None).await })
    };
    tokio::task::yield_now().await;
    call
}

/// `server` answers every read not otherwise scripted after `reply_after`; the
/// client in front of it has the in-flight `limit`.
fn limited(
    server: &MockServer,
    reply_after: Duration,
    limit: Option<InFlightLimit>,
) -> AmeideClient {
    server.fallback(Reply::ok().after(reply_after));
    mock_client(server).in_flight_limit(limit).build().unwrap()
}

/// A client with one place (`max_wait_ms`), whose place is taken by a read
/// `"slow"` the server answers after `slow`; every other read is answered at once.
async fn behind_a_slow_call(
    slow: Duration,
    max_wait_ms: u64,
    timeout: Duration,
) -> (
    MockServer,
    AmeideClient,
    tokio::task::JoinHandle<(Code, Duration)>,
) {
    let server = MockServer::new();
    server.push_for_request(paths::LIST_REPOSITORIES, "slow", Reply::ok().after(slow));
    server.fallback(Reply::ok());
    let client = mock_client(&server)
        .timeout(timeout)
        .in_flight_limit(limit(1, max_wait_ms))
        .build()
        .unwrap();
    let call = started(&client, "slow").await;
    (server, client, call)
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_limit_arrive_at_once_and_the_rest_follow_in_order() {
    let server = MockServer::new();
    let client = limited(&server, Duration::from_millis(100), limit(2, 50));
    let t0 = Instant::now();
    reads_all_ok(&client, 6).await;
    // Two at a time, 100 ms each: three waves.
    assert_eq!(arrivals_ms(&server, t0), [0, 0, 100, 100, 200, 200]);
}

#[tokio::test(start_paused = true)]
async fn without_a_limit_every_call_arrives_at_once() {
    let server = MockServer::new();
    let client = limited(&server, Duration::from_millis(100), None);
    let t0 = Instant::now();
    reads_all_ok(&client, 300).await;
    assert!(arrivals_ms(&server, t0).iter().all(|&ms| ms == 0));
}

#[tokio::test(start_paused = true)]
async fn no_limit_by_default() {
    let server = MockServer::new();
    server.fallback(Reply::ok().after(Duration::from_millis(100)));
    let client = mock_client(&server).build().unwrap();
    let t0 = Instant::now();
    reads_all_ok(&client, 300).await;
    assert!(arrivals_ms(&server, t0).iter().all(|&ms| ms == 0));
}

#[tokio::test(start_paused = true)]
async fn the_documented_limit_is_128_calls() {
    let server = MockServer::new();
    server.fallback(Reply::ok().after(Duration::from_millis(100)));
    let client = mock_client(&server)
        .in_flight_limit(Some(ameide_sdk::InFlightLimit::DEFAULT))
        .build()
        .unwrap();
    let t0 = Instant::now();
    reads_all_ok(&client, 300).await;
    let at = arrivals_ms(&server, t0);
    for (wave, ms) in [(0, 0), (1, 100), (2, 200)] {
        let n = at.iter().filter(|&&a| a == ms).count();
        assert_eq!(n, [128, 128, 44][wave], "wave at {ms} ms: {at:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waited_sends_what_is_left_of_its_deadline() {
    // The 300 ms wait ends in the first part (before the call is built) with
    // a 500 ms max_wait, in the second part with a 50 ms one.
    for max_wait_ms in [500, 50] {
        waited_then_sent(max_wait_ms).await;
    }
}

async fn waited_then_sent(max_wait_ms: u64) {
    let (server, client, first) = behind_a_slow_call(
        Duration::from_millis(300),
        max_wait_ms,
        Duration::from_secs(2),
    )
    .await;
    let (code, took) = read_as(&client, "second", None).await;
    assert_eq!(code, Code::Ok);
    assert_eq!(first.await.unwrap().0, Code::Ok);
    assert_eq!(took, Duration::from_millis(300));
    let second = server
        .attempts()
        .into_iter()
        .find(|a| a.header("x-request-id") == Some("second"))
        .unwrap();
    // 2 s budget, 300 ms of it spent in line.
    assert_eq!(
        grpc_timeout(second.header("grpc-timeout").unwrap()),
        Duration::from_millis(1700),
        "max_wait {max_wait_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_deadline_passes_in_line_fails_on_time_unsent() {
    let (server, client, slow) =
        behind_a_slow_call(Duration::from_secs(1), 50, Duration::from_secs(5)).await;

    // Longer than the first wait: the deadline holds exactly.
    let (code, took) = read_as(&client, "patient", Some(Duration::from_millis(300))).await;
    assert_eq!(
        (code, took),
        (Code::DeadlineExceeded, Duration::from_millis(300))
    );

    // Shorter than the first wait (its timeout is unknown until the call is
    // built): it ends when the first wait does, the documented bound.
    let (code, took) = read_as(&client, "hasty", Some(Duration::from_millis(20))).await;
    assert_eq!(
        (code, took),
        (Code::DeadlineExceeded, Duration::from_millis(50))
    );

    assert_eq!(slow.await.unwrap().0, Code::Ok);
    let sent: Vec<String> = server
        .attempts()
        .iter()
        .filter_map(|a| a.header("x-request-id").map(str::to_owned))
        .collect();
    assert_eq!(
        sent,
        ["slow"],
        "calls that ran out of time in line are never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_of_a_call_that_ran_out_of_time_in_line_names_it() {
    let server = MockServer::new();
    let client = limited(&server, Duration::from_secs(1), limit(1, 50));
    let slow = started(&client, "slow").await;
    let request = CallOptions::new()
        .request_id("in-line")
        .timeout(Duration::from_millis(200))
        .into_request(ListRepositoriesRequest::default())
        .unwrap();
    let err = client
        .graph()
        .list_repositories(request)
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(err.request_id(), Some("in-line"));
    assert_eq!(err.attempts(), 0, "{err}");
    assert_eq!(err.elapsed(), Some(Duration::from_millis(200)), "{err}");
    slow.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_long_stream_keeps_no_place() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(tokens(["t0", "t1"])).every(Duration::from_secs(2)),
    );
    let client = limited(&server, Duration::from_millis(10), limit(1, 50));
    let mut stream = generate(&client).await;
    assert_eq!(stream.next().await.unwrap().unwrap().token, "t0");
    // The stream stays open two more seconds; unary calls do not wait for it.
    for i in 0..3 {
        let (code, took) = read_as(&client, &format!("r{i}"), None).await;
        assert_eq!((code, took), (Code::Ok, Duration::from_millis(10)));
    }
    assert_eq!(stream.next().await.unwrap().unwrap().token, "t1");
}

#[tokio::test(start_paused = true)]
async fn a_stream_behind_a_full_limit_waits_at_most_max_wait() {
    let server = MockServer::new();
    server.push(paths::GENERATE, Reply::messages(tokens(["t0"])));
    let client = limited(&server, Duration::from_secs(1), limit(1, 50));
    let slow = started(&client, "slow").await;
    let t0 = Instant::now();
    let mut stream = generate(&client).await;
    assert_eq!(stream.next().await.unwrap().unwrap().token, "t0");
    assert_eq!(t0.elapsed(), Duration::from_millis(50));
    assert_eq!(slow.await.unwrap().0, Code::Ok);
}

#[tokio::test(start_paused = true)]
async fn many_callers_behind_a_small_limit_all_finish() {
    let server = MockServer::new();
    let client = limited(&server, Duration::from_millis(1), limit(3, 1));
    let t0 = Instant::now();
    reads_all_ok(&client, 1500).await;
    let at = arrivals_ms(&server, t0);
    assert_eq!(at.len(), 1500);
    // Never more than three in any millisecond (each call takes one).
    let mut per_ms = std::collections::BTreeMap::new();
    for ms in at {
        *per_ms.entry(ms).or_insert(0) += 1;
    }
    assert!(per_ms.values().all(|&n| n <= 3), "{per_ms:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_in_line_gives_its_place_back() {
    let (server, client, slow) =
        behind_a_slow_call(Duration::from_millis(300), 50, Duration::from_secs(5)).await;
    // Given up by its caller in both parts of the wait.
    for ms in [20, 200] {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(ms), read_as(&client, "dropped", None))
                .await;
        assert!(gave_up.is_err());
    }
    assert_eq!(slow.await.unwrap().0, Code::Ok);
    let (code, took) = read_as(&client, "next", None).await;
    assert_eq!((code, took), (Code::Ok, Duration::ZERO));
    assert!(
        server
            .attempts()
            .iter()
            .all(|a| a.header("x-request-id") != Some("dropped"))
    );
}

#[tokio::test]
async fn a_limit_out_of_range_is_a_config_error_naming_it() {
    for (bad, names) in [
        (limit(0, 50), "max_calls 0"),
        (limit(InFlightLimit::MAX_CALLS + 1, 50), "max_calls"),
        (limit(8, 0), "max_wait 0ns"),
        (limit(8, 1001), "max_wait 1.001s"),
    ] {
        let err = AmeideClient::builder()
            .endpoint("http://127.0.0.1:50051")
            .in_flight_limit(bad)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Limit, "{err}");
        assert!(err.to_string().contains(names), "{err}");
    }
}
