//! The client as a whole: bad config, the accessor set vs the manifest, layer
//! order proven by effects, close(), a real loopback connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ameide_sdk::auth::AccessToken;
use ameide_sdk::layers::{BoxError, HttpRequest, HttpResponse};
use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{ACCESSOR_KEYS, AmeideClient, ConfigErrorKind, IntoAmeideResult};
use ameide_tests::{mock_client, paths, proto_crate_dir};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic::{Code, Status};

fn list() -> ameide_sdk::proto::graph::v1::ListRepositoriesRequest {
    Default::default()
}

#[tokio::test]
async fn bad_configuration_is_rejected_at_build_with_a_clear_error() {
    let cases: Vec<(ameide_sdk::AmeideClientBuilder, ConfigErrorKind, &str)> = vec![
        (
            AmeideClient::builder().endpoint("localhost:50051"),
            ConfigErrorKind::Endpoint,
            "localhost:50051",
        ),
        (
            AmeideClient::builder().endpoint("grpc://x:1"),
            ConfigErrorKind::Endpoint,
            "grpc",
        ),
        (
            AmeideClient::builder().endpoint("http://x:1/prefix"),
            ConfigErrorKind::Endpoint,
            "no path",
        ),
        (
            AmeideClient::builder().endpoint(""),
            ConfigErrorKind::Endpoint,
            "expected http",
        ),
        (
            AmeideClient::builder().header("bad header", "v"),
            ConfigErrorKind::Header,
            "bad header",
        ),
        (
            AmeideClient::builder().header("x-ok", "new\nline"),
            ConfigErrorKind::Header,
            "x-ok",
        ),
        (
            AmeideClient::builder().header("grpc-status", "0"),
            ConfigErrorKind::Header,
            "reserved",
        ),
        (
            AmeideClient::builder().tenant_id(""),
            ConfigErrorKind::Header,
            "tenant id",
        ),
        (
            AmeideClient::builder().user_id("üser"),
            ConfigErrorKind::Header,
            "user id",
        ),
        (
            AmeideClient::builder().session_id("a\tb"),
            ConfigErrorKind::Header,
            "session id",
        ),
        (
            AmeideClient::builder().bearer_token("two words\n"),
            ConfigErrorKind::Header,
            "bearer token",
        ),
        (
            AmeideClient::builder().timeout(Duration::ZERO),
            ConfigErrorKind::Timeout,
            "at least 1 ms",
        ),
        (
            AmeideClient::builder().timeout(Duration::from_secs(1 << 40)),
            ConfigErrorKind::Timeout,
            "100 days",
        ),
        (
            AmeideClient::builder()
                .retry_policy(ameide_sdk::layers::RetryPolicy::default().with_jitter(1.5, 0.5)),
            ConfigErrorKind::Retry,
            "jitter",
        ),
        // Settings at their extremes: each rejected at build, none can panic later.
        (
            AmeideClient::builder().retry_policy(
                ameide_sdk::layers::RetryPolicy::default().with_max_backoff(Duration::MAX),
            ),
            ConfigErrorKind::Retry,
            "max_backoff",
        ),
        (
            AmeideClient::builder()
                .retry_policy(ameide_sdk::layers::RetryPolicy::default().with_multiplier(f64::MAX)),
            ConfigErrorKind::Retry,
            "multiplier",
        ),
        (
            AmeideClient::builder()
                .retry_policy(ameide_sdk::layers::RetryPolicy::default().with_jitter(0.5, 1e300)),
            ConfigErrorKind::Retry,
            "jitter",
        ),
        (
            AmeideClient::builder()
                .retry_policy(ameide_sdk::layers::RetryPolicy::default().with_multiplier(f64::NAN)),
            ConfigErrorKind::Retry,
            "multiplier",
        ),
        (
            AmeideClient::builder().retry_policy(
                ameide_sdk::layers::RetryPolicy::default().with_retryable_codes([tonic::Code::Ok]),
            ),
            ConfigErrorKind::Retry,
            "OK",
        ),
        (
            AmeideClient::builder().retry_policy(
                ameide_sdk::layers::RetryPolicy::default().with_max_replay_bytes(usize::MAX),
            ),
            ConfigErrorKind::Retry,
            "max_replay_bytes",
        ),
        (
            AmeideClient::builder().transport_options(
                ameide_sdk::TransportOptions::default()
                    .with_keepalive_interval(Some(Duration::MAX)),
            ),
            ConfigErrorKind::Transport,
            "keepalive_interval",
        ),
        (
            AmeideClient::builder().transport_options(
                ameide_sdk::TransportOptions::default().with_keepalive_timeout(Duration::ZERO),
            ),
            ConfigErrorKind::Transport,
            "keepalive_timeout",
        ),
        (
            AmeideClient::builder().transport_options(
                ameide_sdk::TransportOptions::default().with_connect_timeout(Duration::MAX),
            ),
            ConfigErrorKind::Transport,
            "connect_timeout",
        ),
        (
            AmeideClient::builder()
                .transport_options(ameide_sdk::TransportOptions::default().with_connections(0)),
            ConfigErrorKind::Transport,
            "connections",
        ),
        (
            AmeideClient::builder().in_flight_limit(Some(ameide_sdk::InFlightLimit {
                max_calls: usize::MAX,
                max_wait: Duration::MAX,
            })),
            ConfigErrorKind::Limit,
            "max_calls",
        ),
    ];
    for (builder, kind, needle) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err:?} should mention {needle:?}"
        );
    }
}

