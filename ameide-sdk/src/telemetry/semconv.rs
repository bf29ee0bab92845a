//! OpenTelemetry RPC semantic conventions, for client and server spans
//! alike: which names (legacy, stable, both), the attributes of a call, and
//! how a span ends.

use std::borrow::Cow;

use opentelemetry::trace::{Status as SpanStatus, TraceContextExt};
use opentelemetry::{Context, KeyValue, StringValue};
use tonic::Code;

use crate::error::canonical_code_name;

/// Which RPC semantic conventions the spans follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SemconvMode {
    /// The experimental names the other Ameide SDKs emit (default).
    Legacy,
    /// The stable names only (`OTEL_SEMCONV_STABILITY_OPT_IN=rpc`).
    Stable,
    /// Both (`OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup`, which wins over `rpc`).
    Duplicate,
}

impl SemconvMode {
    /// Reads `OTEL_SEMCONV_STABILITY_OPT_IN`.
    ///
    /// ```
    /// use ameide_sdk::layers::SemconvMode;
    /// assert_eq!(SemconvMode::parse("http,rpc"), SemconvMode::Stable);
    /// assert_eq!(SemconvMode::parse("rpc, rpc/dup"), SemconvMode::Duplicate);
    /// assert_eq!(SemconvMode::parse("http"), SemconvMode::Legacy);
    /// ```
    pub fn from_env() -> Self {
        std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN")
            .map(|v| Self::parse(&v))
            .unwrap_or(SemconvMode::Legacy)
    }

    /// Parses a comma-separated opt-in list.
    pub fn parse(value: &str) -> Self {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items.contains(&"rpc/dup") {
            SemconvMode::Duplicate
        } else if items.contains(&"rpc") {
            SemconvMode::Stable
        } else {
            SemconvMode::Legacy
        }
    }

    fn legacy(self) -> bool {
        matches!(self, SemconvMode::Legacy | SemconvMode::Duplicate)
    }

    fn stable(self) -> bool {
        matches!(self, SemconvMode::Stable | SemconvMode::Duplicate)
    }
}

/// `00-<trace id>-<span id>-<flags>` in lower-case hex, without `format!`.
/// Pushes the `rpc.*` attributes of `path` and returns the span name
/// (`<package>.<Service>/<Method>`). Bundle methods get their names as
/// `&'static str` from the method table: no allocation per span.
pub(crate) fn rpc_attributes(
    path: &str,
    known: Option<&'static ameide_proto::MethodInfo>,
    semconv: SemconvMode,
    attributes: &mut Vec<KeyValue>,
) -> Cow<'static, str> {
    let (full_method, service, method): (StringValue, StringValue, StringValue) = match known {
        Some(info) => (
            StringValue::from(&info.path[1..]),
            StringValue::from(info.service),
            StringValue::from(info.method),
        ),
        None => {
            let full = path.strip_prefix('/').unwrap_or(path);
            let (service, method) = full.split_once('/').unwrap_or((full, ""));
            (
                StringValue::from(full.to_owned()),
                StringValue::from(service.to_owned()),
                StringValue::from(method.to_owned()),
            )
        }
    };
    if semconv.legacy() {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        attributes.push(KeyValue::new("rpc.service", service));
        if !semconv.stable() {
            attributes.push(KeyValue::new("rpc.method", method));
        }
    }
    if semconv.stable() {
        attributes.push(KeyValue::new("rpc.system.name", "grpc"));
        attributes.push(KeyValue::new("rpc.method", full_method.clone()));
    }
    match known {
        Some(info) => Cow::Borrowed(&info.path[1..]),
        None => Cow::Owned(full_method.as_str().to_owned()),
    }
}

/// Which end of the call a span describes; it decides which codes mark the span as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Any non-OK code is an error (the caller did not get what it asked for).
    Client,
    /// Only codes that mean the server failed (OpenTelemetry's gRPC server rule):
    /// `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`.
    Server,
}

impl Side {
    fn is_error(self, code: Code) -> bool {
        match self {
            Side::Client => code != Code::Ok,
            Side::Server => matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
        }
    }
}

pub(crate) fn end_span(cx: &Context, semconv: SemconvMode, side: Side, code: Code, message: &str) {
    let span = cx.span();
    if semconv.legacy() {
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    }
    if semconv.stable() {
        span.set_attribute(KeyValue::new(
            "rpc.response.status_code",
            canonical_code_name(code),
        ));
        if code != Code::Ok {
            span.set_attribute(KeyValue::new("error.type", canonical_code_name(code)));
        }
    }
    if side.is_error(code) {
        span.set_status(SpanStatus::error(message.to_owned()));
    }
    span.end();
}
