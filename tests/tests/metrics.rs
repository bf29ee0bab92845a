//! gRPC's standard OpenTelemetry metrics (gRFC A66, issue 17), read back
//! through opentelemetry_sdk's in-memory exporter: client metrics after a
//! retried, a failed, a streamed and a successful call; server metrics from
//! the inbound layer on a real tonic server; the stable RPC convention's
//! `rpc.*.call.duration` when opted in.

use std::collections::BTreeMap;

use ameide_sdk::layers::SemconvMode;
use ameide_sdk::proto::common::v1::PaginationRequest;
use ameide_sdk::proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse, Repository};
use ameide_sdk::proto::inference::v1::inference_service_server::{
    InferenceService, InferenceServiceServer,
};
use ameide_sdk::proto::inference::v1::{
    GenerateRequest, GenerateResponse, ListAgentsRequest, ListAgentsResponse,
};
use ameide_sdk::server::InboundLayer;
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_sdk::{AmeideClient, CallOptions};
use ameide_tests::calls::tokens;
use ameide_tests::{fixed_jitter, mock_client, paths};
use futures_util::StreamExt;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use prost::Message;
use tonic::{Code, Request, Response, Status};

/// One recorded series: for a counter its sum, for a histogram its count and sum.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    count: u64,
    sum: f64,
    bounds: usize,
}

type Series = BTreeMap<(String, Vec<(String, String)>), Point>;

struct Recorder {
    exporter: InMemoryMetricExporter,
    provider: SdkMeterProvider,
}

impl Recorder {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Recorder { exporter, provider }
    }

    /// The series once `ready` holds of them, or after a second: the server
    /// records a call when its response stream ends, a moment after the
    /// client has read it.
    async fn series_once(&self, ready: impl Fn(&Series) -> bool) -> Series {
        let mut series = self.series();
        // Up to 5 s: a loaded machine records late.
        for _ in 0..500 {
            if ready(&series) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            series = self.series();
        }
        series
    }

    /// Every series recorded so far (cumulative), keyed by name and attributes.
    fn series(&self) -> Series {
        self.provider.force_flush().unwrap();
        let mut out = Series::new();
        let Some(last) = self.exporter.get_finished_metrics().unwrap().pop() else {
            return out;
        };
        for scope in last.scope_metrics() {
            assert_eq!(scope.scope().name(), "ameide-sdk");
            for metric in scope.metrics() {
                let mut add = |attributes: Vec<(String, String)>, point: Point| {
                    out.insert((metric.name().to_owned(), attributes), point);
                };
                let attrs = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                    let mut v: Vec<(String, String)> = kvs
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    v.sort();
                    v
                };
                match metric.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            let point = Point {
                                count: p.value(),
                                sum: p.value() as f64,
                                bounds: 0,
                            };
                            add(attrs(&mut p.attributes()), point);
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            let point = Point {
                                count: p.count(),
                                sum: p.sum() as f64,
                                bounds: p.bounds().count(),
                            };
                            add(attrs(&mut p.attributes()), point);
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            let point = Point {
                                count: p.count(),
                                sum: p.sum(),
                                bounds: p.bounds().count(),
                            };
                            add(attrs(&mut p.attributes()), point);
                        }
                    }
                    AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                        // Up-down counters (open connections): the value as the sum.
                        for p in sum.data_points() {
                            let point = Point {
                                count: u64::try_from(p.value()).unwrap_or(0),
                                sum: p.value() as f64,
                                bounds: 0,
                            };
                            add(attrs(&mut p.attributes()), point);
                        }
                    }
                    other => panic!("unexpected data for {}: {other:?}", metric.name()),
                }
            }
        }
        out
    }
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

fn get<'a>(series: &'a Series, name: &str, pairs: &[(&str, &str)]) -> &'a Point {
    series
        .get(&(name.to_owned(), attrs(pairs)))
        .unwrap_or_else(|| {
            panic!(
                "no {name} {pairs:?} in {:#?}",
                series.keys().collect::<Vec<_>>()
            )
        })
}

