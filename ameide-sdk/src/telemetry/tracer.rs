//! The SDK's tracer: the global provider's or an explicit one, under the
//! `ameide-sdk` instrumentation scope.

use std::sync::Arc;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};

/// The SDK's instrumentation scope, for its spans and its metrics.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("ameide-sdk")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The tracer the client and server layers start their spans with, and
/// whether it starts any.
///
/// OpenTelemetry's no-op tracer (the global one until the application
/// installs a provider) hands back, for every span, its parent's span context
/// and records nothing; building that span still costs three allocations and
/// the attribute list. [`Self::creates_spans`] is probed once, when the
/// tracer is made, with a span whose parent is a made-up remote span context
/// in a context that suppresses telemetry (so no real tracer records or
/// exports the probe: the OpenTelemetry SDK answers it with an empty
/// context). Only a tracer that hands back exactly the parent's span context
/// (propagation and nothing else) is taken for a no-op.
pub(crate) struct SdkTracer {
    tracer: BoxedTracer,
    creates_spans: bool,
}

impl SdkTracer {
    fn new(tracer: BoxedTracer) -> Arc<Self> {
        let parent = SpanContext::new(
            TraceId::from(0x616d_6569_6465_2d73_646b_2d70_726f_6265_u128),
            SpanId::from(0x7072_6f62_652d_6964_u64),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        let cx = Context::new()
            .with_remote_span_context(parent.clone())
            .with_telemetry_suppressed();
        let probe = tracer.build_with_context(SpanBuilder::from_name("ameide-sdk.probe"), &cx);
        let creates_spans = {
            use opentelemetry::trace::Span as _;
            let got = probe.span_context();
            got.trace_id() != parent.trace_id() || got.span_id() != parent.span_id()
        };
        Arc::new(SdkTracer {
            tracer,
            creates_spans,
        })
    }

    /// Starts a span named `name` under `parent` and returns `parent` with
    /// it as the current span.
    pub(crate) fn start(
        &self,
        name: std::borrow::Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: &Context,
    ) -> Context {
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes(attributes),
            parent,
        );
        parent.with_span(span)
    }

    /// False for a no-op tracer: the layers then use the parent context as
    /// it is (its trace context still goes on the wire) and build no span.
    pub(crate) fn creates_spans(&self) -> bool {
        self.creates_spans
    }
}

/// The SDK's tracer from the global provider (client and server spans alike).
pub(crate) fn global_tracer() -> Arc<SdkTracer> {
    SdkTracer::new(opentelemetry::global::tracer_with_scope(scope()))
}

/// The SDK's tracer from an explicit provider.
pub(crate) fn provider_tracer<P, T, S>(provider: &P) -> Arc<SdkTracer>
where
    P: TracerProvider<Tracer = T>,
    T: Tracer<Span = S> + Send + Sync + 'static,
    S: opentelemetry::trace::Span + Send + Sync + 'static,
{
    SdkTracer::new(BoxedTracer::new(Box::new(
        provider.tracer_with_scope(scope()),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::noop::NoopTracerProvider;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};

    #[test]
    fn the_no_op_tracer_is_known_and_a_real_one_is_not_by_a_probe_nobody_exports() {
        assert!(!provider_tracer(&NoopTracerProvider::new()).creates_spans());
        // Even a sampler that records every root span exports no probe.
        for sampler in [
            Sampler::AlwaysOn,
            Sampler::AlwaysOff,
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        ] {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_sampler(sampler)
                .with_simple_exporter(exporter.clone())
                .build();
            assert!(provider_tracer(&provider).creates_spans());
            provider.force_flush().unwrap();
            assert!(exporter.get_finished_spans().unwrap().is_empty());
        }
    }
}
