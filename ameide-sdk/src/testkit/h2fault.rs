//! A gRPC server written directly on the `h2` crate, so tests can inject the
//! HTTP/2 faults a tonic server never produces on demand: `REFUSED_STREAM`,
//! `GOAWAY`, a stream reset after N messages, a connection dropped mid-call.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::Reason;
use http::{HeaderMap, HeaderValue, Response};

use super::hostile::RawReply;
use tokio::net::TcpListener;

/// What the [`H2FaultServer`] does with one incoming stream. Streams take
/// faults from the script in arrival order; when the script is empty they get
/// [`StreamFault::Ok`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamFault {
    /// Read the request, answer `OK` with one empty message.
    Ok,
    /// Reset the stream with `REFUSED_STREAM` before reading it: the server
    /// did not process the request.
    Refuse,
    /// Answer this stream `OK`, then send `GOAWAY` (graceful shutdown) on its
    /// connection: later calls must open a new connection.
    GoAway,
    /// Send `GOAWAY` with `INTERNAL_ERROR` and close the connection without
    /// answering this stream (which the server had accepted).
    GoAwayAbrupt,
    /// Read the request, then close the TCP connection without an answer.
    Drop,
    /// Send response headers and this many empty messages, then (20 ms
    /// later, so the client has read them) reset the stream with
    /// `INTERNAL_ERROR`.
    CutAfter(usize),
    /// Read the request, then reset the stream with this HTTP/2 error code
    /// (`0x8` CANCEL, `0xb` ENHANCE_YOUR_CALM, …) without answering.
    Reset(u32),
    /// The stream was answered by a scripted [`RawReply`]
    /// ([`H2FaultServer::push_reply`]); only ever seen in [`SeenStream`].
    Raw,
}

/// One entry of the server's script.
#[derive(Debug, Clone)]
enum Scripted {
    Fault(StreamFault),
    Reply(Arc<RawReply>),
}

/// One stream the [`H2FaultServer`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenStream {
    /// The request's `:path`.
    pub path: String,
    /// Which accepted connection carried it, counting from 0.
    pub connection: usize,
    /// What the server did with it.
    pub fault: StreamFault,
    /// The request headers as they arrived (`grpc-timeout`, `x-request-id`, …).
    pub headers: HeaderMap,
    /// Arrival time on tokio's clock.
    pub at: tokio::time::Instant,
    /// The request messages (gRPC framing removed), once the server has
    /// read the request; `None` for a stream it refused or dropped unread.
    pub messages: Option<Vec<Bytes>>,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Scripted>>,
    seen: Mutex<Vec<SeenStream>>,
}

