//! W3C trace context on the wire: `traceparent`, `tracestate` and `baggage`
//! (with `ameide.session_id`) injected into an outgoing request.

use std::sync::Arc;

use http::HeaderValue;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::TraceContextExt;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::grpc_headers::names;
use crate::wire_types::HttpRequest;

/// W3C baggage values: everything outside `baggage-octet` is percent-encoded.
pub(crate) const BAGGAGE_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%');

pub(crate) fn inject(cx: &Context, request: &mut HttpRequest, session_id: Option<Arc<str>>) {
    let span = cx.span();
    let sc = span.span_context();
    let headers = request.headers_mut();
    if sc.is_valid() {
        let traceparent = format_traceparent(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        );
        if let Ok(mut v) = HeaderValue::from_bytes(&traceparent) {
            // Unique per attempt: never-indexed (see the metadata layer).
            v.set_sensitive(true);
            headers.insert(names::TRACEPARENT, v);
        }
        let state = sc.trace_state().header();
        if !state.is_empty()
            && let Ok(v) = HeaderValue::try_from(state)
        {
            headers.insert(names::TRACESTATE, v);
        }
    }
    let mut entries: Vec<String> = cx
        .baggage()
        .iter()
        .filter(|(k, _)| k.as_str() != crate::contract::SESSION_BAGGAGE_KEY || session_id.is_none())
        .map(|(k, (v, _))| {
            format!(
                "{}={}",
                k.as_str(),
                utf8_percent_encode(v.as_str(), BAGGAGE_VALUE)
            )
        })
        .collect();
    if let Some(session) = session_id {
        entries.push(format!(
            "{}={}",
            crate::contract::SESSION_BAGGAGE_KEY,
            utf8_percent_encode(&session, BAGGAGE_VALUE)
        ));
    }
    if entries.is_empty() {
        return;
    }
    let existing = headers
        .get(names::BAGGAGE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .map(str::to_owned);
    let mut value = existing.unwrap_or_default();
    for entry in entries {
        let key = entry.split('=').next().unwrap_or_default();
        let already = value
            .split(',')
            .any(|item| item.split('=').next().map(str::trim) == Some(key));
        if !already {
            if !value.is_empty() {
                value.push(',');
            }
            value.push_str(&entry);
        }
    }
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(names::BAGGAGE, v);
    }
}

pub(crate) fn format_traceparent(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(3, &trace_id);
    put(36, &span_id);
    put(53, &[flags]);
    out
}
