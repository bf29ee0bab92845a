//! The credential cache (paused clock, a counting provider), invalidate-and-
//! replay on UNAUTHENTICATED (on the wire), and OAuth2 client credentials
//! against a real local HTTP token endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ameide_sdk::auth::{
    AccessToken, CachingTokenProvider, ClientCredentials, TokenError, TokenProvider,
};
use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_tests::{mock_client, paths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::{Code, Status};

/// A provider that counts fetches and hands out `tok-<n>` valid for `ttl`,
/// failing whenever `fail` is set.
#[derive(Clone)]
struct Counting {
    fetches: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    ttl: Duration,
    latency: Duration,
}

impl Counting {
    fn new(ttl: Duration) -> Self {
        Counting {
            fetches: Arc::default(),
            fail: Arc::default(),
            ttl,
            latency: Duration::from_millis(100),
        }
    }
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl TokenProvider for Counting {
    fn token(&self) -> ameide_sdk::auth::BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail.load(Ordering::SeqCst) {
                return Err(TokenError::new("identity provider down"));
            }
            Ok(Some(
                AccessToken::new(format!("tok-{n}")).with_expiry(Instant::now() + self.ttl),
            ))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_callers_cause_one_fetch() {
    let inner = Counting::new(Duration::from_secs(300));
    let cache = Arc::new(CachingTokenProvider::new(inner.clone()));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await.unwrap().unwrap().secret().to_owned() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "tok-1");
    }
    assert_eq!(inner.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_ahead_of_expiry_and_others_keep_the_valid_token_meanwhile() {
    let inner = Counting::new(Duration::from_secs(60));
    let cache = Arc::new(
        CachingTokenProvider::new(inner.clone())
            .refresh_ahead(Duration::from_secs(10))
            .jitter(0.0),
    );
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-1");
    tokio::time::sleep(Duration::from_secs(49)).await;
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-1");
    assert_eq!(inner.fetches(), 1, "not yet in the refresh window");
    tokio::time::sleep(Duration::from_secs(2)).await; // 51 s: inside the window, still valid
    let started = Instant::now();
    assert_eq!(
        cache.token().await.unwrap().unwrap().secret(),
        "tok-1",
        "the caller that starts the refresh does not wait for it"
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        cache.token().await.unwrap().unwrap().secret(),
        "tok-1",
        "nor does anyone else while it runs"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // the refresh took 100 ms
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-2");
    assert_eq!(inner.fetches(), 2, "one refresh, however many callers");
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_serving_the_valid_token_and_never_caches_the_failure() {
    let inner = Counting::new(Duration::from_secs(60));
    let cache = CachingTokenProvider::new(inner.clone())
        .refresh_ahead(Duration::from_secs(10))
        .jitter(0.0)
        .retry_after_failure(Duration::from_secs(1));
    cache.token().await.unwrap();
    inner.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(
        cache.token().await.unwrap().unwrap().secret(),
        "tok-1",
        "refresh failed, token still valid"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // the background refresh failed
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-1");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(inner.fetches(), 2, "no hammering right after a failure");
    tokio::time::sleep(Duration::from_secs(10)).await; // expired now
    let err = cache.token().await.unwrap_err();
    assert!(err.to_string().contains("identity provider down"));
    inner.fail.store(false, Ordering::SeqCst);
    // Within the backoff (the second failure in a row: 2 s ± 20 %) the
    // error comes back at once, without asking the provider.
    let asked = inner.fetches();
    let err = cache.token().await.unwrap_err();
    assert!(err.to_string().contains("identity provider down"), "{err}");
    assert_eq!(inner.fetches(), asked, "no fetch during the backoff");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        cache
            .token()
            .await
            .unwrap()
            .unwrap()
            .secret()
            .starts_with("tok-"),
        "the failure was not cached"
    );
}

#[tokio::test(start_paused = true)]
async fn unauthenticated_invalidates_the_cached_token_and_replays_the_call_once() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unauthenticated("token revoked")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let inner = Counting::new(Duration::from_secs(300));
    let client = mock_client(&server)
        .token_provider(CachingTokenProvider::new(inner.clone()))
        .build()
        .unwrap();
    ameide_tests::calls::read(&client).await.unwrap();
    let attempts = server.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(
        attempts[1].header("authorization"),
        Some("Bearer tok-2"),
        "a fresh token on the replay"
    );
    assert_eq!(
        attempts[0].header("x-request-id"),
        attempts[1].header("x-request-id")
    );

    // Rejected again: only one replay.
    server.reset();
    server.fallback(Reply::status(Status::unauthenticated("still no")));
    let err = ameide_tests::calls::read(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(server.attempts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_provider_slower_than_the_call_timeout_still_ends_up_serving_tokens() {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let mut inner = Counting::new(Duration::from_secs(300));
    inner.latency = Duration::from_millis(800);
    let client = mock_client(&server)
        .timeout(Duration::from_millis(300))
        .token_provider(CachingTokenProvider::new(inner.clone()))
        .build()
        .unwrap();
    // The first calls give up waiting for the token…
    for _ in 0..2 {
        let err = ameide_tests::calls::read(&client).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert!(err.message().contains("had not answered"), "{err}");
    }
    // …but the one fetch they started finishes on its own and is cached.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ameide_tests::calls::read(&client).await.unwrap();
    ameide_tests::calls::read(&client).await.unwrap();
    assert_eq!(inner.fetches(), 1, "one fetch served every call");
    let sent: Vec<_> = server
        .attempts()
        .iter()
        .map(|a| a.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        sent,
        [
            Some("Bearer tok-1".to_owned()),
            Some("Bearer tok-1".to_owned())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_never_answers_is_abandoned_and_asked_again() {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let cache = CachingTokenProvider::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok(Some(AccessToken::new("late")))
        }
    })
    .fetch_timeout(Duration::from_secs(2));
    let err = cache.token().await.unwrap_err();
    assert!(
        err.to_string().contains("did not answer within 2s"),
        "{err}"
    );
    // Asked again once the backoff (1 s ± 20 %) is over.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "late");
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}

/// A token that lives less than the refresh window (30 s against 60 s
/// ahead) is refreshed at half-life, not on every call: 100 calls over one
/// second make one fetch (issue 25: they made 100).
#[tokio::test(start_paused = true)]
async fn a_short_lived_token_is_not_refreshed_on_every_call() {
    let inner = Counting::new(Duration::from_secs(30));
    let cache = CachingTokenProvider::new(inner.clone());
    for _ in 0..100 {
        cache.token().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(inner.fetches(), 1);
    // Past half-life (15 s) one refresh, while the old token serves.
    tokio::time::sleep(Duration::from_secs(15)).await;
    for _ in 0..10 {
        assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the refresh's latency
    assert_eq!(inner.fetches(), 2);
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-2");
}

/// A provider that is down is asked once per backoff (1 s, doubling, ±20 %),
/// not once per call: 100 calls over one second make one or two fetches,
/// every call fails with the provider's error (issue 25: 100 fetches).
#[tokio::test(start_paused = true)]
async fn a_provider_that_is_down_is_asked_once_per_backoff() {
    let inner = Counting::new(Duration::from_secs(300));
    inner.fail.store(true, Ordering::SeqCst);
    let cache = CachingTokenProvider::new(inner.clone());
    for _ in 0..100 {
        let err = cache.token().await.unwrap_err();
        assert!(err.to_string().contains("identity provider down"), "{err}");
        assert_eq!(
            err.code(),
            Code::Unavailable,
            "the cached failure keeps its code"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((1..=2).contains(&inner.fetches()), "{}", inner.fetches());
    // Over the next 10 s: the backoff doubles (2, 4, 8 s ± 20 %), so at most
    // four more fetches, not a thousand.
    for _ in 0..1000 {
        let _ = cache.token().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(inner.fetches() <= 6, "{}", inner.fetches());
    // The provider is back: the first call after the backoff gets a token.
    inner.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(cache.token().await.unwrap().is_some());
}

/// A call made while the runtime shuts down (the fetch task is dropped the
/// moment it is spawned) ends with an error instead of deadlocking on the
/// cache's lock (issue 25).
#[test]
fn a_fetch_dropped_by_a_runtime_shutting_down_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        // Shut down (the workers gone): a task spawned now is dropped at once.
        runtime.shutdown_timeout(Duration::from_secs(5));
        let cache = CachingTokenProvider::new(Counting::new(Duration::from_secs(300)));
        let _entered = handle.enter();
        let result = futures_util::FutureExt::now_or_never(cache.token());
        done_tx
            .send(format!("{:?}", result.map(|r| r.map(|_| ()))))
            .unwrap();
    });
    let outcome = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the call returns: no deadlock");
    assert!(outcome.contains("stopped without answering"), "{outcome}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_does_not_cancel_the_fetch() {
    let inner = Counting::new(Duration::from_secs(300));
    let cache = Arc::new(CachingTokenProvider::new(inner.clone()));
    let caller = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    caller.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(cache.token().await.unwrap().unwrap().secret(), "tok-1");
    assert_eq!(started.elapsed(), Duration::ZERO, "served from the cache");
    assert_eq!(inner.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_rejections_of_one_token_causes_one_refetch() {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    for _ in 0..20 {
        server.push(
            paths::LIST_REPOSITORIES,
            Reply::status(Status::unauthenticated("token revoked")),
        );
    }
    let inner = Counting::new(Duration::from_secs(300));
    let client = mock_client(&server)
        .token_provider(CachingTokenProvider::new(inner.clone()))
        .build()
        .unwrap();
    // Warm the cache with tok-1, which the server then rejects 20 times at once.
    let _ = inner.clone().token().await; // tok-1 from the inner provider is not cached
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { ameide_tests::calls::read(&client).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // One fetch for the first token, one refetch after the burst.
    assert_eq!(
        inner.fetches(),
        1 + 2,
        "the extra one is the uncached warm-up"
    );
    let replays: std::collections::HashSet<_> = server
        .attempts()
        .iter()
        .skip(20)
        .map(|a| a.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        replays.len(),
        1,
        "every replay used the one new token: {replays:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_without_a_cache_is_not_replayed() {
    let server = MockServer::new();
    server.fallback(Reply::status(Status::unauthenticated("bad token")));
    let client = mock_client(&server)
        .token_provider(Counting::new(Duration::from_secs(300)))
        .build()
        .unwrap();
    let _ = client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await;
    assert_eq!(server.attempts().len(), 1);
}

/// A real HTTP/1.1 token endpoint on loopback; `answer` picks the reply to
/// each request body (the form) and may delay it.
async fn token_endpoint(
    answer: impl Fn(&str) -> (Duration, u16, String) + Send + Sync + 'static,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/realms/ameide/protocol/openid-connect/token",
        listener.local_addr().unwrap()
    );
    let forms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = forms.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (seen, answer) = (seen.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break text[end + 4..end + 4 + length].to_owned();
                        }
                    }
                };
                seen.lock().unwrap().push(body.clone());
                let (delay, status, json) = answer(&body);
                tokio::time::sleep(delay).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, forms)
}

#[tokio::test]
async fn client_credentials_posts_the_form_and_reads_the_token() {
    let (url, forms) = token_endpoint(|_| {
        (
            Duration::ZERO,
            200,
            r#"{"access_token":"kc-abc","token_type":"Bearer","expires_in":300}"#.into(),
        )
    })
    .await;
    let provider = ClientCredentials::new(&url, "svc-agents", "s3cr3t&=")
        .unwrap()
        .scope("ameide.api profile");
    let token = provider.token().await.unwrap().unwrap();
    assert_eq!(token.secret(), "kc-abc");
    let left = token.expires_at().unwrap() - Instant::now();
    assert!(left > Duration::from_secs(298) && left <= Duration::from_secs(300));
    let form = forms.lock().unwrap()[0].clone();
    assert_eq!(
        form,
        "grant_type=client_credentials&client_id=svc%2Dagents&client_secret=s3cr3t%26%3D&scope=ameide%2Eapi%20profile",
        "every value form-encoded"
    );
}

#[tokio::test]
async fn client_credentials_reports_failures_clearly() {
    // Refused credentials (400/401, RFC 6749 §5.2) are UNAUTHENTICATED; an
    // endpoint that fails or answers nonsense is UNAVAILABLE (issue 25 item 8).
    let cases: Vec<(u16, &str, &str, Code)> = vec![
        (
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
            "401 Unauthorized: invalid_client (bad secret)",
            Code::Unauthenticated,
        ),
        (
            400,
            r#"{"error":"invalid_grant"}"#,
            "400 Bad Request: invalid_grant",
            Code::Unauthenticated,
        ),
        (500, "oops", "500 Internal Server Error", Code::Unavailable),
        (429, "", "429 Too Many Requests", Code::Unavailable),
        (200, "{not json", "malformed JSON", Code::Unavailable),
        (
            200,
            r#"{"token_type":"Bearer"}"#,
            "without an access_token",
            Code::Unavailable,
        ),
        (
            200,
            r#"{"access_token":"x","token_type":"mac"}"#,
            "not a Bearer token",
            Code::Unavailable,
        ),
    ];
    for (status, body, needle, code) in cases {
        let body = body.to_owned();
        let (url, _) = token_endpoint(move |_| (Duration::ZERO, status, body.clone())).await;
        let err = ClientCredentials::new(&url, "id", "secret-value")
            .unwrap()
            .token()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{status}: {err}");
        assert_eq!(err.code(), code, "{status}: {err}");
        assert!(!err.to_string().contains("secret-value"));
    }
}

#[tokio::test]
async fn a_slow_token_endpoint_times_out() {
    let (url, _) = token_endpoint(|_| (Duration::from_secs(5), 200, "{}".into())).await;
    let started = std::time::Instant::now();
    let err = ClientCredentials::new(&url, "id", "s")
        .unwrap()
        .timeout(Duration::from_millis(200))
        .token()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_an_error_not_a_hang() {
    let url = format!("http://{}/token", ameide_tests::closed_addr());
    let err = ClientCredentials::new(&url, "id", "s")
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test]
async fn cached_client_credentials_fetch_again_when_the_token_expires() {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let (url, _) = token_endpoint(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        (
            Duration::ZERO,
            200,
            format!(r#"{{"access_token":"kc-{n}","token_type":"Bearer","expires_in":1}}"#),
        )
    })
    .await;
    let cached = ClientCredentials::new(&url, "id", "s")
        .unwrap()
        .cached()
        .refresh_ahead(Duration::ZERO)
        .jitter(0.0);
    assert_eq!(cached.token().await.unwrap().unwrap().secret(), "kc-1");
    assert_eq!(
        cached.token().await.unwrap().unwrap().secret(),
        "kc-1",
        "cached while valid"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        cached.token().await.unwrap().unwrap().secret(),
        "kc-2",
        "expired: fetched again"
    );
    assert_eq!(issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_with_an_oauth2_provider_sends_its_token() {
    let (url, _) = token_endpoint(|_| {
        (
            Duration::ZERO,
            200,
            r#"{"access_token":"kc-live","token_type":"bearer","expires_in":300}"#.into(),
        )
    })
    .await;
    let server = MockServer::new();
    let client = mock_client(&server)
        .token_provider(ClientCredentials::new(&url, "id", "s").unwrap().cached())
        .build()
        .unwrap();
    ameide_tests::calls::read(&client).await.unwrap();
    ameide_tests::calls::read(&client).await.unwrap();
    assert!(
        server
            .attempts()
            .iter()
            .all(|a| a.header("authorization") == Some("Bearer kc-live"))
    );
}
