//! The inbound cases: a tonic server with the SDK's `InboundLayer`, as a
//! service built on the SDK serves. Every call to it is handled by making the
//! same call (path, request message) downstream through an `AmeideClient`,
//! inside the request's context, and answering with the downstream response
//! message, or handing the downstream failure on the everyday way (`?`).
//!
//! The server runs until the adapter reads its next line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use ameide_parity::wire::BytesCodec;
use ameide_sdk::server::{InboundContext, InboundLayer};
use ameide_sdk::{AmeideClient, CallOptions, Error};
use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::Status;

use super::{grpc_of, has};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// A running server; dropping it stops the server (and closes its client).
pub struct Serving {
    _stop: oneshot::Sender<()>,
}

/// How the handler misbehaves under the `inbound-*` negative controls.
#[derive(Clone, Copy)]
struct Quirks {
    /// `inbound-forward-identity`: tenant and user always forwarded.
    forward_identity: bool,
    /// `inbound-hand-on-facts`: a handed-on failure carries the SDK's facts as metadata.
    hand_on_facts: bool,
    /// `inbound-strict`: a malformed `traceparent` fails the call.
    strict: bool,
    /// `inbound-no-downstream`: the handler answers an empty message itself.
    no_downstream: bool,
}

/// Serves on `127.0.0.1:<any port>`; returns `http://127.0.0.1:<port>`.
pub async fn start(
    client: AmeideClient,
    forward_identity: bool,
    breaks: &[String],
) -> Result<(String, Serving), String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let at = listener.local_addr().map_err(|e| e.to_string())?;
    let forward = Forward {
        client: client.clone(),
        forward_identity: forward_identity || has(breaks, "inbound-forward-identity"),
        quirks: Quirks {
            forward_identity: has(breaks, "inbound-forward-identity"),
            hand_on_facts: has(breaks, "inbound-hand-on-facts"),
            strict: has(breaks, "inbound-strict"),
            no_downstream: has(breaks, "inbound-no-downstream"),
        },
    };
    // Any method of the bundle: the router's fallback takes every path.
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(forward));
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let shutdown = async {
        let _ = stopped.await;
    };
    if has(breaks, "inbound-no-layer") {
        // A service that never installed the SDK's inbound layer.
        let serving = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown);
        tokio::spawn(async move {
            let _ = serving.await;
            client.close();
        });
    } else {
        let serving = tonic::transport::Server::builder()
            .layer(InboundLayer::new())
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown);
        tokio::spawn(async move {
            let _ = serving.await;
            client.close();
        });
    }
    Ok((format!("http://{at}"), Serving { _stop: stop }))
}

/// Every path: decode as gRPC (bytes), forward, encode the answer.
#[derive(Clone)]
struct Forward {
    client: AmeideClient,
    forward_identity: bool,
    quirks: Quirks,
}

impl tower::Service<http::Request<axum::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if this.quirks.strict
                && let Some(status) = strict(request.headers())
            {
                return Ok(status.into_http());
            }
            let Some(info) = ameide_sdk::methods::method(&path) else {
                return Ok(
                    Status::unimplemented(format!("{path} is not in the bundle")).into_http(),
                );
            };
            if this.quirks.no_downstream {
                // An answer made up on the spot: OK, one empty message.
                return Ok(tonic::server::Grpc::new(BytesCodec)
                    .unary(Canned, request)
                    .await);
            }
            let handler = Handler {
                forward: this,
                path,
            };
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(match info.kind {
                ameide_sdk::methods::StreamingKind::ServerStreaming => {
                    grpc.server_streaming(handler, request).await
                }
                _ => grpc.unary(handler, request).await,
            })
        })
    }
}

/// `inbound-strict`: what a server that trusts no malformed trace context
/// answers (the traceparent read as the client side reads the caller's).
fn strict(headers: &http::HeaderMap) -> Option<Status> {
    let tp = headers.get("traceparent")?.to_str().unwrap_or_default();
    super::remote_parent(tp)
        .is_none()
        .then(|| Status::invalid_argument("malformed traceparent"))
}

/// `inbound-no-downstream`'s handler.
#[derive(Clone, Copy)]
struct Canned;

impl tonic::server::UnaryService<Bytes> for Canned {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, _: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(Bytes::new())))
    }
}

#[derive(Clone)]
struct Handler {
    forward: Forward,
    path: String,
}

impl Handler {
    /// The downstream request, in the inbound request's context (the SDK
    /// carries its request id, trace, session and deadline on its own).
    fn downstream(&self, message: Bytes) -> Result<tonic::Request<Bytes>, Status> {
        let options = match InboundContext::current() {
            Some(cx) if self.forward.forward_identity => cx.forward_identity(),
            _ => CallOptions::new(),
        };
        let mut request = options
            .into_request(message)
            .map_err(|e| Status::internal(e.to_string()))?;
        if self.forward.quirks.forward_identity
            && let Some(cx) = InboundContext::current()
        {
            // Not the SDK's way: identity copied onto every call by hand.
            for (name, value) in [("x-tenant-id", cx.tenant_id()), ("x-user-id", cx.user_id())] {
                if let Some(v) = value.and_then(|v| v.parse().ok()) {
                    request.metadata_mut().insert(name, v);
                }
            }
        }
        Ok(request)
    }

    /// A downstream failure as the handler hands it on.
    fn hand_on(&self, status: Status) -> Status {
        if !self.forward.quirks.hand_on_facts {
            return status;
        }
        // As an SDK that keeps its facts in the status's metadata would.
        let err = Error::from(status.clone());
        let mut status = status;
        if let Ok(v) = err.attempts().to_string().parse() {
            status.metadata_mut().insert("x-ameide-attempts", v);
        }
        status
    }

    /// The downstream client, ready, with the request and path of the call.
    async fn ready(
        &self,
        message: Bytes,
    ) -> Result<
        (
            tonic::client::Grpc<ameide_sdk::AmeideChannel>,
            tonic::Request<Bytes>,
            PathAndQuery,
        ),
        Status,
    > {
        let downstream = self.downstream(message)?;
        let path =
            PathAndQuery::from_str(&self.path).map_err(|e| Status::internal(e.to_string()))?;
        let mut grpc = grpc_of(&self.forward.client);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok((grpc, downstream, path))
    }
}

impl tonic::server::UnaryService<Bytes> for Handler {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut grpc, downstream, path) = this.ready(request.into_inner()).await?;
            match grpc
                .unary::<Bytes, Bytes, _>(downstream, path, BytesCodec)
                .await
            {
                Ok(response) => Ok(tonic::Response::new(response.into_inner())),
                Err(status) => Err(this.hand_on(status)),
            }
        })
    }
}

impl tonic::server::ServerStreamingService<Bytes> for Handler {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<Result<tonic::Response<Messages>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut grpc, downstream, path) = this.ready(request.into_inner()).await?;
            match grpc
                .server_streaming::<Bytes, Bytes, _>(downstream, path, BytesCodec)
                .await
            {
                Ok(response) => {
                    let messages: Messages = Box::pin(response.into_inner());
                    Ok(tonic::Response::new(messages))
                }
                Err(status) => Err(this.hand_on(status)),
            }
        })
    }
}
