//! gRFC A6 hedging on the wire (issue 27): grpc-go backends on their own
//! loopback addresses, one 10x slower than the others, for the latency and
//! the RST_STREAM CANCEL the losing attempts get (grpc-go cancels the call's
//! context when it arrives, and the server prints it); the recording server
//! for the rules that need a scripted answer per attempt (non-fatal and fatal
//! codes, pushback, the headers of each hedge).

use std::time::{Duration, Instant};

use ameide_sdk::AmeideClient;
use ameide_sdk::layers::{HedgingPolicy, RetryLayer, RetryPolicy, ThrottleConfig};
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_tests::grpc_go::GoServer;
use ameide_tests::{calls, mock_client, paths};
use tonic::{Code, Status};

/// Three grpc-go replicas on 127.0.0.2–4; the one on .4 answers after
/// `slow`, the others after `fast`.
fn replicas(bin: &std::path::Path, fast: &str, slow: &str) -> Vec<GoServer> {
    [(2u8, fast), (3, fast), (4, slow)]
        .into_iter()
        .map(|(octet, delay)| {
            GoServer::start(
                bin,
                &["-addr", &format!("127.0.0.{octet}:0"), "-delay", delay],
            )
        })
        .collect()
}

fn static_target(servers: &[GoServer]) -> String {
    let list: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// Waits (up to 2 s) until `check` holds of the servers' events.
async fn eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// One of three replicas 10x slower (200 ms against 20 ms), a hedging
/// delay of 20 ms: every call answers in about the fast replicas' latency
/// plus the delay, never the slow one's; every attempt the slow replica got
/// was cancelled on the wire (grpc-go saw RST_STREAM CANCEL); each hedge went
/// to another replica than the attempt before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_answers_at_the_fast_replicas_pace_and_cancels_the_slow_one() {
    let Some(bin) = ameide_tests::grpc_go::binary(
        "hedging_answers_at_the_fast_replicas_pace_and_cancels_the_slow_one",
    ) else {
        return;
    };
    let servers = replicas(&bin, "20ms", "200ms");
    let client = AmeideClient::builder()
        .endpoint(static_target(&servers))
        .hedging(HedgingPolicy::new(3, Duration::from_millis(20)))
        .build()
        .unwrap();
    // Every replica READY first: the latencies are the replicas', not connects.
    while servers.iter().any(|s| s.calls() == 0) {
        calls::read(&client).await.expect("a warm-up call");
    }
    // The warm-up's attempts on the slow replica end (answered or
    // cancelled) and their lines are read before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_before = servers[2].settled_calls().await;
    let slow_before = (calls_before, servers[2].cancelled());
    let mut worst = Duration::ZERO;
    let mut took = Vec::new();
    for _ in 0..60 {
        let started = Instant::now();
        calls::read(&client).await.expect("a hedged call");
        let elapsed = started.elapsed();
        worst = worst.max(elapsed);
        took.push(elapsed);
    }
    took.sort();
    let median = took[took.len() / 2];
    // The slow replica alone answers in 200 ms. That no call waited for
    // it is proven below (every attempt it got was cancelled); this bound
    // only catches a call that waited for several of its answers, with
    // room for a pause of a loaded machine.
    assert!(
        worst < Duration::from_secs(1),
        "a call waited for the slow replica: {worst:?}"
    );
    // The fast replicas' 20 ms plus the hedging delay's 20 ms, and room.
    assert!(median < Duration::from_millis(80), "median {median:?}");
    let slow_calls = servers[2].settled_calls().await - slow_before.0;
    let fast_calls: usize = servers[..2].iter().map(GoServer::calls).sum();
    eprintln!(
        "hedged: median {median:?}, slowest {worst:?}; the slow replica got {slow_calls} attempts, the fast ones {fast_calls} (warm-up included)"
    );
    assert!(slow_calls > 0, "round-robin gave the slow replica attempts");
    // No replica got two attempts of one call: each hedge went elsewhere.
    for server in &servers {
        let mut ids = server.request_ids();
        let all = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all, "a replica got two attempts of one call");
    }
    let hedged_calls = servers
        .iter()
        .flat_map(GoServer::request_ids)
        .fold(
            std::collections::HashMap::<String, usize>::new(),
            |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            },
        )
        .into_values()
        .filter(|&n| n > 1)
        .count();
    assert!(hedged_calls > 0, "some calls were hedged");
    // Each of them lost and was cancelled (RST_STREAM CANCEL).
    assert!(
        eventually(|| servers[2].cancelled() - slow_before.1 == slow_calls).await,
        "the slow replica got {slow_calls} attempts and saw {} cancelled",
        servers[2].cancelled() - slow_before.1
    );
}

