//! What a server says about retrying: `grpc-retry-pushback-ms` and
//! `google.rpc.RetryInfo`.

use std::time::Duration;

use tonic::Status;

use crate::layers::HttpResponse;

/// What `grpc-retry-pushback-ms` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Wait exactly this long, then retry.
    Wait(Duration),
    /// Do not retry (a negative or malformed value).
    Stop,
}

pub(crate) fn pushback(response: &HttpResponse) -> Option<Pushback> {
    let value = response.headers().get("grpc-retry-pushback-ms")?;
    Some(parse_pushback(value.as_bytes()))
}

/// A `grpc-retry-pushback-ms` value: a non-negative integer waits that long
/// (any size: the loop caps it at the deadline); anything else says stop.
pub(crate) fn parse_pushback(value: &[u8]) -> Pushback {
    let parsed = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok());
    match parsed {
        Some(ms) if ms >= 0 => Pushback::Wait(Duration::from_millis(ms.unsigned_abs())),
        _ => Pushback::Stop,
    }
}

/// The delay of a `google.rpc.RetryInfo` detail, if the status carries one.
pub(crate) fn retry_info_delay(status: &Status) -> Option<Duration> {
    crate::peer::retry_delay(status.details())
}
