//! The scripted, recording gRPC server behind [`MockServer`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint, Uri};

/// What the server does for one attempt.
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::testkit::Reply;
/// let unary = Reply::ok();
/// let failure = Reply::status(tonic::Status::unavailable("down")).after(Duration::from_millis(50));
/// let stream = Reply::messages(vec![bytes::Bytes::new(); 3]).then_status(tonic::Status::internal("cut"));
/// # let _ = (unary, failure, stream);
/// ```
#[derive(Debug, Clone)]
pub struct Reply {
    delay: Duration,
    messages: Vec<Bytes>,
    message_interval: Duration,
    status: Option<Status>,
    trailers_only: bool,
    headers: HeaderMap,
    /// A response that is not gRPC's: this HTTP status and body, as written.
    http: Option<(http::StatusCode, Bytes)>,
    /// Trailers after an [`http`](Self::http) body.
    http_trailers: Option<HeaderMap>,
    /// Messages sent compressed with this encoding.
    compression: Option<CompressionEncoding>,
    /// Wait before the trailers of a message stream.
    trailers_delay: Duration,
}

impl Reply {
    /// A response that is not gRPC's, as a proxy or a misconfigured route
    /// sends it: HTTP `status` (an invalid one is 500), no `content-type`
    /// unless [`header`](Self::header) adds one, an empty body unless
    /// [`body`](Self::body) gives one, no trailers. How a client turns it
    /// into a status is the test's subject (contract §8).
    ///
    /// Only the delay ([`after`](Self::after)), headers, body and trailers
    /// apply to it; messages and statuses are gRPC's.
    ///
    /// ```
    /// use ameide_sdk::testkit::Reply;
    /// let page = Reply::http(502)
    ///     .header("content-type", "text/html")
    ///     .body("<html><body><h1>502 Bad Gateway</h1></body></html>");
    /// assert!(format!("{page:?}").contains("502"));
    /// assert!(format!("{:?}", Reply::http(1000)).contains("500"), "an invalid status is 500");
    /// ```
    pub fn http(status: u16) -> Self {
        let status =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        Reply {
            http: Some((status, Bytes::new())),
            ..Self::messages(Vec::new())
        }
    }

