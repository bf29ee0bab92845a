//! What a peer sends, read without panicking and within bounds.
//!
//! Every layer that looks at a status a server (or a proxy) sent reads it
//! here, never with `tonic::Status::from_header_map`: tonic 0.14 `expect`s a
//! valid base64 `grpc-status-details-bin` and panics on anything else
//! (upstream issue: grpc/grpc-rust#2618, unreleased). The metadata layer,
//! outermost in the client stack, also *sanitizes* what it hands up to the
//! generated client, so tonic's own parser never meets such a value either.
//!
//! | Value | Read as | When malformed |
//! |---|---|---|
//! | `grpc-status` | the code; a number gRPC does not define → `UNKNOWN` | — |
//! | `grpc-message` | percent-decoded; bytes that are not UTF-8 become U+FFFD; at most [`MAX_MESSAGE_BYTES`] (then cut at a character boundary with `…`) | never an error: the code is kept |
//! | `grpc-status-details-bin` | base64, padded or not | dropped; the reason reaches [`crate::Error::details_error`] |
//! | other headers and trailers | kept as the status's metadata | — |
//! | `google.rpc.RetryInfo.retry_delay` inside the details | a duration held to the range the proto allows (0 ..= 315,576,000,000 s; nanos 0 ..= 999,999,999), negative → 0 | — (tonic-types 0.14 converts it with prost-types, which overflows on `i64::MIN` seconds: a panic in debug builds, a wrong delay in release) |
//! | any detail that does not decode | — | all details dropped; the reason reaches [`crate::Error::details_error`] |

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// The longest `grpc-message` kept; longer ones are cut (the transport caps a
/// whole header block at `TransportOptions::max_header_list_size`, 16 MiB by
/// default, as grpc-go).
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024;

// Parsed once: a lookup by `&str` would parse and validate the name on every call.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: http::HeaderName =
    http::HeaderName::from_static("grpc-status-details-bin");

/// A status read from a peer's headers or trailers.
#[derive(Debug)]
pub(crate) struct PeerStatus {
    pub(crate) status: Status,
    /// Why the details were dropped, if they were.
    pub(crate) details_error: Option<String>,
}

/// A `grpc-status` value as a number, if it is a decimal 32-bit one.
fn status_number(value: &[u8]) -> Option<i32> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The code a `grpc-status` value stands for: a number is its code (one
/// past 16 is UNKNOWN), anything else a malformed status (INTERNAL).
pub(crate) fn code_of(value: &[u8]) -> Code {
    status_number(value).map_or(Code::Internal, Code::from_i32)
}

/// The status in `headers` (a trailers-only response, or trailers), if they
/// carry `grpc-status`. Never panics, whatever the values.
pub(crate) fn status_from_headers(headers: &HeaderMap) -> Option<PeerStatus> {
    let value = headers.get(GRPC_STATUS)?.as_bytes();
    let mut message = headers
        .get(GRPC_MESSAGE)
        .map(|v| decode_message(v.as_bytes()))
        .unwrap_or_default();
    // A decimal number is a code (one past 16 is UNKNOWN); anything else is
    // a malformed status, INTERNAL, as grpc-go and gRPC core read it.
    let code = match status_number(value) {
        Some(number) => Code::from_i32(number),
        None => {
            let shown = String::from_utf8_lossy(&value[..value.len().min(64)]).into_owned();
            message = bounded(
                &if message.is_empty() {
                    format!("malformed grpc-status {shown:?}: not a status code")
                } else {
                    format!(
                        "malformed grpc-status {shown:?}: not a status code (its message: {message})"
                    )
                },
                MAX_MESSAGE_BYTES,
            );
            Code::Internal
        }
    };
    let (details, details_error) = match headers.get(GRPC_STATUS_DETAILS) {
        None => (Bytes::new(), None),
        Some(value) => match decode_details(value) {
            Ok(details) => (details, None),
            Err(why) => (Bytes::new(), Some(why)),
        },
    };
    let mut metadata = headers.clone();
    metadata.remove(GRPC_STATUS);
    metadata.remove(GRPC_MESSAGE);
    metadata.remove(GRPC_STATUS_DETAILS);
    let status = Status::with_details_and_metadata(
        code,
        message,
        details,
        MetadataMap::from_headers(metadata),
    );
    Some(PeerStatus {
        status,
        details_error,
    })
}

/// For an OK status: writes its `grpc-status` as tonic reads it, and
/// removes a `grpc-status-details-bin` that tonic's parser would panic on
/// (returning why). Cheap when there is nothing to do (two lookups).
pub(crate) fn sanitize(headers: &mut HeaderMap) -> Option<String> {
    // An OK written another way ("00", "+0") is OK to the SDK; tonic,
    // which parses the status again above the layers, reads only "0" so.
    if headers
        .get(GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() != b"0")
    {
        headers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    }
    let value = headers.get(GRPC_STATUS_DETAILS)?;
    let why = decode_details(value).err()?;
    headers.remove(GRPC_STATUS_DETAILS);
    Some(why)
}

/// `grpc-status-details-bin`: base64 with or without padding (gRPC allows both).
pub(crate) fn decode_details(value: &HeaderValue) -> Result<Bytes, String> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT
        .decode(value.as_bytes())
        .map(Bytes::from)
        .map_err(|e| {
            format!("grpc-status-details-bin is not base64 ({e}); the details were dropped")
        })
}

