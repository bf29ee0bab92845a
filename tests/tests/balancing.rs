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

/// Calls until every server has served one (within 10 s); each server's
/// count then, to measure the spread from.
async fn warm_up(client: &AmeideClient, servers: &[MockServer]) -> Vec<usize> {
    let started = std::time::Instant::now();
    loop {
        let counts: Vec<usize> = servers
            .iter()
            .map(|s| s.attempts_for(paths::LIST_REPOSITORIES).len())
            .collect();
        if counts.iter().all(|&c| c > 0) {
            return counts;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not every replica served: {counts:?}"
        );
        calls::read(client).await.expect("a warm-up call");
    }
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
    // Warm up until every replica has served (the first READY takes the
    // calls until the others are): the spread is measured after that.
    let base = warm_up(&client, &servers).await;
    let failures = load(&client, 10_000, 32).await;
    assert!(
        failures.is_empty(),
        "{} failed, first: {}",
        failures.len(),
        failures[0]
    );
    let counts: Vec<usize> = servers
        .iter()
        .zip(&base)
        .map(|(s, b)| s.attempts_for(paths::LIST_REPOSITORIES).len() - b)
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

/// Every replica down: after the first connects failed, a call fails at
/// once with UNAVAILABLE naming the connect error (it does not wait out its
/// deadline, nor hang), and the replicas keep reconnecting: one that comes
/// up on its address gets calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_down_fail_fast_and_a_returning_replica_gets_calls_again() {
    // Two free addresses on 127.0.0.2 and .3: bound, noted, released.
    let mut addrs = Vec::new();
    for octet in [2u8, 3] {
        let listener =
            std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, octet], 0))).unwrap();
        addrs.push(listener.local_addr().unwrap());
    }
    let client = AmeideClient::builder()
        .endpoint(static_target(&addrs))
        .timeout(Duration::from_secs(3))
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .build()
        .unwrap();
    for round in 0..3 {
        let started = std::time::Instant::now();
        let err = calls::read(&client)
            .await
            .expect_err("every replica is down");
        assert_eq!(err.code(), tonic::Code::Unavailable, "round {round}: {err}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "round {round}: failed fast, not at the deadline: {err}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // The first replica comes up on its address.
    let (server, _) = {
        let server = MockServer::new();
        server.fallback(Reply::ok());
        let addr = serve_tcp_at(server.clone(), addrs[0]).await.unwrap();
        (server, addr)
    };
    let mut served = false;
    for _ in 0..100 {
        if calls::read(&client).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the returning replica got no call within 10 s");
    assert!(!server.attempts_for(paths::LIST_REPOSITORIES).is_empty());
}

fn dns_client(dns: &ameide_tests::dnsmasq::Dnsmasq, port: u16, refresh: Duration) -> AmeideClient {
    let mut options = ameide_sdk::TransportOptions::default();
    options.dns_refresh = refresh;
    options.dns_min_interval = Duration::from_millis(100);
    AmeideClient::builder()
        .endpoint(format!("dns://{}/replicas.ameide.test:{port}", dns.addr))
        .transport_options(options)
        .build()
        .unwrap()
}

/// Backends on one port, one per loopback address, for a DNS name.
async fn backends_on_one_port(octets: &[u8]) -> (Vec<MockServer>, u16) {
    let mut servers = Vec::new();
    let mut port = 0;
    for &octet in octets {
        let server = MockServer::new();
        server.fallback(Reply::ok());
        let addr = serve_tcp_at(server.clone(), SocketAddr::from(([127, 0, 0, octet], port)))
            .await
            .expect("a backend on its loopback address");
        port = addr.port();
        servers.push(server);
    }
    (servers, port)
}

/// A real DNS server (dnsmasq) answers a name with four loopback
/// addresses: the client resolves all of them and spreads calls within
/// ±10 % of even.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_target_spreads_calls_over_every_address() {
    let Some(bin) = ameide_tests::dnsmasq::binary("dns_target_spreads_calls_over_every_address")
    else {
        return;
    };
    let (servers, port) = backends_on_one_port(&[2, 3, 4, 5]).await;
    let addrs: Vec<std::net::Ipv4Addr> = (2..=5)
        .map(|o| std::net::Ipv4Addr::new(127, 0, 0, o))
        .collect();
    let dns = ameide_tests::dnsmasq::Dnsmasq::start(&bin, "replicas.ameide.test", &addrs);
    let client = dns_client(&dns, port, Duration::from_secs(30));
    // Warm up until every replica has served (the first READY takes the
    // calls until the others are): the spread is measured after that.
    let base = warm_up(&client, &servers).await;
    let failures = load(&client, 4_000, 16).await;
    assert!(
        failures.is_empty(),
        "{} failed, first: {}\n{}",
        failures.len(),
        failures[0],
        dns.log()
    );
    let counts: Vec<usize> = servers
        .iter()
        .zip(&base)
        .map(|(s, b)| s.attempts_for(paths::LIST_REPOSITORIES).len() - b)
        .collect();
    for count in &counts {
        assert!(
            (900..=1_100).contains(count),
            "not within ±10 % of 1,000 each: {counts:?}"
        );
    }
}

/// Scale-up: a fifth address is added to DNS while 16 callers run; it gets
/// calls within the refresh interval, and no call fails. Then the DNS
/// server stops: the last good list keeps serving, no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_scale_up_and_a_dns_outage_fail_no_call() {
    let Some(bin) = ameide_tests::dnsmasq::binary("dns_scale_up_and_a_dns_outage_fail_no_call")
    else {
        return;
    };
    let (servers, port) = backends_on_one_port(&[2, 3, 4]).await;
    let first: Vec<std::net::Ipv4Addr> = (2..=3)
        .map(|o| std::net::Ipv4Addr::new(127, 0, 0, o))
        .collect();
    let mut dns = ameide_tests::dnsmasq::Dnsmasq::start(&bin, "replicas.ameide.test", &first);
    let client = dns_client(&dns, port, Duration::from_millis(500));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, stop, failures) = (client.clone(), stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = calls::read(&client).await {
                    failures.lock().unwrap().push(e);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(servers[2].attempts().is_empty(), "not in DNS yet");
    let all: Vec<std::net::Ipv4Addr> = (2..=4)
        .map(|o| std::net::Ipv4Addr::new(127, 0, 0, o))
        .collect();
    dns.set("replicas.ameide.test", &all);
    let added = std::time::Instant::now();
    let mut reached = None;
    while added.elapsed() < Duration::from_secs(5) {
        if !servers[2].attempts().is_empty() {
            reached = Some(added.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached =
        reached.unwrap_or_else(|| panic!("the new replica got no call within 5 s\n{}", dns.log()));
    eprintln!("the new replica got its first call {reached:?} after DNS had it");
    // DNS goes away: the last good list keeps serving.
    dns.stop();
    let before = servers.iter().map(|s| s.attempts().len()).sum::<usize>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let after = servers.iter().map(|s| s.attempts().len()).sum::<usize>();
    assert!(
        after > before + 100,
        "calls went on without DNS: {before} → {after}"
    );
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} failed, first: {}",
        failures.len(),
        failures[0]
    );
}
