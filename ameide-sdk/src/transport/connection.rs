//! One HTTP/2 connection to the target, made on first use and made again
//! after it closes, on hyper's client connection API.
//!
//! Why not tonic's `Channel`: the retry rules of contract §8 need to know
//! whether a failed request was ever written, and hyper answers that only to
//! `SendRequest::try_send_request`, which hands an unsent request back.
//! Here that answer decides:
//!
//! | What happened | What the caller sees |
//! |---|---|
//! | connect failed (DNS, TCP, TLS, ALPN) | the request, still in hand, waits for the next connect (shared backoff: 100 ms × 1.6ⁿ up to 2 s, ±20 %) and goes again, until the call's deadline; then `UNAVAILABLE` naming the cause ([`ConnectError`]) |
//! | the connection closed before the request was written (a deploy, a proxy reload) | the request, handed back by hyper, goes again at once on a fresh connection (at most [`MAX_UNWRITTEN_RESENDS`] times), then [`Unwritten`] |
//! | anything after it was written | hyper's or h2's error, for the layers above to classify (`REFUSED_STREAM`, GOAWAY, reset, lost connection) |
//!
//! Resends carry `grpc-transparent-retry-attempts`. None of them is an
//! attempt of the retry policy or spends a throttle token: they happen below
//! the retry layer, on a request that never left the process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::wire_types::{BoxError, HttpRequest, HttpResponse};

/// Resends of a request hyper handed back unwritten, per call.
pub(crate) const MAX_UNWRITTEN_RESENDS: u32 = 4;
/// Connect attempts per call when the call has no deadline (layers used alone).
const MAX_CONNECTS_WITHOUT_DEADLINE: u32 = 3;
const CONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The header that counts a request's transparent resends.
pub(crate) const TRANSPARENT_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("grpc-transparent-retry-attempts");

/// Where and how to connect.
pub(crate) struct Target {
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) user_agent: HeaderValue,
}

/// Why a connection could not be made. The request was never sent.
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub(crate) message: String,
    /// Trying again cannot help before the configuration or the server's
    /// certificate changes (a certificate rejected, ALPN refused): the call
    /// fails at once instead of waiting out its deadline.
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

