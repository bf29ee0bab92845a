//! The target forms beside `http(s)://` and `dns:` (issue 26): `unix:`
//! sockets (served by grpc-go and by the testkit's recording server), a
//! custom [`Resolver`] feeding the balancer, `AmeideClientBuilder::endpoints`,
//! and TLS to every address of a `dns:` target, verified against the name
//! (grpc-go TLS backends, Debian's dnsmasq, certificates from openssl).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ameide_sdk::testkit::{MockServer, Reply, serve_unix};
use ameide_sdk::{AddressStream, AmeideClient, Proxy, Resolver, TransportOptions};
use ameide_tests::grpc_go::GoServer;
use ameide_tests::{calls, paths};
use tokio::sync::mpsc;

async fn backend(last_octet: u8) -> (MockServer, SocketAddr) {
    ameide_tests::replica(last_octet).await
}

fn served(server: &MockServer) -> usize {
    server.attempts_for(paths::LIST_REPOSITORIES).len()
}

/// A grpc-go server on a Unix socket serves a `unix:///` target, and a
/// `unix:` target whose socket is missing fails with UNAVAILABLE naming the
/// socket (like a refused TCP port: reconnects are tried while the
/// deadline leaves room for one, as a socket may appear when its server starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_target_reaches_a_grpc_go_server_on_its_socket() {
    let Some(bin) =
        ameide_tests::grpc_go::binary("a_unix_target_reaches_a_grpc_go_server_on_its_socket")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("orders.sock");
    let server = GoServer::start(&bin, &["-unix", socket.to_str().unwrap()]);
    assert_eq!(server.listening, socket.to_str().unwrap());
    let client = AmeideClient::builder()
        .endpoint(format!("unix://{}", socket.display()))
        .build()
        .unwrap();
    for _ in 0..20 {
        calls::read(&client).await.expect("a call over the socket");
    }
    assert_eq!(
        server.settled_calls().await,
        20,
        "every call reached grpc-go"
    );
    assert_eq!(server.connections().len(), 1, "one connection carried them");

    let missing = dir.path().join("missing.sock");
    let client = AmeideClient::builder()
        .endpoint(format!("unix:{}", missing.display()))
        .timeout(Duration::from_secs(1))
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = calls::read(&client).await.expect_err("no socket there");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.to_string().contains("missing.sock"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed fast: {err}"
    );
}

/// The testkit's recording server on a Unix socket sees `:authority`
/// `localhost` (grpc-go's choice for unix: targets) and the contract's
/// headers, as over TCP.
#[tokio::test]
async fn a_unix_target_sends_localhost_as_authority() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = MockServer::new();
    server.fallback(Reply::ok());
    serve_unix(server.clone(), &socket).await.unwrap();
    let client = AmeideClient::builder()
        .endpoint(format!("unix:{}", socket.display()))
        .tenant_id("tenant-a")
        .build()
        .unwrap();
    calls::read(&client).await.unwrap();
    let attempt = &server.attempts_for(paths::LIST_REPOSITORIES)[0];
    assert_eq!(attempt.authority.as_deref(), Some("localhost"));
    assert_eq!(attempt.header("x-tenant-id"), Some("tenant-a"));
    assert!(attempt.header("x-request-id").is_some());
}

/// A registry whose answers the test sends; it counts the hints.
struct Registry {
    answers: std::sync::Mutex<Option<mpsc::UnboundedReceiver<ameide_sdk::ResolverAnswer>>>,
    watched: std::sync::Mutex<Vec<String>>,
    hints: Arc<AtomicUsize>,
}

impl Resolver for Registry {
    fn watch(&self, name: &str) -> AddressStream {
        self.watched.lock().unwrap().push(name.to_owned());
        let receiver = self.answers.lock().unwrap().take().expect("watched once");
        Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ))
    }

    fn resolve_now(&self, _name: &str) {
        self.hints.fetch_add(1, Ordering::Relaxed);
    }
}

