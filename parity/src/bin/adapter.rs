//! The Rust reference adapter: reads one case per line on stdin, makes the call
//! with the public `AmeideClient` API, writes one outcome per line on stdout.
//!
//! Negative controls (`--break <behaviour>`, repeatable) make the adapter wrong
//! on purpose, to prove the cases catch it (`parity/tests/negative_controls.rs`):
//! - `drop-request-id`: a user layer strips `x-request-id` before the wire;
//! - `retry-non-retryable`: INVALID_ARGUMENT, INTERNAL, NOT_FOUND, UNAUTHENTICATED and
//!   PERMISSION_DENIED are retried too;
//! - `ignore-deadline`: the client and per-call timeouts become one hour;
//! - `default-timeout-1s`: a client without `timeout_ms` gets 1 s instead of the contract's 5 s;
//! - `scaled-budget`: every timeout (client and per call) is halved;
//! - `ignore-request`: the method's empty request is sent instead of the case's;
//! - `wrong-response-type`: responses are decoded as the method's request type;
//! - `no-roster`: the path is guessed from the roster key (`/ameide_core_proto.<key>.v1.<Key>Service/<Method>`) instead of looked up;
//! - `forward-traceparent`: the caller's `traceparent` is put on the wire as it came (a user layer), no span of the client's own;
//! - `misreport`: the reported request id and attempt count are not the call's;
//! - `no-http-mapping`: a response that is not gRPC (a proxy's page) is UNKNOWN whatever its HTTP status;
//! - `http-else-unavailable`: one the mapping leaves UNKNOWN (a 200 that is not gRPC, a 418, a 500) is UNAVAILABLE;
//! - `accept-malformed`: a response that breaks gRPC's framing or the method's shape is reported OK;
//! - `no-compression`: `client.compression` is ignored: requests go uncompressed;
//! - `no-decode-limit`: the client accepts response messages of any size (4 GiB − 1);
//! - `no-h2-error-mapping`: transport failures lose their HTTP/2 error code and kind (UNKNOWN,
//!   never resent or retried), as in a client that does not read them;
//! - `rest-http-mapping`: pages of HTTP 408, 409, 412, 413 and 501 get the codes a REST mapping
//!   would give them (DEADLINE_EXCEEDED, ABORTED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNIMPLEMENTED);
//! - `status-from-leading-headers`: a grpc-status in the leading headers of a response that goes on
//!   ends the call there;
//! - `raw-grpc-message`: grpc-message is not percent-decoded;
//! - `strict-grpc-message`: a grpc-message with broken percent-encoding is dropped;
//! - `lenient-grpc-status`: a grpc-status that is no gRPC code is taken for OK;
//! - `ignore-idle-timeout`: `call.idle_timeout_ms` is ignored: the call keeps the whole-call deadline;
//! - `no-pagination`: a paginated call returns its first page's items only;
//! - `drop-page-size`: pages after the first ask for no page size;
//! - `no-loop-guard`: the tokens are followed by hand, a repeated one too (at most 20 pages);
//! - `no-accept-compression`: the client advertises and decodes no compression;
//! - `decode-limit-exclusive`: the receive limit is one byte lower than configured (off by one);
//! - `ignore-cancel`: `cancel_after_ms` and `cancel_after_messages` are ignored: the call runs to its end;
//! - `abandon-on-deadline`: just before the budget ends the adapter reports DEADLINE_EXCEEDED and
//!   leaves the call on the wire (its stream never reset), as a client whose deadline is only a local timer;
//! - `http1-hangs`: a server that answers in HTTP/1 is taken for a silent one: the call waits out its
//!   budget and ends DEADLINE_EXCEEDED.
//!
//! Inbound cases (the adapter serves, `serve.rs`):
//! - `inbound-no-layer`: the server has no `InboundLayer` (a service that never installed it);
//! - `inbound-forward-identity`: the caller's tenant and user are copied onto every downstream call;
//! - `inbound-hand-on-facts`: a handed-on downstream failure carries the SDK's attempt count as
//!   metadata (`x-ameide-attempts`);
//! - `inbound-strict`: a malformed `traceparent` fails the call INVALID_ARGUMENT.
//! - `inbound-no-downstream`: the handler answers OK with an empty message without calling downstream.

