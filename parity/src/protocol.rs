//! The adapter protocol: the runner writes one JSON object per line to the
//! adapter's stdin ([`Request`]); the adapter makes the call and writes one
//! JSON object per line to stdout ([`Outcome`]). Anything else the adapter
//! prints must go to stderr. `docs/parity.md` has the tables.

use serde::{Deserialize, Deserializer, Serialize};

use crate::case::{Call, ClientConfig, Detail};

/// Runner → adapter. What the client is and what call to make; never what
/// the case expects, and never the resolved path: resolving the roster key
/// is part of what an SDK must do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The case id, to be echoed in the outcome.
    pub id: String,
    /// The harness server to call, e.g. `http://127.0.0.1:41234` (plaintext HTTP/2).
    pub endpoint: String,
    /// `unary` or `server_streaming`.
    pub kind: String,
    /// The client to build (absent fields arrive as `null`: the contract's defaults).
    pub client: ClientConfig,
    /// The call: roster key (`service`), method, request (proto-JSON), per-call settings.
    pub call: Call,
    /// Present in inbound cases only: serve `call`'s method with the SDK's
    /// server side instead of calling it, and answer with `serve_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<Serve>,
}

/// How the adapter's server handles each call: it makes the same call
/// (method, request message) to `endpoint` with a client built from
/// `client`, inside the request's context, and answers with the response
/// (or hands on the failure).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    /// Forward the caller's tenant and user on the downstream call, the
    /// SDK's explicit way.
    pub forward_identity: bool,
}

/// Adapter → runner. Only `id` is required; an outcome with `adapter_error`
/// alone says the adapter could not run the case.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The case id, as the request gave it.
    pub id: String,
    /// Final status code name (`OK`, `UNAVAILABLE`, …).
    #[serde(default)]
    pub code: String,
    /// Final status message.
    #[serde(default)]
    pub message: String,
    /// The response messages received, decoded with the method's response
    /// type and written as proto-JSON, in order.
    #[serde(default)]
    pub responses: Vec<serde_json::Value>,
    /// Decoded error details.
    #[serde(default)]
    pub details: Vec<Detail>,
    /// The request id the SDK reports for the call (`null`: not reported).
    #[serde(default)]
    pub request_id: Option<String>,
    /// The attempts the SDK reports (`null`: not reported); any JSON number.
    #[serde(default, deserialize_with = "number_u64")]
    pub attempts: Option<u64>,
    /// Wall time of the call in ms on the adapter's clock; any JSON number.
    #[serde(default, deserialize_with = "number_f64")]
    pub elapsed_ms: Option<f64>,
    /// Set when the adapter could not run the case at all (bad case, bad config).
    #[serde(default)]
    pub adapter_error: Option<String>,
    /// Inbound cases: where the adapter's server listens
    /// (`http://127.0.0.1:<port>`, plaintext HTTP/2), until the next line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_endpoint: Option<String>,
    /// Inbound cases: why the adapter does not run them (an SDK without a
    /// server side); the runner reports the case `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Any JSON number (or `null`) as a non-negative float.
fn number_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(d)?;
    match value.and_then(|n| n.as_f64()) {
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
        Some(f) => Err(serde::de::Error::custom(format!(
            "{f} is not a non-negative number"
        ))),
        None => Ok(None),
    }
}

/// Any JSON number (or `null`) with no fractional part, as a count.
fn number_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match number_f64(d)? {
        Some(f) if f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(Some(f as u64)),
        Some(f) => Err(serde::de::Error::custom(format!(
            "{f} is not a whole count"
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_any_json_shape_are_accepted() {
        let o: Outcome =
            serde_json::from_str(r#"{"id":"x","code":"OK","elapsed_ms":12.5,"attempts":2.0}"#)
                .unwrap();
        assert_eq!(o.elapsed_ms, Some(12.5));
        assert_eq!(o.attempts, Some(2));
        let o: Outcome = serde_json::from_str(r#"{"id":"x","adapter_error":"no"}"#).unwrap();
        assert_eq!(o.adapter_error.as_deref(), Some("no"));
        assert!(serde_json::from_str::<Outcome>(r#"{"id":"x","attempts":1.5}"#).is_err());
        assert!(serde_json::from_str::<Outcome>(r#"{"id":"x","elapsed_ms":-1}"#).is_err());
    }
}