/// The `google.rpc` details in a status's `details` bytes, decoded without
/// trusting the peer's numbers: every `RetryInfo` delay is normalized first.
pub(crate) fn error_details(details: &[u8]) -> Result<Vec<tonic_types::ErrorDetail>, String> {
    use tonic_types::RpcStatusExt;
    if details.is_empty() {
        return Ok(Vec::new());
    }
    let status = normalized_status(details).map_err(|e| e.to_string())?;
    status.check_error_details_vec().map_err(|e| e.to_string())
}

/// The `google.rpc.RetryInfo` delay in a status's `details`, if there is one.
pub(crate) fn retry_delay(details: &[u8]) -> Option<std::time::Duration> {
    if details.is_empty() {
        return None;
    }
    let status = <tonic_types::pb::Status as prost::Message>::decode(details).ok()?;
    status.details.iter().find_map(|any| {
        (any.type_url == RETRY_INFO_TYPE)
            .then(|| <tonic_types::pb::RetryInfo as prost::Message>::decode(&any.value[..]).ok())
            .flatten()
            .and_then(|info| info.retry_delay)
            .map(proto_duration)
    })
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Decodes a `google.rpc.Status` and rewrites each `RetryInfo` with a delay
/// in the proto's own range, so that later conversions cannot overflow.
fn normalized_status(details: &[u8]) -> Result<tonic_types::pb::Status, prost::DecodeError> {
    use prost::Message;
    let mut status = tonic_types::pb::Status::decode(details)?;
    for any in &mut status.details {
        if any.type_url != RETRY_INFO_TYPE {
            continue;
        }
        let mut info = tonic_types::pb::RetryInfo::decode(&any.value[..])?;
        if let Some(delay) = info.retry_delay {
            let delay = proto_duration(delay);
            info.retry_delay = Some(prost_types::Duration {
                seconds: i64::try_from(delay.as_secs()).unwrap_or(MAX_PROTO_SECONDS),
                nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
            });
            any.value = info.encode_to_vec();
        }
    }
    Ok(status)
}

/// `google.protobuf.Duration`'s largest `seconds` (10,000 years).
const MAX_PROTO_SECONDS: i64 = 315_576_000_000;

/// A protobuf duration as a `Duration`, held to the proto's range; negative → zero.
pub(crate) fn proto_duration(d: prost_types::Duration) -> std::time::Duration {
    if d.seconds < 0 || (d.seconds == 0 && d.nanos < 0) {
        return std::time::Duration::ZERO;
    }
    let seconds = d.seconds.min(MAX_PROTO_SECONDS);
    let nanos = d.nanos.clamp(0, 999_999_999);
    std::time::Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs())
}

/// Whether a response is not gRPC: `Some(code)` by gRPC's HTTP-to-gRPC
/// mapping when it carries no `grpc-status` and its HTTP status is not 200
/// or its content type is not `application/grpc…` (contract §8). Decided on
/// the headers alone, before any body byte is read as gRPC.
pub(crate) fn non_grpc_code(status: http::StatusCode, headers: &HeaderMap) -> Option<Code> {
    // The common case first, with a standard header's cheap lookup.
    if status == http::StatusCode::OK
        && headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        return None;
    }
    if headers.contains_key(GRPC_STATUS) {
        // A proxy that speaks gRPC (Envoy's trailers-only 503 with grpc-status 14): trust it.
        return None;
    }
    Some(match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    })
}

/// The longest part of a non-gRPC body quoted in the status message.
pub(crate) const MAX_QUOTED_BODY: usize = 256;

/// The status message for a non-gRPC response: the HTTP status and the start
/// of its body, on one line (control characters and runs of whitespace
/// become one space), at most [`MAX_QUOTED_BODY`] bytes of it.
pub(crate) fn non_grpc_message(
    status: http::StatusCode,
    content_type: Option<&HeaderValue>,
    body: &[u8],
    complete: bool,
) -> String {
    let mut message = format!(
        "not a gRPC response: HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned();
    if let Some(kind) = content_type {
        message.push_str(&format!(", content-type {}", loggable(kind.as_bytes())));
    }
    message.push_str(" (from the server or a proxy in front of it)");
    let text = String::from_utf8_lossy(body);
    let mut quoted = String::new();
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !quoted.is_empty() {
            quoted.push(' ');
        }
        quoted.push_str(word);
    }
    if !quoted.is_empty() {
        let cut = bounded(&quoted, MAX_QUOTED_BODY);
        let more = if !complete && !cut.ends_with('…') {
            "…"
        } else {
            ""
        };
        message.push_str(&format!(": {cut}{more}"));
    }
    message
}

