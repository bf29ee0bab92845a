//! gRPC's standard OpenTelemetry metrics (gRFC A66), for the client and the
//! server alike: the instruments, their attributes, and the byte counter of
//! gRPC messages. The layers decide *when* to record; this module says *what*.
//!
//! | Instrument | Kind, unit | Attributes | Recorded by |
//! |---|---|---|---|
//! | `grpc.client.attempt.started` | counter, `{attempt}` | `grpc.method`, `grpc.target` | `layers::MetricsLayer`, per attempt |
//! | `grpc.client.attempt.duration` | histogram, `s` | + `grpc.status` | the same, when the attempt ends (trailers, error, drop) |
//! | `grpc.client.attempt.sent_total_compressed_message_size` | histogram, `By` | + `grpc.status` | the same: request message bytes, framing excluded |
//! | `grpc.client.attempt.rcvd_total_compressed_message_size` | histogram, `By` | + `grpc.status` | the same: response message bytes, framing excluded |
//! | `grpc.client.call.duration` | histogram, `s` | `grpc.method`, `grpc.target`, `grpc.status` | the metadata layer, when the status reaches the caller |
//! | `grpc.server.call.started` | counter, `{call}` | `grpc.method` | `server::InboundLayer` |
//! | `grpc.server.call.duration` | histogram, `s` | `grpc.method`, `grpc.status` | the same, when the response stream ends |
//! | `grpc.server.call.sent_total_compressed_message_size` / `rcvd_…` | histogram, `By` | `grpc.method`, `grpc.status` | the same |
//! | `rpc.client.call.duration` / `rpc.server.call.duration` | histogram, `s` | `rpc.system.name`, `rpc.method`, `rpc.response.status_code`, `error.type` | beside the above when `OTEL_SEMCONV_STABILITY_OPT_IN` has `rpc` or `rpc/dup` |
//!
//! `grpc.method` is `package.Service/Method` for the bundle's methods and
//! `other` for any other path, so a peer cannot grow the number of series
//! (`rpc.method` is `_OTHER` there, as the semantic conventions say).
//! `grpc.target` is the client's endpoint as configured. Histograms carry the
//! bucket boundaries A66 recommends (an SDK view can override them).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http_body::Frame;
use pin_project_lite::pin_project;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider, UpDownCounter};
use opentelemetry::{KeyValue, StringValue};
use tonic::Code;

use crate::error::canonical_code_name;
use crate::telemetry::SemconvMode;