const LIST: &str = "ameide_core_proto.graph.v1.GraphService/ListRepositories";
const GENERATE: &str = "ameide_core_proto.inference.v1.InferenceService/Generate";

fn list_request() -> ListRepositoriesRequest {
    ListRepositoriesRequest {
        pagination: Some(PaginationRequest {
            page_size: 25,
            page_token: "page-7".into(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_retried_call_is_one_call_of_three_attempts() {
    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("down")),
    );
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("still down")),
    );
    let response = ListRepositoriesResponse {
        repositories: vec![Repository {
            repository_id: "r-1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    server.push(paths::LIST_REPOSITORIES, Reply::message(&response));
    let client = mock_client(&server)
        .retry_layer(fixed_jitter(0.0))
        .meter_provider(&recorder.provider)
        .build()
        .unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap();
    let target = client.endpoint().to_owned();
    let series = recorder.series();

    let base = [("grpc.method", LIST), ("grpc.target", target.as_str())];
    assert_eq!(get(&series, "grpc.client.attempt.started", &base).count, 3);
    let unavailable = [base[0], base[1], ("grpc.status", "UNAVAILABLE")];
    let ok = [base[0], base[1], ("grpc.status", "OK")];
    assert_eq!(
        get(&series, "grpc.client.attempt.duration", &unavailable).count,
        2
    );
    assert_eq!(get(&series, "grpc.client.attempt.duration", &ok).count, 1);
    let call = get(&series, "grpc.client.call.duration", &ok);
    assert_eq!(call.count, 1, "one call");
    assert_eq!(call.bounds, 41, "A66 latency buckets");
    assert!(
        !series.contains_key(&("grpc.client.call.duration".to_owned(), attrs(&unavailable))),
        "the call itself did not fail"
    );

    // Sizes: the request message on every attempt, the response message on the last.
    let request_bytes = list_request().encoded_len() as f64;
    let sent = get(
        &series,
        "grpc.client.attempt.sent_total_compressed_message_size",
        &unavailable,
    );
    assert_eq!(
        (sent.count, sent.sum, sent.bounds),
        (2, 2.0 * request_bytes, 14)
    );
    let sent_ok = get(
        &series,
        "grpc.client.attempt.sent_total_compressed_message_size",
        &ok,
    );
    assert_eq!(sent_ok.sum, request_bytes);
    let rcvd = get(
        &series,
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        &ok,
    );
    assert_eq!(rcvd.sum, response.encoded_len() as f64);
    let rcvd_failed = get(
        &series,
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        &unavailable,
    );
    assert_eq!(rcvd_failed.sum, 0.0);
    // Nothing of the stable convention unless opted in.
    assert!(
        !series.keys().any(|(name, _)| name.starts_with("rpc.")),
        "{series:#?}"
    );
}

/// gRFC A96's per-call retry metrics: off by default; opted in, a call
/// retried twice records `grpc.client.call.retries` 2 and its delay, a
/// hedged call whose first attempt failed records `grpc.client.call.hedges`
/// 1, and a call with neither records nothing (A96: 0 is not reported).
#[tokio::test]
async fn retry_metrics_are_opt_in_and_count_retries_and_hedges() {
    let unavailable = || Reply::status(Status::unavailable("down"));
    // Off by default.
    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, unavailable());
    let client = mock_client(&server)
        .retry_layer(fixed_jitter(0.0))
        .meter_provider(&recorder.provider)
        .build()
        .unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap();
    let a96 = [
        "grpc.client.call.retries",
        "grpc.client.call.transparent_retries",
        "grpc.client.call.hedges",
        "grpc.client.call.retry_delay",
    ];
    assert!(
        !recorder
            .series()
            .keys()
            .any(|(name, _)| a96.contains(&name.as_str())),
        "A96's metrics are opt-in"
    );

    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, unavailable());
    server.push(paths::LIST_REPOSITORIES, unavailable());
    let client = mock_client(&server)
        .retry_layer(fixed_jitter(0.5))
        .meter_provider(&recorder.provider)
        .retry_metrics(true)
        .build()
        .unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap();
    let target = client.endpoint().to_owned();
    let base = [("grpc.method", LIST), ("grpc.target", target.as_str())];
    let series = recorder.series();
    let retries = get(&series, "grpc.client.call.retries", &base);
    assert_eq!(
        (retries.count, retries.sum, retries.bounds),
        (1, 2.0, 5),
        "one call, two retries"
    );
    let delay = get(&series, "grpc.client.call.retry_delay", &base);
    // Jitter 0.5: 125 ms before the second attempt, 250 ms before the third.
    assert_eq!(delay.count, 1);
    assert!(delay.sum >= 0.375 && delay.sum < 1.0, "{}", delay.sum);
    for absent in [
        "grpc.client.call.hedges",
        "grpc.client.call.transparent_retries",
    ] {
        assert!(!series.keys().any(|(name, _)| name == absent), "{absent}");
    }

    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(paths::LIST_REPOSITORIES, unavailable());
    let client = mock_client(&server)
        .meter_provider(&recorder.provider)
        .retry_metrics(true)
        .hedging(ameide_sdk::layers::HedgingPolicy::new(
            3,
            std::time::Duration::from_secs(1),
        ))
        .build()
        .unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap();
    let target = client.endpoint().to_owned();
    let base = [("grpc.method", LIST), ("grpc.target", target.as_str())];
    let series = recorder.series();
    let hedges = get(&series, "grpc.client.call.hedges", &base);
    assert_eq!((hedges.count, hedges.sum), (1, 1.0), "one hedge");
    assert!(
        !series
            .keys()
            .any(|(name, _)| name == "grpc.client.call.retries")
    );
    assert_eq!(get(&series, "grpc.client.attempt.started", &base).count, 2);
}

#[tokio::test]
async fn a_failed_call_and_a_stream_carry_their_status() {
    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::not_found("no such page")),
    );
    let texts = ["to", "ken", "s!"];
    let messages = tokens(texts);
    let streamed: u64 = messages.iter().map(|m| m.len() as u64).sum();
    server.push(
        paths::GENERATE,
        Reply::messages(messages).then_status(Status::resource_exhausted("quota")),
    );
    server.push(paths::GENERATE, Reply::messages(tokens(texts)));
    let client = mock_client(&server)
        .meter_provider(&recorder.provider)
        .build()
        .unwrap();
    let target = client.endpoint().to_owned();

    let err = client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A stream cut by the server after three messages (not retried: committed).
    let mut stream = client
        .inference()
        .generate(GenerateRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    let mut end = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => got += 1,
            Err(status) => end = Some(status.code()),
        }
    }
    assert_eq!((got, end), (3, Some(Code::ResourceExhausted)));
    // And one read to its OK end.
    let mut stream = client
        .inference()
        .generate(GenerateRequest::default())
        .await
        .unwrap()
        .into_inner();
    while stream.next().await.is_some() {}

    let series = recorder.series();
    let failed = [
        ("grpc.method", LIST),
        ("grpc.target", target.as_str()),
        ("grpc.status", "NOT_FOUND"),
    ];
    assert_eq!(get(&series, "grpc.client.call.duration", &failed).count, 1);
    assert_eq!(
        get(&series, "grpc.client.attempt.duration", &failed).count,
        1
    );

    let g = |status| {
        [
            ("grpc.method", GENERATE),
            ("grpc.target", target.as_str()),
            ("grpc.status", status),
        ]
    };
    assert_eq!(
        get(
            &series,
            "grpc.client.call.duration",
            &g("RESOURCE_EXHAUSTED")
        )
        .count,
        1
    );
    assert_eq!(get(&series, "grpc.client.call.duration", &g("OK")).count, 1);
    let rcvd = get(
        &series,
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        &g("RESOURCE_EXHAUSTED"),
    );
    assert_eq!(
        rcvd.sum, streamed as f64,
        "three token messages, framing left out"
    );
    assert_eq!(
        get(
            &series,
            "grpc.client.attempt.started",
            &[("grpc.method", GENERATE), ("grpc.target", target.as_str())]
        )
        .count,
        2
    );
}