/// A loopback gRPC server on raw HTTP/2 that applies a script of
/// [`StreamFault`]s, one per incoming stream, and records each stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::testkit::{H2FaultServer, StreamFault};
///
/// let server = H2FaultServer::start().await.unwrap();
/// server.push(StreamFault::Refuse);
/// let client = ameide_sdk::AmeideClient::builder()
///     .endpoint(server.endpoint())
///     .build()
///     .unwrap();
/// // The refused stream is retried once, transparently, and then succeeds.
/// client
///     .graph()
///     .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
///     .await
///     .unwrap();
/// assert_eq!(server.seen().len(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct H2FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for H2FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2FaultServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for H2FaultServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl H2FaultServer {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let index = connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve_connection(tcp, index, shared.clone()));
                }
            })
        };
        Ok(Self {
            addr,
            shared,
            task: Arc::new(task),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the fault for the next stream that arrives.
    pub fn push(&self, fault: StreamFault) {
        lock(&self.shared.script).push_back(Scripted::Fault(fault));
    }

    /// Queues a raw response, sent exactly as scripted (malformed values
    /// included), for the next stream that arrives.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::testkit::{H2FaultServer, RawReply};
    /// let server = H2FaultServer::start().await.unwrap();
    /// server.push_reply(RawReply::grpc().header("grpc-status", "5").header("grpc-message", "gone%FF").trailers_only());
    /// let client = ameide_sdk::AmeideClient::builder().endpoint(server.endpoint()).build().unwrap();
    /// let status = client
    ///     .graph()
    ///     .list_repositories(ameide_sdk::proto::graph::v1::ListRepositoriesRequest::default())
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(status.code(), tonic::Code::NotFound);
    /// assert_eq!(status.message(), "gone\u{fffd}");
    /// # }
    /// ```
    pub fn push_reply(&self, reply: RawReply) {
        lock(&self.shared.script).push_back(Scripted::Reply(Arc::new(reply)));
    }

    /// Every stream seen so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenStream> {
        lock(&self.shared.seen).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve_connection(tcp: tokio::net::TcpStream, index: usize, shared: Arc<Shared>) {
    let Ok(mut connection) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let scripted = lock(&shared.script)
            .pop_front()
            .unwrap_or(Scripted::Fault(StreamFault::Ok));
        let fault = match &scripted {
            Scripted::Fault(fault) => *fault,
            Scripted::Reply(_) => StreamFault::Raw,
        };
        let number = {
            let mut seen = lock(&shared.seen);
            seen.push(SeenStream {
                path: request.uri().path().to_owned(),
                connection: index,
                fault,
                headers: request.headers().clone(),
                at: tokio::time::Instant::now(),
                messages: None,
            });
            seen.len() - 1
        };
        let recorder = Recorder {
            shared: shared.clone(),
            number,
        };
        if let Scripted::Reply(reply) = scripted {
            tokio::spawn(async move {
                recorder.read(request.into_body()).await;
                let _ = reply.send(&mut respond).await;
            });
            continue;
        }
        match fault {
            StreamFault::Refuse => respond.send_reset(Reason::REFUSED_STREAM),
            StreamFault::GoAwayAbrupt => {
                connection.abrupt_shutdown(Reason::INTERNAL_ERROR);
                // Keep `respond` alive until the connection closes so the
                // stream is not reset on its own first.
                let _ = std::future::poll_fn(|cx| connection.poll_closed(cx)).await;
                drop(respond);
                return;
            }
            StreamFault::Drop => {
                // h2 hands the body's DATA frames over only while the
                // connection is polled: read the body *and* drive the
                // connection (a request whose DATA came in a later TCP
                // segment than its HEADERS used to wait here forever, and
                // the client's call ran into its deadline).
                let body = recorder.read(request.into_body());
                tokio::pin!(body);
                loop {
                    tokio::select! {
                        _ = &mut body => break,
                        next = connection.accept() => {
                            if !matches!(next, Some(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                return; // dropping `connection` closes the socket
            }
            StreamFault::Reset(code) => {
                tokio::spawn(async move {
                    recorder.read(request.into_body()).await;
                    respond.send_reset(Reason::from(code));
                });
            }
            StreamFault::Ok | StreamFault::GoAway | StreamFault::CutAfter(_) | StreamFault::Raw => {
                tokio::spawn(async move {
                    recorder.read(request.into_body()).await;
                    let _ = answer(&mut respond, fault).await;
                });
                if fault == StreamFault::GoAway {
                    connection.graceful_shutdown();
                }
            }
        }
    }
}

/// Records a stream's request messages once its body has been read.
struct Recorder {
    shared: Arc<Shared>,
    number: usize,
}

impl Recorder {
    async fn read(self, mut body: h2::RecvStream) {
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let mut rest = &bytes[..];
        let mut messages = Vec::new();
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(end) = len.checked_add(5) else {
                break;
            };
            let Some(message) = rest.get(5..end) else {
                break;
            };
            messages.push(Bytes::copy_from_slice(message));
            rest = &rest[end..];
        }
        if let Some(seen) = lock(&self.shared.seen).get_mut(self.number) {
            seen.messages = Some(messages);
        }
    }
}

async fn answer(
    respond: &mut h2::server::SendResponse<Bytes>,
    fault: StreamFault,
) -> Result<(), h2::Error> {
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    let mut send = respond.send_response(response, false)?;
    // An empty protobuf message: no compression flag, zero length.
    let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
    match fault {
        StreamFault::CutAfter(n) => {
            for _ in 0..n {
                send.send_data(empty.clone(), false)?;
            }
            // Let the client take the headers and messages first: h2 reports
            // a reset that is already queued in place of the response.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            send.send_reset(Reason::INTERNAL_ERROR);
        }
        _ => {
            send.send_data(empty, false)?;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            send.send_trailers(trailers)?;
        }
    }
    Ok(())
}
