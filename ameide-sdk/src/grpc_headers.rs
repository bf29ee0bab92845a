//! gRPC in HTTP headers, shared by client layers, server layer and
//! telemetry: the header names looked up on every call (parsed once), the
//! `grpc-status` code of a header map, a trailers-only response for a status.

use tonic::Status;

use crate::wire_types::HttpResponse;

/// A trailers-only gRPC response carrying `status`.
pub(crate) fn status_response(status: Status) -> HttpResponse {
    status.into_http()
}

/// The status of a trailers-only response, if it is one; read by
/// [`crate::peer`], so no value a peer sends can panic.
pub(crate) fn trailers_only_status(response: &HttpResponse) -> Option<Status> {
    if !is_trailers_only(response) {
        return None;
    }
    crate::peer::status_from_headers(response.headers()).map(|p| p.status)
}

/// Whether `response` is Trailers-Only: `grpc-status` in a HEADERS frame
/// that ends the stream. A `grpc-status` in the leading headers of a
/// response that goes on (messages, trailers) is not the call's status: the
/// trailers carry it (gRPC's HTTP/2 protocol; grpc-go reads it the same way).
pub(crate) fn is_trailers_only(response: &HttpResponse) -> bool {
    use http_body::Body as _;
    response.headers().contains_key(names::GRPC_STATUS) && response.body().is_end_stream()
}

/// Header names the layers look up on every call, parsed once.
pub(crate) mod names {
    #![allow(dead_code)]
    use http::HeaderName;

    pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub(crate) const GRPC_STATUS_DETAILS: HeaderName =
        HeaderName::from_static("grpc-status-details-bin");
    pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub(crate) const PREVIOUS_ATTEMPTS: HeaderName =
        HeaderName::from_static("grpc-previous-rpc-attempts");
    pub(crate) const REQUEST_ID: HeaderName =
        HeaderName::from_static(crate::contract::HEADER_REQUEST_ID);
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    pub(crate) const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
}

/// The `grpc-status` code in `headers` without building a `Status` (which
/// clones the whole map): `None` when absent.
pub(crate) fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get(names::GRPC_STATUS)
        .map(|v| crate::peer::code_of(v.as_bytes()))
}
