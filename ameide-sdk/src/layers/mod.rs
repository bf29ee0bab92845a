//! The built-in client layers, each a public `tower::Layer` usable on its own.
//!
//! [`AmeideClient`](crate::AmeideClient) composes them in the contract's order,
//! outermost first:
//!
//! | # | Layer | Does | Once per |
//! |---|---|---|---|
//! | 1 | [`MetadataLayer`] | `x-tenant-id`, `x-user-id`, extra headers, `x-request-id` (kept or generated); stamps errors with request id, attempts and elapsed time | call |
//! | 2 | [`AuthLayer`] | asks the [`TokenProvider`](crate::auth::TokenProvider), sends `authorization: Bearer …` | call |
//! | 3 | [`TimeoutLayer`] | whole-call deadline, streams included; `DEADLINE_EXCEEDED` on expiry | call |
//! | 4 | [`RetryLayer`] | replays unary and server-streaming requests on retryable codes until committed; `grpc-timeout` with the remaining budget on every attempt | call |
//! | 5 | [`TracingLayer`] | one CLIENT span per attempt; `traceparent`, `tracestate`, `baggage` | attempt |
//! | 5′ | [`MetricsLayer`] | gRPC's per-attempt metrics (gRFC A66); the per-call duration is the metadata layer's | attempt |
//! | 6 | user layers | whatever [`AmeideClientBuilder::layer`](crate::AmeideClientBuilder::layer) added, in order | attempt |
//! | 7 | transport | tonic `Channel` (or the override) | attempt |
//!
//! Every layer speaks `http::Request<tonic::body::Body>` →
//! `http::Response<tonic::body::Body>` with errors boxed, so any of them can
//! wrap a plain tonic `Channel`:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use ameide_sdk::layers::{MetadataLayer, TimeoutLayer};
//!
//! # fn wrap(channel: tonic::transport::Channel) {
//! let service = ServiceBuilder::new()
//!     .layer(MetadataLayer::builder().tenant_id("tenant-a").build().unwrap())
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)))
//!     .service(channel);
//! # }
//! ```

pub mod auth;
pub mod metadata;
pub mod metrics;
pub(crate) mod replay;
pub mod retry;
pub mod timeout;
pub mod tracing;

pub use auth::{AuthLayer, AuthService};
pub use metadata::{MetadataLayer, MetadataLayerBuilder, MetadataService, RequestIdGenerator};
pub use metrics::{MetricsLayer, MetricsService};
pub use retry::{
    HedgingPolicy, Jitter, RetryLayer, RetryPolicy, RetryService, Sleeper, Throttle, ThrottleConfig,
};
pub use timeout::{TimeoutLayer, TimeoutService};
pub use tracing::{SemconvMode, TracingLayer, TracingService};

pub use crate::wire_types::{BoxError, HttpRequest, HttpResponse};

pub(crate) use crate::grpc_headers::{grpc_code, names, status_response, trailers_only_status};
pub(crate) use crate::transport::failure::{Delivery, classify_error, status_from_error};