#[tokio::test]
async fn a_stream_dropped_by_its_caller_is_cancelled_and_methods_outside_the_bundle_are_other() {
    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(tokens(["a", "b", "c"])).every(std::time::Duration::from_secs(30)),
    );
    server.fallback(Reply::ok());
    let client = mock_client(&server)
        .meter_provider(&recorder.provider)
        .build()
        .unwrap();
    let target = client.endpoint().to_owned();
    let mut stream = client
        .inference()
        .generate(GenerateRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);

    // A path no roster service has: recorded as "other".
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/evil.Scanner/Probe12345");
    let codec =
        tonic_prost::ProstCodec::<ListRepositoriesRequest, ListRepositoriesResponse>::default();
    grpc.unary(
        Request::new(ListRepositoriesRequest::default()),
        path,
        codec,
    )
    .await
    .unwrap();

    let series = recorder.series();
    let cancelled = [
        ("grpc.method", GENERATE),
        ("grpc.target", target.as_str()),
        ("grpc.status", "CANCELLED"),
    ];
    assert_eq!(
        get(&series, "grpc.client.call.duration", &cancelled).count,
        1
    );
    assert_eq!(
        get(&series, "grpc.client.attempt.duration", &cancelled).count,
        1
    );
    let other = [
        ("grpc.method", "other"),
        ("grpc.target", target.as_str()),
        ("grpc.status", "OK"),
    ];
    assert_eq!(get(&series, "grpc.client.call.duration", &other).count, 1);
    assert!(
        !series
            .keys()
            .any(|(_, a)| a.iter().any(|(_, v)| v.contains("evil"))),
        "the peer's method name never becomes a series"
    );
}

