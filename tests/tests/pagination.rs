//! Pagination from the bundle (issue 17): the generated page and item
//! streams on the wire, against the scripted server over in-memory HTTP/2.

use std::time::Duration;

use ameide_sdk::pagination::{GraphServicePages, PAGINATED};
use ameide_sdk::proto::common::v1::{PaginationRequest, PaginationResponse};
use ameide_sdk::proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse, Repository};
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{CallOptions, Error};
use ameide_tests::{mock_client, paths};
use futures_util::StreamExt;
use prost::Message;
use tonic::{Code, Status};

fn page(ids: &[&str], next: &str) -> Reply {
    Reply::message(&ListRepositoriesResponse {
        repositories: ids
            .iter()
            .map(|id| Repository {
                repository_id: (*id).to_owned(),
                ..Default::default()
            })
            .collect(),
        pagination: Some(PaginationResponse {
            next_page_token: next.to_owned(),
            total_size: 5,
        }),
    })
}

fn sized(size: i32) -> ListRepositoriesRequest {
    ListRepositoriesRequest {
        pagination: Some(PaginationRequest {
            page_size: size,
            page_token: String::new(),
        }),
        ..Default::default()
    }
}

/// What each call carried: its page request, its request id, its grpc-timeout.
fn sent(server: &MockServer) -> Vec<(PaginationRequest, String, bool)> {
    server
        .attempts_for(paths::LIST_REPOSITORIES)
        .iter()
        .map(|attempt| {
            let request = ListRepositoriesRequest::decode(attempt.messages[0].clone()).unwrap();
            (
                request.pagination.unwrap_or_default(),
                attempt
                    .header("x-request-id")
                    .unwrap_or_default()
                    .to_owned(),
                attempt.header("grpc-timeout").is_some(),
            )
        })
        .collect()
}

async fn ids(stream: ameide_sdk::pagination::Items<Repository>) -> (Vec<String>, Option<Error>) {
    let mut got = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(repo) => got.push(repo.repository_id),
            Err(err) => {
                assert!(stream.next().await.is_none(), "an error ends the stream");
                return (got, Some(err));
            }
        }
    }
    (got, None)
}

#[tokio::test]
async fn items_follow_the_page_tokens_and_keep_the_page_size() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&["a", "b"], "p2"));
    server.push(paths::LIST_REPOSITORIES, page(&["c", "d"], "p3"));
    server.push(paths::LIST_REPOSITORIES, page(&["e"], ""));
    let client = mock_client(&server).build().unwrap();
    let (got, err) = ids(client.graph().list_repositories_items(sized(2))).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, ["a", "b", "c", "d", "e"]);

    let calls = sent(&server);
    let tokens: Vec<&str> = calls.iter().map(|c| c.0.page_token.as_str()).collect();
    assert_eq!(tokens, ["", "p2", "p3"]);
    assert!(calls.iter().all(|c| c.0.page_size == 2), "{calls:?}");
    // Each page is its own call: its own request id and deadline.
    let mut request_ids: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
    request_ids.sort_unstable();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.2), "every page carries grpc-timeout");
}

#[tokio::test]
async fn pages_are_whole_responses_and_options_reach_every_page() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&["a"], "p2"));
    server.push(paths::LIST_REPOSITORIES, page(&["b"], ""));
    let client = mock_client(&server).build().unwrap();
    let pages: Vec<ListRepositoriesResponse> = client
        .graph()
        .list_repositories_pages(ListRepositoriesRequest::default())
        .options(
            CallOptions::new()
                .request_id("listing-1")
                .timeout(Duration::from_millis(1500))
                .header("x-team", "core"),
        )
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].pagination.as_ref().unwrap().total_size, 5);
    let calls = server.attempts_for(paths::LIST_REPOSITORIES);
    let request_ids: Vec<_> = calls
        .iter()
        .map(|c| c.header("x-request-id").unwrap())
        .collect();
    assert_eq!(request_ids, ["listing-1", "listing-1-page-2"]);
    for call in &calls {
        assert_eq!(call.header("x-team"), Some("core"));
        let budget = ameide_tests::grpc_timeout(call.header("grpc-timeout").unwrap());
        assert!(budget <= Duration::from_millis(1500), "{budget:?}");
    }
}

#[tokio::test]
async fn a_failing_middle_page_ends_the_stream_with_the_sdk_error() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&["a", "b"], "p2"));
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::permission_denied("page 2 is not yours")),
    );
    server.push(paths::LIST_REPOSITORIES, page(&["never"], ""));
    let client = mock_client(&server).build().unwrap();
    let (got, err) = ids(client.graph().list_repositories_items(sized(2))).await;
    assert_eq!(got, ["a", "b"]);
    let err = err.expect("the second page fails");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "page 2 is not yours");
    assert!(
        err.request_id().is_some(),
        "the SDK's error, with its facts: {err}"
    );
    assert_eq!(sent(&server).len(), 2, "nothing asked after the failure");
}

#[tokio::test]
async fn an_empty_list_is_one_call_and_no_items() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&[], ""));
    let client = mock_client(&server).build().unwrap();
    let (got, err) = ids(client.graph().list_repositories_items(sized(10))).await;
    assert!(got.is_empty() && err.is_none(), "{got:?} {err:?}");
    assert_eq!(sent(&server).len(), 1);
}

