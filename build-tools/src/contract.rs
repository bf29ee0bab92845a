//! The parity constants of the Ameide contract (§4) that are not derived from the bundle.
//!
//! These values are the same in every Ameide SDK. They are written into the
//! manifest (`defaults`, `metadata`, `layers`) and generated into
//! `ameide_proto::contract`, where `ameide-sdk` reads them, so the manifest and
//! the client cannot disagree.

/// Default endpoint: TLS, never a localhost default.
pub const DEFAULT_ENDPOINT: &str = "https://api.ameide.io:443";
/// Default whole-call timeout in milliseconds, all attempts included.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Maximum number of attempts, the first one included.
pub const RETRY_MAX_ATTEMPTS: u32 = 3;
/// Delay before the second attempt, before jitter.
pub const RETRY_INITIAL_BACKOFF_MS: u64 = 250;
/// Growth factor of the delay between attempts.
pub const RETRY_BACKOFF_MULTIPLIER: f64 = 2.0;
/// Upper bound of the delay between attempts, before jitter.
pub const RETRY_MAX_BACKOFF_MS: u64 = 5_000;
/// Lower bound of the random factor each delay is multiplied by.
pub const RETRY_JITTER_MIN: f64 = 0.5;
/// Upper bound of the random factor each delay is multiplied by.
pub const RETRY_JITTER_MAX: f64 = 1.5;
/// gRPC status codes retried by default, by their canonical names.
pub const RETRYABLE_CODES: &[&str] = &[
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "ABORTED",
    "RESOURCE_EXHAUSTED",
];

/// Metadata header names, as `(role, header)` pairs, in manifest order.
pub const METADATA_HEADERS: &[(&str, &str)] = &[
    ("tenant", "x-tenant-id"),
    ("user", "x-user-id"),
    ("request_id", "x-request-id"),
    ("authorization", "authorization"),
    ("traceparent", "traceparent"),
    ("tracestate", "tracestate"),
    ("baggage", "baggage"),
    ("previous_attempts", "grpc-previous-rpc-attempts"),
    ("timeout", "grpc-timeout"),
];
/// Baggage key that carries the session id.
pub const SESSION_BAGGAGE_KEY: &str = "ameide.session_id";

/// Built-in client layers, outermost first. User layers follow them, then the transport.
pub const LAYERS: &[&str] = &["metadata", "auth", "timeout", "retry", "tracing"];