#[test]
fn building_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let err = AmeideClient::builder()
        .endpoint("http://127.0.0.1:1")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Runtime);
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test]
async fn default_endpoint_is_tls_and_not_localhost() {
    let client = AmeideClient::builder().build().unwrap();
    assert_eq!(client.endpoint(), "https://api.ameide.io:443");
}

#[tokio::test]
async fn accessors_match_the_manifest_no_missing_no_extra() {
    let text =
        std::fs::read_to_string(proto_crate_dir().join(ameide_build::MANIFEST_PATH)).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let services = manifest["services"].as_object().unwrap();
    let manifest_keys: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        ACCESSOR_KEYS,
        manifest_keys.as_slice(),
        "generated accessors vs manifest"
    );

    // Call every accessor once and check, on the wire, which service it reaches.
    let server = MockServer::new();
    let c = mock_client(&server).build().unwrap();
    let p = c.platform();
    macro_rules! call {
        ($client:expr, $method:ident) => {
            $client
                .$method(tonic::Request::new(Default::default()))
                .await
                .unwrap()
        };
    }
    let mut reached: Vec<(&str, String)> = Vec::new();
    let mut note = |key: &'static str| {
        let path = server.attempts().last().unwrap().path.clone();
        reached.push((key, path));
    };
    call!(c.agents(), get_agent);
    note("agents");
    call!(c.agents_runtime(), list_agents);
    note("agentsRuntime");
    call!(c.graph(), get_repository);
    note("graph");
    call!(c.inference(), list_agents);
    note("inference");
    call!(c.governance(), get_policy);
    note("governance");
    call!(p.organizations(), get_organization);
    note("platform.organizations");
    call!(p.organization_roles(), get_organization_role);
    note("platform.organizationRoles");
    call!(p.teams(), get_team);
    note("platform.teams");
    call!(p.users(), get_user);
    note("platform.users");
    call!(p.invitations(), list_invitations);
    note("platform.invitations");
    call!(p.tenants(), get_tenant);
    note("platform.tenants");
    call!(c.transformation(), get_transformation);
    note("transformation");
    call!(c.threads(), get_thread);
    note("threads");
    call!(c.workflows(), get_workflow_run);
    note("workflows");
    call!(c.extensions(), invoke_extension);
    note("extensions");

    let called: Vec<&str> = reached.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        called, manifest_keys,
        "every manifest key has exactly one accessor"
    );
    for (key, path) in reached {
        let service = services[key]["service"].as_str().unwrap();
        assert!(
            path.starts_with(&format!("/{service}/")),
            "{key} reached {path}, expected {service}"
        );
    }
}

/// A user layer that records what it sees on each attempt.
#[derive(Clone, Default)]
struct Spy {
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// Per attempt: the user's own extension, and tonic's method extension.
    extensions: Arc<Mutex<Vec<SeenExtensions>>>,
}

/// Per attempt: the user's own extension, and tonic's method name.
type SeenExtensions = (Option<UserMark>, Option<String>);

/// A user's own request extension.
#[derive(Clone, Debug, PartialEq)]
struct UserMark(&'static str);

impl<S> tower::Layer<S> for Spy {
    type Service = SpyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SpyService {
            inner,
            seen: self.seen.clone(),
            extensions: self.extensions.clone(),
        }
    }
}

#[derive(Clone)]
struct SpyService<S> {
    inner: S,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    extensions: Arc<Mutex<Vec<SeenExtensions>>>,
}