/// A66's latency buckets, in seconds.
pub(crate) const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// A66's size buckets, in bytes.
pub(crate) const SIZE_BUCKETS: [f64; 14] = [
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// What a method outside the roster is called in metrics (gRFC A66's
/// `other`) and in server span names: a peer picks the path, and neither
/// may grow with it.
pub(crate) const OTHER_METHOD: &str = "other";

/// The `grpc.method` of a path: `package.Service/Method` for the bundle's
/// methods, `other` for anything else (bounded cardinality).
pub(crate) fn grpc_method(method: Option<&'static ameide_proto::MethodInfo>) -> &'static str {
    method.map_or(OTHER_METHOD, |m| &m.path[1..])
}

/// The SDK's meter from the global provider (the default).
pub(crate) fn global_meter() -> Meter {
    opentelemetry::global::meter_with_scope(super::tracer::scope())
}

/// The SDK's meter from an explicit provider.
pub(crate) fn provider_meter<P: MeterProvider + ?Sized>(provider: &P) -> Meter {
    provider.meter_with_scope(super::tracer::scope())
}

fn latency(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(LATENCY_BUCKETS.to_vec())
        .build()
}

fn size(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<u64> {
    meter
        .u64_histogram(name)
        .with_unit("By")
        .with_description(description)
        .with_boundaries(SIZE_BUCKETS.to_vec())
        .build()
}

/// The stable RPC convention's call duration, when opted in.
fn rpc_duration(meter: &Meter, semconv: SemconvMode, name: &'static str) -> Option<Histogram<f64>> {
    matches!(semconv, SemconvMode::Stable | SemconvMode::Duplicate).then(|| {
        latency(
            meter,
            name,
            "Duration of the RPC (OpenTelemetry RPC semantic conventions).",
        )
    })
}

fn record_rpc(histogram: &Histogram<f64>, method: &'static str, code: Code, seconds: f64) {
    let method = if method == "other" { "_OTHER" } else { method };
    let status = canonical_code_name(code);
    let base = [
        KeyValue::new("rpc.system.name", "grpc"),
        KeyValue::new("rpc.method", method),
        KeyValue::new("rpc.response.status_code", status),
    ];
    if code == Code::Ok {
        histogram.record(seconds, &base);
    } else {
        let [a, b, c] = base;
        histogram.record(seconds, &[a, b, c, KeyValue::new("error.type", status)]);
    }
}

/// The client instruments of one `AmeideClient` (or one
/// `layers::MetricsLayer`).
pub(crate) struct ClientMetrics {
    attempt_started: Counter<u64>,
    attempt_duration: Histogram<f64>,
    attempt_sent: Histogram<u64>,
    attempt_rcvd: Histogram<u64>,
    call_duration: Histogram<f64>,
    rpc_call_duration: Option<Histogram<f64>>,
    target: StringValue,
    /// gRFC A96's per-call retry instruments, when opted in.
    retries: Option<RetryInstruments>,
}

/// gRFC A96's per-call retry instruments (experimental in gRPC, so off by
/// default: [`AmeideClientBuilder::retry_metrics`](crate::AmeideClientBuilder::retry_metrics)).
pub(crate) struct RetryInstruments {
    retries: Histogram<u64>,
    transparent: Histogram<u64>,
    hedges: Histogram<u64>,
    delay: Histogram<f64>,
}

impl RetryInstruments {
    pub(crate) fn new(meter: &Meter) -> Self {
        // A96's recommended boundaries: 1–5, and 10 for transparent retries.
        let count = |name: &'static str, unit: &'static str, description: &'static str| {
            let mut bounds = vec![1.0, 2.0, 3.0, 4.0, 5.0];
            if name.ends_with("transparent_retries") {
                bounds.push(10.0);
            }
            meter
                .u64_histogram(name)
                .with_unit(unit)
                .with_description(description)
                .with_boundaries(bounds)
                .build()
        };
        RetryInstruments {
            retries: count(
                "grpc.client.call.retries",
                "{retry}",
                "Number of retries during the client call (not transparent retries, not hedges).",
            ),
            transparent: count(
                "grpc.client.call.transparent_retries",
                "{transparent_retry}",
                "Number of transparent retries during the client call.",
            ),
            hedges: count(
                "grpc.client.call.hedges",
                "{hedge}",
                "Number of hedges during the client call.",
            ),
            delay: latency(
                meter,
                "grpc.client.call.retry_delay",
                "Total time of delay while there is no active attempt during the client call.",
            ),
        }
    }
}

/// gRFC A94's subchannel metrics, for every subchannel of a client (one
/// per replica of a `static:` or `dns:` target): connects that succeeded
/// and failed, connections lost (`grpc.disconnect_error`: `GOAWAY`, `socket
/// error`, `subchannel shutdown`), and the connections open. Recorded per
/// connect, never per call. Labels: `grpc.target`, `grpc.security_level`.
pub(crate) struct SubchannelMetrics {
    succeeded: Counter<u64>,
    failed: Counter<u64>,
    disconnections: Counter<u64>,
    open: UpDownCounter<i64>,
    target: StringValue,
}

impl SubchannelMetrics {
    pub(crate) fn new(meter: &Meter, target: &str) -> Arc<Self> {
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        Arc::new(SubchannelMetrics {
            succeeded: counter(
                "grpc.subchannel.connection_attempts_succeeded",
                "{attempt}",
                "Number of successful connection attempts.",
            ),
            failed: counter(
                "grpc.subchannel.connection_attempts_failed",
                "{attempt}",
                "Number of failed connection attempts.",
            ),
            disconnections: counter(
                "grpc.subchannel.disconnections",
                "{disconnection}",
                "Number of times the selected subchannel becomes disconnected.",
            ),
            open: meter
                .i64_up_down_counter("grpc.subchannel.open_connections")
                .with_unit("{connection}")
                .with_description("Number of open connections.")
                .build(),
            target: StringValue::from(Arc::<str>::from(target)),
        })
    }

    fn labels(&self, tls: bool) -> [KeyValue; 2] {
        [
            KeyValue::new("grpc.target", self.target.clone()),
            KeyValue::new(
                "grpc.security_level",
                if tls { "privacy_and_integrity" } else { "none" },
            ),
        ]
    }

    /// A connect succeeded: one more connection open.
    pub(crate) fn connected(&self, tls: bool) {
        let labels = self.labels(tls);
        self.succeeded.add(1, &labels);
        self.open.add(1, &labels);
    }

    pub(crate) fn connect_failed(&self, tls: bool) {
        self.failed.add(1, &self.labels(tls));
    }

    /// A counted connection ended, for `why`.
    pub(crate) fn disconnected(&self, tls: bool, why: &'static str) {
        let labels = self.labels(tls);
        self.open.add(-1, &labels);
        let [target, level] = labels;
        self.disconnections.add(
            1,
            &[target, level, KeyValue::new("grpc.disconnect_error", why)],
        );
    }
}

impl std::fmt::Debug for SubchannelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubchannelMetrics")
            .field("target", &self.target.as_str())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetrics")
            .field("target", &self.target.as_str())
            .finish_non_exhaustive()
    }
}

