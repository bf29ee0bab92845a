//! Every failure a typed call can return carries the call's facts: its
//! request id and the right attempt count (issue 25, item 4), whether the
//! SDK's layers raised it or tonic did above them (a response it cannot
//! decode or decompress, a unary response without its message), and for
//! calls the SDK refused before sending (closed client, token provider) and
//! stops made between calls (pagination). One table, one scripted HTTP/2
//! peer per row.

use std::time::Duration;

use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse};
use ameide_sdk::proto::inference::v1::GenerateRequest;
use ameide_sdk::testkit::{H2FaultServer, RawReply};
use ameide_sdk::{AmeideClient, Error, IntoAmeideResult, auth::TokenError};
use prost::Message;
use tonic::Code;

const BUDGET: Duration = Duration::from_millis(800);

fn client(server: &H2FaultServer) -> ameide_sdk::AmeideClientBuilder {
    AmeideClient::builder()
        .endpoint(server.endpoint())
        .timeout(BUDGET)
        .retry_policy(RetryPolicy::disabled().with_throttling(None))
}

async fn unary(client: &AmeideClient) -> Result<(), Error> {
    client
        .graph()
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .into_ameide()
        .map(|_| ())
}

/// A gRPC message frame.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Bytes that are not a valid protobuf message: field 1 of wire type 7.
const NOT_PROTOBUF: &[u8] = &[0x0f, 0x01, 0x02];

struct Row {
    name: &'static str,
    reply: Option<RawReply>,
    code: Code,
    attempts: u32,
}

fn row(name: &'static str, reply: RawReply, code: Code) -> Row {
    Row {
        name,
        reply: Some(reply),
        code,
        attempts: 1,
    }
}

