//! The case format. One JSON file per case under `parity/cases/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One parity case: how the client is configured, the call it makes, what the
/// server answers on each attempt, and what must be observed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique id, e.g. `retry-unavailable-then-ok`.
    pub id: String,
    /// The suite it belongs to (`http-errors`, …); `core` when not given.
    #[serde(default = "core_suite")]
    pub suite: String,
    /// What the case proves, in a sentence.
    pub description: String,
    /// Axes the case also runs across: `compression` runs it once more per
    /// encoding (`<id>@gzip`, `<id>@zstd`), the client sending its requests
    /// compressed and the server answering compressed, and checks
    /// `grpc-encoding` on every attempt.
    #[serde(default)]
    pub axes: Vec<String>,
    /// Client configuration.
    #[serde(default)]
    pub client: ClientConfig,
    /// The call.
    pub call: Call,
    /// The server's per-attempt script.
    #[serde(default)]
    pub server: ServerScript,
    /// An inbound case: the adapter serves the method with its SDK's
    /// server side, and the runner calls it (`call.request_id`,
    /// `call.timeout_ms` and `call.traceparent` are then the runner's
    /// inbound call's `x-request-id`, `grpc-timeout` and `traceparent`);
    /// the adapter's handler makes the same call downstream, to the
    /// harness server, with a client built from `client`.
    pub inbound: Option<Inbound>,
    /// What must be observed.
    pub expect: Expect,
}

/// What the runner sends to the adapter's server, beyond `call`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// More headers on the inbound call, as written (`x-tenant-id`,
    /// `baggage`, a malformed `grpc-timeout`, …).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The handler forwards the caller's tenant and user downstream,
    /// explicitly, as the SDK offers it (they are never forwarded on their own).
    #[serde(default)]
    pub forward_identity: bool,
}

/// Client configuration; everything optional, defaults are the contract's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `x-tenant-id`.
    pub tenant_id: Option<String>,
    /// `x-user-id`.
    pub user_id: Option<String>,
    /// `ameide.session_id` baggage.
    pub session_id: Option<String>,
    /// Extra headers (any case; the client lower-cases names).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whole-call timeout in ms.
    pub timeout_ms: Option<u64>,
    /// Token provider behaviour.
    #[serde(default)]
    pub token: Token,
    /// Retry overrides.
    pub retry: Option<RetryOverrides>,
    /// Compress request messages: `gzip` or `zstd`.
    pub compression: Option<String>,
    /// The largest response message the client accepts, bytes (default: the
    /// contract's 4 MiB).
    pub max_decoding_bytes: Option<u64>,
}

/// What the token provider does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Token {
    /// No provider: no `authorization` header.
    #[default]
    None,
    /// A provider that returns no token.
    Empty,
    /// A provider that returns `value`.
    Static {
        /// The token.
        value: String,
    },
    /// A provider that fails with `message` (down, unreachable, broken):
    /// the call fails `UNAVAILABLE`.
    Error {
        /// The provider's error message.
        message: String,
    },
    /// A provider that says the credentials were refused (an OAuth2
    /// `invalid_client`): the call fails `UNAUTHENTICATED`.
    Refused {
        /// The provider's error message.
        message: String,
    },
}

/// Retry parameters a case may override.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverrides {
    /// Attempts, the first included.
    pub max_attempts: Option<u32>,
    /// First delay, ms.
    pub initial_backoff_ms: Option<u64>,
    /// Delay cap, ms.
    pub max_backoff_ms: Option<u64>,
    /// Growth factor.
    pub multiplier: Option<f64>,
}

/// The call under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// Roster key, e.g. `graph` or `platform.teams`.
    pub service: String,
    /// Method name, e.g. `ListRepositories`.
    pub method: String,
    /// The request as proto-JSON.
    #[serde(default = "empty_object")]
    pub request: serde_json::Value,
    /// A request id the caller sets.
    pub request_id: Option<String>,
    /// Per-call timeout in ms.
    pub timeout_ms: Option<u64>,
    /// The caller's W3C trace context: the call is made as part of this trace.
    pub traceparent: Option<String>,
    /// The caller gives up on the call this long after starting it (drops
    /// it, cancels its context, aborts its signal): the adapter reports
    /// `CANCELLED`.
    pub cancel_after_ms: Option<u64>,
    /// The caller gives up on a stream once it has this many response
    /// messages: the adapter reports `CANCELLED` with those messages.
    pub cancel_after_messages: Option<u64>,
    /// A long-lived call: no whole-call deadline (no `grpc-timeout`), but it
    /// ends `DEADLINE_EXCEEDED` when nothing arrives from the server for
    /// this long, ms.
    pub idle_timeout_ms: Option<u64>,
    /// Collect the items of every page through the SDK's pagination helper
    /// (a paginated method only): the outcome's `responses` are the items,
    /// its code the end of the item stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paginate: bool,
}