/// With the throttle's tokens at half or less, no hedge goes: only the
/// first attempt reaches the server, and the call waits for it. A full
/// bucket lets every hedge go (hedges spend no token; failures do).
#[tokio::test]
async fn an_exhausted_throttle_sends_only_the_first_attempt() {
    let server = MockServer::new();
    server.fallback(Reply::ok().after(Duration::from_millis(100)));
    let throttling = ThrottleConfig {
        max_tokens: 2.0,
        token_ratio: 0.1,
    };
    let layer = RetryLayer::new(RetryPolicy::default().with_throttling(Some(throttling))).unwrap();
    let client = mock_client(&server)
        .retry_layer(layer)
        .hedging(HedgingPolicy::new(5, Duration::from_millis(10)))
        .build()
        .unwrap();
    calls::read(&client)
        .await
        .expect("hedges while the bucket is full");
    assert_eq!(
        server.attempts_for(paths::LIST_REPOSITORIES).len(),
        5,
        "a full bucket lets every hedge go"
    );
    // One failure the server answered with: 2 tokens → 1, not more than
    // half. A client of the same target with a 1 s delay (the bucket is
    // the target's), so the failure surely comes before any hedge is due.
    let slow_hedger = mock_client_for(&server, client.endpoint())
        .retry_layer(
            RetryLayer::new(RetryPolicy::default().with_throttling(Some(throttling))).unwrap(),
        )
        .hedging(HedgingPolicy::new(5, Duration::from_secs(1)))
        .build()
        .unwrap();
    server.reset();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("overloaded")),
    );
    server.fallback(Reply::ok().after(Duration::from_millis(100)));
    let err = calls::read(&slow_hedger)
        .await
        .expect_err("throttled after its failure");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(server.attempts_for(paths::LIST_REPOSITORIES).len(), 1);
    let started = Instant::now();
    calls::read(&client)
        .await
        .expect("the first attempt answers");
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        server.attempts_for(paths::LIST_REPOSITORIES).len(),
        2,
        "no hedge while throttled"
    );
}

/// A client over `server`'s in-memory transport that names `target` (so
/// that it shares that target's throttle bucket).
fn mock_client_for(server: &MockServer, target: &str) -> ameide_sdk::AmeideClientBuilder {
    AmeideClient::builder()
        .endpoint(target)
        .transport(ameide_sdk::testkit::duplex_transport(server.clone()))
}

fn hedged(server: &MockServer, policy: HedgingPolicy) -> AmeideClient {
    mock_client(server)
        .hedging(policy)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A non-fatal failure (UNAVAILABLE) sends the next hedge at once, not at
/// the hedging delay; the hedge carries `grpc-previous-rpc-attempts` and
/// the same request id.
#[tokio::test]
async fn a_non_fatal_code_sends_the_next_hedge_at_once() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("this replica is down")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = hedged(&server, HedgingPolicy::new(3, Duration::from_secs(2)));
    let started = Instant::now();
    calls::read(&client).await.expect("the hedge answers");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let attempts = server.attempts_for(paths::LIST_REPOSITORIES);
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].header("grpc-previous-rpc-attempts"), None);
    assert_eq!(attempts[1].header("grpc-previous-rpc-attempts"), Some("1"));
    assert_eq!(
        attempts[0].header("x-request-id"),
        attempts[1].header("x-request-id"),
        "one request id for every attempt"
    );
    assert!(
        attempts[1].header("grpc-timeout").is_some(),
        "the remaining budget"
    );
}

