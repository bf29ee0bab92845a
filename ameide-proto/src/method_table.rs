//! The run-time method table: streaming kind and idempotency for every method path.

/// How a method streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamingKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// Streams both ways.
    BidiStreaming,
}

impl StreamingKind {
    /// True when the request is a single message (unary and server streaming),
    /// so it can be buffered and replayed on a retry.
    ///
    /// ```
    /// assert!(ameide_proto::StreamingKind::ServerStreaming.has_single_request());
    /// assert!(!ameide_proto::StreamingKind::BidiStreaming.has_single_request());
    /// ```
    pub const fn has_single_request(self) -> bool {
        matches!(self, StreamingKind::Unary | StreamingKind::ServerStreaming)
    }

    /// True when the response is a single message (unary and client
    /// streaming): an OK response without it is a broken one.
    ///
    /// ```
    /// assert!(ameide_proto::StreamingKind::ClientStreaming.has_single_response());
    /// assert!(!ameide_proto::StreamingKind::ServerStreaming.has_single_response());
    /// ```
    pub const fn has_single_response(self) -> bool {
        matches!(self, StreamingKind::Unary | StreamingKind::ClientStreaming)
    }
}

/// A method's `idempotency_level` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// `IDEMPOTENCY_UNKNOWN` (or no option): may have side effects.
    Unknown,
    /// `NO_SIDE_EFFECTS`: read-only, safe to repeat.
    NoSideEffects,
    /// `IDEMPOTENT`: repeating it has the effect of doing it once.
    Idempotent,
}

impl Idempotency {
    /// True for `NO_SIDE_EFFECTS` and `IDEMPOTENT`.
    ///
    /// ```
    /// assert!(ameide_proto::Idempotency::Idempotent.is_safe_to_repeat());
    /// assert!(!ameide_proto::Idempotency::Unknown.is_safe_to_repeat());
    /// ```
    pub const fn is_safe_to_repeat(self) -> bool {
        !matches!(self, Idempotency::Unknown)
    }
}

/// What the bundle says about one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The HTTP/2 path, `/package.Service/Method`.
    pub path: &'static str,
    /// Fully-qualified service name.
    pub service: &'static str,
    /// Method name.
    pub method: &'static str,
    /// The roster key of the service.
    pub roster_key: &'static str,
    /// Streaming kind.
    pub kind: StreamingKind,
    /// Idempotency level.
    pub idempotency: Idempotency,
}

/// One roster row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RosterEntry {
    /// Client key, e.g. `platform.organizations`.
    pub key: &'static str,
    /// Fully-qualified service name.
    pub service: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/method_table.rs"));

/// Looks up a method by its HTTP/2 path (`/package.Service/Method`).
///
/// ```
/// let info = ameide_proto::method("/ameide_core_proto.threads.v1.ThreadsService/SendMessage").unwrap();
/// assert_eq!(info.method, "SendMessage");
/// assert!(ameide_proto::method("/nope.Service/Nope").is_none());
/// ```
pub fn method(path: &str) -> Option<&'static MethodInfo> {
    METHODS
        .binary_search_by(|m| m.path.cmp(path))
        .ok()
        .map(|i| &METHODS[i])
}