/// State shared by every clone: the live connection, and the last failure.
struct State {
    sender: Option<SendRequest<tonic::body::Body>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// One connection to the target, shared by every call through it.
#[derive(Clone)]
pub(crate) struct Connection {
    target: Arc<Target>,
    state: Arc<Mutex<State>>,
    /// Held while connecting, so concurrent callers share one connect.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl Connection {
    pub(crate) fn new(target: Arc<Target>) -> Self {
        Connection {
            target,
            state: Arc::new(Mutex::new(State {
                sender: None,
                failures: 0,
                retry_at: None,
                last_error: None,
            })),
            connecting: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_sender(&self) -> Option<SendRequest<tonic::body::Body>> {
        let state = self.lock();
        state.sender.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Drops the current connection when it is closed, or when `going_away`
    /// (it sent GOAWAY: it takes no new streams, though it lives on until its
    /// streams finish). The next call connects afresh.
    fn forget(&self, going_away: bool) {
        let mut state = self.lock();
        if going_away || state.sender.as_ref().is_some_and(SendRequest::is_closed) {
            state.sender = None;
        }
    }

    /// A live sender, connecting (once for all waiters) when there is none.
    /// Fails with the connect error when the next connect would start at or
    /// after `deadline`.
    async fn sender(
        &self,
        deadline: Option<Instant>,
    ) -> Result<SendRequest<tonic::body::Body>, ConnectError> {
        if let Some(sender) = self.live_sender() {
            return Ok(sender);
        }
        // The connect path (DNS, TCP, TLS, handshake) is a large state
        // machine: boxed, so the per-call future that holds this one stays
        // small (it is moved to the heap on every call).
        Box::pin(self.connect_shared(deadline)).await
    }

    /// The slow path of [`sender`](Self::sender): one connect for all waiters.
    async fn connect_shared(
        &self,
        deadline: Option<Instant>,
    ) -> Result<SendRequest<tonic::body::Body>, ConnectError> {
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.live_sender() {
            return Ok(sender);
        }
        let (retry_at, last_error) = {
            let state = self.lock();
            (state.retry_at, state.last_error.clone())
        };
        if let Some(at) = retry_at {
            if deadline.is_some_and(|d| at >= d) {
                return Err(ConnectError {
                    message: last_error.unwrap_or_else(|| "cannot connect".to_owned()),
                    permanent: false,
                });
            }
            tokio::time::sleep_until(at).await;
        }
        match connect(&self.target).await {
            Ok(sender) => {
                let mut state = self.lock();
                state.sender = Some(sender.clone());
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                Ok(sender)
            }
            Err(error) => {
                let mut state = self.lock();
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some(crate::time::add(
                    Instant::now(),
                    connect_backoff(state.failures),
                ));
                state.last_error = Some(error.message.clone());
                Err(error)
            }
        }
    }

    /// Sends `request`, connecting first if needed; resends it while it is
    /// provably unsent (see the module table).
    ///
    /// An `async` block over the arguments rather than an `async fn`, whose
    /// future would keep the request twice (it is boxed on every call).
    pub(crate) fn send(
        self,
        mut request: HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, BoxError>> + Send + 'static {
        let origin = set_origin(&mut request, &self.target);
        async move {
            origin?;
            let deadline = request
                .extensions()
                .get::<crate::call::CallState>()
                .and_then(crate::call::CallState::deadline)
                .or_else(|| {
                    request
                        .extensions()
                        .get::<crate::call::Deadline>()
                        .map(|d| d.0)
                });
            let mut connects = 0u32;
            let mut resends = 0u32;
            loop {
                let mut sender = match self.sender(deadline).await {
                    Ok(sender) => sender,
                    Err(error) => {
                        connects = connects.saturating_add(1);
                        let give_up = match deadline {
                            Some(d) => Instant::now() >= d,
                            None => connects >= MAX_CONNECTS_WITHOUT_DEADLINE,
                        };
                        // The next `sender` call fails at once when its connect
                        // would start past the deadline.
                        if give_up
                            || error.permanent
                            || deadline.is_some_and(|d| self.next_connect_at() >= Some(d))
                        {
                            return Err(Box::new(error) as BoxError);
                        }
                        resends = resends.saturating_add(1);
                        mark_resend(&mut request, resends);
                        continue;
                    }
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(response.map(tonic::body::Body::new)),
                    Err(mut failed) => {
                        let handed_back = failed.take_message();
                        self.forget(is_go_away(failed.error()));
                        match handed_back {
                            Some(unsent) if resends < MAX_UNWRITTEN_RESENDS => {
                                ::tracing::debug!(
                                    error = %failed.error(),
                                    "request not written before its connection closed: sending it on a fresh connection"
                                );
                                request = unsent;
                                resends = resends.saturating_add(1);
                                mark_resend(&mut request, resends);
                            }
                            Some(_) => {
                                return Err(Box::new(Unwritten {
                                    source: failed.into_error(),
                                }));
                            }
                            None => return Err(Box::new(failed.into_error()) as BoxError),
                        }
                    }
                }
            }
        }
    }

    fn next_connect_at(&self) -> Option<Instant> {
        self.lock().retry_at
    }
}

/// Whether an HTTP/2 GOAWAY from the peer is behind `error`.
fn is_go_away(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = source {
        if err
            .downcast_ref::<h2::Error>()
            .is_some_and(h2::Error::is_go_away)
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn mark_resend(request: &mut HttpRequest, resends: u32) {
    request
        .headers_mut()
        .insert(TRANSPARENT_ATTEMPTS, HeaderValue::from(resends));
}

/// `100 ms × 1.6^(failures−1)`, at most 2 s, times a factor in [0.8, 1.2].
fn connect_backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16) as i32;
    let base = CONNECT_BACKOFF_INITIAL.as_secs_f64() * 1.6f64.powi(exponent);
    let capped = base.min(CONNECT_BACKOFF_MAX.as_secs_f64());
    crate::time::secs_f64(capped * (0.8 + 0.4 * fastrand::f64()))
}

/// Gives a path-only request (as tonic's generated clients make them) the
/// target's scheme and authority, and the SDK's user agent.
fn set_origin(request: &mut HttpRequest, target: &Target) -> Result<(), BoxError> {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = http::Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path)
        .build()?;
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .entry(http::header::USER_AGENT)
        .or_insert_with(|| target.user_agent.clone());
    Ok(())
}

/// Makes a connection: resolve, TCP (first address that answers), TLS with
/// ALPN `h2` for `https`, the HTTP/2 handshake; all within the connect timeout.
async fn connect(target: &Target) -> Result<SendRequest<tonic::body::Body>, ConnectError> {
    let where_ = format!("{}:{}", target.host, target.port);
    let fail = |what: String| ConnectError {
        message: format!("cannot connect to {where_}: {what}"),
        permanent: false,
    };
    let refuse = |what: String| ConnectError {
        message: format!("cannot connect to {where_}: {what}"),
        permanent: true,
    };
    let work = async {
        let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| fail(format!("cannot resolve the host name: {e}")))?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(stream), _) => stream,
            (None, Some(e)) => return Err(fail(format!("TCP connect failed: {e}"))),
            (None, None) => return Err(fail("the host name resolved to no address".to_owned())),
        };
        let _ = stream.set_nodelay(true);
        match &target.tls {
            None => handshake(target, TokioIo::new(stream)).await.map_err(fail),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                    let why = format!("TLS handshake failed: {}", tls_cause(&e));
                    // A rustls verdict (certificate, alert, protocol) stands;
                    // a connection cut mid-handshake may not.
                    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
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
                handshake(target, TokioIo::new(tls)).await.map_err(fail)
            }
        }
    };
    match tokio::time::timeout(target.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(fail(format!(
            "no connection within the connect timeout ({:?})",
            target.connect_timeout
        ))),
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

async fn handshake<T>(target: &Target, io: T) -> Result<SendRequest<tonic::body::Body>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(BoxingExecutor);
    builder
        .timer(TokioTimer::new())
        .keep_alive_while_idle(false)
        .keep_alive_timeout(target.keepalive_timeout);
    if let Some(interval) = target.keepalive_interval {
        builder.keep_alive_interval(interval);
    }
    let (sender, connection) = builder
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            ::tracing::debug!(%error, "HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = connect_backoff(1);
            assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
            assert!(connect_backoff(u32::MAX) <= Duration::from_millis(2400));
        }
    }
}
