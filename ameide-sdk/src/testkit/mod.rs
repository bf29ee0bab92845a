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
//! - [`paused_client`], [`deterministic_retry`]: clients for tests on tokio's
//!   paused clock, where retry delays are exact and cost no real time.
//! - [`H2FaultServer`]: a loopback server on raw HTTP/2 that injects the
//!   transport faults tonic never produces on demand (`REFUSED_STREAM`,
//!   `GOAWAY`, a stream reset after N messages, a dropped connection), and
//!   hostile replies: [`RawReply`] scripts raw response headers, DATA frames
//!   and trailers per stream, malformed values included.
//! - [`RawTcpServer`]: a TCP peer answering with fixed bytes (an HTTP/1.1
//!   error page where HTTP/2 was expected).
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
mod hostile;
mod server;

pub use h2fault::{H2FaultServer, SeenStream, StreamFault};
pub use hostile::{RawReply, RawTcpServer};
#[cfg(unix)]
pub use server::serve_unix;
pub use server::{MockServer, RecordedAttempt, Reply, duplex_transport, serve_tcp, serve_tcp_at};

/// A retry layer with `policy` and no randomness: every backoff is exactly
/// the policy's nominal delay (jitter factor 1.0), so under tokio's paused
/// clock the attempts arrive at exact, assertable times.
pub fn deterministic_retry(
    policy: crate::layers::RetryPolicy,
) -> Result<crate::layers::RetryLayer, crate::ConfigError> {
    Ok(crate::layers::RetryLayer::new(policy)?.with_jitter(|_min: f64, _max: f64| 1.0))
}

/// A client builder for paused-clock tests: `server` over the in-memory
/// transport, deterministic retry delays ([`deterministic_retry`] with the
/// default policy) and its own target name, so clients of different tests
/// never share a retry-throttling bucket. Set another policy with
/// `.retry_layer(deterministic_retry(policy)?)`.
///
/// ```
/// # fn main() {
/// use std::time::Duration;
/// use ameide_sdk::testkit::{MockServer, Reply, paused_client};
///
/// let rt = tokio::runtime::Builder::new_current_thread()
///     .enable_all()
///     .start_paused(true)
///     .build()
///     .unwrap();
/// rt.block_on(async {
///     let server = MockServer::new();
///     let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
///     server.push(path, Reply::status(tonic::Status::unavailable("warming up")));
///     server.push(path, Reply::ok());
///     let client = paused_client(&server).build().unwrap();
///     client
///         .graph()
///         .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
///         .await
///         .unwrap();
///     let at: Vec<_> = server.attempts_for(path).iter().map(|a| a.at).collect();
///     // The contract's first backoff, exactly, and no real time spent waiting.
///     assert_eq!(at[1] - at[0], Duration::from_millis(ameide_sdk::contract::RETRY_INITIAL_BACKOFF_MS));
/// });
/// # }
/// ```
pub fn paused_client(server: &MockServer) -> crate::AmeideClientBuilder {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let retry = deterministic_retry(crate::layers::RetryPolicy::default())
        .expect("the default retry policy is valid");
    crate::AmeideClient::builder()
        .endpoint(format!("http://testkit-{n}.invalid:9000"))
        .transport(duplex_transport(server.clone()))
        .retry_layer(retry)
}

/// Decodes a `grpc-timeout` header value as a server does (the SDK's own decoder);
/// `None` when malformed.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(ameide_sdk::testkit::decode_grpc_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(ameide_sdk::testkit::decode_grpc_timeout("soon"), None);
/// ```
pub fn decode_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    crate::grpc_timeout::decode_grpc_timeout(value)
}
