//! Contract §4 metadata table, as the server sees it on the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ameide_sdk::auth::{AccessToken, TokenError};
use ameide_sdk::layers::RequestIdGenerator;
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{CallOptions, IntoAmeideResult};
use ameide_tests::{mock_client, paths};
use tonic::Code;

fn list() -> ameide_sdk::proto::graph::v1::ListRepositoriesRequest {
    Default::default()
}

#[tokio::test]
async fn tenant_and_user_are_sent_only_when_configured() {
    let server = MockServer::new();
    let bare = mock_client(&server).build().unwrap();
    bare.graph().list_repositories(list()).await.unwrap();
    let configured = mock_client(&server)
        .tenant_id("tenant-a")
        .user_id("user-b")
        .build()
        .unwrap();
    configured.graph().list_repositories(list()).await.unwrap();

    let attempts = server.attempts();
    assert_eq!(attempts[0].header("x-tenant-id"), None);
    assert_eq!(attempts[0].header("x-user-id"), None);
    assert_eq!(attempts[1].header("x-tenant-id"), Some("tenant-a"));
    assert_eq!(attempts[1].header("x-user-id"), Some("user-b"));
}

#[tokio::test]
async fn request_id_is_generated_as_uuid_v4_when_absent() {
    let server = MockServer::new();
    let client = mock_client(&server).build().unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    let ids: Vec<String> = server
        .attempts()
        .iter()
        .map(|a| a.header("x-request-id").unwrap().to_owned())
        .collect();
    for id in &ids {
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "UUID v4 expected: {id}");
    }
    assert_ne!(ids[0], ids[1], "each call gets its own id");
}

#[tokio::test]
async fn caller_request_id_is_kept_and_configured_generator_is_used() {
    let server = MockServer::new();
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    let client = mock_client(&server)
        .request_id_generator(RequestIdGenerator::new(move || {
            format!("gen-{}", c.fetch_add(1, Ordering::SeqCst))
        }))
        .build()
        .unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    let request = CallOptions::new()
        .request_id("caller-42")
        .into_request(list())
        .unwrap();
    let response = client.graph().list_repositories(request).await.unwrap();
    let info = response.extensions().get::<ameide_sdk::CallInfo>().unwrap();
    assert_eq!(&*info.request_id, "caller-42");
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(tonic::Status::not_found("gone")),
    );
    let request = CallOptions::new()
        .request_id("caller-43")
        .into_request(list())
        .unwrap();
    let err = client
        .graph()
        .list_repositories(request)
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(
        err.request_id(),
        Some("caller-43"),
        "the error reports the caller's id"
    );
    let attempts = server.attempts();
    assert_eq!(attempts[0].header("x-request-id"), Some("gen-0"));
    assert_eq!(attempts[1].header("x-request-id"), Some("caller-42"));
    assert_eq!(attempts[2].header("x-request-id"), Some("caller-43"));
    assert_eq!(
        counter.load(Ordering::SeqCst),
        1,
        "no id generated when the caller set one"
    );
}

#[tokio::test]
async fn extra_headers_are_lower_cased_and_per_call_values_win() {
    let server = MockServer::new();
    let client = mock_client(&server)
        .header("X-Team", "core")
        .header("x-env", "test")
        .build()
        .unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    let request = CallOptions::new()
        .header("X-ENV", "per-call")
        .into_request(list())
        .unwrap();
    client.graph().list_repositories(request).await.unwrap();
    let attempts = server.attempts();
    assert_eq!(attempts[0].header("x-team"), Some("core"));
    assert_eq!(attempts[0].header("x-env"), Some("test"));
    assert_eq!(attempts[1].header("x-env"), Some("per-call"));
}

#[tokio::test]
async fn bearer_token_is_sent_when_the_provider_returns_one() {
    let server = MockServer::new();
    let client = mock_client(&server).bearer_token("s3cr3t").build().unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    assert_eq!(
        server.attempts()[0].header("authorization"),
        Some("Bearer s3cr3t")
    );
}

#[tokio::test]
async fn no_authorization_header_without_provider_or_when_it_returns_none() {
    let server = MockServer::new();
    mock_client(&server)
        .build()
        .unwrap()
        .graph()
        .list_repositories(list())
        .await
        .unwrap();
    mock_client(&server)
        .token_provider(|| async { Ok(None) })
        .build()
        .unwrap()
        .graph()
        .list_repositories(list())
        .await
        .unwrap();
    for attempt in server.attempts() {
        assert_eq!(attempt.header("authorization"), None);
    }
}