impl ClientMetrics {
    pub(crate) fn new(
        meter: &Meter,
        target: &str,
        semconv: SemconvMode,
        retry_metrics: bool,
    ) -> Arc<Self> {
        Arc::new(ClientMetrics {
            attempt_started: meter
                .u64_counter("grpc.client.attempt.started")
                .with_unit("{attempt}")
                .with_description("Number of client call attempts started.")
                .build(),
            attempt_duration: latency(
                meter,
                "grpc.client.attempt.duration",
                "Time taken to complete a client call attempt.",
            ),
            attempt_sent: size(
                meter,
                "grpc.client.attempt.sent_total_compressed_message_size",
                "Compressed message bytes sent per client call attempt.",
            ),
            attempt_rcvd: size(
                meter,
                "grpc.client.attempt.rcvd_total_compressed_message_size",
                "Compressed message bytes received per call attempt.",
            ),
            call_duration: latency(
                meter,
                "grpc.client.call.duration",
                "Time taken by the gRPC library to complete a client call.",
            ),
            rpc_call_duration: rpc_duration(meter, semconv, "rpc.client.call.duration"),
            target: StringValue::from(Arc::<str>::from(target)),
            retries: retry_metrics.then(|| RetryInstruments::new(meter)),
        })
    }

    fn base(&self, method: &'static str) -> [KeyValue; 2] {
        [
            KeyValue::new("grpc.method", method),
            KeyValue::new("grpc.target", self.target.clone()),
        ]
    }

    pub(crate) fn attempt_started(&self, method: &'static str) {
        self.attempt_started.add(1, &self.base(method));
    }

    pub(crate) fn attempt_ended(
        &self,
        method: &'static str,
        code: Code,
        elapsed: Duration,
        sent: u64,
        rcvd: u64,
    ) {
        let [m, t] = self.base(method);
        let attributes = [
            m,
            t,
            KeyValue::new("grpc.status", canonical_code_name(code)),
        ];
        self.attempt_duration
            .record(elapsed.as_secs_f64(), &attributes);
        self.attempt_sent.record(sent, &attributes);
        self.attempt_rcvd.record(rcvd, &attributes);
    }

