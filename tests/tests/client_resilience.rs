//! Beyond the contract: server retry hints, safe-retry mode, attempt history,
//! retry throttling. Paused clock, scripted server, on the wire.

use std::time::Duration;

use ameide_sdk::layers::{RetryPolicy, ThrottleConfig};
use ameide_sdk::proto::graph::v1::{
    CreateElementRequest, ListRepositoriesRequest, UpdateElementRequest,
};
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{AmeideClient, CallOptions, IntoAmeideResult, StopReason};
use ameide_tests::{fixed_jitter, mock_client, paths};
use tonic::{Code, Status};

const UPDATE_ELEMENT: &str = "/ameide_core_proto.graph.v1.GraphService/UpdateElement";

fn gaps(server: &MockServer, path: &str) -> Vec<u128> {
    let at: Vec<_> = server.attempts_for(path).iter().map(|a| a.at).collect();
    at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
}

#[tokio::test(start_paused = true)]
async fn pushback_waits_exactly_that_long_and_resets_the_backoff() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("busy")).header("grpc-retry-pushback-ms", "1000"),
    );
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("busy")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = mock_client(&server)
        .timeout(Duration::from_secs(10))
        .retry_layer(fixed_jitter(1.0))
        .build()
        .unwrap();
    ameide_tests::calls::read(&client).await.unwrap();
    assert_eq!(
        gaps(&server, paths::LIST_REPOSITORIES),
        [1000, 250],
        "exactly the pushback, then the backoff from the start"
    );
}

#[tokio::test(start_paused = true)]
async fn a_negative_or_malformed_pushback_means_do_not_retry() {
    for value in ["-1", "soon", ""] {
        let server = MockServer::new();
        server.fallback(
            Reply::status(Status::unavailable("go away")).header("grpc-retry-pushback-ms", value),
        );
        let client = mock_client(&server).build().unwrap();
        let err = ameide_tests::calls::read(&client).await.unwrap_err();
        assert_eq!(server.attempts().len(), 1, "pushback {value:?}");
        assert_eq!(
            err.stop_reason(),
            Some(StopReason::PushbackSaidNo),
            "pushback {value:?}: {err}"
        );
        assert_eq!(err.code(), Code::Unavailable);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_info_sets_a_minimum_delay() {
    use tonic_types::{ErrorDetails, StatusExt};
    let server = MockServer::new();
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(Duration::from_secs(2)));
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::with_error_details(
            Code::ResourceExhausted,
            "quota",
            details,
        )),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = mock_client(&server)
        .retry_layer(fixed_jitter(1.0))
        .build()
        .unwrap();
    ameide_tests::calls::read(&client).await.unwrap();
    assert_eq!(
        gaps(&server, paths::LIST_REPOSITORIES),
        [2000],
        "RetryInfo's 2 s beats the 250 ms backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_that_outlives_the_deadline_fails_at_once_with_the_last_status() {
    let server = MockServer::new();
    server.fallback(
        Reply::status(Status::unavailable("come back later"))
            .header("grpc-retry-pushback-ms", "5000"),
    );
    let client = mock_client(&server)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = ameide_tests::calls::read(&client).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO, "no sleep at all");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "come back later");
    assert_eq!(err.stop_reason(), Some(StopReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn safe_mode_retries_aborted_only_for_idempotent_methods() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::aborted("conflict")));
    // Throttling off: this test is about safe mode alone (five failed calls
    // would otherwise, rightly, drain the bucket).
    let safe = mock_client(&server)
        .retry_policy(
            RetryPolicy::default()
                .with_throttling(None)
                .with_safe_retries(true),
        )
        .build()
        .unwrap();
    let err = ameide_tests::calls::write(&safe).await.unwrap_err();
    assert_eq!(
        server.attempts_for(paths::CREATE_ELEMENT).len(),
        1,
        "CreateElement may have side effects"
    );
    assert_eq!(err.stop_reason(), Some(StopReason::NotRetryable));
    let _ = safe
        .graph()
        .update_element(UpdateElementRequest::default())
        .await;
    assert_eq!(
        server.attempts_for(UPDATE_ELEMENT).len(),
        3,
        "UpdateElement is IDEMPOTENT"
    );
    let _ = safe
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await;
    assert_eq!(
        server.attempts_for(paths::LIST_REPOSITORIES).len(),
        3,
        "ListRepositories has NO_SIDE_EFFECTS"
    );

    server.clear_attempts();
    let default = mock_client(&server)
        .retry_policy(RetryPolicy::default().with_throttling(None))
        .build()
        .unwrap();
    let _ = default
        .graph()
        .create_element(CreateElementRequest::default())
        .await;
    assert_eq!(
        server.attempts_for(paths::CREATE_ELEMENT).len(),
        3,
        "the contract default retries every method"
    );
}

