//! The one error type of a failed call.
//!
//! Every call through [`AmeideClient`](crate::AmeideClient) fails with a
//! `tonic::Status` to which the SDK has attached, in-process, the request id,
//! the attempts and their history, why retrying stopped, the elapsed time and
//! the retry verdict (as the status's `source()`, which tonic never sends on
//! the wire: a service that returns a downstream status to its caller hands
//! on nothing of the SDK's). [`Error`] reads all of that back, plus the decoded
//! `google.rpc` details from `grpc-status-details-bin`, and says it in one
//! readable line. A status that did not come through the SDK (built by hand,
//! or a clone made before the SDK saw it) gives an [`Error`] with the
//! contract's defaults: one attempt, no request id, retryable by code.

use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::ErrorDetail;

use crate::call::{AttemptRecord, StopReason, facts_of};
use crate::config_error::ConfigError;

/// A failed call: the original `tonic::Status` and what the SDK knows about the call.
///
/// ```
/// use ameide_sdk::Error;
/// let status = tonic::Status::unavailable("backend down");
/// let err = Error::from(status);
/// assert_eq!(err.code(), tonic::Code::Unavailable);
/// assert!(err.is_retryable());
/// assert_eq!(err.to_string(), "UNAVAILABLE: backend down [attempts=1, retryable]");
/// ```
pub struct Error {
    inner: Box<Inner>,
}

/// Boxed so that `Result<T, Error>` stays one pointer wide on the happy path.
struct Inner {
    status: Status,
    request_id: Option<String>,
    attempts: u32,
    elapsed: Option<Duration>,
    retryable: bool,
    details: Vec<ErrorDetail>,
    details_error: Option<String>,
    history: Vec<AttemptRecord>,
    stop: Option<StopReason>,
}

impl Error {
    /// The rejected setting, when the call failed before it was sent because
    /// of one (see `From<ConfigError>`).
    ///
    /// ```
    /// let err = ameide_sdk::Error::from(tonic::Status::internal("x"));
    /// assert!(err.config_error().is_none());
    /// ```
    pub fn config_error(&self) -> Option<&ConfigError> {
        std::error::Error::source(&self.inner.status)?.downcast_ref()
    }

    /// Every attempt: its code, message and the delay before it.
    ///
    /// ```
    /// let err = ameide_sdk::Error::from(tonic::Status::internal("x"));
    /// assert!(err.history().is_empty(), "a bare status has no recorded history");
    /// ```
    pub fn history(&self) -> &[AttemptRecord] {
        &self.inner.history
    }

    /// Why the retry loop stopped, when a retry layer ran.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.inner.stop
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.inner.status.code()
    }

    /// The status message, as the server (or the SDK) wrote it.
    pub fn message(&self) -> &str {
        self.inner.status.message()
    }

    /// The original status: code, message, details and metadata.
    pub fn status(&self) -> &Status {
        &self.inner.status
    }

    /// Gives back the original status.
    pub fn into_status(self) -> Status {
        self.inner.status
    }

    /// The `x-request-id` the call carried, when the SDK sent it.
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// Attempts made, the first one included.
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// Time from the call's start until it failed, when the SDK measured it.
    pub fn elapsed(&self) -> Option<Duration> {
        self.inner.elapsed
    }

    /// Whether the code is one the retry policy retries: the call may succeed
    /// if made again later.
    pub fn is_retryable(&self) -> bool {
        self.inner.retryable
    }

    /// The decoded `google.rpc` details (`ErrorInfo`, `RetryInfo`, `BadRequest`, …).
    pub fn details(&self) -> &[ErrorDetail] {
        &self.inner.details
    }

    /// Why `grpc-status-details-bin` could not be decoded, if the server sent
    /// malformed details (the raw bytes stay in [`status`](Self::status)).
    pub fn details_error(&self) -> Option<&str> {
        self.inner.details_error.as_deref()
    }

    /// The `google.rpc.ErrorInfo` detail, if the server sent one.
    pub fn error_info(&self) -> Option<&tonic_types::ErrorInfo> {
        self.inner.details.iter().find_map(|d| match d {
            ErrorDetail::ErrorInfo(info) => Some(info),
            _ => None,
        })
    }

    /// The `google.rpc.RetryInfo` detail, if the server sent one.
    pub fn retry_info(&self) -> Option<&tonic_types::RetryInfo> {
        self.inner.details.iter().find_map(|d| match d {
            ErrorDetail::RetryInfo(info) => Some(info),
            _ => None,
        })
    }

    /// The `google.rpc.BadRequest` detail, if the server sent one.
    pub fn bad_request(&self) -> Option<&tonic_types::BadRequest> {
        self.inner.details.iter().find_map(|d| match d {
            ErrorDetail::BadRequest(info) => Some(info),
            _ => None,
        })
    }
}

