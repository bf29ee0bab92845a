//! The runner's side of an inbound case: it calls the adapter's server as a
//! plain gRPC caller (tonic, no SDK: what crosses the hop is exactly what
//! the adapter's server sent), with the case's inbound headers written as
//! they are, and turns the answer into an [`Outcome`] the usual checks read.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};

use crate::case::Call;
use crate::protocol::Outcome;
use crate::wire::BytesCodec;

/// The most stream messages the runner keeps from one answer.
const MAX_MESSAGES: usize = 10_000;

/// What came back from the adapter's server.
#[derive(Debug)]
pub struct Answer {
    /// Code, message, decoded responses; `request_id` is the `x-request-id`
    /// the server echoed; `elapsed_ms` the runner's clock.
    pub outcome: Outcome,
    /// Every metadata entry of the answer (headers, then trailers), names
    /// lower case, binary values as `<binary>`.
    pub metadata: Vec<(String, String)>,
    /// The call's wall time.
    pub elapsed: Duration,
}

/// The inbound headers of a call: `call.request_id` as `x-request-id`,
/// `call.traceparent` as `traceparent`, then `headers` as written.
/// (`call.timeout_ms` goes as tonic writes a deadline, `grpc-timeout`.)
pub fn headers(call: &Call, headers: &BTreeMap<String, String>) -> Result<MetadataMap, String> {
    let mut map = MetadataMap::new();
    let fixed = [
        ("x-request-id", call.request_id.as_deref()),
        ("traceparent", call.traceparent.as_deref()),
    ];
    let given = headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_str())));
    for (name, value) in fixed.into_iter().chain(given) {
        let Some(value) = value else { continue };
        let key = MetadataKey::from_bytes(name.as_bytes())
            .map_err(|e| format!("inbound header name {name:?}: {e}"))?;
        let value = MetadataValue::from_str(value)
            .map_err(|e| format!("inbound header {name}: {value:?} cannot be sent: {e}"))?;
        map.append(key, value);
    }
    Ok(map)
}

fn entries(map: &MetadataMap, into: &mut Vec<(String, String)>) {
    for entry in map.iter() {
        match entry {
            KeyAndValueRef::Ascii(k, v) => into.push((
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<not text>").to_owned(),
            )),
            KeyAndValueRef::Binary(k, _) => into.push((k.as_str().to_owned(), "<binary>".into())),
        }
    }
}

fn decoded(bytes: &Bytes, output: &MessageDescriptor) -> serde_json::Value {
    match DynamicMessage::decode(output.clone(), bytes.as_ref()) {
        Ok(m) => serde_json::to_value(&m).unwrap_or(serde_json::Value::Null),
        Err(e) => serde_json::json!({ "<undecodable>": e.to_string() }),
    }
}

/// The adapter's server must listen on loopback: the runner calls nothing else.
fn loopback(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("serve_endpoint {endpoint:?}: {e}"))?;
    let host = uri.host().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let is_loopback = host == "localhost"
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if uri.scheme_str() != Some("http") || !is_loopback {
        return Err(format!(
            "serve_endpoint {endpoint:?}: the adapter's server must be http:// on loopback"
        ));
    }
    Ok(())
}

/// The inbound call to make.
#[derive(Debug)]
pub struct Inbound<'a> {
    /// The adapter's `serve_endpoint`.
    pub endpoint: &'a str,
    /// `/package.Service/Method`.
    pub path: &'a str,
    /// A unary method (else server-streaming).
    pub unary: bool,
    /// The encoded request message.
    pub request: Bytes,
    /// The case's call: `timeout_ms` becomes the deadline.
    pub call: &'a Call,
    /// The inbound headers ([`headers`]).
    pub metadata: MetadataMap,
    /// The method's response type, to decode the answer.
    pub output: &'a MessageDescriptor,
}

/// Makes the inbound call once; gives up after `limit` (the case timeout),
/// whatever the server does.
pub async fn call(inbound: Inbound<'_>, limit: Duration) -> Result<Answer, String> {
    loopback(inbound.endpoint)?;
    tokio::time::timeout(limit, make(inbound))
        .await
        .map_err(|_| {
            format!("the adapter's server did not answer within {limit:?} (--case-timeout)")
        })?
}

async fn make(inbound: Inbound<'_>) -> Result<Answer, String> {
    let Inbound {
        endpoint,
        path,
        unary,
        request,
        call,
        metadata,
        output,
    } = inbound;
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("serve_endpoint {endpoint:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the adapter's server at {endpoint}: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = PathAndQuery::from_str(path).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(request);
    *req.metadata_mut() = metadata;
    if let Some(ms) = call.timeout_ms {
        req.set_timeout(Duration::from_millis(ms));
    }
    grpc.ready().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let mut seen = Vec::new();
    let result: Result<(), tonic::Status> = if unary {
        match grpc.unary::<Bytes, Bytes, _>(req, path, BytesCodec).await {
            Ok(response) => {
                entries(response.metadata(), &mut seen);
                outcome.responses.push(decoded(response.get_ref(), output));
                Ok(())
            }
            Err(status) => Err(status),
        }
    } else {
        match grpc
            .server_streaming::<Bytes, Bytes, _>(req, path, BytesCodec)
            .await
        {
            Ok(response) => {
                entries(response.metadata(), &mut seen);
                let mut stream = response.into_inner();
                loop {
                    if outcome.responses.len() >= MAX_MESSAGES {
                        break Err(tonic::Status::resource_exhausted(format!(
                            "the runner read {MAX_MESSAGES} messages and stopped"
                        )));
                    }
                    match stream.message().await {
                        Ok(Some(bytes)) => outcome.responses.push(decoded(&bytes, output)),
                        Ok(None) => {
                            if let Ok(Some(trailers)) = stream.trailers().await {
                                entries(&trailers, &mut seen);
                            }
                            break Ok(());
                        }
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        }
    };
    let elapsed = started.elapsed();
    match result {
        Ok(()) => outcome.code = "OK".into(),
        Err(status) => {
            outcome.code = ameide_sdk::canonical_code_name(status.code()).to_owned();
            outcome.message = status.message().to_owned();
            entries(status.metadata(), &mut seen);
            if !status.details().is_empty() {
                seen.push(("grpc-status-details-bin".into(), "<binary>".into()));
            }
        }
    }
    outcome.request_id = seen
        .iter()
        .find(|(name, _)| name == "x-request-id")
        .map(|(_, v)| v.clone());
    outcome.elapsed_ms = Some(elapsed.as_secs_f64() * 1000.0);
    Ok(Answer {
        outcome,
        metadata: seen,
        elapsed,
    })
}
