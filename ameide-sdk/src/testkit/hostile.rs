//! Hostile peers for tests: a per-stream script of raw HTTP/2 response
//! headers, DATA frames and trailers ([`RawReply`], served by
//! [`H2FaultServer::push_reply`](super::H2FaultServer::push_reply)), and a TCP
//! peer that answers any connection with fixed bytes ([`RawTcpServer`]), e.g.
//! an HTTP/1.1 proxy error page where HTTP/2 was expected.
//!
//! Values are sent as given, malformed ones included: a `grpc-status` that is
//! not a number, a `grpc-message` that is not UTF-8, a
//! `grpc-status-details-bin` that is not base64, a frame whose length prefix
//! lies. The only values that cannot be sent are those HTTP/2 itself cannot
//! carry (a header name or value with CR, LF or NUL): a reply holding one
//! resets its stream with `PROTOCOL_ERROR` instead, which is a hostile
//! behaviour of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One scripted HTTP/2 response, sent exactly as written.
///
/// ```
/// use ameide_sdk::testkit::RawReply;
/// // A trailers-only failure whose details are not base64.
/// let reply = RawReply::grpc()
///     .header("grpc-status", "14")
///     .header("grpc-status-details-bin", "%%% not base64 %%%")
///     .trailers_only();
/// assert!(reply.is_trailers_only());
/// // A proxy's error page.
/// let page = RawReply::new(502).header("content-type", "text/html").data("<html>bad gateway</html>");
/// assert_eq!(page.status(), 502);
/// ```
#[derive(Debug, Clone)]
pub struct RawReply {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    trailers_only: bool,
    data: Vec<Bytes>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    delay: Duration,
    hang: bool,
}

impl RawReply {
    /// A response with HTTP status `status` and no headers yet.
    pub fn new(status: u16) -> Self {
        RawReply {
            status,
            headers: Vec::new(),
            trailers_only: false,
            data: Vec::new(),
            trailers: None,
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// `200` with `content-type: application/grpc`.
    pub fn grpc() -> Self {
        Self::new(200).header("content-type", "application/grpc")
    }

    /// Adds a response header, bytes as given.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Ends the stream with the headers (a trailers-only response).
    pub fn trailers_only(mut self) -> Self {
        self.trailers_only = true;
        self
    }

    /// Sends `bytes` as one DATA frame, as given (no gRPC framing).
    pub fn data(mut self, bytes: impl Into<Bytes>) -> Self {
        self.data.push(bytes.into());
        self
    }

    /// Sends `payload` as one gRPC message: flag 0, a 4-byte length, the bytes.
    pub fn message(self, payload: &[u8]) -> Self {
        let mut frame = Vec::with_capacity(payload.len() + 5);
        frame.push(0);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        self.data(frame)
    }

    /// Adds a trailer, bytes as given; the stream ends with the trailers.
    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers
            .get_or_insert_with(Vec::new)
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Waits this long before sending anything.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// After everything scripted, keeps the stream open and silent for good.
    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    /// The HTTP status it sends.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the headers end the stream.
    pub fn is_trailers_only(&self) -> bool {
        self.trailers_only
    }

    /// Sends the reply on `respond`.
    pub(crate) async fn send(
        &self,
        respond: &mut h2::server::SendResponse<Bytes>,
    ) -> Result<(), h2::Error> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let Some(headers) = header_map(&self.headers) else {
            respond.send_reset(h2::Reason::PROTOCOL_ERROR);
            return Ok(());
        };
        let mut response = Response::new(());
        *response.status_mut() =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::OK);
        *response.headers_mut() = headers;
        let ends_here = self.trailers_only && !self.hang;
        let mut send = respond.send_response(response, ends_here)?;
        if self.trailers_only {
            if self.hang {
                std::future::pending::<()>().await;
            }
            return Ok(());
        }
        for chunk in &self.data {
            send.reserve_capacity(chunk.len());
            send.send_data(chunk.clone(), false)?;
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        match &self.trailers {
            Some(trailers) => match header_map(trailers) {
                Some(map) => send.send_trailers(map)?,
                None => send.send_reset(h2::Reason::PROTOCOL_ERROR),
            },
            None => send.send_data(Bytes::new(), true)?,
        }
        Ok(())
    }
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// A loopback TCP peer that answers every connection with the same bytes,
/// then closes it (or, with [`hold_open`](Self::hold_open), keeps it open and
/// silent): a proxy speaking HTTP/1.1 where HTTP/2 was expected, a TLS
/// endpoint reached as plaintext, garbage.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::testkit::RawTcpServer;
/// let page = b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 11\r\n\r\nbad gateway";
/// let peer = RawTcpServer::start(page.to_vec()).await.unwrap();
/// assert!(peer.endpoint().starts_with("http://127.0.0.1:"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RawTcpServer {
    addr: SocketAddr,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for RawTcpServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl RawTcpServer {
    /// Answers each connection with `reply` and closes it.
    pub async fn start(reply: Vec<u8>) -> std::io::Result<Self> {
        Self::serve(reply, false).await
    }

    /// Answers each connection with `reply` and keeps it open, silent.
    pub async fn hold_open(reply: Vec<u8>) -> std::io::Result<Self> {
        Self::serve(reply, true).await
    }

    async fn serve(reply: Vec<u8>, hold: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let reply = Bytes::from(reply);
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    // Let the client speak first (its preface), as a real server would.
                    let mut buf = [0u8; 4096];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
                    let _ = tcp.write_all(&reply).await;
                    let _ = tcp.flush().await;
                    if hold {
                        loop {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    }
                });
            }
        });
        Ok(RawTcpServer {
            addr,
            task: Arc::new(task),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
