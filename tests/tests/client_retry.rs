//! Contract §4 retry rules, observed by a server that records every attempt.

use std::time::Duration;

use ameide_sdk::IntoAmeideResult;
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_tests::calls::{generate, tokens};
use ameide_tests::{fixed_jitter, mock_client, paths};
use futures_util::StreamExt;
use tonic::{Code, Status};

fn list() -> ameide_sdk::proto::graph::v1::ListRepositoriesRequest {
    Default::default()
}

#[tokio::test(start_paused = true)]
async fn each_retryable_code_is_retried_then_succeeds_with_the_same_request_id() {
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::ResourceExhausted,
    ] {
        let server = MockServer::new();
        server.push(
            paths::LIST_REPOSITORIES,
            Reply::status(Status::new(code, "transient")),
        );
        server.push(paths::LIST_REPOSITORIES, Reply::ok());
        let client = mock_client(&server).build().unwrap();
        let response = client.graph().list_repositories(list()).await.unwrap();
        let info = response.extensions().get::<ameide_sdk::CallInfo>().unwrap();
        assert_eq!(info.attempts, 2, "{code:?}");

        let attempts = server.attempts();
        assert_eq!(attempts.len(), 2, "{code:?}");
        let id = attempts[0].header("x-request-id").unwrap();
        assert_eq!(
            attempts[1].header("x-request-id"),
            Some(id),
            "{code:?}: same id on every attempt"
        );
        assert_eq!(&*info.request_id, id);
        assert_eq!(attempts[0].header("grpc-previous-rpc-attempts"), None);
        assert_eq!(attempts[1].header("grpc-previous-rpc-attempts"), Some("1"));
    }
}

#[tokio::test(start_paused = true)]
async fn non_retryable_codes_are_not_retried() {
    for code in [
        Code::InvalidArgument,
        Code::Internal,
        Code::Unauthenticated,
        Code::NotFound,
        Code::PermissionDenied,
    ] {
        let server = MockServer::new();
        server.push(
            paths::LIST_REPOSITORIES,
            Reply::status(Status::new(code, "permanent")),
        );
        let client = mock_client(&server).build().unwrap();
        let err = client
            .graph()
            .list_repositories(list())
            .await
            .into_ameide()
            .unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(err.attempts(), 1, "{code:?}");
        assert!(!err.is_retryable(), "{code:?}");
        assert_eq!(server.attempts().len(), 1, "{code:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_return_the_last_original_status_with_the_count() {
    let server = MockServer::new();
    for n in 1..=3 {
        server.push(
            paths::LIST_REPOSITORIES,
            Reply::status(Status::unavailable(format!("down #{n}")))
                .header("x-server-note", &format!("n{n}")),
        );
    }
    let client = mock_client(&server).build().unwrap();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "down #3");
    assert_eq!(err.attempts(), 3);
    assert!(err.is_retryable());
    assert_eq!(err.status().metadata().get("x-server-note").unwrap(), "n3");
    assert_eq!(server.attempts().len(), 3);
    let shown = err.to_string();
    assert!(
        shown.contains("attempts=3") && shown.contains("retryable]"),
        "{shown}"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_follow_the_schedule_at_the_jitter_extremes() {
    for (factor, first, second) in [(0.5, 125, 250), (1.5, 375, 750), (1.0, 250, 500)] {
        let server = MockServer::new();
        server.fallback(Reply::status(Status::unavailable("down")));
        let client = mock_client(&server)
            .retry_layer(fixed_jitter(factor))
            .build()
            .unwrap();
        let _ = client.graph().list_repositories(list()).await;
        let at: Vec<_> = server.attempts().iter().map(|a| a.at).collect();
        assert_eq!(at.len(), 3);
        assert_eq!((at[1] - at[0]).as_millis(), first, "factor {factor}");
        assert_eq!((at[2] - at[1]).as_millis(), second, "factor {factor}");
    }
}

#[tokio::test(start_paused = true)]
async fn random_backoff_delays_stay_within_half_and_one_and_a_half_times_the_schedule() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::resource_exhausted("busy")));
    // 25 calls that fail every attempt would (rightly) drain the throttling
    // bucket; this test is about the backoff schedule alone.
    let client = mock_client(&server)
        .retry_policy(ameide_sdk::layers::RetryPolicy::default().with_throttling(None))
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..25 {
        server.clear_attempts();
        let _ = client.graph().list_repositories(list()).await;
        let at: Vec<_> = server.attempts().iter().map(|a| a.at).collect();
        let (d1, d2) = (at[1] - at[0], at[2] - at[1]);
        assert!((125..=375).contains(&d1.as_millis()), "first delay {d1:?}");
        assert!((250..=750).contains(&d2.as_millis()), "second delay {d2:?}");
        seen.push(d1);
    }
    seen.sort();
    assert!(seen[0] < seen[seen.len() - 1], "delays are randomised");
}

