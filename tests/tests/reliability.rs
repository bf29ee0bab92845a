//! Reliability: many concurrent calls through one client against random,
//! per-call fault scripts; each must end with exactly the outcome the
//! contract's rules predict, within its deadline. Paused clock.

use std::collections::BTreeMap;
use std::time::Duration;

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{AmeideClient, TransportOptions};
use ameide_tests::{mock_client, paths};
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy)]
enum Fault {
    Ok,
    Unavailable,
    ResourceExhausted,
    Internal,
    NotFound,
    Slow, // longer than the whole call's budget
}

fn reply(f: Fault) -> Reply {
    match f {
        Fault::Ok => Reply::ok(),
        Fault::Unavailable => Reply::status(Status::unavailable("storm")),
        Fault::ResourceExhausted => Reply::status(Status::resource_exhausted("busy")),
        Fault::Internal => Reply::status(Status::internal("bug")),
        Fault::NotFound => Reply::status(Status::not_found("gone")),
        Fault::Slow => Reply::ok().after(Duration::from_secs(60)),
    }
}

/// What the contract's rules predict for a script: (code, attempts).
fn expected(script: &[Fault]) -> (Code, usize) {
    for (n, f) in script.iter().enumerate().take(3) {
        let attempts = n + 1;
        match f {
            Fault::Ok => return (Code::Ok, attempts),
            Fault::Internal => return (Code::Internal, attempts),
            Fault::NotFound => return (Code::NotFound, attempts),
            Fault::Slow => return (Code::DeadlineExceeded, attempts),
            Fault::Unavailable | Fault::ResourceExhausted if attempts == 3 => {
                let code = if matches!(f, Fault::Unavailable) {
                    Code::Unavailable
                } else {
                    Code::ResourceExhausted
                };
                return (code, 3);
            }
            _ => {}
        }
    }
    unreachable!("scripts have three entries")
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_calls_with_random_faults_all_end_as_predicted() {
    // No in-flight limit: every call gets its whole budget on the wire, so
    // every outcome is exactly the one the contract's rules predict.
    thousand_calls(None).await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_calls_behind_the_in_flight_limit_end_as_predicted_or_in_time() {
    // The default limit (128): calls wait in line behind slow ones, so a call
    // may run out of time before its script does. It then ends with
    // DEADLINE_EXCEEDED after fewer attempts, never later than its deadline.
    let waited = thousand_calls(Some(ameide_sdk::InFlightLimit::DEFAULT)).await;
    assert!(waited > 50, "the limit really held calls back: {waited}");
}

/// Runs the thousand calls; returns how many ended early for lack of time.
async fn thousand_calls(limit: Option<ameide_sdk::InFlightLimit>) -> usize {
    let server = MockServer::new();
    // Throttling off: this is about per-call outcomes under the contract's rules.
    let client = mock_client(&server)
        .timeout(Duration::from_secs(5))
        .retry_policy(ameide_sdk::layers::RetryPolicy::default().with_throttling(None))
        .in_flight_limit(limit)
        .build()
        .unwrap();
    let faults = [
        Fault::Ok,
        Fault::Unavailable,
        Fault::ResourceExhausted,
        Fault::Internal,
        Fault::NotFound,
        Fault::Slow,
    ];
    let mut rng = fastrand::Rng::with_seed(20261121);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let script: Vec<Fault> = (0..3).map(|_| faults[rng.usize(..faults.len())]).collect();
        let id = format!("call-{i}");
        for f in &script {
            server.push_for_request(paths::LIST_REPOSITORIES, &id, reply(*f));
        }
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (code, took) = ameide_tests::calls::read_as(&client, &id, None).await;
            (id, script, code, took)
        }));
    }
    let mut outcomes = BTreeMap::new();
    let mut out_of_time = 0;
    for task in tasks {
        let (id, script, code, took) = task.await.expect("no call panics");
        let (want, attempts) = expected(&script);
        let seen = server
            .attempts()
            .iter()
            .filter(|a| a.header("x-request-id") == Some(id.as_str()))
            .count();
        assert!(
            took <= Duration::from_millis(5050),
            "{id} outlived its deadline: {took:?}"
        );
        if limit.is_some() && (code, seen) != (want, attempts) {
            assert_eq!(code, Code::DeadlineExceeded, "{id} {script:?}");
            assert!(
                seen < attempts,
                "{id} {script:?}: {seen} attempts on the wire"
            );
            out_of_time += 1;
            continue;
        }
        assert_eq!(code, want, "{id} {script:?}");
        assert_eq!(seen, attempts, "{id} {script:?}: attempts on the wire");
        *outcomes.entry(format!("{want:?}")).or_insert(0) += 1;
    }
    // The mix really exercised every path (ending in UNAVAILABLE or
    // RESOURCE_EXHAUSTED takes three retryable faults in a row: ~2 % each).
    for code in [
        "Ok",
        "Unavailable",
        "ResourceExhausted",
        "Internal",
        "NotFound",
        "DeadlineExceeded",
    ] {
        assert!(outcomes.get(code).copied().unwrap_or(0) > 5, "{outcomes:?}");
    }
    out_of_time
}

#[tokio::test]
async fn a_pool_spreads_calls_over_its_connections() {
    let server = MockServer::new();
    let addr = serve_tcp(server.clone()).await.unwrap();
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .transport_options(TransportOptions::default().with_connections(3))
        .build()
        .unwrap();
    for _ in 0..9 {
        ameide_tests::calls::read(&client).await.unwrap();
    }
    let mut per_connection = BTreeMap::new();
    for attempt in server.attempts() {
        *per_connection.entry(attempt.connection).or_insert(0) += 1;
    }
    assert_eq!(per_connection.len(), 3, "{per_connection:?}");
    assert!(
        per_connection.values().all(|&n| n == 3),
        "{per_connection:?}"
    );

    for bad in [0, 65] {
        let err = AmeideClient::builder()
            .endpoint(format!("http://{addr}"))
            .transport_options(TransportOptions::default().with_connections(bad))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("connections"), "{err}");
    }
}
