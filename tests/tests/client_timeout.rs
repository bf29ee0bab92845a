//! Contract §4 timeout: one deadline for the whole call, all attempts and the
//! stream included, on the wire as `grpc-timeout`, expiring as DEADLINE_EXCEEDED.

use std::time::Duration;

use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{CallOptions, IntoAmeideResult};
use ameide_tests::calls::{generate, tokens};
use ameide_tests::{fixed_jitter, grpc_timeout, mock_client, paths};
use futures_util::StreamExt;
use tokio::time::Instant;
use tonic::{Code, Status};

fn list() -> ameide_sdk::proto::graph::v1::ListRepositoriesRequest {
    Default::default()
}

#[tokio::test(start_paused = true)]
async fn default_timeout_is_five_seconds_on_the_wire() {
    let server = MockServer::new();
    mock_client(&server)
        .build()
        .unwrap()
        .graph()
        .list_repositories(list())
        .await
        .unwrap();
    let sent = grpc_timeout(server.attempts()[0].header("grpc-timeout").unwrap());
    assert!(
        sent <= Duration::from_secs(5) && sent > Duration::from_millis(4990),
        "{sent:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_spans_retries_and_grpc_timeout_shrinks_per_attempt() {
    let server = MockServer::new();
    server.fallback(
        Reply::status(Status::unavailable("slow and down")).after(Duration::from_millis(400)),
    );
    let client = mock_client(&server)
        .timeout(Duration::from_secs(2))
        .retry_layer(fixed_jitter(1.0))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.attempts(), 3);

    let attempts = server.attempts();
    // Arrivals: 0, 400 + 250, 1050 + 500 ms; each grpc-timeout is the budget left then.
    let expected_left = [2000, 1350, 450];
    for (attempt, left_ms) in attempts.iter().zip(expected_left) {
        let sent = grpc_timeout(attempt.header("grpc-timeout").unwrap());
        let left = Duration::from_secs(2) - (attempt.at - started);
        assert!(
            sent <= left + Duration::from_millis(1),
            "sent {sent:?} > left {left:?}"
        );
        assert_eq!(left.as_millis(), left_ms);
        assert!(
            sent + Duration::from_millis(5) >= left,
            "sent {sent:?} far below left {left:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn expiry_is_deadline_exceeded_not_cancelled_and_ends_on_time() {
    let server = MockServer::new();
    server.fallback(Reply::ok().after(Duration::from_secs(10)));
    let client = mock_client(&server)
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
    assert_eq!(server.attempts().len(), 1);
    assert!(err.is_retryable(), "a later call may succeed");
}

#[tokio::test(start_paused = true)]
async fn backoff_never_sleeps_past_the_deadline() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::unavailable("down")).after(Duration::from_millis(400)));
    let client = mock_client(&server)
        .timeout(Duration::from_millis(500))
        .retry_layer(fixed_jitter(1.0))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "the last real status, not a synthetic timeout"
    );
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(400),
        "failed at once instead of sleeping"
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_from_the_server_is_retried_while_budget_remains() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::deadline_exceeded("upstream slow")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = mock_client(&server).build().unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    assert_eq!(server.attempts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_cut_with_deadline_exceeded_when_the_budget_runs_out() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(tokens(["a", "b", "c", "d", "e"])).every(Duration::from_millis(400)),
    );
    let client = mock_client(&server)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut stream = generate(&client).await;
    let mut got = String::new();
    let err = loop {
        match stream.next().await {
            Some(Ok(message)) => got.push_str(&message.token),
            Some(Err(status)) => break ameide_sdk::Error::from(status),
            None => panic!("the stream outlived its deadline"),
        }
    };
    assert_eq!(
        got, "abc",
        "messages at 0, 400 and 800 ms arrive; 1200 ms is too late"
    );
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(
        err.request_id().is_some(),
        "stream errors are stamped too: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn per_call_timeout_overrides_the_client_default_both_ways() {
    let server = MockServer::new();
    let client = mock_client(&server)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let request = CallOptions::new()
        .timeout(Duration::from_millis(750))
        .into_request(list())
        .unwrap();
    client.graph().list_repositories(request).await.unwrap();
    let mut request = tonic::Request::new(list());
    request.set_timeout(Duration::from_secs(30));
    client.graph().list_repositories(request).await.unwrap();
    let attempts = server.attempts();
    assert_eq!(
        grpc_timeout(attempts[0].header("grpc-timeout").unwrap()),
        Duration::from_millis(750)
    );
    assert_eq!(
        grpc_timeout(attempts[1].header("grpc-timeout").unwrap()),
        Duration::from_secs(30)
    );
}
