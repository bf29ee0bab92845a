//! Contract §4 tracing: one CLIENT span per attempt with the parity attributes,
//! W3C context on the wire carrying the exported span's ids.

use std::collections::HashMap;

use ameide_sdk::layers::SemconvMode;
use ameide_sdk::testkit::{MockServer, Reply};
use ameide_tests::{mock_client, paths};
use opentelemetry::trace::{
    SpanKind, Status as SpanStatus, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tonic::{Code, Status};

fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

fn attrs(span: &SpanData) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .map(|KeyValue { key, value, .. }| (key.to_string(), value.clone()))
        .collect()
}

fn list() -> ameide_sdk::proto::graph::v1::ListRepositoriesRequest {
    Default::default()
}

#[tokio::test(start_paused = true)]
async fn one_client_span_per_attempt_with_parity_attributes_and_matching_traceparent() {
    let (provider, exporter) = provider();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("warming up")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = mock_client(&server)
        .tracer_provider(&provider)
        .semconv(SemconvMode::Legacy)
        .build()
        .unwrap();
    client.graph().list_repositories(list()).await.unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let attempts = server.attempts();
    assert_eq!(spans.len(), 2, "one span per attempt");
    for (span, attempt) in spans.iter().zip(&attempts) {
        assert_eq!(
            span.name,
            "ameide_core_proto.graph.v1.GraphService/ListRepositories"
        );
        assert_eq!(span.span_kind, SpanKind::Client);
        let a = attrs(span);
        assert_eq!(a["rpc.system"], Value::from("grpc"));
        assert_eq!(
            a["rpc.service"],
            Value::from("ameide_core_proto.graph.v1.GraphService")
        );
        assert_eq!(a["rpc.method"], Value::from("ListRepositories"));
        assert!(
            a["server.address"].as_str().starts_with("mock-")
                && a["server.address"].as_str().ends_with(".test")
        );
        assert_eq!(a["server.port"], Value::I64(9000));
        assert_eq!(
            a["ameide.request_id"],
            Value::from(attempt.header("x-request-id").unwrap().to_owned())
        );
        let traceparent = attempt.header("traceparent").unwrap();
        let expected = format!(
            "00-{}-{}-01",
            span.span_context.trace_id(),
            span.span_context.span_id()
        );
        assert_eq!(
            traceparent, expected,
            "the server sees the exported attempt span"
        );
    }
    let (first, second) = (attrs(&spans[0]), attrs(&spans[1]));
    assert_eq!(
        first["rpc.grpc.status_code"],
        Value::I64(Code::Unavailable as i64)
    );
    assert!(matches!(spans[0].status, SpanStatus::Error { .. }));
    assert_eq!(second["rpc.grpc.status_code"], Value::I64(0));
    assert_eq!(spans[1].status, SpanStatus::Unset);
}

#[tokio::test(start_paused = true)]
async fn attempt_spans_are_children_of_the_callers_span() {
    let (provider, exporter) = provider();
    let server = MockServer::new();
    let client = mock_client(&server)
        .tracer_provider(&provider)
        .build()
        .unwrap();
    let tracer = provider.tracer("app");
    let parent = tracer.start("handle-request");
    let parent_cx = Context::current_with_span(parent);
    let parent_span_id = parent_cx.span().span_context().span_id();
    let trace_id = parent_cx.span().span_context().trace_id();
    {
        let _guard = parent_cx.clone().attach();
        client.graph().list_repositories(list()).await.unwrap();
    }
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans[0].parent_span_id, parent_span_id);
    assert_eq!(spans[0].span_context.trace_id(), trace_id);
    assert!(
        server.attempts()[0]
            .header("traceparent")
            .unwrap()
            .contains(&trace_id.to_string())
    );
}

