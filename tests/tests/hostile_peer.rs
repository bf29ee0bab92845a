//! Hostile peers: servers and proxies that send values at (and past) the edge
//! of what their formats allow. Every call ends with a clear status before its
//! deadline, and nothing panics: not the call, and not a task the SDK or its
//! transport spawned (a panic hook records every panic outside this file).

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::testkit::{H2FaultServer, RawReply, RawTcpServer};
use ameide_sdk::{AmeideClient, Error, IntoAmeideResult, StopReason, TransportOptions};
use prost::Message;
use tonic::Code;

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic that does not come from an assertion in this file.
fn watch_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let here = info
                .location()
                .is_some_and(|l| l.file().ends_with("hostile_peer.rs"));
            if !here {
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            previous(info);
        }));
    });
}

fn assert_no_panics() {
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(panics.is_empty(), "panics outside the test: {panics:#?}");
}

const BUDGET: Duration = Duration::from_millis(800);
/// How late a call may end: scheduling on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

fn client(server: &H2FaultServer, policy: RetryPolicy) -> AmeideClient {
    client_with(server, policy, TransportOptions::default())
}

fn client_with(
    server: &H2FaultServer,
    policy: RetryPolicy,
    options: TransportOptions,
) -> AmeideClient {
    AmeideClient::builder()
        .endpoint(server.endpoint())
        .timeout(BUDGET)
        .retry_policy(policy.with_throttling(None))
        .transport_options(options)
        .build()
        .unwrap()
}

async fn call(client: &AmeideClient) -> (Result<(), Error>, Duration) {
    let started = Instant::now();
    let result = client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .map(|_| ());
    (result, started.elapsed())
}

/// One reply, one call with retries off: the expected code, by the deadline,
/// with the SDK's facts attached.
async fn expect(reply: RawReply, code: Code) -> Error {
    let err = expect_any(reply).await;
    assert_eq!(err.code(), code, "{err}");
    assert!(
        err.request_id().is_some(),
        "the SDK's facts are attached: {err}"
    );
    err
}

/// One reply, one call with retries off: an error by the deadline, in one
/// line. The SDK checks the framing below tonic (see `ameide_sdk::codec`);
/// what only tonic finds (a message that is not the response type) gets the
/// SDK's facts through the generated client's stamp.
async fn expect_any(reply: RawReply) -> Error {
    expect_any_with(reply, TransportOptions::default()).await
}