#[tokio::test]
async fn a_server_that_repeats_a_token_is_stopped_with_a_clear_error() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&["a"], "p2"));
    server.push(paths::LIST_REPOSITORIES, page(&["b"], "p3"));
    server.fallback(page(&["again"], "p2"));
    let client = mock_client(&server).build().unwrap();
    let (got, err) = ids(client.graph().list_repositories_items(sized(1))).await;
    assert_eq!(got, ["a", "b", "again"]);
    let err = err.expect("stopped");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("\"p2\" a second time"), "{err}");
    assert_eq!(sent(&server).len(), 3);

    // A first token of the caller's own counts too.
    let server = MockServer::new();
    server.fallback(page(&["x"], "start"));
    let client = mock_client(&server).build().unwrap();
    let mut request = sized(1);
    request.pagination.as_mut().unwrap().page_token = "start".into();
    let (got, err) = ids(client.graph().list_repositories_items(request)).await;
    assert_eq!(got, ["x"]);
    assert_eq!(err.map(|e| e.code()), Some(Code::Internal));
    assert_eq!(sent(&server)[0].0.page_token, "start");
}

#[tokio::test]
async fn a_bad_option_is_an_error_item_not_a_panic() {
    let server = MockServer::new();
    let client = mock_client(&server).build().unwrap();
    let (got, err) = ids(client
        .graph()
        .list_repositories_pages(sized(1))
        .options(CallOptions::new().header("bad name", "x"))
        .items())
    .await;
    assert!(got.is_empty());
    let err = err.expect("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.attempts(), 0);
    assert!(err.config_error().is_some());
    assert!(sent(&server).is_empty());
}

#[test]
fn the_manifest_lists_the_same_paginated_methods() {
    let text = std::fs::read_to_string(
        ameide_tests::proto_crate_dir().join("manifest/ameide-client.json"),
    )
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut listed = Vec::new();
    for (_, service) in manifest["services"].as_object().unwrap() {
        for method in service["methods"].as_array().unwrap() {
            if let Some(p) = method.get("pagination") {
                listed.push((
                    format!(
                        "/{}/{}",
                        service["service"].as_str().unwrap(),
                        method["name"].as_str().unwrap()
                    ),
                    p["items"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    let generated: Vec<(String, String)> = PAGINATED
        .iter()
        .map(|m| (m.path.to_owned(), m.items_field.to_owned()))
        .collect();
    assert_eq!(listed, generated);
    assert_eq!(
        generated.len(),
        25,
        "every List method of the bundle with PaginationRequest"
    );
}

/// A server that pages through nothing forever (empty pages, each with a
/// new token) is stopped after the default 100 empty pages in a row, with
/// an error naming the token to resume from (issue 25: followed forever).
#[tokio::test]
async fn a_server_that_sends_empty_pages_forever_is_stopped_by_default() {
    let server = MockServer::new();
    for n in 1..=150 {
        server.push(paths::LIST_REPOSITORIES, page(&[], &format!("t{n}")));
    }
    let client = mock_client(&server).build().unwrap();
    let mut pages = client.graph().list_repositories_pages(sized(10));
    let mut read = 0;
    let err = loop {
        match pages.next().await.expect("an error before the end") {
            Ok(_) => read += 1,
            Err(err) => break err,
        }
    };
    assert_eq!(read, 100);
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.message().contains("100 empty pages"), "{err}");
    assert!(err.message().contains("\"t100\""), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(pages.resume_token(), Some("t100"));
    assert!(pages.next().await.is_none(), "an error ends the stream");
    assert_eq!(sent(&server).len(), 100);
}

/// `max_pages` caps a long listing with RESOURCE_EXHAUSTED naming the token;
/// a new stream from `resume_token` reads on from there.
#[tokio::test]
async fn a_page_cap_stops_with_the_token_to_resume_from() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&["a"], "t2"));
    server.push(paths::LIST_REPOSITORIES, page(&["b"], "t3"));
    server.push(paths::LIST_REPOSITORIES, page(&["c"], "t4"));
    server.push(paths::LIST_REPOSITORIES, page(&["d"], ""));
    let client = mock_client(&server).build().unwrap();
    let mut pages = client
        .graph()
        .list_repositories_pages(sized(1))
        .max_pages(2);
    assert!(pages.next().await.unwrap().is_ok());
    assert!(pages.next().await.unwrap().is_ok());
    let err = pages.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("2 pages read (max_pages)"), "{err}");
    assert!(err.message().contains("\"t3\""), "{err}");
    let resume = pages.resume_token().unwrap().to_owned();
    assert_eq!(resume, "t3");

    let mut request = sized(1);
    request.pagination.as_mut().unwrap().page_token = resume;
    let (got, err) = ids(client.graph().list_repositories_items(request)).await;
    assert_eq!(got, ["c", "d"]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sent(&server)[2].0.page_token, "t3");
}

/// `Items::resume_token` while a page's items are being handed out is that
/// page's token (nothing skipped); after the page, the next page's.
#[tokio::test]
async fn items_resume_from_the_page_being_read() {
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, page(&["a", "b"], "p2"));
    server.push(paths::LIST_REPOSITORIES, page(&["c"], ""));
    let client = mock_client(&server).build().unwrap();
    let mut items = client.graph().list_repositories_items(sized(2));
    assert_eq!(items.resume_token(), Some(""), "from the start");
    assert_eq!(items.next().await.unwrap().unwrap().repository_id, "a");
    assert_eq!(
        items.resume_token(),
        Some(""),
        "b of the first page is left"
    );
    assert_eq!(items.next().await.unwrap().unwrap().repository_id, "b");
    assert_eq!(items.resume_token(), Some("p2"));
    assert_eq!(items.next().await.unwrap().unwrap().repository_id, "c");
    assert_eq!(items.resume_token(), None, "the last page was read");
    assert!(items.next().await.is_none());
}