/// The codes the contract retries by default (its names, the one source).
pub(crate) fn default_retryable(code: Code) -> bool {
    crate::contract::RETRYABLE_CODES.contains(&canonical_code_name(code))
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let facts = facts_of(&status);
        let (details, mut details_error) = match crate::peer::error_details(status.details()) {
            Ok(details) => (details, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        if let Some(dropped) = facts.and_then(|f| f.details_error.as_deref()) {
            details_error = Some(dropped.to_owned());
        }
        let inner = match facts {
            Some(facts) => Inner {
                request_id: Some(facts.request_id.to_string()),
                attempts: facts.attempts,
                elapsed: Some(facts.elapsed),
                retryable: facts
                    .retryable
                    .unwrap_or_else(|| default_retryable(status.code())),
                history: facts.history.clone(),
                stop: facts.stop,
                details,
                details_error,
                status,
            },
            None => Inner {
                request_id: None,
                attempts: 1,
                elapsed: None,
                retryable: default_retryable(status.code()),
                history: Vec::new(),
                stop: None,
                details,
                details_error,
                status,
            },
        };
        Error {
            inner: Box::new(inner),
        }
    }
}

impl Error {
    /// The SDK's own stop that trying again cannot change (a limit
    /// reached): not retryable, and no call made for it (zero attempts).
    pub(crate) fn local_stop(status: Status) -> Self {
        let mut error = Error::from(status);
        error.inner.retryable = false;
        error.inner.attempts = 0;
        error
    }

    /// The error of a stop made between calls (pagination's loop and page
    /// caps) with the request id of the call it is about.
    pub(crate) fn with_request_id(mut self, request_id: Option<std::sync::Arc<str>>) -> Self {
        if let Some(id) = request_id {
            self.inner.request_id = Some(id.to_string());
        }
        self
    }
}

/// A rejected setting met while making a call (for example from
/// [`CallOptions::into_request`](crate::CallOptions::into_request)) becomes an
/// [`Error`] with `?`: `INVALID_ARGUMENT`, zero attempts (nothing was sent),
/// not retryable, the [`ConfigError`] kept as [`Error::config_error`].
///
/// ```
/// # fn demo() -> Result<(), ameide_sdk::Error> {
/// use std::time::Duration;
/// let options = ameide_sdk::CallOptions::new().timeout(Duration::ZERO);
/// let err = options.into_request(()).map(|_| ()).map_err(ameide_sdk::Error::from).unwrap_err();
/// assert_eq!(err.code(), tonic::Code::InvalidArgument);
/// assert_eq!(err.attempts(), 0);
/// assert!(!err.is_retryable());
/// assert!(err.config_error().is_some());
/// assert!(err.to_string().contains("per-call timeout"), "{err}");
/// # Ok(()) }
/// # demo().unwrap();
/// ```
impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        let mut status = Status::invalid_argument(err.to_string());
        status.set_source(std::sync::Arc::new(err));
        let mut error = Error::from(status);
        error.inner.attempts = 0;
        error.inner.retryable = false;
        error
    }
}

