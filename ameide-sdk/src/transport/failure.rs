//! What a failed exchange means: a transport error (connect, HTTP/2 reset,
//! GOAWAY, a lost connection, a request handed back unwritten) as a gRPC
//! status, and whether the request reached the server's application
//! ([`Delivery`]), which the retry layer needs for transparent retries.

use tonic::{Code, Status};

use crate::wire_types::BoxError;

/// The status of a transport error. tonic's channel runs its own timer from
/// the `grpc-timeout` header we send and reports its expiry as `CANCELLED`
/// ("Timeout expired"); the contract wants `DEADLINE_EXCEEDED`, so that error
/// is mapped here, wherever it sits in the source chain.
pub(crate) fn status_from_error(error: BoxError) -> Status {
    classify_error(error).status
}

/// A transport error as a gRPC status, plus whether the request reached the
/// server's application.
pub(crate) struct TransportFailure {
    pub(crate) status: Status,
    pub(crate) delivery: Delivery,
    /// Trying again cannot help (a TLS certificate rejected, ALPN refused):
    /// the retry layer stops at once.
    pub(crate) permanent: bool,
}

/// Whether a failed attempt reached the server's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The server refused the stream before processing it (`REFUSED_STREAM`,
    /// or a stream above a graceful `GOAWAY`'s last stream id): eligible for
    /// one transparent retry.
    Refused,
    /// The request was never written (connect refused, DNS, TLS, or its
    /// connection closed before it was written).
    NotSent,
    /// It may have been processed (the server answered, or the stream broke).
    Maybe,
}

/// Maps a transport error. HTTP/2 errors are mapped here by their reason
/// code, following gRPC's PROTOCOL-HTTP2 table, because tonic maps them only
/// when its `server` feature is on (otherwise they surface as `UNKNOWN`); a
/// connection lost mid-call is `UNAVAILABLE` (tonic says `UNKNOWN`). The
/// original error stays attached as the status's source, so a layer further
/// out classifies the same error the same way.
pub(crate) fn classify_error(error: BoxError) -> TransportFailure {
    let mut found = None;
    let mut saw_http = false;
    let mut permanent = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(err) = source {
        if let Some(status) = err.downcast_ref::<Status>()
            && std::error::Error::source(status).is_none()
        {
            break;
        }
        if err.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            let status = Status::deadline_exceeded(
                "deadline exceeded: the call's budget ran out while waiting for the server",
            );
            found = Some((status, Delivery::Maybe));
            break;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            found = Some(h2_failure(h2));
            break;
        }
        if saw_http && let Some(io) = err.downcast_ref::<std::io::Error>() {
            let status = Status::unavailable(format!("connection lost mid-call: {io}"));
            found = Some((status, Delivery::Maybe));
            break;
        }
        if let Some(connect) = err.downcast_ref::<super::connection::ConnectError>() {
            permanent = connect.permanent;
            found = Some((Status::unavailable(connect.to_string()), Delivery::NotSent));
            break;
        }
        if let Some(unwritten) = err.downcast_ref::<super::connection::Unwritten>() {
            found = Some((
                Status::unavailable(unwritten.to_string()),
                Delivery::NotSent,
            ));
            break;
        }
        if let Some(hyper_err) = err.downcast_ref::<hyper::Error>() {
            saw_http = true;
            if hyper_err.is_canceled() {
                // hyper gave the request up (its connection went away). tonic
                // says CANCELLED, which no policy retries, yet nothing was
                // cancelled by the caller: it is a transport failure. Whether
                // it was written only the SDK's own transport can tell (hyper
                // hands an unwritten request back to it, and it says so with
                // `Unwritten`); from any other transport it may have been.
                let status = Status::unavailable(match std::error::Error::source(hyper_err) {
                    Some(cause) => format!("the connection dropped the call: {hyper_err}: {cause}"),
                    None => format!("the connection dropped the call: {hyper_err}"),
                });
                found = Some((status, Delivery::Maybe));
                break;
            }
        }
        source = err.source();
    }
    if let Some((mut status, delivery)) = found {
        status.set_source(std::sync::Arc::from(error));
        return TransportFailure {
            status,
            delivery,
            permanent,
        };
    }
    let status = Status::from_error(error);
    // Without an HTTP-level error in the chain, the request never reached a
    // connection (connect refused, DNS, TLS handshake).
    let delivery = if !saw_http && status.code() == Code::Unavailable {
        Delivery::NotSent
    } else {
        Delivery::Maybe
    };
    TransportFailure {
        status,
        delivery,
        permanent: false,
    }
}