/// `grpc-message`: percent-decoded, lossy UTF-8, bounded.
pub(crate) fn decode_message(raw: &[u8]) -> String {
    let decoded = percent_encoding::percent_decode(raw).decode_utf8_lossy();
    bounded(&decoded, MAX_MESSAGE_BYTES)
}

/// `text` cut to at most `max` bytes at a character boundary, `…` marking the cut.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + '…'.len_utf8());
    out.push_str(&text[..end]);
    out.push('…');
    out
}

/// A peer value made safe to log: at most 64 characters, control characters
/// and non-ASCII escaped.
pub(crate) fn loggable(raw: &[u8]) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for &b in raw.iter().take(MAX) {
        if (0x20..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if raw.len() > MAX {
        out.push_str(&format!("… ({} bytes)", raw.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn invalid_base64_details_are_dropped_with_a_reason_where_tonic_panics() {
        let map = headers(&[
            ("grpc-status", b"14"),
            ("grpc-message", b"busy"),
            ("grpc-status-details-bin", b"!!not base64!!"),
        ]);
        let tonic_says = std::panic::catch_unwind(|| Status::from_header_map(&map));
        assert!(tonic_says.is_err(), "tonic 0.14 panics on this value");
        let parsed = status_from_headers(&map).unwrap();
        assert_eq!(parsed.status.code(), Code::Unavailable);
        assert_eq!(parsed.status.message(), "busy");
        assert!(parsed.status.details().is_empty());
        assert!(parsed.details_error.unwrap().contains("not base64"));

        let mut ok = headers(&[("grpc-status", b"0"), ("grpc-status-details-bin", b"%%%")]);
        assert!(sanitize(&mut ok).is_some());
        assert!(
            Status::from_header_map(&ok).is_some(),
            "tonic is safe after"
        );
    }

    #[test]
    fn messages_are_decoded_lossily_and_bounded() {
        let map = headers(&[("grpc-status", b"2"), ("grpc-message", b"a%FFb%ZZ\xc3")]);
        let parsed = status_from_headers(&map).unwrap();
        assert_eq!(parsed.status.message(), "a\u{fffd}b%ZZ\u{fffd}");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = decode_message(long.as_bytes());
        assert!(
            cut.len() <= MAX_MESSAGE_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
    }

    #[test]
    fn unpadded_and_padded_details_both_decode() {
        let padded = HeaderValue::from_static("AAE=");
        let unpadded = HeaderValue::from_static("AAE");
        assert_eq!(
            decode_details(&padded).unwrap(),
            decode_details(&unpadded).unwrap()
        );
    }

    #[test]
    fn proto_durations_are_held_to_the_range_the_proto_allows() {
        let d = |seconds, nanos| proto_duration(prost_types::Duration { seconds, nanos });
        assert_eq!(d(i64::MIN, -999_999_999), std::time::Duration::ZERO);
        assert_eq!(d(0, -1), std::time::Duration::ZERO);
        assert_eq!(d(i64::MAX, i32::MAX).as_secs(), MAX_PROTO_SECONDS as u64);
        assert_eq!(d(1, 500_000_000), std::time::Duration::from_millis(1500));
    }

    #[test]
    fn non_grpc_responses_map_by_http_status_unless_they_carry_grpc_status() {
        let html = headers(&[("content-type", b"text/html")]);
        let grpc = headers(&[("content-type", b"application/grpc+proto")]);
        let code = |s: u16, h: &HeaderMap| non_grpc_code(http::StatusCode::from_u16(s).unwrap(), h);
        assert_eq!(code(200, &grpc), None);
        assert_eq!(code(200, &html), Some(Code::Unknown));
        assert_eq!(code(200, &HeaderMap::new()), Some(Code::Unknown));
        for (s, c) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
            (418, Code::Unknown),
        ] {
            assert_eq!(code(s, &html), Some(c), "{s}");
            assert_eq!(code(s, &grpc), Some(c), "{s} with a gRPC content type");
        }
        let envoy = headers(&[
            ("grpc-status", b"14"),
            ("content-type", b"application/grpc"),
        ]);
        assert_eq!(code(503, &envoy), None);
    }

    #[test]
    fn non_grpc_messages_quote_the_body_on_one_line_and_bounded() {
        let page = b"<html>\r\n<h1>502   Bad\tGateway</h1>\x00</html>";
        let m = non_grpc_message(
            http::StatusCode::BAD_GATEWAY,
            Some(&HeaderValue::from_static("text/html")),
            page,
            true,
        );
        assert_eq!(
            m,
            "not a gRPC response: HTTP 502 Bad Gateway, content-type text/html (from the server or a proxy in front of it): <html> <h1>502 Bad Gateway</h1> </html>"
        );
        let long = non_grpc_message(
            http::StatusCode::SERVICE_UNAVAILABLE,
            None,
            &[b'x'; 5000],
            false,
        );
        assert!(long.len() < 400 && long.ends_with('…'), "{long}");
    }

    #[test]
    fn loggable_escapes_and_truncates() {
        assert_eq!(loggable(b"a\nb\xff"), "a\\x0ab\\xff");
        assert!(loggable(&[b'x'; 500]).ends_with("(500 bytes)"));
    }
}