/// An [`Error`] becomes the original `tonic::Status` again, so a tonic
/// handler can use `?` on it: the caller gets the downstream code, message,
/// details and metadata, and nothing of the SDK's in-process facts.
///
/// ```
/// use ameide_sdk::Error;
///
/// fn handler_step(downstream: Result<u32, Error>) -> Result<u32, tonic::Status> {
///     Ok(downstream? + 1)
/// }
/// let status = handler_step(Err(Error::from(tonic::Status::not_found("no repo")))).unwrap_err();
/// assert_eq!(status.code(), tonic::Code::NotFound);
/// assert_eq!(status.message(), "no repo");
/// assert_eq!(handler_step(Ok(1)).unwrap(), 2);
/// ```
impl From<Error> for Status {
    fn from(err: Error) -> Self {
        err.inner.status
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The canonical upper-case name of a code, e.g. `UNAVAILABLE`.
///
/// ```
/// assert_eq!(ameide_sdk::canonical_code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
/// ```
pub fn canonical_code_name(code: Code) -> &'static str {
    code_name(code)
}

/// Writes `text` with control characters (tabs, line breaks, …) escaped so
/// the whole error stays on one line; everything else is kept as it is.
fn write_one_line(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    use fmt::Write as _;
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

fn fmt_detail(detail: &ErrorDetail, f: &mut impl fmt::Write) -> fmt::Result {
    match detail {
        ErrorDetail::ErrorInfo(i) => {
            write!(f, "ErrorInfo(reason={}, domain={}", i.reason, i.domain)?;
            let mut meta: Vec<_> = i.metadata.iter().collect();
            meta.sort();
            for (k, v) in meta {
                write!(f, ", {k}={v}")?;
            }
            f.write_str(")")
        }
        ErrorDetail::RetryInfo(i) => match i.retry_delay {
            Some(d) => write!(f, "RetryInfo(retry_delay={d:?})"),
            None => f.write_str("RetryInfo()"),
        },
        ErrorDetail::BadRequest(b) => {
            f.write_str("BadRequest(")?;
            for (n, v) in b.field_violations.iter().enumerate() {
                if n > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{}: {}", v.field, v.description)?;
            }
            f.write_str(")")
        }
        ErrorDetail::DebugInfo(d) => write!(f, "DebugInfo(detail={})", d.detail),
        ErrorDetail::QuotaFailure(q) => {
            write!(f, "QuotaFailure({} violation(s))", q.violations.len())
        }
        ErrorDetail::PreconditionFailure(p) => {
            write!(
                f,
                "PreconditionFailure({} violation(s))",
                p.violations.len()
            )
        }
        ErrorDetail::RequestInfo(r) => write!(f, "RequestInfo(request_id={})", r.request_id),
        ErrorDetail::ResourceInfo(r) => write!(
            f,
            "ResourceInfo(type={}, name={})",
            r.resource_type, r.resource_name
        ),
        ErrorDetail::Help(h) => write!(f, "Help({} link(s))", h.links.len()),
        ErrorDetail::LocalizedMessage(m) => {
            write!(f, "LocalizedMessage({}: {})", m.locale, m.message)
        }
        other => write!(f, "{other:?}"),
    }
}

impl fmt::Display for Error {
    /// One line: `CODE: message [request_id=…, attempts=N, elapsed=…, retryable] details: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", code_name(self.code()))?;
        write_one_line(f, self.message())?;
        f.write_str(" [")?;
        if let Some(id) = &self.inner.request_id {
            write!(f, "request_id={id}, ")?;
        }
        write!(f, "attempts={}", self.inner.attempts)?;
        if self.inner.history.len() > 1 {
            f.write_str(" (")?;
            for (n, r) in self.inner.history.iter().enumerate() {
                if n > 0 {
                    write!(f, " → +{}ms ", r.delay_before.as_millis())?;
                }
                f.write_str(code_name(r.code))?;
                if r.refused {
                    f.write_str(" (refused)")?;
                }
            }
            f.write_str(")")?;
        }
        if let Some(stop) = self.inner.stop {
            write!(f, ", stopped: {}", stop.as_str())?;
        }
        if let Some(elapsed) = self.inner.elapsed {
            write!(f, ", elapsed={}ms", elapsed.as_millis())?;
        }
        f.write_str(if self.inner.retryable {
            ", retryable]"
        } else {
            ", not retryable]"
        })?;
        if !self.inner.details.is_empty() {
            f.write_str(" details: ")?;
            for (n, d) in self.inner.details.iter().enumerate() {
                if n > 0 {
                    f.write_str(", ")?;
                }
                // Details are the peer's text: kept on one line like the message.
                let mut text = String::new();
                fmt_detail(d, &mut text)?;
                write_one_line(f, &text)?;
            }
        }
        if let Some(e) = &self.inner.details_error {
            f.write_str(" details: <undecodable grpc-status-details-bin: ")?;
            write_one_line(f, e)?;
            f.write_str(">")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("code", &self.code())
            .field("message", &self.message())
            .field("request_id", &self.inner.request_id)
            .field("attempts", &self.inner.attempts)
            .field("elapsed", &self.inner.elapsed)
            .field("retryable", &self.inner.retryable)
            .field("details", &self.inner.details)
            .field("details_error", &self.inner.details_error)
            .field("history", &self.inner.history)
            .field("stop", &self.inner.stop)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner.status)
    }
}

/// Turns the `Result<_, tonic::Status>` of a generated client into
/// `Result<_, ameide_sdk::Error>` where `?` does not (a `match`, a closure).
/// In a function returning [`crate::Result`], plain `?` does the same.
///
/// ```no_run
/// # async fn demo(client: ameide_sdk::AmeideClient) -> Result<(), ameide_sdk::Error> {
/// use ameide_sdk::IntoAmeideResult;
/// let repos = client.graph().list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default()).await.into_ameide();
/// if let Err(err) = &repos { eprintln!("{err}"); }
/// # Ok(()) }
/// ```
pub trait IntoAmeideResult<T> {
    /// Maps the error into [`Error`].
    fn into_ameide(self) -> Result<T, Error>;
}

impl<T> IntoAmeideResult<T> for Result<T, Status> {
    fn into_ameide(self) -> Result<T, Error> {
        self.map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallFacts;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn display_is_one_line_with_everything() {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            "QUOTA",
            "ameide.io",
            [("tenant".to_string(), "t1".to_string())],
        );
        details.set_retry_info(Some(Duration::from_secs(2)));
        let status =
            Status::with_error_details(Code::ResourceExhausted, "slow\tdown\nplease", details);
        let facts = CallFacts {
            request_id: "req-1".into(),
            attempts: 3,
            elapsed: Duration::from_millis(812),
            retryable: Some(true),
            stop: None,
            history: Vec::new(),
            details_error: None,
            cause: None,
        };
        let err = Error::from(facts.attach(status));
        let shown = err.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert_eq!(
            shown,
            "RESOURCE_EXHAUSTED: slow\\tdown\\nplease [request_id=req-1, attempts=3, elapsed=812ms, retryable] \
             details: RetryInfo(retry_delay=2s), ErrorInfo(reason=QUOTA, domain=ameide.io, tenant=t1)"
        );
        assert_eq!(err.error_info().unwrap().reason, "QUOTA");
        assert_eq!(
            err.retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(2))
        );
        assert_eq!(err.attempts(), 3);
        assert_eq!(err.request_id(), Some("req-1"));
    }