fn ok_trailers(reply: RawReply) -> RawReply {
    reply.trailer("grpc-status", "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unary_failure_carries_the_request_id_and_the_attempts() {
    let valid = ListRepositoriesResponse::default().encode_to_vec();
    let rows = vec![
        row(
            "status in a trailers-only response",
            RawReply::grpc()
                .header("grpc-status", "14")
                .header("grpc-message", "down")
                .trailers_only(),
            Code::Unavailable,
        ),
        row(
            "status in the trailers after a message",
            RawReply::grpc()
                .message(&valid)
                .trailer("grpc-status", "10"),
            Code::Aborted,
        ),
        row(
            "a message that is not protobuf (tonic's decoder)",
            ok_trailers(RawReply::grpc().data(frame(0, NOT_PROTOBUF))),
            Code::Internal,
        ),
        row(
            "OK trailers without the response message",
            ok_trailers(RawReply::grpc()),
            Code::Internal,
        ),
        row(
            "trailers-only OK without the response message",
            RawReply::grpc().header("grpc-status", "0").trailers_only(),
            Code::Internal,
        ),
        row(
            "a compressed message without grpc-encoding",
            ok_trailers(RawReply::grpc().data(frame(1, &valid))),
            Code::Internal,
        ),
        row(
            "corrupt gzip",
            ok_trailers(
                RawReply::grpc()
                    .header("grpc-encoding", "gzip")
                    .data(frame(1, b"not gzip at all")),
            ),
            Code::Internal,
        ),
        row(
            "corrupt zstd",
            ok_trailers(
                RawReply::grpc()
                    .header("grpc-encoding", "zstd")
                    .data(frame(1, b"not zstd either")),
            ),
            Code::Internal,
        ),
        row(
            "an encoding the client does not accept",
            ok_trailers(
                RawReply::grpc()
                    .header("grpc-encoding", "br")
                    .data(frame(1, b"brotli?")),
            ),
            Code::Unimplemented,
        ),
        row(
            "a response that ends without trailers",
            RawReply::grpc().message(&valid),
            Code::Unknown,
        ),
        row(
            "trailers without grpc-status",
            RawReply::grpc().message(&valid).trailer("x-other", "1"),
            Code::Unknown,
        ),
        row(
            "a message over the client's decode limit",
            ok_trailers(RawReply::grpc().data(frame(0, &vec![0u8; 5 * 1024 * 1024]))),
            Code::ResourceExhausted,
        ),
        row(
            "a server that never answers (the deadline)",
            RawReply::grpc().hang(),
            Code::DeadlineExceeded,
        ),
        row(
            "a proxy's HTML error page",
            RawReply::new(502)
                .header("content-type", "text/html")
                .data("<html>bad gateway</html>"),
            Code::Unavailable,
        ),
        Row {
            name: "a token provider that is down (nothing sent)",
            reply: None,
            code: Code::Unavailable,
            attempts: 0,
        },
        Row {
            name: "a call after close() (nothing sent)",
            reply: None,
            code: Code::Cancelled,
            attempts: 0,
        },
    ];
    let mut bad = Vec::new();
    for row in rows {
        let server = H2FaultServer::start().await.unwrap();
        let mut builder = client(&server);
        if let Some(reply) = row.reply {
            server.push_reply(reply);
        }
        if row.name.starts_with("a token provider") {
            builder = builder.token_provider(|| async { Err(TokenError::new("idp down")) });
        }
        let client = builder.build().unwrap();
        if row.name.starts_with("a call after close") {
            client.close();
        }
        let err = match unary(&client).await {
            Ok(()) => {
                bad.push(format!("{}: succeeded", row.name));
                continue;
            }
            Err(err) => err,
        };
        if err.code() != row.code {
            bad.push(format!(
                "{}: code {:?}, want {:?}: {err}",
                row.name,
                err.code(),
                row.code
            ));
        }
        if err.request_id().is_none_or(str::is_empty) {
            bad.push(format!("{}: no request id: {err}", row.name));
        }
        if err.attempts() != row.attempts {
            bad.push(format!(
                "{}: {} attempts, want {}: {err}",
                row.name,
                err.attempts(),
                row.attempts
            ));
        }
        if err.elapsed().is_none() {
            bad.push(format!("{}: no elapsed time: {err}", row.name));
        }
        if !row.name.contains("nothing sent") {
            let seen = server.seen();
            let sent = seen
                .first()
                .and_then(|s| s.headers.get("x-request-id"))
                .and_then(|v| v.to_str().ok());
            if sent != err.request_id() {
                bad.push(format!(
                    "{}: the error's id {:?} is not the one sent {sent:?}",
                    row.name,
                    err.request_id()
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A failure the client itself decides on a response (it cannot be decoded
/// or decompressed) is not retryable: the same response fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_client_cannot_decode_is_not_retried() {
    let server = H2FaultServer::start().await.unwrap();
    server.push_reply(ok_trailers(RawReply::grpc().data(frame(0, NOT_PROTOBUF))));
    let client = AmeideClient::builder()
        .endpoint(server.endpoint())
        .timeout(BUDGET)
        .build()
        .unwrap();
    let err = unary(&client).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(server.seen().len(), 1, "one attempt on the wire");
}

/// In a server stream, a message that is not protobuf fails `message()`
/// with the call's facts, after the messages before it arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_that_cannot_be_decoded_carries_the_facts() {
    let server = H2FaultServer::start().await.unwrap();
    let tokens = ameide_tests::calls::tokens(["one"]);
    server.push_reply(ok_trailers(
        RawReply::grpc()
            .message(&tokens[0])
            .data(frame(0, NOT_PROTOBUF)),
    ));
    let client = client(&server).build().unwrap();
    let mut stream = client
        .inference()
        .generate(GenerateRequest::default())
        .await
        .expect("the stream starts")
        .into_inner();
    assert!(
        stream.message().await.unwrap().is_some(),
        "the first message"
    );
    let err = Error::from(stream.message().await.unwrap_err());
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.request_id().is_some(), "{err}");
    assert_eq!(err.attempts(), 1, "{err}");
    let sent = server.seen();
    assert_eq!(
        sent.first()
            .and_then(|s| s.headers.get("x-request-id"))
            .and_then(|v| v.to_str().ok()),
        err.request_id()
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// In a gzip-compressed server stream, a message that does not decompress
/// fails `message()` with the call's facts (the SDK decompresses a stream's
/// messages to check them; tonic's own error there had none), after the
/// good message before it; one that decompresses past the client's limit is
/// RESOURCE_EXHAUSTED, without inflating it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_that_does_not_decompress_carries_the_facts() {
    let tokens = ameide_tests::calls::tokens(["one"]);
    let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
    for (bad, code) in [
        (b"not gzip".to_vec(), Code::Internal),
        (bomb, Code::ResourceExhausted),
    ] {
        let server = H2FaultServer::start().await.unwrap();
        server.push_reply(ok_trailers(
            RawReply::grpc()
                .header("grpc-encoding", "gzip")
                .data(frame(1, &gzip(&tokens[0])))
                .data(frame(1, &bad)),
        ));
        let client = client(&server).build().unwrap();
        let mut stream = client
            .inference()
            .generate(GenerateRequest::default())
            .await
            .expect("the stream starts")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("the good message decompresses");
        assert!(first.is_some());
        let err = Error::from(stream.message().await.unwrap_err());
        assert_eq!(err.code(), code, "{err}");
        assert!(err.request_id().is_some(), "{err}");
        assert_eq!(err.attempts(), 1, "{err}");
    }
}