#[path = "adapter/pages.rs"]
mod pages;
#[path = "adapter/serve.rs"]
mod serve;

use std::str::FromStr;
use std::time::{Duration, Instant};

use ameide_parity::case::{Detail, Token};
use ameide_parity::protocol::{Outcome, Request};
use ameide_parity::wire::{self, BytesCodec};
use ameide_sdk::auth::{AccessToken, TokenError};
use ameide_sdk::layers::{BoxError, HttpRequest, HttpResponse, RetryPolicy};
use ameide_sdk::tonic::codec::CompressionEncoding;
use ameide_sdk::{AmeideClient, CallInfo, CallOptions, CodecOptions, Error};
use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::Code;
use tonic_types::ErrorDetail;

fn strip_request_id(mut request: HttpRequest) -> HttpRequest {
    request.headers_mut().remove("x-request-id");
    request
}

/// What the SDK says of a response that breaks gRPC's framing or shape:
/// under `--break accept-malformed` such a call is reported OK, as a
/// lenient client would take it.
const MALFORMED: &[&str] = &[
    "protocol error",
    "ended inside a message",
    "exceeds the client's limit",
    "no grpc-status",
    "failed to decode the response message",
    "answers with one",
    "without its response message",
];

/// Whether the SDK made this response's status from an answer that was not
/// gRPC (its message says "not a gRPC response", percent-encoded).
fn is_page(headers: &http::HeaderMap) -> bool {
    headers
        .get("grpc-message")
        .is_some_and(|m| m.as_bytes().starts_with(b"not%20a%20gRPC%20response"))
}

/// Under `--break no-http-mapping`: every answer that was not gRPC (the
/// SDK names it "not a gRPC response") becomes UNKNOWN, as in a client
/// without gRPC's HTTP-to-gRPC mapping.
fn unknown_for_pages(mut response: HttpResponse) -> HttpResponse {
    if is_page(response.headers()) {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("2"));
    }
    response
}

/// Under `--break http-else-unavailable`: a response that is not gRPC and
/// that the mapping leaves UNKNOWN (a 200 that is not gRPC, a 418, a 500…)
/// becomes UNAVAILABLE, as in a client that treats any page as a proxy
/// outage.
fn unavailable_for_unknown_pages(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers();
    if is_page(headers) && headers.get("grpc-status").is_some_and(|s| s == "2") {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("14"));
    }
    response
}

/// Under `--break no-h2-error-mapping`: a transport failure reduced to its
/// text, as in a client that does not read HTTP/2 error codes (raw tonic
/// without its server feature says UNKNOWN for them).
#[derive(Debug)]
struct Opaque(String);

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Opaque {}

fn opaque(error: BoxError) -> BoxError {
    Box::new(Opaque(error.to_string()))
}

