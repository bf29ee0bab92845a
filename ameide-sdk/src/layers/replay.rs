//! A request body read into memory so the request can be sent again (by the
//! retry layer, and by the auth layer after a rejected token), and the
//! request rebuilt from it: headers and the extensions the layers know.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::Frame;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tonic::Status;

use crate::call::{CallState, Deadline, SafeRetries};
use crate::layers::HttpRequest;

/// How much of a request the layers keep for sending it again by default
/// (the retry policy's `max_replay_bytes`, and the auth layer's one replay
/// after a rejected token): gRPC's default message limit.
pub(crate) const DEFAULT_MAX_REPLAY_BYTES: usize = 4 * 1024 * 1024;

/// A request body read into memory for replay, or given back when too large.
pub(crate) enum Buffered {
    /// The whole body.
    Complete(Bytes),
    /// The bytes read so far, then the rest, unbuffered.
    TooLarge(tonic::body::Body),
}

/// Reads `body` into memory, up to `limit` bytes.
pub(crate) async fn buffer(mut body: tonic::body::Body, limit: usize) -> Result<Buffered, Status> {
    // A unary request is one data frame: keep it as is (no copy, no
    // allocation); only a body of several frames is gathered into one buffer.
    let mut single: Option<Bytes> = None;
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            if single.is_none() && collected.is_empty() {
                single = Some(data);
            } else {
                if let Some(first) = single.take() {
                    collected.extend_from_slice(&first);
                }
                collected.extend_from_slice(&data);
            }
            let len = single.as_ref().map_or(collected.len(), Bytes::len);
            if len > limit {
                let prefix = single.take().unwrap_or_else(|| collected.split().freeze());
                return Ok(Buffered::TooLarge(tonic::body::Body::new(PrefixBody {
                    prefix: Some(prefix),
                    rest: body,
                })));
            }
        }
    }
    Ok(Buffered::Complete(
        single.unwrap_or_else(|| collected.freeze()),
    ))
}

/// A copy of a request (method, URI, version, headers, extensions) with `bytes` as its body.
pub(crate) fn replay_request(parts: &http::request::Parts, bytes: &Bytes) -> HttpRequest {
    replay_with(
        parts,
        bytes,
        parts.headers.clone(),
        parts.extensions.clone(),
    )
}

pub(crate) fn replay_with(
    parts: &http::request::Parts,
    bytes: &Bytes,
    headers: http::HeaderMap,
    extensions: http::Extensions,
) -> HttpRequest {
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes.clone(),
    )));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = headers;
    *request.extensions_mut() = extensions;
    request
}

/// The request extensions when they are only the ones tonic and this crate
/// put there: kept as plain values, so that the first attempt can take the
/// original extensions without copying them (a copy is a map and a box per
/// entry) and only a replay rebuilds them. `None` when anything else is in
/// the extensions (a user's own type): then every attempt gets a full copy.
#[derive(Default)]
pub(crate) struct KnownExtensions {
    state: Option<CallState>,
    method: Option<tonic::GrpcMethod<'static>>,
    safe: Option<SafeRetries>,
    session: Option<crate::call::SessionId>,
    deadline: Option<Deadline>,
    timeout: Option<crate::call::CallTimeout>,
}

impl KnownExtensions {
    pub(crate) fn capture(extensions: &http::Extensions) -> Option<Self> {
        let known = KnownExtensions {
            state: extensions.get::<CallState>().cloned(),
            method: extensions.get::<tonic::GrpcMethod<'static>>().cloned(),
            safe: extensions.get::<SafeRetries>().copied(),
            session: extensions.get::<crate::call::SessionId>().cloned(),
            deadline: extensions.get::<Deadline>().copied(),
            timeout: extensions.get::<crate::call::CallTimeout>().copied(),
        };
        let count = [
            known.state.is_some(),
            known.method.is_some(),
            known.safe.is_some(),
            known.session.is_some(),
            known.deadline.is_some(),
            known.timeout.is_some(),
        ]
        .into_iter()
        .filter(|&present| present)
        .count();
        (count == extensions.len()).then_some(known)
    }

    pub(crate) fn build(&self) -> http::Extensions {
        let mut e = http::Extensions::new();
        if let Some(v) = &self.state {
            e.insert(v.clone());
        }
        if let Some(v) = &self.method {
            e.insert(v.clone());
        }
        if let Some(v) = self.safe {
            e.insert(v);
        }
        if let Some(v) = &self.session {
            e.insert(v.clone());
        }
        if let Some(v) = self.deadline {
            e.insert(v);
        }
        if let Some(v) = self.timeout {
            e.insert(v);
        }
        e
    }
}

/// The request headers kept for replays: one flat vector (a single
/// allocation, reference-counted values) instead of a second `HeaderMap`
/// (two allocations, one of them above a kilobyte). The first attempt sends
/// the original map; a replay rebuilds one from this.
pub(crate) struct ReplayHeaders(Vec<(http::HeaderName, HeaderValue)>);

impl ReplayHeaders {
    pub(crate) fn capture(headers: &http::HeaderMap) -> Self {
        ReplayHeaders(
            headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        )
    }

    pub(crate) fn rebuild(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::with_capacity(self.0.len() + 2);
        for (name, value) in &self.0 {
            headers.append(name.clone(), value.clone());
        }
        headers
    }
}

pin_project! {
    /// The bytes already read, then the rest of the body.
    struct PrefixBody {
        prefix: Option<Bytes>,
        #[pin]
        rest: tonic::body::Body,
    }
}

impl http_body::Body for PrefixBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.rest.poll_frame(cx)
    }
}