/// Calls until `server` has served `n` more, or 5 s pass.
async fn until_served(client: &AmeideClient, server: &MockServer, n: usize) {
    let target = served(server) + n;
    let started = Instant::now();
    while served(server) < target {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the replica got no call within 5 s"
        );
        calls::read(client).await.expect("a call");
    }
}

/// A custom resolver drives the balancer: its first answer's replicas
/// share the calls; an error keeps the last list serving; a new answer
/// moves new calls to its replicas; an empty answer fails calls at once;
/// a dead replica in the list brings hints (no more often than the minimum
/// interval); the stream is dropped with the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_resolver_feeds_the_balancer() {
    let (a, a_addr) = backend(2).await;
    let (b, b_addr) = backend(3).await;
    let (c, c_addr) = backend(4).await;
    let (answers, receiver) = mpsc::unbounded_channel();
    let hints = Arc::new(AtomicUsize::new(0));
    let registry = Registry {
        answers: std::sync::Mutex::new(Some(receiver)),
        watched: std::sync::Mutex::new(Vec::new()),
        hints: hints.clone(),
    };
    let client = AmeideClient::builder()
        .endpoint("registry:///orders.prod:50051")
        .resolver("registry", registry)
        .transport_options(
            TransportOptions::default()
                .with_dns_refresh(Duration::from_secs(30), Duration::from_millis(200)),
        )
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    // Before the first answer, a call waits for it (here: until it comes).
    let first = {
        let client = client.clone();
        tokio::spawn(async move { calls::read(&client).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    answers.send(Ok(vec![a_addr, b_addr])).unwrap();
    first
        .await
        .unwrap()
        .expect("the waiting call goes once the answer comes");
    // Once both are READY (the first calls may find one connecting), in turn.
    until_served(&client, &a, 1).await;
    until_served(&client, &b, 1).await;
    let (from_a, from_b) = (served(&a), served(&b));
    for _ in 0..100 {
        calls::read(&client).await.expect("a call");
    }
    let (on_a, on_b) = (served(&a) - from_a, served(&b) - from_b);
    assert_eq!(on_a + on_b, 100);
    assert!(
        (40..=60).contains(&on_a),
        "round-robin over a and b: {on_a} vs {on_b}"
    );
    let authority = a.attempts_for(paths::LIST_REPOSITORIES)[0]
        .authority
        .clone();
    assert_eq!(
        authority.as_deref(),
        Some("orders.prod:50051"),
        "the name is :authority"
    );

    // The registry fails: the last good list keeps serving.
    answers.send(Err("registry unreachable".into())).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        calls::read(&client).await.expect("the last list serves");
    }

    // A new answer: new calls go to c only.
    answers.send(Ok(vec![c_addr])).unwrap();
    until_served(&client, &c, 1).await;
    let (before_a, before_b) = (served(&a), served(&b));
    for _ in 0..20 {
        calls::read(&client).await.expect("a call to c");
    }
    assert_eq!(
        (served(&a), served(&b)),
        (before_a, before_b),
        "a and b left the list"
    );

    // An empty answer: no replica, calls fail at once naming the target.
    answers.send(Ok(Vec::new())).unwrap();
    let applied = Instant::now();
    while calls::read(&client).await.is_ok() {
        assert!(
            applied.elapsed() < Duration::from_secs(2),
            "the empty answer was not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let err = calls::read(&client).await.expect_err("no replica");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.to_string().contains("answered no address"), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "failed at once: {err}"
    );

    // A dead replica beside c: hints, at most one per 200 ms.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.5:0").unwrap();
        listener.local_addr().unwrap()
    };
    answers.send(Ok(vec![dead, c_addr])).unwrap();
    // The answer reaches the balancer through the watch task.
    let started = Instant::now();
    while calls::read(&client).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the answer was not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Hints until now may be the new list's connecting: counted from here.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let hinted_before = hints.load(Ordering::Relaxed);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        calls::read(&client)
            .await
            .expect("c serves beside a dead replica");
    }
    let hinted = hints.load(Ordering::Relaxed) - hinted_before;
    // The dead replica keeps the hints coming, one per 200 ms: 5 in 1 s
    // (one more or less at the window's edges, fewer on a loaded machine).
    assert!(
        (3..=6).contains(&hinted),
        "resolve_now asked for while a replica is dead, at most once per 200 ms: {hinted}"
    );

    // The client goes: its watch ends and the stream is dropped.
    drop(client);
    tokio::time::timeout(Duration::from_secs(2), answers.closed())
        .await
        .expect("the resolver's stream is dropped with the client");
}