impl<S> tower::Service<HttpRequest> for SpyService<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, request: HttpRequest) -> Self::Future {
        self.seen.lock().unwrap().push(request.headers().clone());
        let e = request.extensions();
        self.extensions.lock().unwrap().push((
            e.get::<UserMark>().cloned(),
            e.get::<tonic::GrpcMethod<'static>>()
                .map(|m| m.method().to_owned()),
        ));
        self.inner.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn layer_order_is_proven_by_effects() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("1")),
    );
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::aborted("2")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let spy = Spy::default();
    let client = mock_client(&server)
        .tenant_id("t-1")
        .tracer_provider(&provider)
        .token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Some(AccessToken::new(format!("tok-{n}")))) }
        })
        .layer(spy.clone())
        .build()
        .unwrap();
    client.graph().list_repositories(list()).await.unwrap();

    // Metadata and auth are outside retry: asked once, identical on every attempt.
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "token provider asked once for three attempts"
    );
    // Tracing is inside retry: one span per attempt.
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 3);
    // The user layer sits below tracing: it sees every attempt with all built-in headers.
    let seen = spy.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "user layers run per attempt");
    let first_id = seen[0]["x-request-id"].clone();
    for headers in &seen {
        assert_eq!(headers["x-request-id"], first_id);
        assert_eq!(headers["authorization"], "Bearer tok-0");
        assert_eq!(headers["x-tenant-id"], "t-1");
        assert!(
            headers.contains_key("traceparent"),
            "tracing runs before user layers"
        );
        assert!(headers.contains_key("grpc-timeout"));
    }
    let spans = exporter.get_finished_spans().unwrap();
    for (headers, span) in seen.iter().zip(&spans) {
        let tp = headers["traceparent"].to_str().unwrap();
        assert!(tp.contains(&span.span_context.span_id().to_string()));
    }
}

/// A server whose first two `ListRepositories` attempts fail UNAVAILABLE and
/// the third succeeds: three attempts for one call.
fn fails_twice_then_answers() -> MockServer {
    let server = MockServer::new();
    for reply in [
        Reply::status(Status::unavailable("1")),
        Reply::status(Status::unavailable("2")),
        Reply::ok(),
    ] {
        server.push(paths::LIST_REPOSITORIES, reply);
    }
    server
}

/// The retry layer hands the first attempt the request's own extensions and
/// rebuilds them for replays: tonic's and the SDK's (fast path) as well as a
/// user's own type (full copy) reach every attempt.
#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_request_extensions() {
    for with_user_mark in [false, true] {
        let server = fails_twice_then_answers();
        let spy = Spy::default();
        let client = mock_client(&server).layer(spy.clone()).build().unwrap();
        let mut request = tonic::Request::new(list());
        if with_user_mark {
            request.extensions_mut().insert(UserMark("mine"));
        }
        client.graph().list_repositories(request).await.unwrap();
        let seen = spy.extensions.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "three attempts");
        for (mark, method) in seen {
            assert_eq!(mark, with_user_mark.then_some(UserMark("mine")));
            assert_eq!(method.as_deref(), Some("ListRepositories"));
        }
    }
}

#[tokio::test]
async fn calls_after_close_fail_with_a_clear_error() {
    let server = MockServer::new();
    let client = mock_client(&server).build().unwrap();
    let graph = client.graph(); // a typed client made before close
    graph.clone().list_repositories(list()).await.unwrap();
    client.close();
    assert!(client.is_closed());
    for result in [
        graph.clone().list_repositories(list()).await,
        client.graph().list_repositories(list()).await,
    ] {
        let err = result.into_ameide().unwrap_err();
        assert_eq!(err.code(), Code::Cancelled);
        assert!(err.message().contains("AmeideClient is closed"), "{err}");
        assert!(err.request_id().is_some(), "{err}");
        assert_eq!(err.attempts(), 0, "{err}");
    }
    assert_eq!(server.attempts().len(), 1);
}

