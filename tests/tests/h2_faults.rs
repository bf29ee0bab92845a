//! HTTP/2 transport faults on a real loopback connection: REFUSED_STREAM,
//! GOAWAY (graceful and abrupt), a dropped connection, a stream cut after N
//! messages. The server is the testkit's raw-h2 `H2FaultServer`, so every
//! assertion is about what reached the wire.

use std::time::Duration;

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::proto::inference::v1::GenerateRequest;
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
    let mut stream = client
        .inference()
        .generate(GenerateRequest::default())
        .await
        .unwrap()
        .into_inner();
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