    /// The body of an [`http`](Self::http) reply, sent as given (no gRPC
    /// framing); ignored by gRPC replies.
    ///
    /// ```
    /// use ameide_sdk::testkit::Reply;
    /// let json = Reply::http(200).header("content-type", "application/json").body("{}");
    /// assert!(format!("{json:?}").contains("b\"{}\""));
    /// ```
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        if let Some((_, bytes)) = self.http.as_mut() {
            *bytes = body.into();
        }
        self
    }

    /// A trailers frame after an [`http`](Self::http) reply's body (none
    /// unless given; an empty list sends an empty one): with
    /// `content-type: application/grpc` and a body of frames written by
    /// hand, a gRPC response as malformed as a test needs. Only for
    /// [`http`](Self::http) replies (a gRPC reply's trailers carry its
    /// status); an invalid name or value is left out.
    ///
    /// ```
    /// use ameide_sdk::testkit::Reply;
    /// // A message cut short (2 of its 10 bytes), then OK.
    /// let cut = Reply::http(200)
    ///     .header("content-type", "application/grpc")
    ///     .body(vec![0u8, 0, 0, 0, 10, 1, 2])
    ///     .trailers([("grpc-status", "0")]);
    /// assert!(format!("{cut:?}").contains("grpc-status"));
    /// ```
    pub fn trailers<'a>(mut self, trailers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let map = self.http_trailers.get_or_insert_with(HeaderMap::new);
        for (name, value) in trailers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.append(name, value);
            }
        }
        self
    }

    /// Headers, one empty message (a valid response of every method), `OK`.
    pub fn ok() -> Self {
        Self::messages(vec![Bytes::new()])
    }

    /// Headers, one encoded message, `OK`.
    pub fn message(message: &impl prost::Message) -> Self {
        Self::messages(vec![Bytes::from(message.encode_to_vec())])
    }

    /// Headers, these encoded messages, `OK`.
    pub fn messages(messages: Vec<Bytes>) -> Self {
        Reply {
            delay: Duration::ZERO,
            messages,
            message_interval: Duration::ZERO,
            status: None,
            trailers_only: false,
            headers: HeaderMap::new(),
            http: None,
            http_trailers: None,
            compression: None,
            trailers_delay: Duration::ZERO,
        }
    }

    /// A trailers-only response carrying `status` (how servers fail before any message).
    pub fn status(status: Status) -> Self {
        Reply {
            delay: Duration::ZERO,
            messages: Vec::new(),
            message_interval: Duration::ZERO,
            status: Some(status),
            trailers_only: true,
            headers: HeaderMap::new(),
            http: None,
            http_trailers: None,
            compression: None,
            trailers_delay: Duration::ZERO,
        }
    }

    /// Ends the message stream with `status` instead of `OK` (after headers).
    pub fn then_status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self.trailers_only = false;
        self
    }

    /// Waits `delay` before answering.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Waits `interval` before each message after the first.
    pub fn every(mut self, interval: Duration) -> Self {
        self.message_interval = interval;
        self
    }

    /// Sends the messages compressed with `encoding` (flag 1, and
    /// `grpc-encoding` in the response headers), as a server does that
    /// compresses its responses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::testkit::{MockServer, Reply, duplex_transport};
    /// use ameide_sdk::proto::graph::v1::{ListRepositoriesRequest, ListRepositoriesResponse};
    /// use ameide_sdk::tonic::codec::CompressionEncoding;
    /// let server = MockServer::new();
    /// let page = ListRepositoriesResponse { repositories: vec![Default::default(); 40], ..Default::default() };
    /// server.fallback(Reply::message(&page).compressed(CompressionEncoding::Zstd));
    /// let client = ameide_sdk::AmeideClient::builder()
    ///     .transport(duplex_transport(server.clone()))
    ///     .build()
    ///     .unwrap();
    /// let got = client.graph().list_repositories(ListRepositoriesRequest::default()).await.unwrap();
    /// assert_eq!(got.into_inner().repositories.len(), 40);
    /// # }
    /// ```
    pub fn compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.compression = Some(encoding);
        self
    }

    /// Waits `delay` after the last message before sending the trailers (a
    /// server that answers, then takes long to finish).
    pub fn trailers_after(mut self, delay: Duration) -> Self {
        self.trailers_delay = delay;
        self
    }

    /// Adds a response header (or, for a trailers-only reply, a trailer).
    /// An invalid name or value is ignored (a test script, not user input).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.insert(name, value);
        }
        self
    }
}

/// One attempt as the server saw it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedAttempt {
    /// `/package.Service/Method`.
    pub path: String,
    /// The request's `:authority`, if it had one.
    pub authority: Option<String>,
    /// Every header that arrived.
    pub headers: HeaderMap,
    /// Arrival time on tokio's clock.
    pub at: Instant,
    /// The request messages, without gRPC framing; compressed ones
    /// decompressed by the request's `grpc-encoding` (gzip, zstd).
    pub messages: Vec<Bytes>,
    /// Each request message's length on the wire (its frame's length
    /// prefix: the compressed size of a compressed one).
    pub wire_lengths: Vec<usize>,
    /// Which connection the attempt arrived on (numbered from 1 per server, in accept order).
    pub connection: u64,
    /// The client reset the stream (`RST_STREAM`: a cancellation, or its
    /// deadline) before the server had sent its whole reply. Read from
    /// [`MockServer::attempts`] again to see a reset that came later.
    pub cancelled: bool,
    /// Set when the reply is abandoned; read into `cancelled` on each snapshot.
    reset: Arc<AtomicBool>,
}