/// A provider that is down fails the call UNAVAILABLE (retryable: a later
/// call may get a token), not UNAUTHENTICATED, which would read as "bad
/// credentials" (issue 25 item 8, gRFC A54, grpc-go).
#[tokio::test]
async fn token_provider_error_fails_the_call_unavailable_with_its_message() {
    let server = MockServer::new();
    let client = mock_client(&server)
        .token_provider(|| async { Err(TokenError::new("identity provider unreachable")) })
        .build()
        .unwrap();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.attempts(), 0, "{err}");
    assert!(
        err.message().contains("identity provider unreachable"),
        "{err}"
    );
    assert!(err.request_id().is_some());
    assert!(
        server.attempts().is_empty(),
        "the transport is never reached"
    );
}

/// The codes a provider names: UNAUTHENTICATED for refused credentials,
/// others as given, and the ones gRFC A54 keeps for servers become INTERNAL.
#[tokio::test]
async fn token_provider_codes_follow_grfc_a54() {
    let cases = [
        (
            TokenError::unauthenticated("invalid_client"),
            Code::Unauthenticated,
        ),
        (
            TokenError::with_code(Code::PermissionDenied, "no scope"),
            Code::PermissionDenied,
        ),
        (
            TokenError::with_code(Code::NotFound, "no key"),
            Code::Internal,
        ),
        (TokenError::with_code(Code::Ok, "odd"), Code::Internal),
    ];
    for (error, want) in cases {
        let server = MockServer::new();
        let client = mock_client(&server)
            .token_provider(move || {
                let error = error.clone();
                async move { Err(error) }
            })
            .build()
            .unwrap();
        let err = client
            .graph()
            .list_repositories(list())
            .await
            .into_ameide()
            .unwrap_err();
        assert_eq!(err.code(), want, "{err}");
        assert_eq!(err.attempts(), 0, "{err}");
        assert!(server.attempts().is_empty());
    }
}

#[tokio::test]
async fn token_with_invalid_characters_fails_cleanly() {
    let server = MockServer::new();
    let client = mock_client(&server)
        .token_provider(|| async { Ok(Some(AccessToken::new("line\nbreak"))) })
        .build()
        .unwrap();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(!err.to_string().contains("line\nbreak"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_token_provider_is_bounded_by_the_call_timeout() {
    let server = MockServer::new();
    let client = mock_client(&server)
        .timeout(std::time::Duration::from_millis(300))
        .token_provider(|| async {
            std::future::pending::<()>().await;
            Ok(None)
        })
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        err.message().contains("token provider had not answered"),
        "{err}"
    );
    assert_eq!(err.attempts(), 0, "{err}");
    assert!(started.elapsed() <= std::time::Duration::from_millis(310));
}

#[tokio::test]
async fn session_id_travels_in_baggage_client_wide_and_per_call() {
    let server = MockServer::new();
    let client = mock_client(&server).session_id("sess-1").build().unwrap();
    client.graph().list_repositories(list()).await.unwrap();
    let request = CallOptions::new()
        .session_id("sess 2")
        .into_request(list())
        .unwrap();
    client.graph().list_repositories(request).await.unwrap();
    mock_client(&server)
        .build()
        .unwrap()
        .graph()
        .list_repositories(list())
        .await
        .unwrap();
    let attempts = server.attempts();
    assert_eq!(
        attempts[0].header("baggage"),
        Some("ameide.session_id=sess-1")
    );
    assert_eq!(
        attempts[1].header("baggage"),
        Some("ameide.session_id=sess%202")
    );
    assert_eq!(
        attempts[2].header("baggage"),
        None,
        "no session, no baggage"
    );
}

#[tokio::test]
async fn server_message_and_rich_details_survive_into_the_error() {
    use tonic_types::{ErrorDetails, StatusExt};
    let server = MockServer::new();
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation("page_size", "must be <= 100");
    details.set_error_info("INVALID_PAGE", "graph.ameide.io", []);
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(tonic::Status::with_error_details(
            Code::InvalidArgument,
            "bad page\tsize ✓ 🦀",
            details,
        )),
    );
    let client = mock_client(&server).build().unwrap();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "bad page\tsize ✓ 🦀");
    assert_eq!(
        err.bad_request().unwrap().field_violations[0].field,
        "page_size"
    );
    assert_eq!(err.error_info().unwrap().reason, "INVALID_PAGE");
    assert!(!err.is_retryable());
    let shown = err.to_string();
    assert!(
        shown.starts_with("INVALID_ARGUMENT: bad page\\tsize ✓ 🦀 [request_id="),
        "{shown}"
    );
    assert!(shown.contains("attempts=1"), "{shown}");
    assert!(
        shown.contains("BadRequest(page_size: must be <= 100)"),
        "{shown}"
    );
}
