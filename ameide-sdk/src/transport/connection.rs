//! One HTTP/2 connection of the subchannel (`subchannel.rs`):
//! made by [`connect`] (resolve, TCP, TLS with ALPN `h2`, the HTTP/2
//! handshake, then the server's first SETTINGS, all within the connect
//! timeout), on hyper's client connection API, with the bytes hyper reads
//! watched by a [`Tap`](super::tap::Tap).
//!
//! Why not tonic's `Channel`: the retry rules of contract §8 need to know
//! whether a failed request was ever written, and hyper answers that only to
//! `SendRequest::try_send_request`, which hands an unsent request back.
//! The subchannel turns that answer into transparent resends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::tap::{ConnEvents, Tap, Wake};

/// Resends of a request hyper handed back unwritten, per call.
pub(crate) const MAX_UNWRITTEN_RESENDS: u32 = 4;

/// The header that counts a request's transparent resends.
pub(crate) const TRANSPARENT_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("grpc-transparent-retry-attempts");

/// Where and how to connect: everything [`TransportOptions`](super::TransportOptions)
/// says, checked, for one target.
pub(crate) struct Target {
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// A `unix:` target's socket: connected instead of `host:port`.
    pub(crate) unix: Option<std::path::PathBuf>,
    /// The HTTP CONNECT proxy `https` connections go through, if any.
    pub(crate) proxy: Option<super::proxy::ProxyRoute>,
    pub(crate) tls: Option<(
        Arc<super::tls::TlsMaterial>,
        rustls_pki_types::ServerName<'static>,
    )>,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) keepalive_without_calls: bool,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    pub(crate) max_frame_size: u32,
    pub(crate) max_header_list_size: u32,
    pub(crate) user_agent: HeaderValue,
    /// gRFC A94's subchannel metrics of the client, if it records metrics.
    pub(crate) metrics: Option<Arc<crate::telemetry::metrics::SubchannelMetrics>>,
}

/// Why a connection could not be made. The request was never sent.
#[derive(Debug, Clone)]
pub(crate) struct ConnectError {
    pub(crate) message: String,
    /// Trying again cannot help before the configuration or the server's
    /// certificate changes (a certificate rejected, a name that does not
    /// match, ALPN refused): the calls waiting fail at once instead of
    /// waiting out their deadline, and no connect is tried before the backoff.
    pub(crate) permanent: bool,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

/// The connection closed before the request was written, more often than
/// [`MAX_UNWRITTEN_RESENDS`] allows. The request was never sent.
#[derive(Debug)]
pub(crate) struct Unwritten {
    pub(crate) source: hyper::Error,
}

impl std::fmt::Display for Unwritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the connection closed before the request was written ({} fresh connections tried): {}",
            MAX_UNWRITTEN_RESENDS + 1,
            self.source
        )
    }
}

impl std::error::Error for Unwritten {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One HTTP/2 connection: its sender, the streams the SDK has open on it,
/// and what the server said about it.
pub(crate) struct Conn {
    pub(crate) id: u64,
    /// The way into hyper's connection task, until that task ends (see [`Dispatch`]).
    dispatch: Arc<Dispatch>,
    /// Streams opened on it and not yet over (see [`StreamGuard`]).
    open: AtomicUsize,
    pub(crate) events: Arc<ConnEvents>,
    /// The HTTP/2 keepalive interval it was made with.
    pub(crate) keepalive: Option<Duration>,
}

/// hyper's request queue into one connection's task, held so that it can
/// be let go when the task ends.
///
/// Why: hyper's queue is a tokio unbounded channel. When the connection's
/// task ends (GOAWAY, or the connection closed) it drops the receiving end,
/// which hands every queued request back unwritten, except one whose
/// sender was between reserving its place and writing it at that instant:
/// that request stays in the channel, its caller waiting for an answer, until
/// the last sender is gone (tokio frees the channel's leftovers then). A
/// sender kept for the connection's life made that wait last until the
/// call's deadline (2 calls of 3,805 through nginx reloads, on a loaded CI
/// machine). So the connection's task drops this slot's sender when it ends,
/// and each call holds its own clone only while queueing: the last sender
/// then goes with the racing call, and its request comes back unwritten and
/// is resent on a fresh connection.
pub(crate) struct Dispatch {
    sender: std::sync::Mutex<Option<SendRequest<tonic::body::Body>>>,
    closed: AtomicBool,
}

impl Dispatch {
    fn new(sender: SendRequest<tonic::body::Body>) -> Self {
        Dispatch {
            sender: std::sync::Mutex::new(Some(sender)),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<tonic::body::Body>>> {
        self.sender.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's task stopped taking requests (hyper says so before
    /// the task has ended) or has ended.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn sender(&self) -> Option<SendRequest<tonic::body::Body>> {
        let slot = self.lock();
        match slot.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => {
                self.closed.store(true, Ordering::Release);
                None
            }
        }
    }

    /// The connection's task has ended: no request can be queued any more.
    fn release(&self) {
        self.closed.store(true, Ordering::Release);
        let sender = self.lock().take();
        drop(sender);
    }
}

impl Conn {
    /// Takes new streams: not closed, no GOAWAY.
    pub(crate) fn usable(&self) -> bool {
        !self.events.going_away() && !self.events.closed() && !self.dispatch.is_closed()
    }