fn core_suite() -> String {
    "core".to_owned()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The server's answers, one per attempt; attempts past the list get the last entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerScript {
    /// Per-attempt replies.
    #[serde(default)]
    pub attempts: Vec<AttemptReply>,
    /// Not an HTTP/2 server at all: every connection is answered with
    /// these bytes, as an HTTP/1.1-only server or proxy answers the
    /// HTTP/2 connection preface; no gRPC attempt can arrive (`attempts`
    /// stays empty).
    pub http1: Option<Http1Answer>,
}

/// What a server that speaks only HTTP/1.1 answers to every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1Answer {
    /// The bytes, as text (`HTTP/1.1 400 Bad Request\r\n…`), written as
    /// they are after the client's first bytes arrive.
    pub answer: String,
    /// Keep the connection open (and silent) after the answer instead of
    /// closing it: the client must act on the answer, not on the close.
    #[serde(default)]
    pub hold_open: bool,
}

/// One reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptReply {
    /// Status code name (`OK`, `UNAVAILABLE`, …); default `OK`.
    #[serde(default = "ok")]
    pub status: String,
    /// Status message.
    #[serde(default)]
    pub message: String,
    /// Rich error details (`google.rpc`).
    #[serde(default)]
    pub details: Vec<Detail>,
    /// Wait before answering, ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// Response messages (proto-JSON of the method's response type) sent before the status.
    #[serde(default)]
    pub messages: Vec<serde_json::Value>,
    /// Wait between messages, ms.
    #[serde(default)]
    pub message_interval_ms: u64,
    /// Wait after the last message before the trailers, ms.
    #[serde(default)]
    pub trailers_delay_ms: u64,
    /// Send the messages compressed: `gzip` or `zstd` (with `grpc-encoding`).
    pub compress: Option<String>,
    /// When the status is not OK: send headers first (the call is then committed).
    #[serde(default)]
    pub after_headers: bool,
    /// `grpc-retry-pushback-ms` value to send.
    pub pushback_ms: Option<String>,
    /// Extra response headers / trailers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Not a gRPC answer at all: this HTTP response instead (`status`,
    /// `messages`, `details` and `after_headers` are then ignored).
    pub http: Option<HttpReply>,
    /// An HTTP/2 fault instead of an answer: the case is then served by a
    /// server on raw HTTP/2, where the other attempts may only use
    /// `status`, `message`, `messages` and `delay_ms`.
    pub h2: Option<H2Fault>,
}

/// What a server on raw HTTP/2 does to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum H2Fault {
    /// `RST_STREAM REFUSED_STREAM` before reading the request: the server
    /// did not process it.
    RefusedStream,
    /// Reads the request, then `RST_STREAM CANCEL`.
    RstCancel,
    /// Reads the request, then `RST_STREAM INTERNAL_ERROR`.
    RstInternalError,
    /// Reads the request, then `RST_STREAM ENHANCE_YOUR_CALM` (a server
    /// shedding load).
    RstEnhanceYourCalm,
    /// Reads the request, then `RST_STREAM INADEQUATE_SECURITY`.
    RstInadequateSecurity,
    /// Answers OK (one empty message), then `GOAWAY NO_ERROR` on the
    /// connection: later calls need a new one.
    GoawayAfterAnswer,
    /// `GOAWAY INTERNAL_ERROR` and the connection closed, the stream
    /// (which the server had accepted) unanswered.
    GoawayAbrupt,
    /// Reads the request, then closes the TCP connection without a word.
    DropConnection,
}

/// A response that is not gRPC's: a proxy's error page, a wrong route.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpReply {
    /// The HTTP status.
    pub status: u16,
    /// The `content-type`; none when not given.
    pub content_type: Option<String>,
    /// The body, as text; empty when not given.
    #[serde(default)]
    pub body: String,
    /// The body as hex (gRPC frames written by hand), instead of `body`.
    pub body_hex: Option<String>,
    /// Trailers after the body (`grpc-status`, …): none when not given,
    /// an empty trailers frame for `{}`.
    pub trailers: Option<BTreeMap<String, String>>,
}

fn ok() -> String {
    "OK".to_owned()
}

/// A `google.rpc` error detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Detail {
    /// `google.rpc.ErrorInfo`.
    ErrorInfo {
        /// Reason.
        reason: String,
        /// Domain.
        domain: String,
        /// Metadata.
        #[serde(default)]
        metadata: BTreeMap<String, String>,
    },
    /// `google.rpc.RetryInfo`.
    RetryInfo {
        /// Delay in ms.
        retry_delay_ms: u64,
    },
    /// `google.rpc.BadRequest` (field violations).
    BadRequest {
        /// `(field, description)` pairs.
        violations: Vec<(String, String)>,
    },
}

