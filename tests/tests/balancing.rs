//! Many replicas behind one client (issue 26): a static list of backends,
//! each a real tonic server on its own loopback address (127.0.0.2,
//! 127.0.0.3, …), balanced round-robin over their subchannels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ameide_sdk::AmeideClient;
use ameide_sdk::testkit::{MockServer, Reply, serve_tcp_at};
use ameide_tests::{calls, paths};

async fn backend(last_octet: u8) -> (MockServer, SocketAddr) {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let addr = serve_tcp_at(
        server.clone(),
        SocketAddr::from(([127, 0, 0, last_octet], 0)),
    )
    .await
    .expect("a backend on its own loopback address");
    (server, addr)
}

fn static_target(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("static:///{}", list.join(","))
}

/// `calls` calls from `callers` concurrent callers; the failures.
async fn load(client: &AmeideClient, calls_total: u64, callers: u64) -> Vec<ameide_sdk::Error> {
    let left = Arc::new(AtomicU64::new(calls_total));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (client, left, failures) = (client.clone(), left.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                if let Err(e) = calls::read(&client).await {
                    failures.lock().unwrap().push(e);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    std::mem::take(&mut *failures.lock().unwrap())
}

/// Four backends behind one static target: 10,000 calls spread within
/// ±10 % of even, none failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_calls_evenly_over_four_backends() {
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for octet in 2..=5 {
        let (server, addr) = backend(octet).await;
        servers.push(server);
        addrs.push(addr);
    }
    let client = AmeideClient::builder()
        .endpoint(static_target(&addrs))
        .build()
        .unwrap();
    let failures = load(&client, 10_000, 32).await;
    assert!(
        failures.is_empty(),
        "{} failed, first: {}",
        failures.len(),
        failures[0]
    );
    let counts: Vec<usize> = servers
        .iter()
        .map(|s| s.attempts_for(paths::LIST_REPOSITORIES).len())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 10_000, "{counts:?}");
    for count in &counts {
        assert!(
            (2_250..=2_750).contains(count),
            "not within ±10 % of 2,500 each: {counts:?}"
        );
    }
}

/// A replica that is down (its port closed) first in the list: every call
/// goes to the others in one attempt (none waits on the dead address: with
/// none READY yet, a call waits for the first to become READY), and both
/// live replicas share the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_in_the_list_fails_no_call() {
    let (a, a_addr) = backend(2).await;
    let (b, b_addr) = backend(3).await;
    let dead = ameide_tests::closed_addr();
    let client = AmeideClient::builder()
        .endpoint(static_target(&[dead, a_addr, b_addr]))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = Vec::new();
            for _ in 0..75 {
                let response = client
                    .graph()
                    .list_repositories(
                        ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default(),
                    )
                    .await
                    .expect("every call succeeds");
                let info = response.extensions().get::<ameide_sdk::CallInfo>().cloned();
                attempts.push(info.expect("call info").attempts);
            }
            attempts
        }));
    }
    for task in tasks {
        let attempts = task.await.unwrap();
        assert!(attempts.iter().all(|&n| n == 1), "{attempts:?}");
    }
    let (na, nb) = (
        a.attempts_for(paths::LIST_REPOSITORIES).len(),
        b.attempts_for(paths::LIST_REPOSITORIES).len(),
    );
    assert_eq!(na + nb, 600);
    assert!(
        na > 200 && nb > 200,
        "both live replicas serve: {na} and {nb}"
    );
}

/// Static targets are validated when the client is built.
#[tokio::test]
async fn static_targets_are_validated() {
    for (target, needle) in [
        ("static:///", "empty entry"),
        ("static:///127.0.0.1:1,,127.0.0.1:2", "empty entry"),
        ("static:///http://127.0.0.1:1,https://127.0.0.1:2", "mix"),
        ("static:///127.0.0.1:1/path", "no path"),
    ] {
        let err = AmeideClient::builder()
            .endpoint(target)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{target}: {err}");
    }
}
