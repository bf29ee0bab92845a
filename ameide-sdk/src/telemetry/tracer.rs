//! The SDK's tracer: the global provider's or an explicit one, under the
//! `ameide-sdk` instrumentation scope.

use std::sync::Arc;

use opentelemetry::InstrumentationScope;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{Tracer, TracerProvider};

/// The SDK's instrumentation scope, for its spans and its metrics.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("ameide-sdk")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The SDK's tracer from the global provider (client and server spans alike).
pub(crate) fn global_tracer() -> Arc<BoxedTracer> {
    Arc::new(opentelemetry::global::tracer_with_scope(scope()))
}

/// The SDK's tracer from an explicit provider.
pub(crate) fn provider_tracer<P, T, S>(provider: &P) -> Arc<BoxedTracer>
where
    P: TracerProvider<Tracer = T>,
    T: Tracer<Span = S> + Send + Sync + 'static,
    S: opentelemetry::trace::Span + Send + Sync + 'static,
{
    Arc::new(BoxedTracer::new(Box::new(
        provider.tracer_with_scope(scope()),
    )))
}
