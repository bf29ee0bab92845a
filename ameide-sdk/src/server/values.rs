//! Inbound values read within bounds before they are forwarded, echoed or
//! logged: request id, tenant, user, `traceparent`, `tracestate`, `baggage`
//! (the limits are in the module docs of [`crate::server`]).

use std::str::FromStr;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use percent_encoding::percent_decode_str;

/// The longest inbound `x-request-id` kept (see the module docs); a longer
/// one is replaced by a generated id.
///
/// ```
/// assert_eq!(ameide_sdk::server::MAX_REQUEST_ID_BYTES, 128);
/// ```
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// The longest inbound tenant, user or session id kept; a longer one is ignored.
///
/// ```
/// assert_eq!(ameide_sdk::server::MAX_IDENTITY_BYTES, 256);
/// ```
pub const MAX_IDENTITY_BYTES: usize = 256;
const MAX_TRACEPARENT_BYTES: usize = 512;
const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;
const MAX_BAGGAGE_BYTES: usize = 8192;
const MAX_BAGGAGE_ENTRIES: usize = 64;

/// Whether an inbound request id may be kept and forwarded.
pub(crate) fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// Whether an inbound tenant, user or session id may be kept.
pub(crate) fn valid_identity(id: &str) -> bool {
    !id.trim().is_empty()
        && id.len() <= MAX_IDENTITY_BYTES
        && id.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub(crate) fn header<'a, B>(request: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    let value = request.headers().get(name)?;
    match value.to_str() {
        Ok(text) => Some(text),
        Err(_) => {
            ::tracing::warn!(
                header = name,
                value = %crate::peer::loggable(value.as_bytes()),
                "ignoring inbound header that is not visible ASCII"
            );
            None
        }
    }
}

/// An inbound tenant or user id, if it is within bounds (else a warning).
pub(crate) fn identity<B>(request: &http::Request<B>, name: &str) -> Option<String> {
    let value = header(request, name)?;
    if valid_identity(value) {
        return Some(value.to_owned());
    }
    ::tracing::warn!(
        header = name,
        value = %crate::peer::loggable(value.as_bytes()),
        "ignoring inbound identity that is empty, too long or not visible ASCII"
    );
    None
}

/// Parses a W3C `traceparent` (version 00, or a later version's first 55 bytes).
pub(crate) fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    if value.len() > MAX_TRACEPARENT_BYTES
        || value.len() < 55
        || (value.len() > 55 && value.as_bytes().get(55) != Some(&b'-'))
    {
        return None;
    }
    let mut parts = value.get(..55)?.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version.len() != 2
        || !lower_hex(version)
        || version == "ff"
        || (version == "00" && value.len() != 55)
    {
        return None;
    }
    if trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || !lower_hex(trace)
        || !lower_hex(span)
        || !lower_hex(flags)
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// Parses a W3C `tracestate` within its limits; anything else is dropped with a warning.
pub(crate) fn parse_tracestate(value: &str) -> TraceState {
    let members = value.split(',').filter(|m| !m.trim().is_empty()).count();
    if value.len() > MAX_TRACESTATE_BYTES || members > MAX_TRACESTATE_MEMBERS {
        ::tracing::warn!(
            bytes = value.len(),
            members,
            "ignoring inbound tracestate past the W3C limits (512 bytes, 32 members)"
        );
        return TraceState::default();
    }
    TraceState::from_str(value).unwrap_or_else(|_| {
        ::tracing::warn!(
            value = %crate::peer::loggable(value.as_bytes()),
            "ignoring malformed inbound tracestate"
        );
        TraceState::default()
    })
}

/// Parses W3C `baggage` entries; malformed ones are skipped. At most one
/// warning per header, however many entries are bad, and every entry, good
/// or bad, counts toward the 64-entry cap: a peer's header cannot make the
/// log grow by more than a line or two.
pub(crate) fn parse_baggage(value: &str) -> Vec<KeyValue> {
    let mut entries = Vec::new();
    if value.len() > MAX_BAGGAGE_BYTES {
        ::tracing::warn!(
            bytes = value.len(),
            "ignoring inbound baggage larger than the W3C limit of 8192 bytes"
        );
        return entries;
    }
    let mut seen = 0usize;
    let mut malformed = 0usize;
    let mut first_malformed = None;
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if seen == MAX_BAGGAGE_ENTRIES {
            ::tracing::warn!("ignoring inbound baggage entries past the first 64");
            break;
        }
        seen += 1;
        let member = item.split(';').next().unwrap_or_default();
        let parsed = member.split_once('=').and_then(|(k, v)| {
            let key = k.trim();
            let valid_key = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            let value = percent_decode_str(v.trim()).decode_utf8().ok()?;
            valid_key.then(|| KeyValue::new(key.to_owned(), value.into_owned()))
        });
        match parsed {
            Some(kv) => entries.push(kv),
            None => {
                malformed += 1;
                first_malformed.get_or_insert(item);
            }
        }
    }
    if let Some(first) = first_malformed {
        ::tracing::warn!(
            malformed,
            first = %crate::peer::loggable(first.as_bytes()),
            "ignoring malformed inbound baggage entry (one warning for the header)"
        );
    }
    entries
}