/// A resolver whose stream ends without an answer fails calls at once
/// with UNAVAILABLE saying so (not at their deadline).
#[tokio::test]
async fn a_resolver_that_ends_without_an_answer_fails_calls_at_once() {
    struct Silent;
    impl Resolver for Silent {
        fn watch(&self, _: &str) -> AddressStream {
            Box::pin(tokio_stream::empty())
        }
    }
    let client = AmeideClient::builder()
        .endpoint("registry:///orders")
        .resolver("registry", Silent)
        .timeout(Duration::from_secs(3))
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = calls::read(&client).await.expect_err("no answer ever");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(
        err.to_string()
            .contains("ended its answers without giving one"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "{err}");
}

/// Resolver registrations and resolver targets are checked at build.
#[tokio::test]
async fn resolver_targets_and_schemes_are_checked() {
    struct Nothing;
    impl Resolver for Nothing {
        fn watch(&self, _: &str) -> AddressStream {
            Box::pin(tokio_stream::empty())
        }
    }
    for scheme in ["dns", "http", "Bad", "", "a b", "a:///b"] {
        let err = AmeideClient::builder()
            .endpoint("registry:///orders")
            .resolver(scheme, Nothing)
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot register a resolver"),
            "{scheme}: {err}"
        );
    }
    let err = AmeideClient::builder()
        .endpoint("registry:///orders")
        .resolver("other", Nothing)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no resolver is registered for the scheme \"registry\""),
        "{err}"
    );
    let err = AmeideClient::builder()
        .endpoint("registry:///a/b")
        .resolver("registry", Nothing)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("TransportOptions::authority"),
        "{err}"
    );
    // With an authority given, any name goes.
    AmeideClient::builder()
        .endpoint("registry:///a/b")
        .resolver("registry", Nothing)
        .transport_options(TransportOptions::default().with_authority("orders.prod".to_owned()))
        .build()
        .unwrap();
}

/// `endpoints([...])` is a static list: both replicas get calls; a bad
/// entry is a configuration error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_balance_over_the_list_and_bad_entries_are_named() {
    let (a, a_addr) = backend(2).await;
    let (b, b_addr) = backend(3).await;
    let client = AmeideClient::builder()
        .endpoints([a_addr.to_string(), format!("http://{b_addr}")])
        .build()
        .unwrap();
    // Once both are READY (the first calls may find one connecting), in turn.
    until_served(&client, &a, 1).await;
    until_served(&client, &b, 1).await;
    let (from_a, from_b) = (served(&a), served(&b));
    for _ in 0..20 {
        calls::read(&client).await.unwrap();
    }
    assert_eq!(
        (served(&a) - from_a, served(&b) - from_b),
        (10, 10),
        "in turn"
    );
    for (entries, needle) in [
        (vec![], "no endpoint"),
        (vec!["127.0.0.1:1", ""], "\"\""),
        (
            vec!["127.0.0.1:1,127.0.0.1:2"],
            "\"127.0.0.1:1,127.0.0.1:2\"",
        ),
        (vec!["dns:///x:1"], "invalid endpoint"),
    ] {
        let err = AmeideClient::builder()
            .endpoints(entries.clone())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{entries:?}: {err}");
    }
    // A later endpoint() replaces a bad list.
    AmeideClient::builder()
        .endpoints([""])
        .endpoint(format!("http://{a_addr}"))
        .build()
        .unwrap();
}