#[tokio::test(start_paused = true)]
async fn server_streaming_is_retried_before_the_first_message() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::status(Status::unavailable("not yet")),
    );
    server.push(paths::GENERATE, Reply::messages(tokens(["Hel", "lo"])));
    let client = mock_client(&server).build().unwrap();
    let mut stream = generate(&client).await;
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        text.push_str(&item.unwrap().token);
    }
    assert_eq!(text, "Hello");
    assert_eq!(server.attempts_for(paths::GENERATE).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn server_streaming_is_not_retried_after_a_message_arrived() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(tokens(["partial"])).then_status(Status::unavailable("cut")),
    );
    server.push(paths::GENERATE, Reply::ok());
    let client = mock_client(&server).build().unwrap();
    let mut stream = generate(&client).await;
    assert_eq!(stream.next().await.unwrap().unwrap().token, "partial");
    let err = ameide_sdk::Error::from(stream.next().await.unwrap().unwrap_err());
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        server.attempts_for(paths::GENERATE).len(),
        1,
        "committed calls are never replayed"
    );
}

#[tokio::test(start_paused = true)]
async fn headers_without_a_status_commit_the_call_even_if_the_stream_then_fails() {
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(vec![]).then_status(Status::unavailable("after headers")),
    );
    let client = mock_client(&server).build().unwrap();
    let mut stream = generate(&client).await;
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(server.attempts_for(paths::GENERATE).len(), 1);
}

mod raw {
    //! Client- and bidi-streaming calls through the stack. The roster has no
    //! such method, so the calls go to a path of their own with tonic's codec.
    use super::*;
    use ameide_sdk::proto::graph::v1::{GetElementRequest, GetElementResponse};
    use http::uri::PathAndQuery;
    use tonic_prost::ProstCodec;

    const COLLECT: &str = "/ameide.test.v1.EchoService/Collect";
    const CHAT: &str = "/ameide.test.v1.EchoService/Chat";

    fn requests() -> impl futures_util::Stream<Item = GetElementRequest> + Send + 'static {
        tokio_stream::iter((0..3).map(|i| GetElementRequest {
            element_id: format!("el-{i}"),
            ..Default::default()
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn client_streaming_call_carries_the_metadata_and_every_message() {
        let server = MockServer::new();
        let client = mock_client(&server)
            .tenant_id("t-1")
            .bearer_token("tok")
            .build()
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(client.channel());
        grpc.ready().await.unwrap();
        let response = grpc
            .client_streaming(
                tonic::Request::new(requests()),
                PathAndQuery::from_static(COLLECT),
                ProstCodec::<GetElementRequest, GetElementResponse>::default(),
            )
            .await
            .unwrap();
        assert!(response.get_ref().element.is_none());
        let attempt = &server.attempts_for(COLLECT)[0];
        assert_eq!(attempt.messages.len(), 3);
        assert_eq!(attempt.header("x-tenant-id"), Some("t-1"));
        assert_eq!(attempt.header("authorization"), Some("Bearer tok"));
        assert!(attempt.header("x-request-id").is_some());
        assert!(attempt.header("grpc-timeout").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn client_and_bidi_streaming_calls_are_never_retried() {
        let server = MockServer::new();
        server.fallback(Reply::status(Status::unavailable("down")));
        let client = mock_client(&server).build().unwrap();
        let mut grpc = tonic::client::Grpc::new(client.channel());
        grpc.ready().await.unwrap();
        let err = grpc
            .client_streaming(
                tonic::Request::new(requests()),
                PathAndQuery::from_static(COLLECT),
                ProstCodec::<GetElementRequest, GetElementResponse>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        grpc.ready().await.unwrap();
        let err = grpc
            .streaming(
                tonic::Request::new(requests()),
                PathAndQuery::from_static(CHAT),
                ProstCodec::<GetElementRequest, GetElementResponse>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(ameide_sdk::Error::from(err).attempts(), 1);
        assert_eq!(server.attempts_for(COLLECT).len(), 1);
        assert_eq!(server.attempts_for(CHAT).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bidi_streaming_call_streams_both_ways() {
        let server = MockServer::new();
        let reply = |id: &str| {
            bytes::Bytes::from(prost::Message::encode_to_vec(&GetElementResponse {
                element: Some(ameide_sdk::proto::graph::v1::Element {
                    element_id: id.into(),
                    ..Default::default()
                }),
            }))
        };
        server.push(CHAT, Reply::messages(vec![reply("a"), reply("b")]));
        let client = mock_client(&server).build().unwrap();
        let mut grpc = tonic::client::Grpc::new(client.channel());
        grpc.ready().await.unwrap();
        let mut stream = grpc
            .streaming(
                tonic::Request::new(requests()),
                PathAndQuery::from_static(CHAT),
                ProstCodec::<GetElementRequest, GetElementResponse>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        while let Some(item) = stream.next().await {
            ids.push(item.unwrap().element.unwrap().element_id);
        }
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(server.attempts_for(CHAT)[0].messages.len(), 3);
    }
}

#[tokio::test]
async fn connection_refused_is_retried_as_unavailable() {
    let policy = ameide_sdk::layers::RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(10));
    let client = ameide_sdk::AmeideClient::builder()
        .endpoint(format!("http://{}", ameide_tests::closed_addr()))
        .retry_policy(policy)
        .build()
        .unwrap();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.attempts(), 3, "{err}");
}