    /// A sender for one request, or `None` once the connection's task has
    /// ended. The caller drops it as soon as its request is queued (see
    /// [`Dispatch`]).
    pub(crate) fn sender(&self) -> Option<SendRequest<tonic::body::Body>> {
        self.dispatch.sender()
    }

    /// Counts one more open stream when the server's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` leaves room for it. Called under the
    /// subchannel's lock, so the count never passes the limit.
    ///
    /// `SeqCst`, paired with [`StreamGuard`]'s drop: a waiter counts itself
    /// among the waiters before it looks here, and a guard lowers the count
    /// before it looks at the waiters, so either the waiter sees the room or
    /// the guard sees the waiter and wakes it.
    pub(crate) fn try_open(&self) -> bool {
        let max = usize::try_from(self.events.max_streams()).unwrap_or(usize::MAX);
        if self.open.load(Ordering::SeqCst) >= max {
            return false;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Streams open on it now (for the least-loaded balancer).
    pub(crate) fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One stream counted open on its connection until dropped: held by the
/// send future, then by the response body until it ends.
pub(crate) struct StreamGuard {
    pub(crate) conn: Arc<Conn>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // SeqCst: see `Conn::try_open`.
        self.conn.open.fetch_sub(1, Ordering::SeqCst);
        self.conn.events.wake().room_freed();
    }
}

pin_project_lite::pin_project! {
    /// A response body that closes its stream's count when it ends.
    pub(crate) struct CountedBody {
        #[pin]
        inner: hyper::body::Incoming,
        guard: Option<StreamGuard>,
        // Where the call's outcome goes when the trailers (or the end)
        // come: outlier ejection's count (dropped unread before its
        // deadline, nothing counts; at or past it, a failure).
        outcome: super::outlier::Pending,
    }
}

impl CountedBody {
    pub(crate) fn new(
        inner: hyper::body::Incoming,
        guard: StreamGuard,
        outcome: super::outlier::Pending,
    ) -> Self {
        CountedBody {
            inner,
            guard: Some(guard),
            outcome,
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.outcome.is_open() {
            let outcome = match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    frame.trailers_ref().map(super::outlier::status_is_ok)
                }
                // Lost, or ended without a status.
                Poll::Ready(Some(Err(_)) | None) => Some(false),
                Poll::Pending => None,
            };
            if let Some(ok) = outcome {
                this.outcome.record(ok);
            }
        }
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard.take();
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

/// Makes a connection: resolve, TCP (first address that answers), TLS with
/// ALPN `h2` for `https`, the HTTP/2 handshake, and the server's first
/// SETTINGS frame (a server that accepts and closes has not connected); all
/// within the connect timeout.
pub(crate) async fn connect(
    target: &Target,
    id: u64,
    keepalive: Option<Duration>,
    wake: Arc<Wake>,
) -> Result<Conn, ConnectError> {
    let where_ = match &target.unix {
        Some(path) => format!("unix:{}", path.display()),
        None => format!("{}:{}", target.host, target.port),
    };
    let fail = |what: String| ConnectError {
        message: format!("cannot connect to {where_}: {what}"),
        permanent: false,
    };
    let refuse = |what: String| ConnectError {
        message: format!("cannot connect to {where_}: {what}"),
        permanent: true,
    };
    let events = Arc::new(ConnEvents::new(wake));
    // Connected once the server's first SETTINGS frame has come.
    let settled = async |dispatch: Arc<Dispatch>, events: &ConnEvents| {
        if !events.settings().await {
            if events.http1() {
                // The endpoint speaks HTTP/1: the same answer comes next time.
                return Err(refuse(
                    "the server answered in HTTP/1, not HTTP/2: this endpoint does not speak \
                     gRPC without TLS (h2c); check the port, or use https:// for a TLS endpoint"
                        .to_owned(),
                ));
            }
            return Err(fail(
                "the server closed the connection before its HTTP/2 SETTINGS".to_owned(),
            ));
        }
        Ok(dispatch)
    };
    let work = async {
        #[cfg(not(unix))]
        if target.unix.is_some() {
            return Err(refuse("Unix sockets need a Unix system".to_owned()));
        }
        #[cfg(unix)]
        if let Some(path) = &target.unix {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| fail(format!("cannot connect to the Unix socket: {e}")))?;
            let dispatch = handshake(target, keepalive, Tap::new(stream, events.clone()), &events)
                .await
                .map_err(fail)?;
            return settled(dispatch, &events).await;
        }
        // Through a proxy, the TCP connection is to the proxy, and the
        // tunnel to the target.
        let (dial_host, dial_port) = match &target.proxy {
            Some(proxy) => (proxy.host.as_str(), proxy.port),
            None => (target.host.as_str(), target.port),
        };
        let addrs = tokio::net::lookup_host((dial_host, dial_port))
            .await
            .map_err(|e| fail(format!("cannot resolve the host name {dial_host}: {e}")))?;
        let (stream, last) = happy_eyeballs(addrs.collect()).await;
        let mut stream = match (stream, last, &target.proxy) {
            (Some(stream), _, _) => stream,
            (None, Some(e), Some(proxy)) => {
                return Err(fail(format!(
                    "TCP connect to the proxy {proxy} failed: {e}"
                )));
            }
            (None, Some(e), None) => return Err(fail(format!("TCP connect failed: {e}"))),
            (None, None, _) => {
                return Err(fail(format!("{dial_host} resolved to no address")));
            }
        };
        if let Some(proxy) = &target.proxy {
            super::proxy::tunnel(&mut stream, proxy, &target.host, target.port)
                .await
                .map_err(|e| {
                    if e.permanent {
                        refuse(e.message)
                    } else {
                        fail(e.message)
                    }
                })?;
        }
        let _ = stream.set_nodelay(true);
        if let Some(idle) = target.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle);
            // Best effort: a socket that refuses it still carries gRPC.
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        }
        let dispatch = match &target.tls {
            None => handshake(target, keepalive, Tap::new(stream, events.clone()), &events)
                .await
                .map_err(fail)?,
            Some((material, name)) => {
                let connector = tokio_rustls::TlsConnector::from(material.config());
                let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                    let why = format!("TLS handshake failed: {}", tls_cause(&e));
                    let verdict = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                    if verdict.is_some_and(tls_error_is_permanent) {
                        refuse(why)
                    } else {
                        fail(why)
                    }
                })?;
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                if alpn.as_deref() != Some(b"h2") {
                    return Err(refuse(format!(
                        "the server did not agree to HTTP/2 in TLS ALPN (it chose {}); gRPC needs h2",
                        alpn.map_or_else(
                            || "nothing".to_owned(),
                            |p| format!("{:?}", String::from_utf8_lossy(&p))
                        )
                    )));
                }
                handshake(target, keepalive, Tap::new(tls, events.clone()), &events)
                    .await
                    .map_err(fail)?
            }
        };
        settled(dispatch, &events).await
    };
    match tokio::time::timeout(target.connect_timeout, work).await {
        Ok(Ok(dispatch)) => Ok(Conn {
            id,
            dispatch,
            open: AtomicUsize::new(0),
            events,
            keepalive,
        }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(fail(format!(
            "no connection within the connect timeout ({:?})",
            target.connect_timeout
        ))),
    }
}

/// gRFC A61's and RFC 8305's stagger between two addresses' connects (a
/// plain endpoint's TCP connects, and `pick_first`'s replicas).
pub(crate) const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// Orders the addresses of the two families in turn, starting with the
/// family of the first (RFC 8305's order, which `pick_first`'s Happy
/// Eyeballs walks; gRFC A61), each family in the answer's order.
pub(crate) fn interleave_families(addrs: &mut Vec<SocketAddr>) {
    let Some(first) = addrs.first() else { return };
    let first_v6 = first.is_ipv6();
    let (lead, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv6() == first_v6);
    if other.is_empty() {
        return;
    }
    addrs.clear();
    let (mut lead, mut other) = (lead.into_iter(), other.into_iter());
    loop {
        match (lead.next(), other.next()) {
            (None, None) => break,
            (a, b) => addrs.extend(a.into_iter().chain(b)),
        }
    }
}

/// TCP to the first of `addrs` that answers, Happy Eyeballs style (RFC 8305,
/// as grpc-go's dialer): in [`interleave_families`]' order; the next
/// address's connect starts 250 ms after the one before or at once when
/// it fails; the first to connect wins and the others are
/// dropped. A black-holed first address costs 250 ms, not the connect
/// timeout. Returns the stream, or the last error (`None`: no address).
async fn happy_eyeballs(mut addrs: Vec<SocketAddr>) -> (Option<TcpStream>, Option<std::io::Error>) {
    interleave_families(&mut addrs);
    let mut next = addrs.into_iter();
    // Dropped on return: the losing connects are aborted.
    let mut racing = tokio::task::JoinSet::new();
    let mut last = None;
    loop {
        let started = match next.next() {
            Some(addr) => {
                racing.spawn(TcpStream::connect(addr));
                true
            }
            None => false,
        };
        if racing.is_empty() {
            return (None, last);
        }
        let stagger = tokio::time::sleep(HAPPY_EYEBALLS_DELAY);
        tokio::pin!(stagger);
        // One outcome, or the stagger: either starts the next address.
        tokio::select! {
            joined = racing.join_next() => match joined {
                Some(Ok(Ok(stream))) => return (Some(stream), last),
                Some(Ok(Err(e))) => last = Some(e),
                Some(Err(_)) | None => {}
            },
            () = &mut stagger, if started => {}
        }
    }
}

/// Whether a TLS failure stands until the configuration or the server's
/// certificate changes: the certificate (ours or theirs), the name, ALPN.
/// Anything else (a protocol error, an alert of one bad replica, a cut
/// connection) may not happen on the next connect.
pub(crate) fn tls_error_is_permanent(error: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match error {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::NoApplicationProtocol => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::NoApplicationProtocol
                | A::UnrecognisedName
        ),
        _ => false,
    }
}

