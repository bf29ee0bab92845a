//! Test helpers for code that uses the SDK (cargo feature `testkit`).
//!
//! - [`MockServer`]: a gRPC server for *any* method path that answers from a
//!   per-attempt script ([`Reply`]) and records every attempt it receives
//!   (path, all headers, arrival time on tokio's clock, request message).
//! - [`duplex_transport`]: connects a client to a `MockServer` over a real
//!   HTTP/2 connection held in memory (no sockets), so tokio's paused clock
//!   drives every timer.
//! - [`serve_tcp`]: serves a `MockServer` on a loopback port, for peers that
//!   need a socket.
//! - [`H2FaultServer`]: a loopback server on raw HTTP/2 that injects the
//!   transport faults tonic never produces on demand (`REFUSED_STREAM`,
//!   `GOAWAY`, a stream reset after N messages, a dropped connection).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use ameide_sdk::testkit::{MockServer, Reply, duplex_transport};
//! use ameide_sdk::AmeideClient;
//!
//! let server = MockServer::new();
//! let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
//! server.push(path, Reply::status(tonic::Status::unavailable("warming up")));
//! server.push(path, Reply::ok());
//!
//! let client = AmeideClient::builder()
//!     .endpoint("http://mock.test")
//!     .transport(duplex_transport(server.clone()))
//!     .build()
//!     .unwrap();
//! client.graph().list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default()).await.unwrap();
//! assert_eq!(server.attempts_for(path).len(), 2);
//! # }
//! ```

mod h2fault;
mod server;

pub use h2fault::{H2FaultServer, SeenStream, StreamFault};
pub use server::{MockServer, RecordedAttempt, Reply, duplex_transport, serve_tcp};

/// Decodes a `grpc-timeout` header value as a server does (the SDK's own decoder);
/// `None` when malformed.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(ameide_sdk::testkit::decode_grpc_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(ameide_sdk::testkit::decode_grpc_timeout("soon"), None);
/// ```
pub fn decode_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    crate::layers::timeout::decode_grpc_timeout(value)
}