/// Expectations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Final status code name.
    pub code: String,
    /// Exact final status message.
    pub message: Option<String>,
    /// Text the final status message must contain (for messages the SDK words itself).
    pub message_contains: Option<String>,
    /// Attempts the server must have seen.
    pub attempts: Option<usize>,
    /// Response messages the client must have received.
    pub messages: Option<usize>,
    /// The response messages, proto-JSON of the method's response type: the
    /// client's decoded messages must equal them field by field.
    pub responses: Option<Vec<serde_json::Value>>,
    /// The client must report its request id and attempts (they are always
    /// compared with the wire when reported).
    #[serde(default)]
    pub reports_call_facts: bool,
    /// Every attempt's `traceparent` continues the caller's trace
    /// (`call.traceparent`): same trace id, a span id of the client's own.
    #[serde(default)]
    pub continues_trace: bool,
    /// Error details the client must have decoded.
    #[serde(default)]
    pub details: Vec<Detail>,
    /// Per-attempt header checks.
    #[serde(default)]
    pub headers: Vec<HeaderCheck>,
    /// `grpc-timeout` on every attempt must not exceed the budget left (ms) by more than `tolerance_ms`.
    pub grpc_timeout: Option<TimeoutCheck>,
    /// Bounds of the gaps between attempt arrivals.
    #[serde(default)]
    pub delays: Vec<DelayCheck>,
    /// The call must end no later than this after it started (the adapter's
    /// clock, ms; the runner's own clock, which also counts the adapter's
    /// overhead, gets `RUNNER_SLACK_MS` more).
    pub max_elapsed_ms: Option<u64>,
    /// The call must last at least this long (both clocks, ms).
    pub min_elapsed_ms: Option<u64>,
    /// Whether the client reset the last attempt's stream (`RST_STREAM`)
    /// before the server finished its reply: `true` for a cancelled call or
    /// one whose deadline cut the reply, `false` for a call that let the
    /// server finish.
    pub reset_by_client: Option<bool>,
    /// Wait this long after the outcome before judging what the server saw
    /// (a cancelled call must send no later attempt), ms.
    #[serde(default)]
    pub settle_ms: u64,
    /// The number of distinct connections the attempts arrived on (a
    /// retry after a `GOAWAY` or a dropped connection needs a new one).
    pub connections: Option<usize>,
    /// The request each attempt must carry, in order (proto-JSON; instead
    /// of `call.request` on every attempt): the pages of a paginated call.
    pub requests: Option<Vec<serde_json::Value>>,
    /// Inbound cases: checks on the metadata (headers and trailers) of the
    /// adapter's server's answer to the runner (`attempts` must be empty).
    #[serde(default)]
    pub response_headers: Vec<HeaderCheck>,
    /// Inbound cases: the only metadata names the adapter's server's answer
    /// may carry (nothing of the SDK's own crosses a hop).
    pub response_metadata_only: Option<Vec<String>>,
}

/// A check on one header of some attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCheck {
    /// Which attempts (1-based); empty means every attempt.
    #[serde(default)]
    pub attempts: Vec<usize>,
    /// Header name (lower case).
    pub name: String,
    /// Exact value.
    pub exact: Option<String>,
    /// Must be present.
    #[serde(default)]
    pub present: bool,
    /// Must be absent.
    #[serde(default)]
    pub absent: bool,
    /// Must match this regular expression (whole value).
    pub pattern: Option<String>,
    /// Must equal the same header on the previous attempt.
    #[serde(default)]
    pub same_as_previous: bool,
    /// Must contain this text.
    pub contains: Option<String>,
}

/// The `grpc-timeout` check: on every attempt, within
/// [budget left − `tolerance_ms`, budget left + `tolerance_ms`], where the
/// budget left is `budget_ms` minus the time since the first attempt arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutCheck {
    /// The budget the call started with, ms.
    pub budget_ms: u64,
    /// Allowed difference either way, ms.
    #[serde(default = "default_tolerance")]
    pub tolerance_ms: u64,
}

fn default_tolerance() -> u64 {
    50
}

/// Bounds of the gap between attempt `after - 1` and attempt `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayCheck {
    /// The attempt the gap ends at (2 = between the first and second attempts).
    pub before_attempt: usize,
    /// Lower bound, ms.
    pub min_ms: u64,
    /// Upper bound, ms.
    pub max_ms: u64,
}