/// Under `--break rest-http-mapping`: pages of the statuses a REST mapping
/// reads as gRPC codes (408, 409, 412, 413, 501) get those codes, as in a
/// client that maps HTTP statuses its own way.
fn rest_codes_for_pages(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers();
    if !is_page(headers) {
        return response;
    }
    let message = headers
        .get("grpc-message")
        .map(|m| m.as_bytes().to_vec())
        .unwrap_or_default();
    let code = [
        (&b"HTTP%20408"[..], "4"),
        (b"HTTP%20409", "10"),
        (b"HTTP%20412", "9"),
        (b"HTTP%20413", "8"),
        (b"HTTP%20501", "12"),
    ]
    .into_iter()
    .find(|(status, _)| message.windows(status.len()).any(|w| w == *status));
    if let Some((_, code)) = code {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}

/// Under `--break status-from-leading-headers`: a `grpc-status` in the
/// leading headers of a response that goes on ends the call there (its
/// body dropped), as in a client that takes any such header for
/// Trailers-Only.
fn end_at_leading_status(mut response: HttpResponse) -> HttpResponse {
    use http_body::Body as _;
    if response.headers().contains_key("grpc-status") && !response.body().is_end_stream() {
        *response.body_mut() = tonic::body::Body::empty();
    }
    response
}

/// Rewrites the header `name` wherever the response carries it (its
/// headers, its trailers): `Some` replaces it, `None` drops it.
fn map_grpc_header(
    mut response: HttpResponse,
    name: &'static str,
    f: fn(&str) -> Option<String>,
) -> HttpResponse {
    let apply = move |headers: &mut http::HeaderMap| {
        let Some(value) = headers.get(name).and_then(|m| m.to_str().ok()) else {
            return;
        };
        match f(value).and_then(|m| http::HeaderValue::from_str(&m).ok()) {
            Some(value) => {
                headers.insert(name, value);
            }
            None => {
                headers.remove(name);
            }
        }
    };
    apply(response.headers_mut());
    response.map(|body| {
        tonic::body::Body::new(http_body_util::BodyExt::map_frame(
            body,
            move |mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    apply(trailers);
                }
                frame
            },
        ))
    })
}

/// Under `--break raw-grpc-message`: the message as it came on the wire,
/// not percent-decoded (escaped once more, so the SDK's decoding undoes
/// only that).
fn undecoded_message(message: &str) -> Option<String> {
    Some(message.replace('%', "%25"))
}

/// Under `--break strict-grpc-message`: a message whose percent-encoding
/// is broken is dropped instead of kept as it came.
fn strict_message(message: &str) -> Option<String> {
    let bytes = message.as_bytes();
    let valid = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    valid.then(|| message.to_owned())
}

/// Under `--break lenient-grpc-status`: a grpc-status that is no gRPC
/// code (not a number, or past 16) is taken for OK.
fn lenient_status(status: &str) -> Option<String> {
    match status.parse::<u8>() {
        Ok(code) if code <= 16 => Some(status.to_owned()),
        _ => Some("0".to_owned()),
    }
}

/// A raw gRPC client over `client`'s channel, set up as the SDK's typed
/// clients are: with the client's codec options (limits, compression).
fn grpc_of(client: &AmeideClient) -> tonic::client::Grpc<ameide_sdk::AmeideChannel> {
    let codec = client.codec();
    let mut grpc = tonic::client::Grpc::new(client.channel())
        .max_decoding_message_size(codec.max_decoding_message_size)
        .max_encoding_message_size(codec.max_encoding_message_size);
    for &encoding in codec.accept_compressed {
        grpc = grpc.accept_compressed(encoding);
    }
    if let Some(encoding) = codec.send_compressed {
        grpc = grpc.send_compressed(encoding);
    }
    grpc
}

/// Clients whose call is over, closed once its outcome line is written:
/// closing first would close the connection under a call the SDK may have
/// left open, which the server cannot tell from the stream reset the
/// cancellation and deadline cases check for.
static FINISHED: std::sync::Mutex<Vec<AmeideClient>> = std::sync::Mutex::new(Vec::new());

fn close_after_outcome(client: AmeideClient) {
    FINISHED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(client);
}

fn has(breaks: &[String], what: &str) -> bool {
    breaks.iter().any(|b| b == what)
}

/// Halves a timeout under `--break scaled-budget`.
fn budget(ms: u64, breaks: &[String]) -> Duration {
    if has(breaks, "scaled-budget") {
        Duration::from_millis(ms / 2)
    } else {
        Duration::from_millis(ms)
    }
}