    /// The call's end, and with it the end of its committed attempt (begun
    /// `attempt.0` ago, having sent and received these message bytes) when
    /// the metrics layer handed that attempt over: one set of attributes for both.
    pub(crate) fn call_ended(
        &self,
        method: &'static str,
        code: Code,
        elapsed: Duration,
        attempt: Option<(Duration, u64, u64)>,
    ) {
        let [m, t] = self.base(method);
        let attributes = [
            m,
            t,
            KeyValue::new("grpc.status", canonical_code_name(code)),
        ];
        self.call_duration
            .record(elapsed.as_secs_f64(), &attributes);
        if let Some((took, sent, rcvd)) = attempt {
            self.attempt_duration
                .record(took.as_secs_f64(), &attributes);
            self.attempt_sent.record(sent, &attributes);
            self.attempt_rcvd.record(rcvd, &attributes);
        }
        if let Some(rpc) = &self.rpc_call_duration {
            record_rpc(rpc, method, code, elapsed.as_secs_f64());
        }
    }

    /// gRFC A96: the call's retries, transparent retries and hedges, each
    /// recorded only when not zero (A96: "0 is not reported"), and, for a
    /// call that was retried or hedged, the time it had no attempt out
    /// (0 s for most hedged calls); nothing unless opted in.
    pub(crate) fn call_retries(&self, method: &'static str, state: &crate::call::CallState) {
        let Some(instruments) = &self.retries else {
            return;
        };
        let transparent = u64::from(state.transparent_retries());
        // A transparent resend repeats its attempt's number: not counted here.
        let more = u64::from(state.attempts().max(1)) - 1;
        let attributes = self.base(method);
        let (retries, hedges) = if state.hedged() { (0, more) } else { (more, 0) };
        for (histogram, value) in [
            (&instruments.retries, retries),
            (&instruments.transparent, transparent),
            (&instruments.hedges, hedges),
        ] {
            if value > 0 {
                histogram.record(value, &attributes);
            }
        }
        if retries + hedges > 0 {
            instruments
                .delay
                .record(state.retry_delay().as_secs_f64(), &attributes);
        }
    }
}

/// The server instruments of one `server::InboundLayer`.
pub(crate) struct ServerMetrics {
    started: Counter<u64>,
    duration: Histogram<f64>,
    sent: Histogram<u64>,
    rcvd: Histogram<u64>,
    rpc_duration: Option<Histogram<f64>>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl ServerMetrics {
    pub(crate) fn new(meter: &Meter, semconv: SemconvMode) -> Arc<Self> {
        Arc::new(ServerMetrics {
            started: meter
                .u64_counter("grpc.server.call.started")
                .with_unit("{call}")
                .with_description("Number of server calls started.")
                .build(),
            duration: latency(
                meter,
                "grpc.server.call.duration",
                "Time taken to complete a call from the server's perspective.",
            ),
            sent: size(
                meter,
                "grpc.server.call.sent_total_compressed_message_size",
                "Compressed message bytes sent per server call.",
            ),
            rcvd: size(
                meter,
                "grpc.server.call.rcvd_total_compressed_message_size",
                "Compressed message bytes received per server call.",
            ),
            rpc_duration: rpc_duration(meter, semconv, "rpc.server.call.duration"),
        })
    }

    pub(crate) fn call_started(&self, method: &'static str) {
        self.started.add(1, &[KeyValue::new("grpc.method", method)]);
    }

    pub(crate) fn call_ended(
        &self,
        method: &'static str,
        code: Code,
        elapsed: Duration,
        sent: u64,
        rcvd: u64,
    ) {
        let attributes = [
            KeyValue::new("grpc.method", method),
            KeyValue::new("grpc.status", canonical_code_name(code)),
        ];
        self.duration.record(elapsed.as_secs_f64(), &attributes);
        self.sent.record(sent, &attributes);
        self.rcvd.record(rcvd, &attributes);
        if let Some(rpc) = &self.rpc_duration {
            record_rpc(rpc, method, code, elapsed.as_secs_f64());
        }
    }
}

/// What a response body that records metrics sees in one polled frame: a
/// data frame's message bytes go into `bytes`; the stream's end gives its
/// code (the trailers' `grpc-status`, `UNKNOWN` without one; the error's
/// code; `no_trailers` for a stream that stops without trailers).
pub(crate) fn observe_frame(
    polled: &Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>>,
    bytes: &mut MessageBytes,
    no_trailers: Code,
) -> Option<Code> {
    match polled {
        Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
            Some(data) => {
                bytes.feed(data);
                None
            }
            None => frame
                .trailers_ref()
                .map(|t| crate::grpc_headers::grpc_code(t).unwrap_or(Code::Unknown)),
        },
        Poll::Ready(Some(Err(status))) => Some(status.code()),
        Poll::Ready(None) => Some(no_trailers),
        Poll::Pending => None,
    }
}