    #[test]
    fn facts_travel_in_process_and_never_as_metadata() {
        let facts = CallFacts {
            request_id: "req-9".into(),
            attempts: 2,
            elapsed: Duration::from_millis(5),
            retryable: Some(false),
            stop: Some(StopReason::NotRetryable),
            history: Vec::new(),
            details_error: None,
            cause: None,
        };
        let status = facts.attach(Status::internal("boom"));
        assert!(status.metadata().is_empty(), "{:?}", status.metadata());
        let mut wire = http::HeaderMap::new();
        status.add_header(&mut wire).unwrap();
        assert_eq!(wire.len(), 2, "only grpc-status and grpc-message: {wire:?}");
        let err = Error::from(status.clone());
        assert_eq!(err.request_id(), Some("req-9"));
        assert_eq!(err.stop_reason(), Some(StopReason::NotRetryable));
        // A peer cannot forge them through metadata.
        let mut forged = Status::internal("boom");
        forged
            .metadata_mut()
            .insert("ameide-sdk-attempts", "7".parse().unwrap());
        assert_eq!(Error::from(forged).attempts(), 1);
    }

    #[test]
    fn peer_text_in_details_stays_on_one_line() {
        // Found by the status_details fuzz target: an ErrorInfo whose domain
        // held a line break broke the one-line Display.
        let mut details = ErrorDetails::new();
        details.set_error_info("QUOTA", "a\nb\r\nc", []);
        details.add_bad_request_violation("field\n", "bad\u{2028}value\n");
        let err = Error::from(Status::with_error_details(Code::Internal, "x", details));
        let shown = err.to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown}");
        assert!(shown.contains("domain=a\\nb\\r\\nc"), "{shown}");
    }

    #[test]
    fn plain_status_gets_contract_retryability() {
        assert!(!Error::from(Status::invalid_argument("x")).is_retryable());
        assert!(Error::from(Status::aborted("x")).is_retryable());
        assert_eq!(Error::from(Status::internal("x")).attempts(), 1);
    }
}