/// A no-op tracer (OpenTelemetry's default until a provider is installed)
/// starts no span of the SDK's: the caller's own trace context goes on the
/// wire as it is, with the session baggage, on every attempt, and the
/// caller's span is never ended by the SDK.
#[tokio::test(start_paused = true)]
async fn with_a_no_op_tracer_the_callers_trace_context_goes_on_the_wire_unchanged() {
    use opentelemetry::trace::noop::NoopTracerProvider;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::unavailable("warming up")),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    let client = mock_client(&server)
        .tracer_provider(&NoopTracerProvider::new())
        .session_id("sess-9")
        .build()
        .unwrap();

    // No caller context: no traceparent, the session still in baggage.
    client.graph().list_repositories(list()).await.unwrap();
    let attempts = server.attempts();
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        assert_eq!(attempt.header("traceparent"), None);
        assert_eq!(attempt.header("baggage"), Some("ameide.session_id=sess-9"));
    }

    // A caller's span (another tracer's, recording): its context is what the
    // server sees, and it is still recording after the call.
    let (provider, exporter) = provider();
    let caller_span = provider.tracer("app").start("handle-request");
    let caller = Context::current_with_span(caller_span);
    let expected = format!(
        "00-{}-{}-01",
        caller.span().span_context().trace_id(),
        caller.span().span_context().span_id()
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    {
        let _guard = caller.clone().attach();
        client.graph().list_repositories(list()).await.unwrap();
    }
    assert_eq!(
        server.attempts()[2].header("traceparent"),
        Some(expected.as_str())
    );
    assert!(
        caller.span().is_recording(),
        "the SDK never ends the caller's span"
    );
    assert!(exporter.get_finished_spans().unwrap().is_empty());

    // A remote parent that is not sampled keeps its flags.
    let remote = SpanContext::new(
        TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128),
        SpanId::from(0xb7ad_6b71_6920_3331_u64),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    server.push(paths::LIST_REPOSITORIES, Reply::ok());
    {
        let _guard = Context::new().with_remote_span_context(remote).attach();
        client.graph().list_repositories(list()).await.unwrap();
    }
    assert_eq!(
        server.attempts()[3].header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    );
}

#[tokio::test(start_paused = true)]
async fn stable_and_duplicate_semconv_modes_emit_the_newer_names() {
    let (provider, exporter) = provider();
    let server = MockServer::new();
    server.push(
        paths::LIST_REPOSITORIES,
        Reply::status(Status::not_found("nope")),
    );
    let stable = mock_client(&server)
        .tracer_provider(&provider)
        .semconv(SemconvMode::Stable)
        .build()
        .unwrap();
    let _ = stable.graph().list_repositories(list()).await;
    let dup = mock_client(&server)
        .tracer_provider(&provider)
        .semconv(SemconvMode::Duplicate)
        .build()
        .unwrap();
    dup.graph().list_repositories(list()).await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let s = attrs(&spans[0]);
    assert_eq!(s["rpc.system.name"], Value::from("grpc"));
    assert_eq!(
        s["rpc.method"],
        Value::from("ameide_core_proto.graph.v1.GraphService/ListRepositories")
    );
    assert_eq!(s["rpc.response.status_code"], Value::from("NOT_FOUND"));
    assert_eq!(s["error.type"], Value::from("NOT_FOUND"));
    assert!(!s.contains_key("rpc.system") && !s.contains_key("rpc.grpc.status_code"));

    let d = attrs(&spans[1]);
    assert_eq!(d["rpc.system"], Value::from("grpc"));
    assert_eq!(d["rpc.system.name"], Value::from("grpc"));
    assert_eq!(
        d["rpc.service"],
        Value::from("ameide_core_proto.graph.v1.GraphService")
    );
    assert_eq!(d["rpc.grpc.status_code"], Value::I64(0));
    assert_eq!(d["rpc.response.status_code"], Value::from("OK"));
}

