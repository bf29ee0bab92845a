//! Tracing shared by the client's tracing layer and the server's inbound
//! layer: semantic conventions, the tracer, propagation, and the span-ending
//! response body. Below both sides; neither imports the other for it.

pub(crate) mod metrics;
pub(crate) mod propagation;
pub(crate) mod semconv;
pub(crate) mod span_body;
pub(crate) mod tracer;

pub use semconv::SemconvMode;
pub(crate) use semconv::{Side, end_span, rpc_attributes};
pub(crate) use span_body::{SpanBody, end_dropped};
pub(crate) use tracer::{SdkTracer, global_tracer, provider_tracer};