/// A fatal code commits the call at once: the attempt still out is
/// cancelled, and the call fails with that code without waiting for it.
#[tokio::test]
async fn a_fatal_code_commits_at_once() {
    let server = MockServer::new();
    // The first attempt would answer OK after 5 s; the hedge fails at once.
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::ok().after(Duration::from_secs(5)),
    );
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::invalid_argument("no such page")),
    );
    // The hedge at 500 ms fails at once; a third would be due at 1 s.
    let client = hedged(&server, HedgingPolicy::new(3, Duration::from_millis(500)));
    let started = Instant::now();
    let err = calls::read(&client).await.expect_err("a fatal code");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(990),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.attempts(), 2, "{err}");
    // Both attempts in the history: the first cancelled by the commit.
    let codes: Vec<Code> = err.history().iter().map(|a| a.code).collect();
    assert_eq!(codes, vec![Code::InvalidArgument, Code::Cancelled], "{err}");
    assert_eq!(
        server.attempts_for(paths::LIST_REPOSITORIES).len(),
        2,
        "no third attempt"
    );
}

/// Server pushback: `grpc-retry-pushback-ms: 300` on a failed attempt
/// delays the next hedge by exactly that (not at once, not the hedging
/// delay); a negative pushback sends no more hedges.
#[tokio::test]
async fn pushback_delays_or_stops_the_next_hedge() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("busy")).header("grpc-retry-pushback-ms", "300"),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = hedged(&server, HedgingPolicy::new(3, Duration::from_secs(3)));
    calls::read(&client)
        .await
        .expect("the delayed hedge answers");
    let attempts = server.attempts_for(paths::LIST_REPOSITORIES);
    assert_eq!(attempts.len(), 2);
    let gap = attempts[1].at.duration_since(attempts[0].at);
    assert!(
        gap >= Duration::from_millis(300) && gap < Duration::from_millis(1500),
        "the hedge came {gap:?} after the pushback"
    );

    server.reset();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("go away")).header("grpc-retry-pushback-ms", "-1"),
    );
    server.fallback(Reply::ok());
    let started = Instant::now();
    let err = calls::read(&client)
        .await
        .expect_err("no hedge after a negative pushback");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(server.attempts_for(paths::LIST_REPOSITORIES).len(), 1);
}

/// A method the bundle does not mark safe to repeat refuses a hedging
/// policy with an error naming it; per-client hedging leaves it to the
/// retry policy (one attempt on the wire at a time).
#[tokio::test]
async fn a_method_with_side_effects_is_never_hedged() {
    let server = MockServer::new();
    let policy = HedgingPolicy::new(2, Duration::from_millis(1));
    let err = mock_client(&server)
        .hedging_for(paths::CREATE_ELEMENT, policy.clone())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains(paths::CREATE_ELEMENT), "{err}");
    assert!(
        err.to_string().contains("NO_SIDE_EFFECTS or IDEMPOTENT"),
        "{err}"
    );
    let err = mock_client(&server)
        .hedging_for("/nope.Service/Method", policy.clone())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no such method"), "{err}");

    // Per client: the create is slow and is not hedged (one attempt).
    server.push(
        paths::CREATE_ELEMENT,
        Reply::ok().after(Duration::from_millis(100)),
    );
    let client = hedged(&server, policy);
    calls::create(&client).await.expect("a create");
    assert_eq!(server.attempts_for(paths::CREATE_ELEMENT).len(), 1);
}

/// The spans of a hedged call's attempts say which attempt each is and
/// whether it is a hedge.
#[tokio::test]
async fn hedged_attempts_spans_say_they_are_hedges() {
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("down")),
    );
    let client = mock_client(&server)
        .tracer_provider(&provider)
        .hedging(HedgingPolicy::new(2, Duration::from_secs(1)))
        .build()
        .unwrap();
    calls::read(&client).await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2);
    let mut seen: Vec<(i64, bool)> = spans
        .iter()
        .map(|span| {
            let get = |key: &str| {
                span.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.clone())
            };
            match (get("ameide.attempt"), get("ameide.hedge")) {
                (Some(Value::I64(n)), Some(Value::Bool(hedge))) => (n, hedge),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(1, false), (2, true)]);
}