/// With every place of the in-flight limit taken, a call after `close()`
/// still fails at once: it waits for no place (the closed check sits under
/// the metadata layer, past the gate).
#[tokio::test(start_paused = true)]
async fn a_call_after_close_waits_for_no_in_flight_place() {
    let server = MockServer::new();
    server.fallback(Reply::ok().after(Duration::from_secs(60)));
    let client = mock_client(&server)
        .timeout(Duration::from_secs(120))
        .in_flight_limit(Some(ameide_sdk::InFlightLimit {
            max_calls: 1,
            max_wait: Duration::from_secs(1),
        }))
        .build()
        .unwrap();
    let busy = client.clone();
    let held = tokio::spawn(async move { busy.graph().list_repositories(list()).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    client.close();
    let started = tokio::time::Instant::now();
    let err = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap_err();
    assert_eq!(err.code(), Code::Cancelled, "{err}");
    assert!(err.request_id().is_some(), "{err}");
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    held.abort();
}

#[tokio::test]
async fn real_loopback_connection_carries_the_same_metadata() {
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("first")),
    );
    let addr = serve_tcp(server.clone()).await.unwrap();
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .tenant_id("tenant-tcp")
        .user_id("user-tcp")
        .bearer_token("tcp-token")
        .header("X-Extra", "yes")
        .build()
        .unwrap();
    let response = client
        .graph()
        .list_repositories(list())
        .await
        .into_ameide()
        .unwrap();
    assert_eq!(
        response
            .extensions()
            .get::<ameide_sdk::CallInfo>()
            .unwrap()
            .attempts,
        2
    );
    let attempts = server.attempts();
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a.header("x-tenant-id"), Some("tenant-tcp"));
        assert_eq!(a.header("x-user-id"), Some("user-tcp"));
        assert_eq!(a.header("authorization"), Some("Bearer tcp-token"));
        assert_eq!(a.header("x-extra"), Some("yes"));
        assert_eq!(a.header("content-type"), Some("application/grpc"));
        assert!(a.header("user-agent").unwrap().contains("ameide-sdk-rust/"));
    }
    assert_eq!(
        attempts[0].header("x-request-id"),
        attempts[1].header("x-request-id")
    );
}

/// The generated stubs start their encode and decode buffers at 1 KiB
/// (`ameide_proto::codec`): messages far larger than that still round-trip,
/// on both the client and the server side, through a real tonic server.
#[tokio::test]
async fn messages_far_larger_than_the_codec_buffer_round_trip() {
    use ameide_sdk::proto::graph::v1::graph_service_server::{GraphService, GraphServiceServer};
    use ameide_sdk::proto::graph::v1::{GetRepositoryRequest, GetRepositoryResponse, Repository};

    struct Echo;
    #[tonic::async_trait]
    impl GraphService for Echo {
        async fn get_repository(
            &self,
            request: tonic::Request<GetRepositoryRequest>,
        ) -> Result<tonic::Response<GetRepositoryResponse>, Status> {
            let id = request.into_inner().repository_id;
            Ok(tonic::Response::new(GetRepositoryResponse {
                repository: Some(Repository {
                    display_name: id.repeat(2),
                    repository_id: id,
                    ..Default::default()
                }),
            }))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GraphServiceServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .build()
        .unwrap();
    let big: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = client
        .graph()
        .get_repository(GetRepositoryRequest {
            repository_id: big.clone(),
            ..Default::default()
        })
        .await
        .into_ameide()
        .unwrap()
        .into_inner()
        .repository
        .unwrap();
    assert_eq!(reply.repository_id, big);
    assert_eq!(reply.display_name.len(), 600_000);
    assert!(reply.display_name.starts_with(&big[..1000]));
}

/// A replay sends every header of the first attempt again, multi-valued ones
/// included, with only `grpc-timeout` (what is left), `traceparent` (a new
/// span) and `grpc-previous-rpc-attempts` differing.
#[tokio::test(start_paused = true)]
async fn replays_carry_every_header_of_the_first_attempt() {
    let server = fails_twice_then_answers();
    let spy = Spy::default();
    let client = mock_client(&server)
        .tenant_id("t-1")
        .user_id("u-1")
        .bearer_token("tok")
        .layer(spy.clone())
        .build()
        .unwrap();
    let mut request = tonic::Request::new(list());
    let metadata = request.metadata_mut();
    metadata.insert("x-custom", "one".parse().unwrap());
    metadata.append("x-multi", "a".parse().unwrap());
    metadata.append("x-multi", "b".parse().unwrap());
    client.graph().list_repositories(request).await.unwrap();

    let seen = spy.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let varying = ["grpc-timeout", "traceparent", "grpc-previous-rpc-attempts"];
    let first = &seen[0];
    assert!(first.contains_key("te") && first.contains_key("content-type"));
    for (n, later) in seen.iter().enumerate().skip(1) {
        for name in first.keys() {
            if varying.contains(&name.as_str()) {
                continue;
            }
            let a: Vec<_> = first.get_all(name).iter().collect();
            let b: Vec<_> = later.get_all(name).iter().collect();
            assert_eq!(a, b, "attempt {} differs in {name}", n + 1);
        }
        assert_eq!(
            later["grpc-previous-rpc-attempts"],
            n.to_string().as_str(),
            "attempt {}",
            n + 1
        );
    }
}