#[tokio::test]
async fn the_stable_rpc_convention_adds_rpc_client_call_duration() {
    let recorder = Recorder::new();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::permission_denied("no")),
    );
    let client = mock_client(&server)
        .semconv(SemconvMode::Duplicate)
        .meter_provider(&recorder.provider)
        .build()
        .unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap_err();
    let series = recorder.series();
    let rpc = get(
        &series,
        "rpc.client.call.duration",
        &[
            ("rpc.system.name", "grpc"),
            ("rpc.method", LIST),
            ("rpc.response.status_code", "PERMISSION_DENIED"),
            ("error.type", "PERMISSION_DENIED"),
        ],
    );
    assert_eq!(rpc.count, 1);
    // The A66 series is there beside it.
    assert_eq!(
        get(
            &series,
            "grpc.client.call.duration",
            &[
                ("grpc.method", LIST),
                ("grpc.target", client.endpoint()),
                ("grpc.status", "PERMISSION_DENIED")
            ]
        )
        .count,
        1
    );
}

#[tokio::test]
async fn the_inbound_layer_adds_rpc_server_call_duration_under_the_stable_convention() {
    let recorder = Recorder::new();
    // The mode set after the provider still reaches the metrics.
    let inbound = InboundLayer::new()
        .with_meter_provider(&recorder.provider)
        .with_semconv(SemconvMode::Stable);
    let addr = ameide_tests::serve_inbound(inbound, InferenceServiceServer::new(Inference)).await;
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .build()
        .unwrap();
    let err = client
        .inference()
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let list = "ameide_core_proto.inference.v1.InferenceService/ListAgents";
    let wanted = [
        ("rpc.system.name", "grpc"),
        ("rpc.method", list),
        ("rpc.response.status_code", "NOT_FOUND"),
        ("error.type", "NOT_FOUND"),
    ];
    let series = recorder
        .series_once(|s| s.contains_key(&("rpc.server.call.duration".to_owned(), attrs(&wanted))))
        .await;
    assert_eq!(get(&series, "rpc.server.call.duration", &wanted).count, 1);
    assert_eq!(
        get(
            &series,
            "grpc.server.call.duration",
            &[("grpc.method", list), ("grpc.status", "NOT_FOUND")]
        )
        .count,
        1
    );
}