#[tokio::test(start_paused = true)]
async fn safe_mode_does_not_repeat_a_write_the_server_answered_unavailable_or_deadline() {
    for status in [
        Status::unavailable("backend down"),
        Status::deadline_exceeded("upstream slow"),
    ] {
        let server = MockServer::new();
        server.fallback(Reply::status(status.clone()));
        let client = mock_client(&server).safe_retries(true).build().unwrap();
        let _ = client
            .graph()
            .create_element(CreateElementRequest::default())
            .await;
        assert_eq!(
            server.attempts().len(),
            1,
            "{:?} on a non-idempotent write",
            status.code()
        );
    }
}

#[tokio::test]
async fn safe_mode_still_retries_unavailable_before_the_request_left_the_client() {
    let client = ameide_sdk::AmeideClient::builder()
        .endpoint(format!("http://{}", ameide_tests::closed_addr()))
        .retry_policy(
            RetryPolicy::default()
                .with_safe_retries(true)
                .with_initial_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let err = ameide_tests::calls::write(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.attempts(),
        3,
        "a refused connection never reached the server: safe to retry: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn safe_mode_is_selectable_per_call() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::aborted("conflict")));
    let client = mock_client(&server).build().unwrap();
    let request = CallOptions::new()
        .safe_retries(true)
        .into_request(CreateElementRequest::default())
        .unwrap();
    let _ = client.graph().create_element(request).await;
    assert_eq!(
        server.attempts().len(),
        1,
        "per-call safe mode on a default client"
    );
    let safe_client = mock_client(&server).safe_retries(true).build().unwrap();
    server.clear_attempts();
    let request = CallOptions::new()
        .safe_retries(false)
        .into_request(CreateElementRequest::default())
        .unwrap();
    let _ = safe_client.graph().create_element(request).await;
    assert_eq!(
        server.attempts().len(),
        3,
        "per-call opt-out on a safe client"
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_carries_every_attempt_and_why_the_loop_stopped() {
    let server = MockServer::new();
    for n in 1..=3 {
        server.push(
            paths::LIST_REPOSITORIES,
            Reply::status(Status::unavailable(format!("down, try {n}"))),
        );
    }
    let client = mock_client(&server)
        .retry_layer(fixed_jitter(1.0))
        .build()
        .unwrap();
    let err = ameide_tests::calls::read(&client).await.unwrap_err();
    let history = err.history();
    assert_eq!(history.len(), 3);
    assert_eq!(
        history
            .iter()
            .map(|h| h.message.as_str())
            .collect::<Vec<_>>(),
        ["down, try 1", "down, try 2", "down, try 3"]
    );
    assert_eq!(
        history
            .iter()
            .map(|h| h.delay_before.as_millis())
            .collect::<Vec<_>>(),
        [0, 250, 500]
    );
    assert!(history.iter().all(|h| h.code == Code::Unavailable));
    assert_eq!(err.stop_reason(), Some(StopReason::Exhausted));
    let shown = err.to_string();
    assert!(
        shown.contains(
            "attempts=3 (UNAVAILABLE → +250ms UNAVAILABLE → +500ms UNAVAILABLE), stopped: exhausted"
        ),
        "{shown}"
    );
    assert!(!shown.contains('\n'));
}

fn throttled_policy() -> RetryPolicy {
    RetryPolicy::default().with_throttling(Some(ThrottleConfig {
        max_tokens: 4.0,
        token_ratio: 0.5,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_do_not_spend_the_retry_throttle() {
    // Connection refused on every attempt: no server answered, so nothing is
    // charged and every call keeps its full retry policy (issue 14: a deploy's
    // closing connections ran the bucket dry).
    let addr = ameide_tests::closed_addr();
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .timeout(std::time::Duration::from_secs(2))
        .retry_policy(
            throttled_policy()
                .with_initial_backoff(std::time::Duration::from_millis(2))
                .with_max_backoff(std::time::Duration::from_millis(4)),
        )
        .build()
        .unwrap();
    // Each attempt's request waits for connects until the next one would
    // start past the deadline (transparent, no policy attempt); the policy
    // then retries what is left, if anything is. A charged bucket (4 tokens,
    // retries need more than 2) would stop the third call's retries as
    // "throttled"; transport failures never get there.
    for n in 0..5 {
        let err = ameide_tests::calls::read(&client).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "call {n}: {err}");
        assert!(
            matches!(
                err.stop_reason(),
                Some(StopReason::Exhausted | StopReason::Deadline)
            ),
            "call {n}: {err}"
        );
        assert!(
            err.message().contains("TCP connect failed"),
            "call {n}: {err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_stops_retries_when_the_target_keeps_failing_and_recovers_on_success() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::unavailable("down")));
    let client = mock_client(&server)
        .retry_policy(throttled_policy())
        .build()
        .unwrap();
    // 4 tokens: the first failure leaves 3 (> 2, retry), the second 2 (not > 2): throttled.
    let err = ameide_tests::calls::read(&client).await.unwrap_err();
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.stop_reason(), Some(StopReason::Throttled));
    // A clone shares the bucket: no retry at all now.
    let err = client
        .clone()
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(err.stop_reason(), Some(StopReason::Throttled));
    // Successes refill it (0.5 each): 1 + 5 × 0.5 = 3.5, so a failure leaves
    // 2.5 (> 2) and one retry is allowed again.
    server.fallback(Reply::ok());
    for _ in 0..5 {
        ameide_tests::calls::read(&client).await.unwrap();
    }
    server.fallback(Reply::status(Status::unavailable("down again")));
    server.clear_attempts();
    let _ = client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await;
    assert_eq!(
        server.attempts().len(),
        2,
        "one retry is allowed again after the refill"
    );
}

#[tokio::test(start_paused = true)]
async fn clients_built_separately_for_one_target_share_the_bucket_and_throttling_can_be_off() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::unavailable("down")));
    let target = "http://shared-target.test:9000";
    let build = |policy: RetryPolicy| {
        ameide_sdk::AmeideClient::builder()
            .endpoint(target)
            .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
            .retry_policy(policy)
            .build()
            .unwrap()
    };
    let first = build(throttled_policy());
    let second = build(throttled_policy());
    let _ = first
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await;
    server.clear_attempts();
    let err = ameide_tests::calls::read(&second).await.unwrap_err();
    assert_eq!(
        err.stop_reason(),
        Some(StopReason::Throttled),
        "the second client sees the first client's failures"
    );
    assert_eq!(server.attempts().len(), 1);

    let unthrottled = build(RetryPolicy::default().with_throttling(None));
    server.clear_attempts();
    let err = ameide_tests::calls::read(&unthrottled).await.unwrap_err();
    assert_eq!(
        err.attempts(),
        3,
        "switched off: the contract's plain retry"
    );
    assert_eq!(err.stop_reason(), Some(StopReason::Exhausted));
}
