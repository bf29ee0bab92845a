//! Quickstart (foundation stage): shows what the SDK is generated from.
//!
//! The full quickstart, with an embedded server and `AmeideClient` calls, arrives
//! with the client issue. Today it prints the service roster, the bundle digest
//! and the method table that the client layers will be driven by.

use ameide_sdk::contract;
use ameide_sdk::methods::{Idempotency, METHODS, ROSTER, StreamingKind};

fn main() {
    println!("Ameide Rust SDK, bundle {}", contract::BUNDLE_DIGEST);
    println!(
        "defaults: endpoint {}, timeout {} ms, {} attempts at most\n",
        contract::DEFAULT_ENDPOINT,
        contract::DEFAULT_TIMEOUT_MS,
        contract::RETRY_MAX_ATTEMPTS
    );
    println!(
        "{:<28} {:<62} {:>7} {:>9} {:>9}",
        "client key", "service", "methods", "streaming", "read-only"
    );
    for entry in ROSTER {
        let methods: Vec<_> = METHODS
            .iter()
            .filter(|m| m.service == entry.service)
            .collect();
        let streaming = methods
            .iter()
            .filter(|m| m.kind != StreamingKind::Unary)
            .count();
        let read_only = methods
            .iter()
            .filter(|m| m.idempotency == Idempotency::NoSideEffects)
            .count();
        println!(
            "{:<28} {:<62} {:>7} {:>9} {:>9}",
            entry.key,
            entry.service,
            methods.len(),
            streaming,
            read_only
        );
    }
    println!(
        "\n{} services, {} methods. The AmeideClient itself comes with the next issue.",
        ROSTER.len(),
        METHODS.len()
    );
}