/// Marks an attempt cancelled when dropped before [`finish`](Self::finish):
/// hyper drops the reply (its future, or its body) when the client resets
/// the stream.
#[derive(Debug)]
struct ResetWatch {
    reset: Arc<AtomicBool>,
    finished: bool,
}

impl ResetWatch {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for ResetWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.reset.store(true, Ordering::Relaxed);
        }
    }
}

impl RecordedAttempt {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn snapshot(&self) -> Self {
        RecordedAttempt {
            cancelled: self.reset.load(Ordering::Relaxed),
            ..self.clone()
        }
    }
}

#[derive(Debug, Default)]
struct State {
    scripts: HashMap<String, VecDeque<Reply>>,
    by_request: HashMap<(String, String), VecDeque<Reply>>,
    fallback: Option<Reply>,
    attempts: Vec<RecordedAttempt>,
    connections: u64,
}

/// A gRPC server for any method path: answers from a per-path script and
/// records every attempt. Cheap to clone; clones share the script and the record.
#[derive(Debug, Clone, Default)]
pub struct MockServer {
    state: Arc<Mutex<State>>,
}

impl MockServer {
    /// A server that answers [`Reply::ok`] to anything not scripted.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `reply` for the next unanswered attempt on `path`.
    pub fn push(&self, path: &str, reply: Reply) -> &Self {
        self.lock()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .push_back(reply);
        self
    }

    /// Queues `reply` for the next attempt on `path` whose `x-request-id` is
    /// `request_id` (checked before the path's own script), so that many
    /// concurrent calls can each follow a script of their own.
    pub fn push_for_request(&self, path: &str, request_id: &str, reply: Reply) -> &Self {
        self.lock()
            .by_request
            .entry((path.to_owned(), request_id.to_owned()))
            .or_default()
            .push_back(reply);
        self
    }

    /// What to answer when a path's script is empty (default: [`Reply::ok`]).
    pub fn fallback(&self, reply: Reply) -> &Self {
        self.lock().fallback = Some(reply);
        self
    }

    /// Every attempt so far, in arrival order.
    pub fn attempts(&self) -> Vec<RecordedAttempt> {
        self.lock()
            .attempts
            .iter()
            .map(RecordedAttempt::snapshot)
            .collect()
    }

    /// The attempts on one path.
    pub fn attempts_for(&self, path: &str) -> Vec<RecordedAttempt> {
        self.lock()
            .attempts
            .iter()
            .filter(|a| a.path == path)
            .map(RecordedAttempt::snapshot)
            .collect()
    }

    /// Forgets every script, the fallback and the recorded attempts.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.scripts.clear();
        state.by_request.clear();
        state.fallback = None;
        state.attempts.clear();
    }

    /// Forgets recorded attempts (the script stays).
    pub fn clear_attempts(&self) {
        self.lock().attempts.clear();
    }

    async fn handle<B>(self, request: http::Request<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let at = Instant::now();
        let (parts, body) = request.into_parts();
        let connection = parts.extensions.get::<ConnectionId>().map_or(0, |c| c.0);
        let path = parts.uri.path().to_owned();
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (messages, wire_lengths) = match body.collect().await {
            Ok(collected) => unframe(collected.to_bytes(), encoding.as_deref()),
            Err(e) => {
                return Status::internal(format!("mock server could not read the request: {e}"))
                    .into_http();
            }
        };
        let reset = Arc::new(AtomicBool::new(false));
        let watch = ResetWatch {
            reset: reset.clone(),
            finished: false,
        };
        let reply = {
            let mut state = self.lock();
            state.attempts.push(RecordedAttempt {
                path: path.clone(),
                authority: parts.uri.authority().map(|a| a.as_str().to_owned()),
                headers: parts.headers,
                at,
                messages,
                wire_lengths,
                connection,
                cancelled: false,
                reset: reset.clone(),
            });
            let request_id = state
                .attempts
                .last()
                .and_then(|a| a.header("x-request-id"))
                .map(str::to_owned)
                .unwrap_or_default();
            let scripted = state
                .by_request
                .get_mut(&(path.clone(), request_id))
                .and_then(VecDeque::pop_front)
                .or_else(|| state.scripts.get_mut(&path).and_then(VecDeque::pop_front));
            scripted
                .or_else(|| state.fallback.clone())
                .unwrap_or_else(Reply::ok)
        };
        respond(reply, watch).await
    }
}

