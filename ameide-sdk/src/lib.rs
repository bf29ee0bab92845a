//! The Ameide platform SDK for Rust.
//!
//! This crate is the one dependency a Rust program needs to talk to Ameide or
//! to implement an Ameide service:
//!
//! - [`proto`]: every generated message, client stub and server trait of the
//!   Ameide core proto bundle, re-exported verbatim (`ameide_sdk::proto::graph::v1::…`);
//! - [`methods`]: the streaming kind and idempotency level of every method;
//! - `AmeideClient` and its tower layers (coming with the client issue).
//!
//! ```
//! use ameide_sdk::proto::graph::v1::{GetElementRequest, graph_service_client::GraphServiceClient};
//!
//! let request = GetElementRequest { element_id: "el-1".into(), ..Default::default() };
//! assert_eq!(request.element_id, "el-1");
//! # let _ = std::marker::PhantomData::<GraphServiceClient<()>>;
//! ```

#![deny(missing_docs)]

/// The generated protobuf types of the Ameide core bundle, re-exported verbatim.
///
/// One module per proto package (`ameide_core_proto.<domain>.v1` → `proto::<domain>::v1`),
/// each with its messages, enums, `<service>_client` and `<service>_server` modules.
/// Services implement the generated server traits from here; they never run
/// protobuf codegen of their own and never depend on `ameide-proto`.
///
/// ```
/// use ameide_sdk::proto::common::v1::RequestContext;
/// let ctx = RequestContext { tenant_id: "t-1".into(), ..Default::default() };
/// assert_eq!(ctx.tenant_id, "t-1");
/// ```
pub mod proto {
    pub use ameide_proto::DESCRIPTOR_SET;
    pub use ameide_proto::ameide_core_proto::*;
}

/// What the bundle says about each method: streaming kind, idempotency, roster key.
///
/// ```
/// let info = ameide_sdk::methods::method("/ameide_core_proto.agents.v1.AgentsService/StreamCatalog").unwrap();
/// assert_eq!(info.kind, ameide_sdk::methods::StreamingKind::ServerStreaming);
/// ```
pub mod methods {
    pub use ameide_proto::{
        Idempotency, METHODS, MethodInfo, ROSTER, RosterEntry, StreamingKind, method,
    };
}

/// The parity constants every Ameide SDK shares: defaults, header names, layer order.
///
/// ```
/// assert_eq!(ameide_sdk::contract::DEFAULT_TIMEOUT_MS, 5_000);
/// assert_eq!(ameide_sdk::contract::HEADER_TENANT, "x-tenant-id");
/// ```
pub use ameide_proto::contract;

/// Re-exported so services and tools need no direct dependency on them.
pub use {prost, prost_types, tonic};