/// `tls` on a `dns:` target: every address of the name is reached over
/// TLS and its certificate verified against the name (grpc-go TLS
/// backends on 127.0.0.2 and .3, named by dnsmasq); a certificate for
/// another name fails the calls with UNAVAILABLE naming the name; `tls`
/// where the target says its scheme, and a proxy for a resolved target,
/// are configuration errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_target_over_tls_verifies_the_name_on_every_replica() {
    let test = "a_dns_target_over_tls_verifies_the_name_on_every_replica";
    let (Some(dnsmasq), Some(go)) = (
        ameide_tests::dnsmasq::binary(test),
        ameide_tests::grpc_go::binary(test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = ameide_tests::nginx::Certs::generate(dir.path());
    certs.server_for("replicas", "replicas.ameide.test");
    let cert = certs.path("replicas.pem");
    let key = certs.path("replicas.key");
    let mut servers: Vec<GoServer> = Vec::new();
    let mut port = 0;
    for octet in [2u8, 3] {
        let addr = format!("127.0.0.{octet}:{port}");
        let server = GoServer::start(
            &go,
            &[
                "-addr",
                &addr,
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
            ],
        );
        port = server.addr.port();
        servers.push(server);
    }
    let dns = ameide_tests::dnsmasq::Dnsmasq::start(
        &dnsmasq,
        "replicas.ameide.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let options = TransportOptions::default()
        .with_tls(true)
        .with_trust_roots(ameide_sdk::TrustRoots::CaOnly)
        .with_ca_certificate_file(certs.path("ca.pem"))
        .unwrap();
    let target = format!("dns://{}/replicas.ameide.test:{port}", dns.addr);
    let client = AmeideClient::builder()
        .endpoint(&target)
        .transport_options(options.clone())
        .build()
        .unwrap();
    // Once both are READY (the first calls may find one connecting), in turn.
    let started = Instant::now();
    while servers.iter().any(|s| s.calls() == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a TLS replica got no call"
        );
        calls::read(&client).await.expect("a call over TLS");
    }
    let mut before = Vec::new();
    for server in &servers {
        before.push(server.settled_calls().await);
    }
    for _ in 0..40 {
        calls::read(&client).await.expect("a call over TLS");
    }
    let mut counts = Vec::new();
    for (server, b) in servers.iter().zip(&before) {
        counts.push(server.settled_calls().await - b);
    }
    assert_eq!(counts, vec![20, 20], "round-robin over both TLS replicas");

    // The same replicas under another name: the certificate does not carry it.
    let other = ameide_tests::dnsmasq::Dnsmasq::start(
        &dnsmasq,
        "other.ameide.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    let client = AmeideClient::builder()
        .endpoint(format!("dns://{}/other.ameide.test:{port}", other.addr))
        .transport_options(options.clone())
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .build()
        .unwrap();
    let err = calls::read(&client)
        .await
        .expect_err("a certificate for another name");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    let total: usize = before.iter().sum::<usize>() + 40;
    assert_eq!(
        servers.iter().map(GoServer::calls).sum::<usize>(),
        total,
        "no call got through"
    );

    for (endpoint, options, needle) in [
        (
            "http://127.0.0.1:1",
            options.clone(),
            "applies to dns: and resolver targets",
        ),
        (
            "unix:///run/x.sock",
            options.clone(),
            "applies to dns: and resolver targets",
        ),
        (
            target.as_str(),
            options.clone().with_proxy(Proxy::Url {
                url: "http://127.0.0.1:3128".into(),
                no_proxy: String::new(),
            }),
            "cannot go through a proxy",
        ),
    ] {
        let err = AmeideClient::builder()
            .endpoint(endpoint)
            .transport_options(options)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{endpoint}: {err}");
    }
}