/// The request's messages; compressed ones (flag 1) are decompressed by
/// the request's `grpc-encoding` (kept as they came when it names no
/// encoding the server knows, or they do not decompress).
fn unframe(mut bytes: Bytes, encoding: Option<&str>) -> (Vec<Bytes>, Vec<usize>) {
    let mut out = Vec::new();
    let mut lengths = Vec::new();
    let encoding = match encoding {
        Some("gzip") => Some(CompressionEncoding::Gzip),
        Some("zstd") => Some(CompressionEncoding::Zstd),
        _ => None,
    };
    while bytes.len() >= 5 {
        let compressed = bytes.get_u8() == 1;
        let len = bytes.get_u32() as usize;
        if bytes.len() < len {
            break;
        }
        let message = bytes.split_to(len);
        lengths.push(len);
        match encoding.filter(|_| compressed) {
            Some(encoding) => out.push(decompress(encoding, &message).unwrap_or(message)),
            None => out.push(message),
        }
    }
    (out, lengths)
}

fn decompress(encoding: CompressionEncoding, message: &[u8]) -> Option<Bytes> {
    use std::io::Read;
    let mut out = Vec::new();
    match encoding {
        CompressionEncoding::Gzip => {
            flate2::read::GzDecoder::new(message)
                .read_to_end(&mut out)
                .ok()?;
        }
        _ => {
            out = zstd::stream::decode_all(message).ok()?;
        }
    }
    Some(out.into())
}

fn compress(encoding: CompressionEncoding, message: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match encoding {
        CompressionEncoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing to a Vec cannot fail.
            let _ = encoder.write_all(message);
            encoder.finish().unwrap_or_default()
        }
        _ => zstd::stream::encode_all(message, 0).unwrap_or_default(),
    }
}

fn frame(message: &Bytes, compression: Option<CompressionEncoding>) -> Bytes {
    let compressed = compression.map(|encoding| compress(encoding, message));
    let payload = compressed.as_deref().unwrap_or(message);
    let mut out = BytesMut::with_capacity(payload.len() + 5);
    out.put_u8(u8::from(compressed.is_some()));
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out.freeze()
}

async fn respond(reply: Reply, mut watch: ResetWatch) -> http::Response<tonic::body::Body> {
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if let Some((status, body)) = reply.http {
        watch.finish();
        let mut response = match reply.http_trailers {
            None => http::Response::new(tonic::body::Body::new(http_body_util::BodyExt::map_err(
                http_body_util::Full::new(body),
                |never| match never {},
            ))),
            Some(trailers) => {
                let (tx, rx) = mpsc::channel(2);
                if !body.is_empty() {
                    let _ = tx.try_send(Frame::data(body));
                }
                let _ = tx.try_send(Frame::trailers(trailers));
                http::Response::new(tonic::body::Body::new(ChannelBody { rx, watch: None }))
            }
        };
        *response.status_mut() = status;
        for (name, value) in &reply.headers {
            response.headers_mut().insert(name, value.clone());
        }
        return response;
    }
    if reply.trailers_only {
        watch.finish();
        let status = reply.status.unwrap_or_else(|| Status::ok(""));
        let mut response = status.into_http::<tonic::body::Body>();
        for (name, value) in &reply.headers {
            response.headers_mut().insert(name, value.clone());
        }
        return response;
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (n, message) in reply.messages.iter().enumerate() {
            if n > 0 && !reply.message_interval.is_zero() {
                tokio::time::sleep(reply.message_interval).await;
            }
            if tx
                .send(Frame::data(frame(message, reply.compression)))
                .await
                .is_err()
            {
                return;
            }
        }
        if !reply.trailers_delay.is_zero() {
            tokio::time::sleep(reply.trailers_delay).await;
        }
        let status = reply.status.unwrap_or_else(|| Status::ok(""));
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_ok() {
            let _ = tx.send(Frame::trailers(trailers)).await;
        }
    });
    let mut response = http::Response::new(tonic::body::Body::new(ChannelBody {
        rx,
        watch: Some(watch),
    }));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    if let Some(encoding) = reply.compression {
        response.headers_mut().insert(
            "grpc-encoding",
            HeaderValue::from_static(crate::codec::encoding_name(encoding)),
        );
    }
    for (name, value) in &reply.headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    /// Finished once the last frame has been handed to hyper.
    watch: Option<ResetWatch>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.rx.poll_recv(cx);
        match next {
            Poll::Ready(Some(frame)) => {
                if frame.is_trailers()
                    && let Some(watch) = self.watch.as_mut()
                {
                    watch.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some(watch) = self.watch.as_mut() {
                    watch.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<B> tower::Service<http::Request<B>> for MockServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = crate::auth::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.handle(request).await) })
    }
}