fn client(request: &Request, breaks: &[String]) -> Result<AmeideClient, String> {
    let c = &request.client;
    let endpoint = request.endpoint.as_str();
    let mut builder = AmeideClient::builder().endpoint(endpoint);
    if let Some(t) = &c.tenant_id {
        builder = builder.tenant_id(t);
    }
    if let Some(u) = &c.user_id {
        builder = builder.user_id(u);
    }
    if let Some(s) = &c.session_id {
        builder = builder.session_id(s);
    }
    for (k, v) in &c.headers {
        builder = builder.header(k, v);
    }
    match c.timeout_ms {
        Some(ms) => builder = builder.timeout(budget(ms, breaks)),
        None if has(breaks, "default-timeout-1s") => {
            builder = builder.timeout(Duration::from_secs(1))
        }
        None if has(breaks, "scaled-budget") => {
            builder = builder.timeout(budget(ameide_sdk::contract::DEFAULT_TIMEOUT_MS, breaks));
        }
        None => {}
    }
    if breaks.iter().any(|b| b == "ignore-deadline") {
        builder = builder.timeout(Duration::from_secs(3600));
    }
    builder = match &c.token {
        Token::None => builder,
        Token::Empty => builder.token_provider(|| async { Ok(None) }),
        Token::Static { value } => {
            let value = value.clone();
            builder.token_provider(move || {
                let value = value.clone();
                async move { Ok(Some(AccessToken::new(value))) }
            })
        }
        Token::Error { message } => {
            let message = message.clone();
            builder.token_provider(move || {
                let message = message.clone();
                async move { Err(TokenError::new(message)) }
            })
        }
        Token::Refused { message } => {
            let message = message.clone();
            builder.token_provider(move || {
                let message = message.clone();
                async move { Err(TokenError::unauthenticated(message)) }
            })
        }
    };
    // Throttling is a Rust SDK extension beyond the contract: parity runs
    // without it, like the other SDKs.
    let mut policy = RetryPolicy::default().with_throttling(None);
    if let Some(r) = &c.retry {
        if let Some(n) = r.max_attempts {
            policy = policy.with_max_attempts(n);
        }
        if let Some(ms) = r.initial_backoff_ms {
            policy = policy.with_initial_backoff(Duration::from_millis(ms));
        }
        if let Some(ms) = r.max_backoff_ms {
            policy = policy.with_max_backoff(Duration::from_millis(ms));
        }
        if let Some(m) = r.multiplier {
            policy = policy.with_multiplier(m);
        }
    }
    if breaks.iter().any(|b| b == "retry-non-retryable") {
        policy = policy.with_retryable_codes([
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::Internal,
            Code::NotFound,
            Code::Unauthenticated,
            Code::PermissionDenied,
        ]);
    }
    builder = builder.retry_policy(policy);
    let mut codec = CodecOptions::default();
    match c.compression.as_deref() {
        _ if has(breaks, "no-compression") => {}
        Some("gzip") => codec = codec.with_send_compressed(CompressionEncoding::Gzip),
        Some("zstd") => codec = codec.with_send_compressed(CompressionEncoding::Zstd),
        Some(other) => return Err(format!("unknown compression {other:?}")),
        None => {}
    }
    if let Some(limit) = c.max_decoding_bytes {
        let limit = usize::try_from(limit).map_err(|e| e.to_string())?;
        codec = codec.with_max_decoding_message_size(limit);
    }
    if has(breaks, "no-accept-compression") {
        codec = codec.with_accept_compressed(&[]);
    }
    if has(breaks, "decode-limit-exclusive") {
        // Off by one: a message exactly at the limit is refused.
        let limit = codec.max_decoding_message_size;
        codec = codec.with_max_decoding_message_size(limit.saturating_sub(1).max(1));
    }
    if has(breaks, "no-decode-limit") {
        codec = codec.with_max_decoding_message_size(ameide_sdk::codec::MAX_MESSAGE_SIZE);
    }
    builder = builder.codec(codec);
    if has(breaks, "drop-request-id") {
        builder = builder.layer(tower::util::MapRequestLayer::new(
            strip_request_id as fn(HttpRequest) -> HttpRequest,
        ));
    }
    if has(breaks, "rest-http-mapping") {
        builder = builder.layer(tower::util::MapResponseLayer::new(
            rest_codes_for_pages as fn(HttpResponse) -> HttpResponse,
        ));
    }
    if has(breaks, "status-from-leading-headers") {
        builder = builder.layer(tower::util::MapResponseLayer::new(
            end_at_leading_status as fn(HttpResponse) -> HttpResponse,
        ));
    }
    for (mode, name, f) in [
        (
            "raw-grpc-message",
            "grpc-message",
            undecoded_message as fn(&str) -> Option<String>,
        ),
        ("strict-grpc-message", "grpc-message", strict_message),
        ("lenient-grpc-status", "grpc-status", lenient_status),
    ] {
        if has(breaks, mode) {
            builder = builder.layer(tower::util::MapResponseLayer::new(
                move |r: HttpResponse| map_grpc_header(r, name, f),
            ));
        }
    }
    if has(breaks, "no-h2-error-mapping") {
        builder = builder.layer(tower::util::MapErrLayer::new(
            opaque as fn(BoxError) -> BoxError,
        ));
    }
    if has(breaks, "http-else-unavailable") {
        builder = builder.layer(tower::util::MapResponseLayer::new(
            unavailable_for_unknown_pages as fn(HttpResponse) -> HttpResponse,
        ));
    }
    if has(breaks, "no-http-mapping") {
        builder = builder.layer(tower::util::MapResponseLayer::new(
            unknown_for_pages as fn(HttpResponse) -> HttpResponse,
        ));
    }
    if has(breaks, "forward-traceparent")
        && let Some(caller) = &request.call.traceparent
    {
        let value = http::HeaderValue::from_str(caller).map_err(|e| e.to_string())?;
        builder = builder.layer(tower::util::MapRequestLayer::new(
            move |mut r: HttpRequest| {
                r.headers_mut().insert("traceparent", value.clone());
                r
            },
        ));
    }
    builder.build().map_err(|e| e.to_string())
}