/// The status and delivery of an HTTP/2 error.
fn h2_failure(err: &h2::Error) -> (Status, Delivery) {
    use h2::Reason;
    let reason = err.reason();
    if err.is_go_away() && err.is_remote() {
        // A graceful GOAWAY (NO_ERROR) fails only the streams the server never
        // took; any other reason may cut a stream it was processing.
        let delivery = if reason == Some(Reason::NO_ERROR) {
            Delivery::Refused
        } else {
            Delivery::Maybe
        };
        let message = format!("the server closed the connection (GOAWAY): {err}");
        return (Status::unavailable(message), delivery);
    }
    if err.is_io() {
        let message = format!("connection lost mid-call: {err}");
        return (Status::unavailable(message), Delivery::Maybe);
    }
    let code = match reason {
        Some(Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(Reason::CANCEL) => Code::Cancelled,
        Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        _ => Code::Internal,
    };
    let delivery = if reason == Some(Reason::REFUSED_STREAM) && err.is_remote() {
        Delivery::Refused
    } else {
        Delivery::Maybe
    };
    let status = Status::new(code, format!("HTTP/2 stream error: {err}"));
    (status, delivery)
}

#[cfg(all(test, any(feature = "testkit", feature = "oauth2")))]
mod tests {
    use super::*;

    /// A real hyper error: a request sent on an HTTP/2 connection whose
    /// connection task is gone. tonic reports CANCELLED for it.
    async fn hyper_canceled() -> hyper::Error {
        let (client_io, _server_io) = tokio::io::duplex(1 << 16);
        let (mut send, connection) =
            hyper::client::conn::http2::handshake::<_, _, tonic::body::Body>(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(client_io),
            )
            .await
            .expect("HTTP/2 handshake over a duplex pipe");
        drop(connection);
        let request = http::Request::builder()
            .uri("http://peer/ameide_core_proto.graph.v1.GraphService/GetRepository")
            .body(tonic::body::Body::empty())
            .expect("request");
        send.send_request(request)
            .await
            .expect_err("no connection task to send it")
    }

    #[tokio::test]
    async fn a_request_hyper_gave_up_is_unavailable_not_cancelled() {
        let error = hyper_canceled().await;
        assert!(error.is_canceled(), "{error:?}");
        assert_eq!(
            Status::from_error(Box::new(hyper_canceled().await)).code(),
            Code::Cancelled,
            "what tonic alone says"
        );
        let failure = classify_error(Box::new(error));
        assert_eq!(
            failure.status.code(),
            Code::Unavailable,
            "{:?}",
            failure.status
        );
        // From a transport that is not the SDK's, nothing says it was unwritten.
        assert_eq!(failure.delivery, Delivery::Maybe);
        assert!(
            failure.status.message().contains("connection"),
            "{}",
            failure.status.message()
        );
    }

    #[tokio::test]
    async fn a_request_handed_back_unwritten_is_not_sent() {
        let unwritten = super::super::connection::Unwritten {
            source: hyper_canceled().await,
        };
        let failure = classify_error(Box::new(unwritten));
        assert_eq!(failure.status.code(), Code::Unavailable);
        assert_eq!(failure.delivery, Delivery::NotSent);
        let connect = super::super::connection::ConnectError {
            message: "cannot connect to x:1: TCP connect failed".into(),
            permanent: false,
        };
        let failure = classify_error(Box::new(connect));
        assert_eq!(failure.delivery, Delivery::NotSent);
        assert!(failure.status.message().contains("TCP connect failed"));
    }
}