#[tokio::test]
async fn a_client_without_a_provider_records_nothing_anywhere() {
    // Built before any global MeterProvider is installed (this test binary
    // never installs one): OpenTelemetry's no-op instruments.
    let recorder = Recorder::new();
    let server = MockServer::new();
    let client = mock_client(&server).build().unwrap();
    client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap();
    assert!(recorder.series().is_empty());
}

/// A server whose handlers use `?` on `ameide_sdk::Error`.
struct Inference;

fn lookup(id: &str) -> ameide_sdk::Result<ListAgentsResponse> {
    Err(ameide_sdk::Error::from(Status::not_found(format!(
        "no agents under {id}"
    ))))
}

#[tonic::async_trait]
impl InferenceService for Inference {
    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let page = request.get_ref().pagination.clone().unwrap_or_default();
        // An ameide_sdk::Error becomes the original status with `?`.
        Ok(Response::new(lookup(&page.page_token)?))
    }

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<GenerateResponse>>, Status> {
        let words: Vec<String> = request
            .get_ref()
            .prompt
            .split(' ')
            .map(str::to_owned)
            .collect();
        let stream = futures_util::stream::iter(words.into_iter().enumerate().map(|(i, w)| {
            Ok(GenerateResponse {
                token: w,
                index: i as i32,
                ..Default::default()
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tokio::test]
async fn the_inbound_layer_records_server_calls_and_handlers_return_sdk_errors_with_question_mark()
{
    let recorder = Recorder::new();
    let addr = ameide_tests::serve_inbound(
        InboundLayer::new().with_meter_provider(&recorder.provider),
        InferenceServiceServer::new(Inference),
    )
    .await;
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .build()
        .unwrap();

    let request = ListAgentsRequest {
        pagination: Some(PaginationRequest {
            page_size: 1,
            page_token: "t-1".into(),
        }),
        ..Default::default()
    };
    let request_bytes = request.encoded_len() as f64;
    let err = client.inference().list_agents(request).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "no agents under t-1",
        "the original status, unchanged"
    );

    let prompt = "one two three";
    let generate = GenerateRequest {
        prompt: prompt.into(),
        ..Default::default()
    };
    let generate_bytes = generate.encoded_len() as f64;
    let mut stream = client
        .inference()
        .generate(generate)
        .await
        .unwrap()
        .into_inner();
    let mut sent_back = 0.0;
    while let Some(token) = stream.next().await {
        sent_back += token.unwrap().encoded_len() as f64;
    }

    // The server records when its response stream ends, a moment after the
    // client has read it: wait for it.
    let list = "ameide_core_proto.inference.v1.InferenceService/ListAgents";
    let series = recorder
        .series_once(|s| {
            s.keys()
                .filter(|(n, _)| n == "grpc.server.call.duration")
                .count()
                == 2
        })
        .await;
    assert_eq!(
        get(
            &series,
            "grpc.server.call.started",
            &[("grpc.method", list)]
        )
        .count,
        1
    );
    assert_eq!(
        get(
            &series,
            "grpc.server.call.started",
            &[("grpc.method", GENERATE)]
        )
        .count,
        1
    );
    let not_found = [("grpc.method", list), ("grpc.status", "NOT_FOUND")];
    assert_eq!(
        get(&series, "grpc.server.call.duration", &not_found).count,
        1
    );
    assert_eq!(
        get(
            &series,
            "grpc.server.call.rcvd_total_compressed_message_size",
            &not_found
        )
        .sum,
        request_bytes
    );
    let ok = [("grpc.method", GENERATE), ("grpc.status", "OK")];
    assert_eq!(get(&series, "grpc.server.call.duration", &ok).count, 1);
    assert_eq!(
        get(
            &series,
            "grpc.server.call.sent_total_compressed_message_size",
            &ok
        )
        .sum,
        sent_back
    );
    assert_eq!(
        get(
            &series,
            "grpc.server.call.rcvd_total_compressed_message_size",
            &ok
        )
        .sum,
        generate_bytes
    );
    let _ = CallOptions::new();
}

/// One `ListRepositories` call (300 ms budget, retries off) to a server that
/// answers `reply`: it fails with `code`; the series recorded, and the target.
async fn list_once(
    recorder: &Recorder,
    reply: ameide_sdk::testkit::RawReply,
    code: Code,
) -> (Series, String) {
    let server = ameide_sdk::testkit::H2FaultServer::start().await.unwrap();
    server.push_reply(reply);
    let client = AmeideClient::builder()
        .endpoint(server.endpoint())
        .meter_provider(&recorder.provider)
        .timeout(std::time::Duration::from_millis(300))
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .build()
        .unwrap();
    let err = client
        .graph()
        .list_repositories(list_request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), code, "{err}");
    (recorder.series(), client.endpoint().to_owned())
}

/// An attempt cut by the call's deadline before its response headers (a
/// server that ignores `grpc-timeout` and sends nothing for 5 s) is
/// recorded DEADLINE_EXCEEDED, as the call is (issue 25: the attempt said
/// CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_by_the_deadline_is_recorded_as_the_call_is() {
    let recorder = Recorder::new();
    let (series, target) = list_once(
        &recorder,
        ameide_sdk::testkit::RawReply::grpc()
            .delay(std::time::Duration::from_secs(5))
            .hang(),
        Code::DeadlineExceeded,
    )
    .await;
    let cut = [
        ("grpc.method", LIST),
        ("grpc.target", target.as_str()),
        ("grpc.status", "DEADLINE_EXCEEDED"),
    ];
    assert_eq!(get(&series, "grpc.client.call.duration", &cut).count, 1);
    assert_eq!(get(&series, "grpc.client.attempt.duration", &cut).count, 1);
}

/// A response whose trailers carry no `grpc-status` is UNKNOWN for the
/// caller and in the call metric alike (issue 25: the metric said OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_grpc_status_is_recorded_unknown_as_the_caller_sees_it() {
    let recorder = Recorder::new();
    let (series, target) = list_once(
        &recorder,
        ameide_sdk::testkit::RawReply::grpc()
            .message(&[])
            .trailer("x-other", "1"),
        Code::Unknown,
    )
    .await;
    let unknown = [
        ("grpc.method", LIST),
        ("grpc.target", target.as_str()),
        ("grpc.status", "UNKNOWN"),
    ];
    assert_eq!(get(&series, "grpc.client.call.duration", &unknown).count, 1);
}

/// Failures found above the transport (a message that is not protobuf, one
/// that does not decompress, an encoding not accepted, an OK without the
/// response message) are recorded in the call metric with the code the
/// caller gets, not CANCELLED (issue 25: tonic dropped the body first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_found_above_the_transport_are_recorded_with_their_code() {
    use ameide_sdk::testkit::RawReply;
    let frame = |flag: u8, payload: &[u8]| {
        let mut out = vec![flag];
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    };
    let rows = [
        (
            RawReply::grpc()
                .data(frame(0, &[0x0f, 0x01]))
                .trailer("grpc-status", "0"),
            Code::Internal,
            "INTERNAL",
        ),
        (
            RawReply::grpc()
                .header("grpc-encoding", "gzip")
                .data(frame(1, b"not gzip"))
                .trailer("grpc-status", "0"),
            Code::Internal,
            "INTERNAL",
        ),
        (
            RawReply::grpc()
                .header("grpc-encoding", "br")
                .data(frame(1, b"?"))
                .trailer("grpc-status", "0"),
            Code::Unimplemented,
            "UNIMPLEMENTED",
        ),
        (
            RawReply::grpc().trailer("grpc-status", "0"),
            Code::Internal,
            "INTERNAL",
        ),
    ];
    for (reply, code, name) in rows {
        let recorder = Recorder::new();
        let (series, target) = list_once(&recorder, reply, code).await;
        let want = [
            ("grpc.method", LIST),
            ("grpc.target", target.as_str()),
            ("grpc.status", name),
        ];
        assert_eq!(
            get(&series, "grpc.client.call.duration", &want).count,
            1,
            "{name}: {series:#?}"
        );
    }
}

