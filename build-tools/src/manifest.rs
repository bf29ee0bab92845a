//! The cross-language client manifest (`ameide-proto/manifest/ameide-client.json`).
//!
//! Rendered from the bundle, the roster and the contract constants, in the
//! order the contract fixes: `schema`, `bundle_digest`, `defaults`, `metadata`,
//! `layers`, `services`. Services appear in roster order; services without a
//! roster key are left out (the wiring check reports them).

use serde_json::{Map, Value, json};

use crate::contract;
use crate::model::{Idempotency, ServiceModel, StreamingKind};
use crate::roster::Roster;

/// The manifest's schema identifier.
pub const SCHEMA: &str = "ameide-client-manifest/v1";

/// Renders the manifest as pretty JSON with a trailing newline.
pub fn render(bundle_digest: &str, roster: &Roster, services: &[ServiceModel]) -> String {
    let mut root = Map::new();
    root.insert("schema".into(), json!(SCHEMA));
    root.insert("bundle_digest".into(), json!(bundle_digest));
    root.insert(
        "defaults".into(),
        json!({
            "endpoint": contract::DEFAULT_ENDPOINT,
            "timeout_ms": contract::DEFAULT_TIMEOUT_MS,
            "retry": {
                "max_attempts": contract::RETRY_MAX_ATTEMPTS,
                "initial_backoff_ms": contract::RETRY_INITIAL_BACKOFF_MS,
                "backoff_multiplier": contract::RETRY_BACKOFF_MULTIPLIER,
                "max_backoff_ms": contract::RETRY_MAX_BACKOFF_MS,
                "jitter": [contract::RETRY_JITTER_MIN, contract::RETRY_JITTER_MAX],
                "retryable_codes": contract::RETRYABLE_CODES,
            },
            // gRFC A6 hedging: off unless configured; only for the methods
            // marked "hedgeable" below.
            "hedging": {
                "enabled": false,
                "max_attempts_limit": 5,
                "eligible_idempotency": ["NO_SIDE_EFFECTS", "IDEMPOTENT"],
                "eligible_kinds": ["unary", "server_streaming"],
            },
        }),
    );
    let mut metadata = Map::new();
    for (role, header) in contract::METADATA_HEADERS {
        metadata.insert((*role).into(), json!(header));
    }
    metadata.insert(
        "session_baggage_key".into(),
        json!(contract::SESSION_BAGGAGE_KEY),
    );
    root.insert("metadata".into(), Value::Object(metadata));
    root.insert("layers".into(), json!(contract::LAYERS));

    let mut out_services = Map::new();
    for entry in roster.entries() {
        let Some(service) = services.iter().find(|s| s.full_name == entry.service) else {
            continue;
        };
        let methods: Vec<Value> = service
            .methods
            .iter()
            .map(|m| {
                let mut method = json!({
                    "name": m.name,
                    "kind": m.kind.manifest_name(),
                    "idempotency": m.idempotency.manifest_name(),
                    // gRFC A6: a hedged call runs on several replicas, so
                    // only a method safe to repeat, with one request
                    // message to replay, may be hedged.
                    "hedgeable": m.idempotency != Idempotency::Unknown
                        && matches!(m.kind, StreamingKind::Unary | StreamingKind::ServerStreaming),
                });
                if let (Some(p), Some(object)) = (&m.pagination, method.as_object_mut()) {
                    object.insert(
                        "pagination".into(),
                        json!({ "items": p.items_field, "item_type": p.item_type }),
                    );
                }
                method
            })
            .collect();
        out_services.insert(
            entry.key.clone(),
            json!({ "service": service.full_name, "methods": methods }),
        );
    }
    root.insert("services".into(), Value::Object(out_services));

    let mut text =
        serde_json::to_string_pretty(&Value::Object(root)).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// Compares a committed manifest with a freshly rendered one.
///
/// On drift, returns a unified diff (committed → expected) with a hint on how
/// to regenerate.
pub fn check(committed: &str, rendered: &str) -> Result<(), String> {
    if committed == rendered {
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(committed, rendered)
        .unified_diff()
        .context_radius(3)
        .header("committed ameide-client.json", "expected from the bundle")
        .to_string();
    Err(format!(
        "the manifest is stale: the proto bundle or the roster changed since it was generated.\n\
         Run `cargo xtask manifest` and commit the result.\n\n{diff}"
    ))
}