/// The caller's trace context from a W3C `traceparent` (version 00).
fn remote_parent(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [_version, trace, span, flags] = parts.as_slice() else {
        return None;
    };
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(sc))
}

fn details(err: &Error) -> Vec<Detail> {
    err.details()
        .iter()
        .filter_map(|d| match d {
            ErrorDetail::ErrorInfo(i) => Some(Detail::ErrorInfo {
                reason: i.reason.clone(),
                domain: i.domain.clone(),
                metadata: i
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            ErrorDetail::RetryInfo(i) => Some(Detail::RetryInfo {
                retry_delay_ms: i.retry_delay.map_or(0, |d| d.as_millis() as u64),
            }),
            ErrorDetail::BadRequest(b) => Some(Detail::BadRequest {
                violations: b
                    .field_violations
                    .iter()
                    .map(|v| (v.field.clone(), v.description.clone()))
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

fn failed(outcome: &mut Outcome, status: tonic::Status) {
    let err = Error::from(status);
    outcome.code = ameide_sdk::canonical_code_name(err.code()).to_owned();
    outcome.message = err.message().to_owned();
    outcome.details = details(&err);
    outcome.request_id = err.request_id().map(str::to_owned);
    outcome.attempts = Some(u64::from(err.attempts()));
}

/// Under `--break http1-hangs`: a call failed by a server that answered in
/// HTTP/1 waits out its budget instead and ends DEADLINE_EXCEEDED.
async fn hang_on_http1(
    outcome: &mut Outcome,
    request: &Request,
    started: Instant,
    breaks: &[String],
) {
    if !has(breaks, "http1-hangs") || !outcome.message.contains("answered in HTTP/1") {
        return;
    }
    let budget = request
        .call
        .timeout_ms
        .or(request.client.timeout_ms)
        .unwrap_or(ameide_sdk::contract::DEFAULT_TIMEOUT_MS);
    tokio::time::sleep_until((started + Duration::from_millis(budget)).into()).await;
    outcome.code = "DEADLINE_EXCEEDED".into();
    outcome.message = "no HTTP/2 SETTINGS before the deadline".into();
    outcome.elapsed_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
}

/// A response message that does not decode as the method's response type:
/// INTERNAL, as a typed client's codec says, with the facts the call's
/// response reported (the SDK's own errors carry theirs: [`failed`]).
fn decode_failed(outcome: &mut Outcome, status: &tonic::Status) {
    outcome.code = "INTERNAL".into();
    outcome.message = status.message().to_owned();
}

/// The call's path from its roster key and method, as the SDK resolves it
/// (or, under `--break no-roster`, guessed from the key).
fn resolve(request: &Request, breaks: &[String]) -> Result<String, String> {
    let key = &request.call.service;
    if has(breaks, "no-roster") {
        let pascal: String = key
            .split(['_', '.'])
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        return Ok(format!(
            "/ameide_core_proto.{key}.v1.{pascal}Service/{}",
            request.call.method
        ));
    }
    let entry = ameide_sdk::methods::ROSTER
        .iter()
        .find(|r| r.key == key.as_str())
        .ok_or_else(|| format!("no roster key {key:?}"))?;
    Ok(format!("/{}/{}", entry.service, request.call.method))
}

/// A response message as proto-JSON of the method's response type (or,
/// under `--break wrong-response-type`, of its request type).
fn response_json(
    bytes: &Bytes,
    method: &prost_reflect::MethodDescriptor,
    breaks: &[String],
) -> Result<serde_json::Value, tonic::Status> {
    let descriptor = if has(breaks, "wrong-response-type") {
        method.input()
    } else {
        method.output()
    };
    // A typed client's codec fails a message that is not its type: INTERNAL.
    prost_reflect::DynamicMessage::decode(descriptor, bytes.as_ref())
        .map(|message| serde_json::to_value(&message).unwrap_or(serde_json::Value::Null))
        .map_err(|e| tonic::Status::internal(format!("failed to decode the response message: {e}")))
}

async fn run(request: Request, pool: &prost_reflect::DescriptorPool, breaks: &[String]) -> Outcome {
    let mut outcome = Outcome {
        id: request.id.clone(),
        ..Default::default()
    };
    let prepared = (|| -> Result<_, String> {
        let client = client(&request, breaks)?;
        let path = resolve(&request, breaks)?;
        let method = wire::method(pool, &path)?;
        let body = if has(breaks, "ignore-request") {
            Bytes::new()
        } else {
            wire::encode(method.input(), &request.call.request)?
        };
        let mut options = CallOptions::new();
        if let Some(id) = &request.call.request_id {
            options = options.request_id(id);
        }
        if let Some(ms) = request.call.timeout_ms
            && !has(breaks, "ignore-deadline")
        {
            options = options.timeout(budget(ms, breaks));
        }
        if let Some(ms) = request.call.idle_timeout_ms
            && !has(breaks, "ignore-idle-timeout")
        {
            options = options.idle_timeout(Duration::from_millis(ms));
        }
        let call = options.into_request(body).map_err(|e| e.to_string())?;
        Ok((client, call, path, method, options))
    })();
    let (client, call, path, method, options) = match prepared {
        Ok(p) => p,
        Err(e) => {
            outcome.adapter_error = Some(e);
            return outcome;
        }
    };
    if request.call.paginate {
        let request_json = if has(breaks, "ignore-request") {
            serde_json::json!({})
        } else {
            request.call.request.clone()
        };
        let collected = pages::collect(
            &mut outcome,
            client.clone(),
            &path,
            method,
            &request_json,
            options,
            breaks,
        )
        .await;
        if let Err(e) = collected {
            outcome.adapter_error = Some(e);
        }
        close_after_outcome(client);
        return outcome;
    }
    let path = match PathAndQuery::from_str(&path) {
        Ok(p) => p,
        Err(e) => {
            outcome.adapter_error = Some(e.to_string());
            return outcome;
        }
    };
    let traceparent = request
        .call
        .traceparent
        .as_ref()
        .filter(|_| !has(breaks, "forward-traceparent"));
    let parent = match traceparent {
        Some(tp) => match remote_parent(tp) {
            Some(cx) => cx,
            None => {
                outcome.adapter_error = Some(format!(
                    "call.traceparent {tp:?} is not a valid W3C traceparent"
                ));
                return outcome;
            }
        },
        None => opentelemetry::Context::new(),
    };
    let _attached = parent.attach();
    let mut grpc = grpc_of(&client);
    let started = Instant::now();
    if let Err(status) = grpc
        .ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))
    {
        failed(&mut outcome, status);
        hang_on_http1(&mut outcome, &request, started, breaks).await;
        return outcome;
    }
    let ignore_cancel = has(breaks, "ignore-cancel");
    let cancel_after_messages = request
        .call
        .cancel_after_messages
        .filter(|_| !ignore_cancel)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let responses = &mut outcome.responses;
    let making = async {
        // A response the SDK handed over that does not decode (the adapter's verdict).
        let mut undecodable: Option<tonic::Status> = None;
        let mut facts = None;
        let mut cancelled = false;
        let result: Result<(), tonic::Status> = if request.kind == "server_streaming" {
            match grpc
                .server_streaming::<Bytes, Bytes, _>(call, path, BytesCodec)
                .await
            {
                Ok(response) => {
                    facts = response.extensions().get::<CallInfo>().cloned();
                    let mut stream = response.into_inner();
                    loop {
                        if cancel_after_messages.is_some_and(|n| responses.len() >= n) {
                            // The caller stops reading: dropping the stream cancels the call.
                            cancelled = true;
                            break Ok(());
                        }
                        match stream.message().await {
                            Ok(Some(bytes)) => match response_json(&bytes, &method, breaks) {
                                Ok(json) => responses.push(json),
                                Err(status) => {
                                    undecodable = Some(status);
                                    break Ok(());
                                }
                            },
                            Ok(None) => break Ok(()),
                            Err(status) => break Err(status),
                        }
                    }
                }
                Err(status) => Err(status),
            }
        } else {
            match grpc.unary::<Bytes, Bytes, _>(call, path, BytesCodec).await {
                Ok(response) => {
                    facts = response.extensions().get::<CallInfo>().cloned();
                    match response_json(response.get_ref(), &method, breaks) {
                        Ok(json) => responses.push(json),
                        Err(status) => undecodable = Some(status),
                    }
                    Ok(())
                }
                Err(status) => Err(status),
            }
        };
        (result, undecodable, facts, cancelled)
    };
    let cancel_after = request
        .call
        .cancel_after_ms
        .filter(|_| !ignore_cancel)
        .map(Duration::from_millis);
    let finishing = async {
        match cancel_after {
            // The caller gives up: dropping the call's future cancels it.
            Some(after) => match tokio::time::timeout(after, making).await {
                Ok(done) => done,
                Err(_) => (Ok(()), None, None, true),
            },
            None => making.await,
        }
    };
    let (result, undecodable, facts, cancelled) =
        if has(breaks, "abandon-on-deadline") && request.call.idle_timeout_ms.is_none() {
            let budget = request
                .call
                .timeout_ms
                .or(request.client.timeout_ms)
                .unwrap_or(ameide_sdk::contract::DEFAULT_TIMEOUT_MS);
            let local = Duration::from_millis(budget.saturating_sub(30));
            let mut finishing = Box::pin(finishing);
            match tokio::time::timeout(local, &mut finishing).await {
                Ok(done) => done,
                Err(_) => {
                    // Neither dropped nor polled again: the stream stays open.
                    std::mem::forget(finishing);
                    std::mem::forget(client);
                    outcome.code = "DEADLINE_EXCEEDED".into();
                    outcome.message = "local timer".into();
                    outcome.elapsed_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    return outcome;
                }
            }
        } else {
            finishing.await
        };
    if let Some(info) = facts {
        outcome.request_id = Some(info.request_id.to_string());
        outcome.attempts = Some(u64::from(info.attempts));
    }
    outcome.elapsed_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    match (result, undecodable) {
        _ if cancelled => {
            outcome.code = "CANCELLED".into();
            outcome.message = "cancelled by the caller".into();
        }
        (Err(status), _) => failed(&mut outcome, status),
        (Ok(()), Some(status)) => decode_failed(&mut outcome, &status),
        (Ok(()), None) => outcome.code = "OK".into(),
    }
    hang_on_http1(&mut outcome, &request, started, breaks).await;
    if has(breaks, "accept-malformed") && MALFORMED.iter().any(|m| outcome.message.contains(m)) {
        outcome.code = "OK".into();
        outcome.message.clear();
    }
    if has(breaks, "misreport") {
        outcome.request_id = Some("00000000-0000-4000-8000-000000000000".into());
        outcome.attempts = Some(outcome.attempts.unwrap_or(0) + 1);
    }
    close_after_outcome(client);
    outcome
}

/// An inbound case: serve the method with the SDK's server side (the
/// downstream client built from the case's `client`), answer where.
async fn serve_case(request: Request, breaks: &[String]) -> (Outcome, Option<serve::Serving>) {
    let mut outcome = Outcome {
        id: request.id.clone(),
        ..Default::default()
    };
    let forward_identity = request.serve.as_ref().is_some_and(|s| s.forward_identity);
    let started = match client(&request, breaks) {
        Ok(client) => serve::start(client, forward_identity, breaks).await,
        Err(e) => Err(e),
    };
    match started {
        Ok((at, serving)) => {
            outcome.serve_endpoint = Some(at);
            (outcome, Some(serving))
        }
        Err(e) => {
            outcome.adapter_error = Some(e);
            (outcome, None)
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut breaks = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--break", Some(what)) => breaks.push(what.clone()),
            _ => {
                eprintln!(
                    "usage: parity-adapter-rust [--break BEHAVIOUR]… (see the module docs for the behaviours)"
                );
                std::process::exit(2);
            }
        }
    }
    // An OpenTelemetry SDK tracer (no exporter): spans get ids of their own,
    // as in a service that has tracing set up. With the API's no-op tracer a
    // client has no span to put in `traceparent`.
    opentelemetry::global::set_tracer_provider(
        opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
    );
    let pool = match wire::pool() {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("parity-adapter-rust: {e}");
            std::process::exit(1);
        }
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    // The server of the last inbound case, stopped when the next line comes.
    let mut serving = None;
    while let Ok(Some(line)) = lines.next_line().await {
        drop(serving.take());
        let outcome = match serde_json::from_str::<Request>(&line) {
            Ok(request) if request.serve.is_some() => {
                let (outcome, server) = serve_case(request, &breaks).await;
                serving = server;
                outcome
            }
            Ok(request) => run(request, &pool, &breaks).await,
            Err(e) => Outcome {
                adapter_error: Some(format!("unreadable request: {e}")),
                ..Default::default()
            },
        };
        let mut text = serde_json::to_string(&outcome).expect("an outcome serializes");
        text.push('\n');
        if stdout.write_all(text.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
        let finished = std::mem::take(&mut *FINISHED.lock().unwrap_or_else(|p| p.into_inner()));
        for client in finished {
            client.close();
        }
    }
}