#[tokio::test(start_paused = true)]
async fn streaming_span_ends_when_the_stream_ends() {
    use futures_util::StreamExt;
    let (provider, exporter) = provider();
    let server = MockServer::new();
    server.push(
        paths::GENERATE,
        Reply::messages(vec![bytes::Bytes::new(); 3]),
    );
    let client = mock_client(&server)
        .tracer_provider(&provider)
        .build()
        .unwrap();
    let mut stream = client
        .inference()
        .generate(ameide_sdk::proto::inference::v1::GenerateRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "still open while streaming"
    );
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        spans[0].name,
        "ameide_core_proto.inference.v1.InferenceService/Generate"
    );
    assert_eq!(spans[0].status, SpanStatus::Unset);
}

#[tokio::test(start_paused = true)]
async fn baggage_from_the_callers_context_travels_with_the_session_id() {
    use opentelemetry::baggage::BaggageExt;
    let server = MockServer::new();
    let client = mock_client(&server).session_id("s-9").build().unwrap();
    let cx = Context::current().with_baggage([KeyValue::new("team", "core ai")]);
    {
        let _guard = cx.attach();
        client.graph().list_repositories(list()).await.unwrap();
    }
    let baggage = server.attempts()[0].header("baggage").unwrap().to_owned();
    let mut items: Vec<&str> = baggage.split(',').collect();
    items.sort();
    assert_eq!(items, ["ameide.session_id=s-9", "team=core%20ai"]);
}

/// Attempts cut by the call's deadline (a server that ignores
/// `grpc-timeout`), before and after their response headers, end their
/// spans with DEADLINE_EXCEEDED and an error status, as the calls end
/// (issue 25: no status before the headers, CANCELLED after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_by_the_deadline_ends_its_span_with_deadline_exceeded() {
    let (provider, exporter) = provider();
    let server = ameide_sdk::testkit::H2FaultServer::start().await.unwrap();
    let silent = ameide_sdk::testkit::RawReply::grpc();
    server.push_reply(
        silent
            .clone()
            .delay(std::time::Duration::from_secs(5))
            .hang(),
    );
    server.push_reply(silent.hang());
    let client = ameide_sdk::AmeideClient::builder()
        .endpoint(server.endpoint())
        .tracer_provider(&provider)
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..2 {
        let err = client.graph().list_repositories(list()).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
    }
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2);
    for span in &spans {
        assert_eq!(
            attrs(span).get("rpc.grpc.status_code"),
            Some(&Value::I64(Code::DeadlineExceeded as i64))
        );
        assert!(
            matches!(&span.status, SpanStatus::Error { description } if description.contains("deadline")),
            "{:?}",
            span.status
        );
    }
}

/// A stream cut by its idle timeout (one message, then silence) ends its
/// attempt span with DEADLINE_EXCEEDED, as the call ends: the timeout layer
/// marks the cut for the layers under it (issue 25; an idle cut comes before
/// any deadline, so the clock alone read it as the caller going away,
/// CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_its_idle_timeout_ends_its_span_with_deadline_exceeded() {
    let (provider, exporter) = provider();
    let server = ameide_sdk::testkit::H2FaultServer::start().await.unwrap();
    let first = ameide_tests::calls::tokens(["one"]);
    server.push_reply(
        ameide_sdk::testkit::RawReply::grpc()
            .message(&first[0])
            .hang(),
    );
    let client = ameide_sdk::AmeideClient::builder()
        .endpoint(server.endpoint())
        .tracer_provider(&provider)
        .retry_policy(ameide_sdk::layers::RetryPolicy::disabled())
        .build()
        .unwrap();
    let request = ameide_sdk::CallOptions::new()
        .idle_timeout(std::time::Duration::from_millis(300))
        .into_request(ameide_sdk::proto::inference::v1::GenerateRequest::default())
        .unwrap();
    let mut stream = client
        .inference()
        .generate(request)
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    drop(stream);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        attrs(&spans[0]).get("rpc.grpc.status_code"),
        Some(&Value::I64(Code::DeadlineExceeded as i64)),
        "{:?}",
        spans[0].status
    );
}
