//! Outlier ejection (gRFC A50's failure percentage) on the wire: five
//! replicas, each a recording server on a loopback address of its own, one
//! of them failing every call while its connection stays READY (a process
//! that answers while its dependency is down). With ejection it stops
//! getting calls within an interval or two; without it, round-robin keeps
//! sending it a fifth of them.

use std::net::SocketAddr;
use std::time::Duration;

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::testkit::{MockServer, Reply, serve_tcp_at};
use ameide_sdk::{AmeideClient, OutlierEjection, TransportOptions};
use ameide_tests::{calls, paths};
use tonic::Status;

/// Five replicas on 127.0.0.2..=6; the last fails every call UNAVAILABLE.
async fn replicas() -> Vec<(MockServer, SocketAddr)> {
    let mut out = Vec::new();
    for octet in 2..=6u8 {
        let server = MockServer::new();
        let addr = serve_tcp_at(server.clone(), SocketAddr::from(([127, 0, 0, octet], 0)))
            .await
            .expect("bind a loopback replica");
        out.push((server, addr));
    }
    out[4]
        .0
        .fallback(Reply::status(Status::unavailable("dependency down")));
    out
}

fn client(
    replicas: &[(MockServer, SocketAddr)],
    ejection: Option<OutlierEjection>,
) -> AmeideClient {
    let list: Vec<String> = replicas
        .iter()
        .map(|(_, a)| format!("http://{a}"))
        .collect();
    AmeideClient::builder()
        .endpoint(format!("static:///{}", list.join(",")))
        // Every failure visible: no retry moves it to another replica.
        .retry_policy(RetryPolicy::disabled())
        .transport_options(TransportOptions::default().with_outlier_ejection(ejection))
        .build()
        .unwrap()
}

/// `n` calls, `gap` apart; how many failed.
async fn run(client: &AmeideClient, n: usize, gap: Duration) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if calls::read(client).await.is_err() {
            failed += 1;
        }
        tokio::time::sleep(gap).await;
    }
    failed
}

fn attempts(server: &MockServer) -> usize {
    server.attempts_for(paths::LIST_REPOSITORIES).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_fails_its_calls_is_ejected_then_comes_back() {
    let replicas = replicas().await;
    let ejection = OutlierEjection::default()
        .with_interval(Duration::from_millis(200))
        .with_request_volume(5)
        .with_minimum_hosts(5)
        .with_base_ejection_time(Duration::from_secs(3));
    let client = client(&replicas, Some(ejection));
    // Until the failing replica is out: it failed a fifth of the calls of
    // an interval or two, then none.
    let mut failed = 0;
    for _ in 0..100 {
        failed += run(&client, 10, Duration::from_millis(5)).await;
        let before = attempts(&replicas[4].0);
        let more = run(&client, 40, Duration::from_millis(2)).await;
        failed += more;
        if more == 0 && attempts(&replicas[4].0) == before {
            break;
        }
    }
    let seen_out = std::time::Instant::now();
    let ejected_at = attempts(&replicas[4].0);
    assert!(ejected_at > 0, "it got calls before its ejection");
    // Ejected for 3 s (from at most ~0.5 s before `seen_out`): calls made
    // within 1 s of seeing it out all go to the others.
    let mut during = 0;
    while seen_out.elapsed() < Duration::from_secs(1) {
        during += run(&client, 10, Duration::from_millis(2)).await;
    }
    assert_eq!(during, 0, "an ejected replica got calls");
    assert_eq!(attempts(&replicas[4].0), ejected_at);
    for (server, _) in &replicas[..4] {
        assert!(attempts(server) > 20, "the others share the calls");
    }
    eprintln!("ejected after {ejected_at} calls to it ({failed} failed in all)");
    // Back after its ejection time: it gets calls (and fails them) again.
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(seen_out.elapsed()) + Duration::from_millis(300),
    )
    .await;
    let after = run(&client, 40, Duration::from_millis(2)).await;
    assert!(after > 0, "the replica is back in the picks");
    assert!(attempts(&replicas[4].0) > ejected_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ejection_round_robin_keeps_sending_it_its_share() {
    let replicas = replicas().await;
    let client = client(&replicas, None);
    // Every replica connected first.
    run(&client, 50, Duration::from_millis(2)).await;
    let failed = run(&client, 100, Duration::from_millis(2)).await;
    // Round-robin over 5 READY replicas: about a fifth, every time.
    assert!((15..=25).contains(&failed), "{failed} of 100 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_busy_replicas_eject_nobody() {
    let replicas = replicas().await;
    // Six replicas must have made the volume: there are five.
    let ejection = OutlierEjection::default()
        .with_interval(Duration::from_millis(100))
        .with_request_volume(5)
        .with_minimum_hosts(6);
    let client = client(&replicas, Some(ejection));
    run(&client, 100, Duration::from_millis(2)).await;
    let failed = run(&client, 100, Duration::from_millis(2)).await;
    assert!((15..=25).contains(&failed), "{failed} of 100 failed");
}

#[test]
fn settings_out_of_range_fail_the_build() {
    let err = AmeideClient::builder()
        .endpoint("static:///127.0.0.1:1,127.0.0.1:2")
        .transport_options(TransportOptions::default().with_outlier_ejection(
            OutlierEjection::default().with_failure_percentage_threshold(150),
        ))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("failure_percentage_threshold"),
        "{err}"
    );
}

/// A replica that accepts calls and never answers in time: each call to it
/// ends at its deadline, which counts as its failure, so it is ejected too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_in_time_is_ejected() {
    let replicas = replicas().await;
    replicas[4]
        .0
        .fallback(Reply::ok().after(Duration::from_secs(30)));
    let list: Vec<String> = replicas
        .iter()
        .map(|(_, a)| format!("http://{a}"))
        .collect();
    let client = AmeideClient::builder()
        .endpoint(format!("static:///{}", list.join(",")))
        .retry_policy(RetryPolicy::disabled())
        .timeout(Duration::from_millis(100))
        .transport_options(
            TransportOptions::default().with_outlier_ejection(
                OutlierEjection::default()
                    .with_interval(Duration::from_millis(200))
                    .with_request_volume(3)
                    .with_minimum_hosts(5)
                    .with_base_ejection_time(Duration::from_secs(30)),
            ),
        )
        .build()
        .unwrap();
    // 5 concurrent callers, so a hung call does not stall the others.
    let started = std::time::Instant::now();
    let mut out = false;
    while started.elapsed() < Duration::from_secs(5) && !out {
        let before = attempts(&replicas[4].0);
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let client = client.clone();
            batch.spawn(async move { run(&client, 10, Duration::from_millis(1)).await });
        }
        while batch.join_next().await.is_some() {}
        out = attempts(&replicas[4].0) == before;
    }
    assert!(out, "the hung replica is still picked after 5 s");
    let failed = run(&client, 50, Duration::from_millis(1)).await;
    assert_eq!(failed, 0, "no call goes to the hung replica");
}