/// The rustls reason inside an I/O error, which is what names the cause
/// (unknown CA, wrong host name, expired, no client certificate accepted).
fn tls_cause(error: &std::io::Error) -> String {
    match error.get_ref() {
        Some(inner) => inner.to_string(),
        None => error.to_string(),
    }
}

/// The executor hyper spawns its per-stream futures on.
///
/// hyper hands every spawned future over as one enum whose largest variant
/// drives the whole connection (kilobytes). Spawned as it is, each per-call
/// future (two per call: the request body's pipe and the response's
/// hand-over) is copied several times on its way into a task cell sized for
/// that variant. Boxed first, it is copied once, and the task holds a pointer.
#[derive(Clone, Copy)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = F::Output> + Send>> =
            Box::pin(future);
        tokio::spawn(boxed);
    }
}

/// The HTTP/2 handshake with the target's settings; spawns the connection's
/// task, which marks `events` closed when it ends.
async fn handshake<T>(
    target: &Target,
    keepalive: Option<Duration>,
    io: Tap<T>,
    events: &Arc<ConnEvents>,
) -> Result<Arc<Dispatch>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(BoxingExecutor);
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(target.stream_window)
        .initial_connection_window_size(target.connection_window)
        .max_frame_size(target.max_frame_size)
        .max_header_list_size(target.max_header_list_size)
        .keep_alive_while_idle(target.keepalive_without_calls)
        .keep_alive_timeout(target.keepalive_timeout)
        .keep_alive_interval(keepalive);
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let dispatch = Arc::new(Dispatch::new(sender));
    let events = events.clone();
    // Weak: the connection's last sender goes with its last `Conn` (a
    // closed or dropped client, a connect that timed out), which is what
    // ends hyper's connection when the server does not.
    let ended = Arc::downgrade(&dispatch);
    let metrics = target.metrics.clone();
    let tls = target.tls.is_some();
    tokio::spawn(async move {
        let failed = connection.await.err();
        if let Some(error) = &failed {
            ::tracing::debug!(%error, "HTTP/2 connection ended");
        }
        if let Some(metrics) = metrics
            && events.end_count()
        {
            let why = if events.going_away() {
                "GOAWAY"
            } else if failed.is_some() {
                "socket error"
            } else {
                "subchannel shutdown"
            };
            metrics.disconnected(tls, why);
        }
        // Before the waiters are woken: none of them may take a sender now.
        if let Some(dispatch) = ended.upgrade() {
            dispatch.release();
        }
        events.mark_closed();
    });
    Ok(dispatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_interleave_from_the_first_address_family() {
        let parse = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        let shown = |addrs: &[SocketAddr]| -> Vec<String> {
            addrs.iter().map(ToString::to_string).collect()
        };
        let mut addrs = parse(&["10.0.0.2:1", "10.0.0.1:1", "[::1]:1", "10.0.0.3:1"]);
        interleave_families(&mut addrs);
        assert_eq!(
            shown(&addrs),
            ["10.0.0.2:1", "[::1]:1", "10.0.0.1:1", "10.0.0.3:1"]
        );
        let mut addrs = parse(&["[::2]:1", "[::1]:1", "10.0.0.1:1"]);
        interleave_families(&mut addrs);
        assert_eq!(shown(&addrs), ["[::2]:1", "10.0.0.1:1", "[::1]:1"]);
        let mut one_family = parse(&["10.0.0.2:1", "10.0.0.1:1"]);
        interleave_families(&mut one_family);
        assert_eq!(shown(&one_family), ["10.0.0.2:1", "10.0.0.1:1"]);
        interleave_families(&mut Vec::new());
    }

    /// A TCP black hole on loopback: a listener whose accept queue is full
    /// (backlog 0, one connection pending), so the kernel drops further
    /// SYNs and a connect to it hangs. `None` when this kernel answers anyway.
    async fn black_hole() -> Option<(socket2::Socket, Vec<TcpStream>, std::net::SocketAddr)> {
        use socket2::{Domain, Socket, Type};
        let hole = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
        hole.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
            .ok()?;
        hole.listen(0).ok()?;
        let addr = hole.local_addr().ok()?.as_socket()?;
        let mut pending = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => pending.push(stream),
                _ => return Some((hole, pending, addr)),
            }
        }
        None
    }

    /// Happy Eyeballs: a black-holed first address costs the 250 ms
    /// stagger, then the second address's connect wins.
    #[tokio::test]
    async fn happy_eyeballs_passes_a_black_holed_first_address() {
        let Some((_hole, _pending, hole)) = black_hole().await else {
            eprintln!("SKIPPED: this kernel completes connects to a full accept queue");
            return;
        };
        let good = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let started = tokio::time::Instant::now();
        let (stream, _) = happy_eyeballs(vec![hole, good_addr]).await;
        let took = started.elapsed();
        let stream = stream.expect("the second address connects");
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
        assert!(took >= HAPPY_EYEBALLS_DELAY, "staggered: {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "not the connect timeout: {took:?}"
        );
        // A refused first address starts the next at once.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
            l.local_addr().unwrap()
        };
        let started = tokio::time::Instant::now();
        let (stream, _) = happy_eyeballs(vec![refused, good_addr]).await;
        assert!(stream.is_some());
        assert!(
            started.elapsed() < HAPPY_EYEBALLS_DELAY,
            "{:?}",
            started.elapsed()
        );
        let (none, error) = happy_eyeballs(vec![refused]).await;
        assert!(none.is_none() && error.is_some());
        assert!(happy_eyeballs(Vec::new()).await.0.is_none());
    }

    #[test]
    fn tls_verdicts_about_certificates_names_and_alpn_stand() {
        use rustls::{AlertDescription, CertificateError, Error};
        assert!(tls_error_is_permanent(&Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )));
        assert!(tls_error_is_permanent(&Error::AlertReceived(
            AlertDescription::UnknownCA
        )));
        assert!(tls_error_is_permanent(&Error::NoApplicationProtocol));
        // One replica's bad day is not a verdict on the target.
        assert!(!tls_error_is_permanent(&Error::AlertReceived(
            AlertDescription::InternalError
        )));
        assert!(!tls_error_is_permanent(&Error::AlertReceived(
            AlertDescription::HandshakeFailure
        )));
        assert!(!tls_error_is_permanent(&Error::DecryptError));
    }
}
