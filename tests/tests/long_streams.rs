//! Long-lived streams on purpose (issue 17): a stream runs without the
//! whole-call deadline when the caller asks for it, guarded by an idle
//! timeout; on tokio's paused clock, over the in-memory HTTP/2 transport.

use std::time::Duration;

use ameide_sdk::proto::inference::v1::{GenerateRequest, GenerateResponse};
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{AmeideClient, CallOptions, Error};
use ameide_tests::calls::tokens;
use ameide_tests::{mock_client, paths};
use futures_util::StreamExt;
use tokio::time::Instant;
use tonic::Code;

/// A Generate stream read to its end: the tokens that arrived, the error
/// that ended it (if one did), and when, on tokio's clock.
async fn read_generate(
    client: &AmeideClient,
    options: CallOptions,
) -> (Vec<GenerateResponse>, Option<Error>, Duration) {
    let started = Instant::now();
    let request = options.into_request(GenerateRequest::default()).unwrap();
    let mut stream = match client.inference().generate(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status.into()), started.elapsed()),
    };
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(token) => got.push(token),
            Err(status) => return (got, Some(status.into()), started.elapsed()),
        }
    }
    (got, None, started.elapsed())
}

fn minutes_of_tokens(count: usize) -> Vec<bytes::Bytes> {
    let texts: Vec<String> = (0..count).map(|i| format!("t{i}")).collect();
    tokens(texts.iter().map(String::as_str))
}

#[tokio::test(start_paused = true)]
async fn the_default_still_cuts_a_stream_at_the_whole_call_timeout() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(40)).every(Duration::from_secs(1)),
    );
    let client = mock_client(&server).build().unwrap();
    let (got, err, took) = read_generate(&client, CallOptions::new()).await;
    let err = err.expect("cut at 5 s");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(!err.message().contains("idle"), "{err}");
    assert_eq!(took, Duration::from_secs(5));
    assert_eq!(got.len(), 5, "tokens at 0..=4 s");
}

#[tokio::test(start_paused = true)]
async fn a_per_call_idle_timeout_lets_a_stream_run_for_minutes() {
    let server = MockServer::new();
    // 40 tokens, one every 5 s: 195 s of streaming, every gap under the 10 s idle timeout.
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(40)).every(Duration::from_secs(5)),
    );
    let client = mock_client(&server).build().unwrap();
    let options = CallOptions::new().idle_timeout(Duration::from_secs(10));
    let (got, err, took) = read_generate(&client, options).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 40);
    assert_eq!(took, Duration::from_secs(195));
    // On the wire: no grpc-timeout, so the server does not cut it either.
    let sent = &server.attempts()[0];
    assert_eq!(sent.header("grpc-timeout"), None, "{:?}", sent.headers);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_ends_the_stream_at_the_idle_timeout() {
    let server = MockServer::new();
    // Tokens 2 s apart; a 1.5 s idle timeout sees the server go silent after the first.
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(3)).every(Duration::from_secs(2)),
    );
    let client = mock_client(&server).build().unwrap();
    let options = CallOptions::new().idle_timeout(Duration::from_millis(1500));
    let (got, err, took) = read_generate(&client, options).await;
    let err = err.expect("ended by the idle timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.message().contains("idle timeout"), "{err}");
    assert!(err.message().contains("1.5s"), "{err}");
    assert!(err.request_id().is_some(), "{err}");
    assert_eq!(got.len(), 1, "the second token comes 2 s later");
    assert_eq!(
        took,
        Duration::from_millis(1500),
        "promptly at the idle timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_silent_before_its_headers_hits_the_idle_timeout() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(1)).after(Duration::from_secs(600)),
    );
    let client = mock_client(&server).build().unwrap();
    let options = CallOptions::new().idle_timeout(Duration::from_secs(20));
    let (_, err, took) = read_generate(&client, options).await;
    let err = err.expect("no headers within 20 s");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.message().contains("idle timeout"), "{err}");
    assert_eq!(took, Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn an_explicit_timeout_still_applies_beside_the_idle_timeout() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(40)).every(Duration::from_secs(1)),
    );
    let client = mock_client(&server).build().unwrap();
    let options = CallOptions::new()
        .idle_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(12));
    let (got, err, took) = read_generate(&client, options).await;
    let err = err.expect("cut at the 12 s timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(!err.message().contains("idle"), "{err}");
    assert_eq!(took, Duration::from_secs(12));
    assert_eq!(got.len(), 12);
    let sent = server.attempts()[0]
        .header("grpc-timeout")
        .map(ameide_tests::grpc_timeout);
    assert!(
        sent.is_some_and(|t| t <= Duration::from_secs(12) && t > Duration::from_millis(11_900)),
        "{sent:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_client_stream_idle_timeout_frees_streams_but_not_unary_calls() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(30)).every(Duration::from_secs(4)),
    );
    let client = mock_client(&server)
        .stream_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (got, err, took) = read_generate(&client, CallOptions::new()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 30);
    assert_eq!(took, Duration::from_secs(116));

    // A unary call keeps the 5 s whole-call timeout.
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::ok().after(Duration::from_secs(60)),
    );
    let started = Instant::now();
    let err = ameide_tests::calls::read(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let sent = server.attempts_for(paths::LIST_REPOSITORIES)[0]
        .header("grpc-timeout")
        .is_some();
    assert!(sent);

    // A stream with its own per-call timeout keeps it.
    server.push(
        paths::GENERATE,
        Reply::messages(minutes_of_tokens(30)).every(Duration::from_secs(1)),
    );
    let (_, err, took) =
        read_generate(&client, CallOptions::new().timeout(Duration::from_secs(3))).await;
    assert_eq!(err.map(|e| e.code()), Some(Code::DeadlineExceeded));
    assert_eq!(took, Duration::from_secs(3));
}
