//! The Ameide platform SDK for Rust.
//!
//! One dependency gives a Rust program everything it needs to call Ameide, or
//! to be an Ameide service:
//!
//! - [`AmeideClient`]: a typed client per roster service (`client.graph()`,
//!   `client.platform().organizations()`, …) over one layered channel whose
//!   metadata, auth, timeout, retry and tracing behaviour match the
//!   TypeScript, Go and Python SDKs (the contract's parity rules);
//! - [`layers`]: each of those behaviours as a public `tower::Layer`;
//! - [`Error`]: the one error type of a failed call;
//! - [`proto`]: every generated message, client and server trait, verbatim.
//!
//! # The client stack
//!
//! Outermost first — the order is part of the contract:
//!
//! | # | Layer | Runs |
//! |---|---|---|
//! | 1 | metadata: `x-tenant-id`, `x-user-id`, extra headers, `x-request-id` | once per call |
//! | 2 | auth: `authorization: Bearer …` from the token provider | once per call |
//! | 3 | timeout: whole-call deadline, `DEADLINE_EXCEEDED` | once per call |
//! | 4 | retry: backoff with jitter on retryable codes, `grpc-timeout` per attempt | once per call |
//! | 5 | tracing: a CLIENT span per attempt, `traceparent`/`tracestate`/`baggage` | per attempt |
//! | 6 | user layers ([`AmeideClientBuilder::layer`]) | per attempt |
//! | 7 | transport: the SDK's HTTP/2 connections (hyper; rustls for `https`; never-written requests resent transparently) or [`AmeideClientBuilder::transport`] | per attempt |
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> ameide_sdk::Result<()> {
//! use ameide_sdk::{AmeideClient, AmeideConfig, CallOptions};
//! use ameide_sdk::proto::graph::v1::GetRepositoryRequest;
//!
//! let client = AmeideClient::builder().config(AmeideConfig::from_env()?).build()?;
//! let request = CallOptions::new()
//!     .timeout(std::time::Duration::from_secs(1))
//!     .into_request(GetRepositoryRequest { repository_id: "repo-1".into(), ..Default::default() })?;
//! // `?` turns the typed call's tonic::Status into ameide_sdk::Error, whose
//! // Display is one line: CODE: message [request_id=…, attempts=N, …]
//! let response = client.graph().get_repository(request).await?;
//! println!("{:?}", response.get_ref().repository);
//! # Ok(()) }
//! ```
//!
//! The same `?` works the other way in a tonic handler: an [`Error`] becomes
//! the original `tonic::Status`. A rejected setting ([`ConfigError`]) becomes
//! an [`Error`] too (`INVALID_ARGUMENT`, zero attempts).

//! # Hostile peers and settings
//!
//! The SDK runs inside every Ameide service, so nothing a peer sends and
//! nothing a user configures may crash the host or outlive a call's deadline:
//!
//! - statuses, messages, `google.rpc` details, retry hints, headers and
//!   trailers of any shape, proxies' error pages and undecodable messages
//!   become clear statuses (a non-gRPC response by gRPC's HTTP-to-gRPC
//!   mapping); tonic 0.14's own status parser, which panics on a
//!   `grpc-status-details-bin` that is not base64, never sees peer input the
//!   SDK has not checked;
//! - durations from peers and settings saturate, and a server's retry hint
//!   never reaches past the deadline;
//! - every builder setting is validated at [`AmeideClientBuilder::build`],
//!   the error naming the setting and its range;
//! - the [`server::InboundLayer`] bounds what callers send before it is
//!   forwarded, echoed or logged;
//! - the per-call facts in [`Error`] travel in-process (the failed status's
//!   `source()`), so a service that hands a downstream status to its caller
//!   sends nothing of the SDK's;
//! - token fetches of [`auth::CachingTokenProvider`] outlive their callers.
//!
//! The README's "Hostile peers and settings" section has the details; the
//! proof is in the hostile-peer tests, the proptest properties and the
//! cargo-fuzz targets (`cargo xtask fuzz`).

#![deny(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: feature-gated items say which feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
mod call;
mod client;
pub mod codec;
pub mod config;
mod config_error;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod grpc_headers;
mod grpc_timeout;
mod inbound;
pub mod layers;
pub mod pagination;
mod peer;
#[cfg(test)]
mod properties;
mod request_id;
pub mod server;
mod telemetry;
mod time;
mod transport;
mod wire_types;

#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use call::{AttemptRecord, CallInfo, CallOptions, StopReason};
pub use client::{
    ACCESSOR_KEYS, AmeideChannel, AmeideClient, AmeideClientBuilder, PlatformClients,
    ResponseFuture,
};
pub use codec::CodecOptions;
pub use config::{AmeideConfig, ConfigError, ConfigErrorKind, TlsFiles};
pub use error::{Error, IntoAmeideResult, canonical_code_name};

/// `Result<T, ameide_sdk::Error>`: the return type that lets `?` take a
/// typed call's `tonic::Status`, a [`ConfigError`] and an [`Error`] alike.
///
/// ```
/// fn parse(timeout_ms: u64) -> ameide_sdk::Result<tonic::Request<()>> {
///     let options = ameide_sdk::CallOptions::new().timeout(std::time::Duration::from_millis(timeout_ms));
///     Ok(options.into_request(())?)
/// }
/// assert!(parse(100).is_ok());
/// assert_eq!(parse(0).unwrap_err().code(), tonic::Code::InvalidArgument);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
pub use gate::InFlightLimit;
pub use transport::{
    AddressStream, BoxTransport, ClientIdentity, DEFAULT_CONNECTIONS, DEFAULT_MAX_CONNECTIONS,
    LoadBalancing, OutlierEjection, Proxy, Resolver, ResolverAnswer, TransportOptions, TrustRoots,
};

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
