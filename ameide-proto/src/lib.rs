//! **Internal crate of the Ameide SDK. Depend on [`ameide-sdk`](https://docs.rs/ameide-sdk) instead**,
//! which re-exports everything here under `ameide_sdk::proto`.
//!
//! `ameide-proto` carries the core proto bundle (`proto/`) and compiles it at
//! build time (protox → tonic-prost-build, no system `protoc`), so an edit to a
//! `.proto` file changes, or breaks, the build at once. It exposes:
//!
//! - the generated messages, client stubs and server traits, in modules that
//!   mirror the proto packages: [`ameide_core_proto::graph::v1`], …;
//! - [`DESCRIPTOR_SET`]: the encoded descriptor set, imports included;
//! - [`METHODS`] and [`method`]: the streaming kind and idempotency level of
//!   every `/package.Service/Method` path, for the client layers;
//! - [`ROSTER`]: the client keys of the manifest;
//! - [`pagination`]: which methods page, and the traits their messages implement;
//! - [`contract`]: the parity constants (defaults, header names, layer order).
//!
//! ```
//! use ameide_proto::{method, Idempotency, StreamingKind};
//!
//! let generate = method("/ameide_core_proto.inference.v1.InferenceService/Generate").unwrap();
//! assert_eq!(generate.kind, StreamingKind::ServerStreaming);
//! assert_eq!(generate.roster_key, "inference");
//! let get = method("/ameide_core_proto.graph.v1.GraphService/GetElement").unwrap();
//! assert_eq!(get.idempotency, Idempotency::NoSideEffects);
//! ```

#![deny(missing_docs)]

mod method_table;

pub mod codec;
pub mod pagination;

pub use method_table::{Idempotency, MethodInfo, RosterEntry, StreamingKind, method};

/// Generated code: one module per proto package. Messages, `*_client` and `*_server` modules.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
}

pub use generated::ameide_core_proto;

/// Every method of the bundle, sorted by path (see [`method`] for look-ups).
pub use method_table::METHODS;
/// The roster: client keys and their services, in manifest order.
pub use method_table::ROSTER;

// The `__ameide_client_set!` macro: typed client accessors for the roster.
include!(concat!(env!("OUT_DIR"), "/client_set.rs"));

/// The parity constants of the contract, generated from `ameide-build`'s `contract` module.
pub mod contract {
    include!(concat!(env!("OUT_DIR"), "/contract.rs"));
}

/// The encoded `FileDescriptorSet` of the bundle and its imports (well-known
/// types), without source info: for gRPC reflection and tools.
///
/// ```
/// use prost::Message;
/// let set = prost_types::FileDescriptorSet::decode(ameide_proto::DESCRIPTOR_SET).unwrap();
/// assert!(set.file.iter().any(|f| f.package() == "ameide_core_proto.graph.v1"));
/// ```
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));