/// [`expect_any`] with other transport options.
async fn expect_any_with(reply: RawReply, options: TransportOptions) -> Error {
    watch_panics();
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(reply);
    let client = client_with(&server, RetryPolicy::disabled(), options);
    let (result, took) = call(&client).await;
    let err = result.expect_err("a hostile reply is an error");
    assert!(took < BUDGET + SLACK, "took {took:?}: {err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    assert_no_panics();
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_values_that_are_not_codes_are_unknown_or_malformed() {
    // Numbers that are no code: UNKNOWN, the peer's message kept.
    for value in ["-1", "17", "2147483647"] {
        let reply = RawReply::grpc()
            .header("grpc-status", value)
            .header("grpc-message", "odd status")
            .trailers_only();
        let err = expect(reply, Code::Unknown).await;
        assert_eq!(err.message(), "odd status", "{value:?}");
    }
    // Not a number (a 32-bit one): a malformed status, INTERNAL, as grpc-go
    // and gRPC core say; the value and the peer's message both named.
    for value in ["abc", "99999999999999999999", "", "1 4", "0x0e"] {
        let reply = RawReply::grpc()
            .header("grpc-status", value)
            .header("grpc-message", "odd status")
            .trailers_only();
        let err = expect(reply, Code::Internal).await;
        assert_eq!(
            err.message(),
            format!("malformed grpc-status {value:?}: not a status code (its message: odd status)"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_message_that_is_not_utf8_or_not_percent_encoding_is_kept_lossily() {
    let reply = RawReply::grpc()
        .header("grpc-status", "5")
        .header("grpc-message", b"missing %ZZ %FF \xff\xfe end")
        .trailers_only();
    let err = expect(reply, Code::NotFound).await;
    assert_eq!(err.message(), "missing %ZZ \u{fffd} \u{fffd}\u{fffd} end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_that_are_not_base64_are_dropped_with_a_reason_not_a_panic() {
    // In a trailers-only failure…
    let reply = RawReply::grpc()
        .header("grpc-status", "9")
        .header("grpc-message", "precondition")
        .header("grpc-status-details-bin", "%%% not base64 %%%")
        .trailers_only();
    let err = expect(reply, Code::FailedPrecondition).await;
    assert!(err.details().is_empty());
    assert!(err.details_error().unwrap().contains("base64"), "{err}");
    assert!(err.to_string().contains("not base64"), "{err}");

    // …and in the trailers after a message.
    let reply = RawReply::grpc()
        .message(&[])
        .trailer("grpc-status", "10")
        .trailer("grpc-status-details-bin", "??");
    let err = expect(reply, Code::Aborted).await;
    assert!(err.details_error().is_some(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_trailers_with_garbled_details_still_succeed() {
    // tonic 0.14's own trailer parser panics on exactly this response.
    watch_panics();
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(
        RawReply::grpc()
            .message(&[])
            .trailer("grpc-status", "0")
            .trailer("grpc-status-details-bin", "!!!"),
    );
    let client = client(&server, RetryPolicy::disabled());
    let (result, _) = call(&client).await;
    result.expect("an OK call succeeds whatever else its trailers hold");
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_that_are_base64_but_not_a_status_are_reported() {
    let reply = RawReply::grpc()
        .header("grpc-status", "13")
        .header("grpc-status-details-bin", "////////")
        .trailers_only();
    let err = expect(reply, Code::Internal).await;
    assert!(err.details_error().is_some(), "{err}");
}

/// A `google.rpc.Status` with a RetryInfo of `seconds`/`nanos`, base64.
fn retry_info_details(seconds: i64, nanos: i32) -> String {
    use base64::Engine as _;
    let info = tonic_types::pb::RetryInfo {
        retry_delay: Some(ameide_sdk::prost_types::Duration { seconds, nanos }),
    };
    let status = tonic_types::pb::Status {
        code: 14,
        message: "later".into(),
        details: vec![ameide_sdk::prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    base64::engine::general_purpose::STANDARD.encode(status.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_hints_at_the_extremes_never_outlive_the_deadline() {
    watch_panics();
    let hints: Vec<(&str, String)> = vec![
        ("grpc-retry-pushback-ms", i64::MAX.to_string()),
        ("grpc-retry-pushback-ms", "99999999999999999999999".into()),
        ("grpc-retry-pushback-ms", "-9223372036854775808".into()),
        ("grpc-retry-pushback-ms", "1e9".into()),
        (
            "grpc-status-details-bin",
            retry_info_details(i64::MAX, 999_999_999),
        ),
        (
            "grpc-status-details-bin",
            retry_info_details(315_576_000_000, 999_999_999),
        ),
        (
            "grpc-status-details-bin",
            retry_info_details(i64::MIN, -999_999_999),
        ),
        ("grpc-status-details-bin", retry_info_details(0, i32::MAX)),
    ];
    for (name, value) in hints {
        let server = H2FaultServer::start().await.unwrap();
        for _ in 0..3 {
            server.push_reply(
                RawReply::grpc()
                    .header("grpc-status", "14")
                    .header("grpc-message", "later")
                    .header(name, &value)
                    .trailers_only(),
            );
        }
        // Short backoffs, so the policy's own delays never race the 800 ms
        // deadline: only the peer's hint can push a retry past it.
        let policy = RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(20));
        let client = client(&server, policy);
        let (result, took) = call(&client).await;
        let err = result.expect_err("UNAVAILABLE every time");
        assert_eq!(err.code(), Code::Unavailable, "{name}={value}: {err}");
        assert!(
            took < BUDGET + SLACK,
            "{name}={value}: took {took:?}: {err}"
        );
        assert!(
            matches!(
                err.stop_reason(),
                Some(StopReason::Deadline | StopReason::PushbackSaidNo | StopReason::Exhausted)
            ),
            "{name}={value}: {err}"
        );
    }
    assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_error_page_is_an_error_not_a_hang() {
    let page = RawReply::new(502)
        .header("content-type", "text/html")
        .data("<html><body><h1>502 Bad Gateway</h1></body></html>");
    // Mapped by its HTTP status before any body byte is decoded (contract §8).
    let err = expect(page, Code::Unavailable).await;
    assert!(err.message().contains("HTTP 502"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_frames_are_clear_errors_with_the_request_id() {
    // A compression flag that is neither 0 nor 1 (an HTML page's '<' is 60).
    let err = expect(
        RawReply::grpc()
            .data(b"<html>bad gateway</html>".to_vec())
            .trailer("grpc-status", "0"),
        Code::Internal,
    )
    .await;
    assert!(err.message().contains("compression flag 60"), "{err}");
    // A length prefix far past the 4 MiB receive limit.
    let err = expect(
        RawReply::grpc()
            .data(vec![0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .trailer("grpc-status", "0"),
        Code::ResourceExhausted,
    )
    .await;
    assert!(err.message().contains("4294967295 bytes"), "{err}");
    // A frame cut short, then OK trailers.
    let err = expect(
        RawReply::grpc()
            .data(vec![0, 0, 0, 0, 10, 1, 2])
            .trailer("grpc-status", "0"),
        Code::Internal,
    )
    .await;
    assert!(err.message().contains("2 of 10 bytes"), "{err}");
    // Compression flag set, no grpc-encoding: the SDK's framing check finds
    // it, with the facts (issue 25).
    let err = expect(
        RawReply::grpc()
            .data(vec![1, 0, 0, 0, 1, 0])
            .trailer("grpc-status", "0"),
        Code::Internal,
    )
    .await;
    assert!(err.message().contains("no grpc-encoding"), "{err}");
    // A message that is not the response type's protobuf: tonic's decoder
    // finds it above the layers, and the generated client's stamp gives it
    // the facts.
    let err = expect(
        RawReply::grpc()
            .message(&[0xff, 0xff, 0xff, 0xff])
            .trailer("grpc-status", "0"),
        Code::Internal,
    )
    .await;
    assert!(!err.is_retryable(), "{err}");
}

/// Headers past the client's `max_header_list_size` (16 KiB here; the
/// default is grpc-go's 16 MiB) are an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_headers_are_an_error_not_a_hang() {
    let mut reply = RawReply::grpc();
    for n in 0..24 {
        reply = reply.header(&format!("x-filler-{n}"), "f".repeat(1024));
    }
    let options = TransportOptions::default().with_max_header_list_size(16 << 10);
    expect_any_with(reply.message(&[]).trailer("grpc-status", "0"), options).await;
}

/// A large error's trailers (24 KiB, past hyper's own 16 KiB default) reach
/// the caller as the server's status, not as INTERNAL (issue 24).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_error_trailers_keep_the_servers_status() {
    let mut reply = RawReply::grpc()
        .message(&[])
        .trailer("grpc-status", "9")
        .trailer("grpc-message", "precondition");
    for n in 0..24 {
        reply = reply.trailer(&format!("x-filler-{n}"), "f".repeat(1024));
    }
    let err = expect(reply, Code::FailedPrecondition).await;
    assert_eq!(err.message(), "precondition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_silent_is_cut_at_the_deadline() {
    expect(RawReply::grpc().hang(), Code::DeadlineExceeded).await;
    expect(RawReply::grpc().message(&[]).hang(), Code::DeadlineExceeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_answer_where_http2_was_expected_is_an_error_not_a_hang() {
    watch_panics();
    let page = b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 11\r\n\r\nbad gateway";
    for (answers, peer) in [
        (true, RawTcpServer::start(page.to_vec()).await.unwrap()),
        (true, RawTcpServer::hold_open(page.to_vec()).await.unwrap()),
        (false, RawTcpServer::hold_open(Vec::new()).await.unwrap()),
    ] {
        let client = AmeideClient::builder()
            .endpoint(peer.endpoint())
            .timeout(BUDGET)
            .retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap();
        let (result, took) = call(&client).await;
        let err = result.expect_err("not an HTTP/2 server");
        assert!(took < BUDGET + SLACK, "took {took:?}: {err}");
        assert!(err.request_id().is_some(), "{err}");
        if answers {
            // Named as what it is (issue 25: INTERNAL "frame with invalid size").
            assert_eq!(err.code(), Code::Unavailable, "{err}");
            assert!(err.message().contains("answered in HTTP/1"), "{err}");
        }
    }
    assert_no_panics();
}

/// A response that ends without `grpc-status` (no trailers, or trailers
/// without it) is UNKNOWN with the call's facts, request id included
/// (issue 25: UNKNOWN from tonic, without them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_grpc_status_is_unknown_with_the_calls_facts() {
    for reply in [
        RawReply::grpc().message(&[]),
        RawReply::grpc().message(&[]).trailer("x-other", "1"),
    ] {
        let err = expect(reply, Code::Unknown).await;
        assert!(err.message().contains("grpc-status"), "{err}");
    }
}

/// A unary call answered with two messages fails INTERNAL (grpc-go's
/// cardinality violation), not OK with the second dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_on_a_unary_call_are_internal_not_silently_dropped() {
    let err = expect(
        RawReply::grpc()
            .message(&[])
            .message(&[])
            .trailer("grpc-status", "0"),
        Code::Internal,
    )
    .await;
    assert!(err.message().contains("2 messages"), "{err}");
    assert!(!err.is_retryable(), "{err}");
}

/// A server stream answered trailers-only OK (grpc-go and grpc-java do so
/// when the handler sends nothing) is an empty stream that ends OK; a unary
/// call answered so is tonic's "missing response message", not a missing
/// grpc-status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_ok_is_an_empty_stream_not_a_missing_status() {
    watch_panics();
    let server = H2FaultServer::start().await.unwrap();
    let ok = RawReply::grpc().header("grpc-status", "0").trailers_only();
    server.push_reply(ok.clone());
    server.push_reply(ok);
    let client = client(&server, RetryPolicy::disabled());
    let mut stream = client
        .inference()
        .generate(ameide_sdk::proto::inference::v1::GenerateRequest::default())
        .await
        .expect("the stream starts")
        .into_inner();
    assert!(
        stream.message().await.expect("ends OK").is_none(),
        "no messages"
    );
    let (result, _) = call(&client).await;
    let err = result.expect_err("no response message");
    assert!(!err.message().contains("grpc-status"), "{err}");
    assert_no_panics();
}

/// An OK status written another way ("00", "+0") is OK, for the caller as
/// for the SDK's own records (tonic alone reads only "0" as OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ok_status_written_another_way_is_ok() {
    for value in ["00", "+0"] {
        let server = H2FaultServer::start().await.unwrap();
        server.push_reply(RawReply::grpc().message(&[]).trailer("grpc-status", value));
        let client = client_with(
            &server,
            RetryPolicy::disabled(),
            TransportOptions::default(),
        );
        let (result, _) = call(&client).await;
        assert!(result.is_ok(), "{value:?}: {result:?}");
    }
}

/// A grpc-status in the leading headers of a response that goes on is not
/// the call's (the trailers decide); when no trailers come at all, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leading_status_is_the_calls_only_without_trailers() {
    // Overruled by the trailers.
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(
        RawReply::grpc()
            .header("grpc-status", "0")
            .message(&[])
            .trailer("grpc-status", "8")
            .trailer("grpc-message", "quota"),
    );
    let client = client_with(
        &server,
        RetryPolicy::disabled(),
        TransportOptions::default(),
    );
    let err = call(&client).await.0.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(err.message(), "quota");
    // No trailers: the leading status ends the call.
    let reply = RawReply::grpc()
        .header("grpc-status", "14")
        .header("grpc-message", "busy");
    let err = expect(reply, Code::Unavailable).await;
    assert_eq!(err.message(), "busy");
}