/// The number of the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
struct ConnectionId(u64);

fn serve_connection<IO>(server: MockServer, io: IO)
where
    IO: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let id = {
        let mut state = server.lock();
        state.connections += 1;
        state.connections
    };
    tokio::spawn(async move {
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            server,
            move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectionId(id));
                request
            },
        ));
        // No per-connection stream limit: scripted slow replies must not
        // queue unrelated calls behind them (hyper's default is 200).
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(None)
            .serve_connection(io, service)
            .await;
    });
}

/// A tonic `Channel` connected to `server` over HTTP/2 in memory: every
/// connection is a fresh `tokio::io::duplex` pair served by hyper. Use it as
/// [`AmeideClientBuilder::transport`](crate::AmeideClientBuilder::transport).
pub fn duplex_transport(server: MockServer) -> Channel {
    Endpoint::from_static("http://in-memory.mock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let server = server.clone();
            async move {
                let (client, server_io) = tokio::io::duplex(1 << 16);
                serve_connection(server, TokioIo::new(server_io));
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        },
    ))
}

/// Serves `server` on `127.0.0.1` (a free port) until the runtime shuts down;
/// returns the address.
pub async fn serve_tcp(server: MockServer) -> std::io::Result<SocketAddr> {
    serve_tcp_at(server, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Serves `server` on a Unix domain socket at `path` (which must not exist)
/// until the runtime shuts down: the server of a `unix:` target.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::testkit::{MockServer, serve_unix};
/// let dir = std::env::temp_dir().join(format!("ameide-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("api.sock");
/// let _ = std::fs::remove_file(&path);
/// let server = MockServer::new();
/// serve_unix(server.clone(), &path).await.unwrap();
/// let client = ameide_sdk::AmeideClient::builder()
///     .endpoint(format!("unix://{}", path.display()))
///     .build()
///     .unwrap();
/// client
///     .graph()
///     .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
///     .await
///     .unwrap();
/// let attempts = server.attempts_for("/ameide_core_proto.graph.v1.GraphService/ListRepositories");
/// assert_eq!(attempts[0].authority.as_deref(), Some("localhost"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # }
/// ```
#[cfg(unix)]
pub async fn serve_unix(server: MockServer, path: &std::path::Path) -> std::io::Result<()> {
    let listener = tokio::net::UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_connection(server.clone(), TokioIo::new(stream));
        }
    });
    Ok(())
}

/// Like [`serve_tcp`], on `addr`: e.g. a port a client is already trying to
/// reach, to stand for a server that comes up late (a deploy).
pub async fn serve_tcp_at(server: MockServer, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            serve_connection(server.clone(), TokioIo::new(stream));
        }
    });
    Ok(addr)
}