/// Counts the message bytes of a gRPC-framed stream: every 5-byte prefix is
/// read (its length says how much message follows) and left out, however
/// the stream is split into chunks. Saturates; never panics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MessageBytes {
    head: [u8; 5],
    filled: u8,
    left: u64,
    total: u64,
}

impl MessageBytes {
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left).map_or(data.len(), |left| left.min(data.len()));
                self.left -= n as u64;
                self.total = self.total.saturating_add(n as u64);
                data = &data[n..];
                continue;
            }
            let at = usize::from(self.filled);
            let n = (5 - at).min(data.len());
            self.head[at..at + n].copy_from_slice(&data[..n]);
            self.filled += n as u8;
            data = &data[n..];
            if self.filled < 5 {
                break;
            }
            self.filled = 0;
            let [_, a, b, c, d] = self.head;
            self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

pin_project! {
    /// A body passed on unchanged, its gRPC message bytes counted (into a
    /// shared counter) as they go by. Public as `server::InboundBody`: the
    /// request body a service behind `server::InboundLayer` receives, counted
    /// for `grpc.server.call.rcvd_total_compressed_message_size`; the client's
    /// metrics layer counts a streamed request with it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::server::{InboundBody, InboundLayer};
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, ServiceExt};
    ///
    /// // A service behind the layer reads the caller's bytes as they came.
    /// let echo = tower::service_fn(|request: http::Request<InboundBody<http_body_util::Full<bytes::Bytes>>>| async move {
    ///     let bytes = request.into_body().collect().await.unwrap().to_bytes();
    ///     assert_eq!(&bytes[..], b"\0\0\0\0\x02hi");
    ///     Ok::<_, std::convert::Infallible>(tonic::Status::ok("").into_http::<tonic::body::Body>())
    /// });
    /// let service = InboundLayer::new().layer(echo);
    /// let request = http::Request::builder()
    ///     .uri("/ameide_core_proto.graph.v1.GraphService/GetRepository")
    ///     .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x02hi")))
    ///     .unwrap();
    /// let response = service.oneshot(request).await.unwrap();
    /// assert_eq!(response.headers()["grpc-status"], "0");
    /// # }
    /// ```
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        bytes: MessageBytes,
        out: Arc<AtomicU64>,
    }
}

impl<B> std::fmt::Debug for CountedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedBody")
            .field("message_bytes", &self.bytes.total())
            .finish_non_exhaustive()
    }
}

impl<B> CountedBody<B> {
    pub(crate) fn new(inner: B, out: Arc<AtomicU64>) -> Self {
        CountedBody {
            inner,
            bytes: MessageBytes::default(),
            out,
        }
    }
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.feed(data);
            this.out.store(this.bytes.total(), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn message_bytes_leave_the_framing_out_however_it_is_split() {
        let mut wire = frame(b"hello");
        wire.extend(frame(b""));
        wire.extend(frame(&[7; 300]));
        for split in 0..wire.len() {
            let mut count = MessageBytes::default();
            count.feed(&wire[..split]);
            count.feed(&wire[split..]);
            assert_eq!(count.total(), 305, "split at {split}");
        }
        let mut byte_by_byte = MessageBytes::default();
        for b in &wire {
            byte_by_byte.feed(std::slice::from_ref(b));
        }
        assert_eq!(byte_by_byte.total(), 305);
    }

    #[test]
    fn methods_outside_the_bundle_are_other() {
        let method = |path| grpc_method(ameide_proto::method(path));
        assert_eq!(
            method("/ameide_core_proto.graph.v1.GraphService/ListRepositories"),
            "ameide_core_proto.graph.v1.GraphService/ListRepositories"
        );
        assert_eq!(method("/evil.Service/Random123"), "other");
        assert_eq!(method(""), "other");
    }
}
