//! The adapter protocol: the runner writes one JSON object per line to the
//! adapter's stdin ([`Request`]); the adapter makes the call and writes one
//! JSON object per line to stdout ([`Outcome`]). Anything else the adapter
//! prints must go to stderr.

use serde::{Deserialize, Serialize};

use crate::case::{Case, Detail};

/// Runner → adapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The harness server to call, e.g. `http://127.0.0.1:41234`.
    pub endpoint: String,
    /// The fully-qualified path of the call, resolved by the runner from the roster.
    pub path: String,
    /// `unary` or `server_streaming`.
    pub kind: String,
    /// The case.
    pub case: Case,
}

/// Adapter → runner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The case id.
    pub id: String,
    /// Final status code name.
    pub code: String,
    /// Final status message.
    #[serde(default)]
    pub message: String,
    /// Response messages received.
    #[serde(default)]
    pub messages: usize,
    /// Decoded error details.
    #[serde(default)]
    pub details: Vec<Detail>,
    /// The request id the SDK reports for the call.
    pub request_id: Option<String>,
    /// The attempts the SDK reports.
    pub attempts: Option<u32>,
    /// Wall time of the call in ms (adapter clock).
    pub elapsed_ms: u64,
    /// Set when the adapter could not run the case at all (bad case, bad config).
    pub adapter_error: Option<String>,
}