/// gRFC A94's subchannel metrics on a `static:` target of a dead address and
/// two live replicas: a connect per live replica succeeded and two
/// connections are open; the dead one's connects failed. Closing the client
/// ends both connections: `subchannel shutdown` disconnections, none open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subchannel_metrics_count_connects_disconnections_and_open_connections() {
    let recorder = Recorder::new();
    let mut live = Vec::new();
    for octet in [2u8, 3] {
        let server = MockServer::new();
        server.fallback(Reply::ok());
        let addr = ameide_sdk::testkit::serve_tcp_at(
            server,
            std::net::SocketAddr::from(([127, 0, 0, octet], 0)),
        )
        .await
        .unwrap();
        live.push(addr.to_string());
    }
    let target = format!(
        "static:///{},{},{}",
        ameide_tests::closed_addr(),
        live[0],
        live[1]
    );
    let client = AmeideClient::builder()
        .endpoint(&target)
        .meter_provider(&recorder.provider)
        .build()
        .unwrap();
    for _ in 0..20 {
        ameide_tests::calls::read(&client).await.unwrap();
    }
    let labels = [
        ("grpc.target", target.as_str()),
        ("grpc.security_level", "none"),
    ];
    let series = recorder
        .series_once(|s| {
            let at = |name: &str| s.get(&(name.to_owned(), attrs(&labels)));
            // The failed connect, and both replicas connected (the second
            // may still be connecting when the calls are done).
            at("grpc.subchannel.connection_attempts_failed").is_some()
                && at("grpc.subchannel.connection_attempts_succeeded").is_some_and(|p| p.count == 2)
                && at("grpc.subchannel.open_connections").is_some_and(|p| p.sum == 2.0)
        })
        .await;
    assert_eq!(
        get(
            &series,
            "grpc.subchannel.connection_attempts_succeeded",
            &labels
        )
        .count,
        2
    );
    assert!(
        get(
            &series,
            "grpc.subchannel.connection_attempts_failed",
            &labels
        )
        .count
            >= 1
    );
    assert_eq!(
        get(&series, "grpc.subchannel.open_connections", &labels).sum,
        2.0
    );
    client.close();
    drop(client);
    let shutdown = [
        ("grpc.target", target.as_str()),
        ("grpc.security_level", "none"),
        ("grpc.disconnect_error", "subchannel shutdown"),
    ];
    let series = recorder
        .series_once(|s| {
            s.get(&(
                "grpc.subchannel.disconnections".to_owned(),
                attrs(&shutdown),
            ))
            .is_some_and(|p| p.count == 2)
        })
        .await;
    assert_eq!(
        get(&series, "grpc.subchannel.disconnections", &shutdown).count,
        2,
        "{series:#?}"
    );
    assert_eq!(
        get(&series, "grpc.subchannel.open_connections", &labels).sum,
        0.0
    );
}
