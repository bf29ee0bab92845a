//! What the server says about the connection itself, read off the bytes as
//! hyper reads them: the first SETTINGS frame (the connection is READY only
//! then), its `SETTINGS_MAX_CONCURRENT_STREAMS`, and GOAWAY with its error
//! code and debug data (`too_many_pings` is how gRPC servers say the
//! keepalive broke their policy, gRFC A8). hyper exposes none of these.
//!
//! [`Tap`] sits between the socket (or the TLS stream, on its plaintext side)
//! and hyper. It never changes a byte: it walks the frame headers of what was
//! read, reads SETTINGS entries as they pass, and copies out the start of a
//! GOAWAY (at most [`KEPT_PAYLOAD`] bytes). A DATA frame costs one header parse.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// ENHANCE_YOUR_CALM.
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
/// How much of a GOAWAY payload is kept: its 8 fixed bytes and the start of
/// its debug data.
const KEPT_PAYLOAD: usize = 64;

/// How the callers waiting on a subchannel (for a connection, or for room on
/// one) are woken: by a connect's outcome, a connection that stops taking
/// streams or allows more, and a stream that ends while someone waits.
pub(crate) struct Wake {
    pub(crate) notify: Notify,
    /// Callers waiting on [`notify`](Self::notify). A waiter counts itself
    /// (`SeqCst`) before it looks for a connection with room; see
    /// `Conn::try_open` for why that order wakes every waiter.
    pub(crate) waiters: AtomicUsize,
}

impl Wake {
    pub(crate) fn new() -> Self {
        Wake {
            notify: Notify::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    pub(crate) fn changed(&self) {
        self.notify.notify_waiters();
    }

    /// A stream ended: wakes the waiters, if there are any (the common case
    /// has none and costs one load).
    pub(crate) fn room_freed(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

const NOT_COUNTED: u8 = 0;
const COUNTED: u8 = 1;
const ENDED: u8 = 2;

/// What the server said about one connection. Written by the [`Tap`] (on
/// the connection's task), read by the subchannel.
pub(crate) struct ConnEvents {
    settings_seen: AtomicBool,
    max_streams: AtomicU32,
    going_away: AtomicBool,
    too_many_pings: AtomicBool,
    /// The server's first bytes were `HTTP/`: it answered in HTTP/1.
    http1: AtomicBool,
    closed: AtomicBool,
    /// Whether the connection is counted in the open-connections metric:
    /// [`NOT_COUNTED`], [`COUNTED`], [`ENDED`] (see [`count_open`](Self::count_open)).
    counted: std::sync::atomic::AtomicU8,
    /// Woken on the first SETTINGS and when the connection ends.
    ready: Notify,
    /// The subchannel's: woken when a connection stops taking streams or
    /// allows more.
    wake: Arc<Wake>,
}

impl ConnEvents {
    pub(crate) fn new(wake: Arc<Wake>) -> Self {
        ConnEvents {
            settings_seen: AtomicBool::new(false),
            max_streams: AtomicU32::new(u32::MAX),
            going_away: AtomicBool::new(false),
            too_many_pings: AtomicBool::new(false),
            http1: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counted: std::sync::atomic::AtomicU8::new(NOT_COUNTED),
            ready: Notify::new(),
            wake,
        }
    }

    pub(crate) fn wake(&self) -> &Wake {
        &self.wake
    }

    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` (unlimited until it says).
    pub(crate) fn max_streams(&self) -> u32 {
        self.max_streams.load(Ordering::Relaxed)
    }

    /// The peer sent GOAWAY: no new streams on this connection.
    pub(crate) fn going_away(&self) -> bool {
        self.going_away.load(Ordering::Relaxed)
    }

    /// The GOAWAY was ENHANCE_YOUR_CALM with debug data `too_many_pings`.
    pub(crate) fn too_many_pings(&self) -> bool {
        self.too_many_pings.load(Ordering::Relaxed)
    }

    /// The server answered the HTTP/2 preface in HTTP/1 (`HTTP/1.1 400 …`):
    /// the endpoint does not speak HTTP/2 without TLS (h2c).
    pub(crate) fn http1(&self) -> bool {
        self.http1.load(Ordering::Relaxed)
    }

    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The connect succeeded: whether the connection is to be counted open
    /// now (`false` when it has ended already, so that an end that raced
    /// the count neither lowers a count never raised nor leaves it raised).
    pub(crate) fn count_open(&self) -> bool {
        self.counted
            .compare_exchange(NOT_COUNTED, COUNTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The connection ended: whether it had been counted open.
    pub(crate) fn end_count(&self) -> bool {
        self.counted.swap(ENDED, Ordering::AcqRel) == COUNTED
    }

    /// The connection task ended (called by the task itself).
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ready.notify_waiters();
        self.wake.changed();
    }

    /// Waits until the first SETTINGS arrived (`true`) or the connection
    /// ended without one (`false`).
    pub(crate) async fn settings(&self) -> bool {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.settings_seen.load(Ordering::Acquire) {
                return true;
            }
            if self.closed() {
                return false;
            }
            notified.await;
        }
    }

    /// One setting of a SETTINGS frame (not an ACK).
    fn on_setting(&self, id: u16, value: u32) {
        if id == SETTINGS_MAX_CONCURRENT_STREAMS {
            let before = self.max_streams.swap(value, Ordering::Relaxed);
            if value > before {
                self.wake.changed();
            }
        }
    }

    /// The end of a SETTINGS frame (not an ACK).
    fn on_settings_end(&self) {
        if !self.settings_seen.swap(true, Ordering::AcqRel) {
            self.ready.notify_waiters();
        }
    }

    /// A GOAWAY frame: its first [`KEPT_PAYLOAD`] bytes.
    fn on_goaway(&self, payload: &[u8]) {
        if payload.len() < 8 {
            return;
        }
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if code == ENHANCE_YOUR_CALM && payload[8..].starts_with(b"too_many_pings") {
            self.too_many_pings.store(true, Ordering::Relaxed);
        }
        self.going_away.store(true, Ordering::Relaxed);
        self.wake.changed();
    }
}

/// Where the parser is in the byte stream.
struct Parser {
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    kind: u8,
    flags: u8,
    /// A SETTINGS entry being read (settings are read as they stream past,
    /// however long the frame).
    entry: [u8; 6],
    entry_len: usize,
    /// The start of a GOAWAY's payload.
    kept: [u8; KEPT_PAYLOAD],
    kept_len: usize,
    /// The stream's first five bytes, to tell an HTTP/1 answer.
    prefix: [u8; 5],
    prefix_len: usize,
}

impl Parser {
    fn new() -> Self {
        Parser {
            header: [0; FRAME_HEADER],
            header_len: 0,
            remaining: 0,
            kind: 0,
            flags: 0,
            entry: [0; 6],
            entry_len: 0,
            kept: [0; KEPT_PAYLOAD],
            kept_len: 0,
            prefix: [0; 5],
            prefix_len: 0,
        }
    }

    fn settings(&self) -> bool {
        self.kind == SETTINGS && self.flags & ACK == 0
    }

    fn feed(&mut self, mut bytes: &[u8], events: &ConnEvents) {
        if self.prefix_len < self.prefix.len() {
            let take = (self.prefix.len() - self.prefix_len).min(bytes.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&bytes[..take]);
            self.prefix_len += take;
            if self.prefix_len == self.prefix.len() && &self.prefix == b"HTTP/" {
                events.http1.store(true, Ordering::Relaxed);
            }
        }
        while !bytes.is_empty() {
            if self.remaining == 0 && self.header_len < FRAME_HEADER {
                let take = (FRAME_HEADER - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < FRAME_HEADER {
                    return;
                }
                let h = &self.header;
                self.remaining =
                    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.kind = h[3];
                self.flags = h[4];
                self.kept_len = 0;
                self.entry_len = 0;
                if self.remaining == 0 {
                    self.finish(events);
                }
                continue;
            }
            let take = self.remaining.min(bytes.len());
            let chunk = &bytes[..take];
            if self.settings() {
                for &byte in chunk {
                    self.entry[self.entry_len] = byte;
                    self.entry_len += 1;
                    if self.entry_len == self.entry.len() {
                        let e = &self.entry;
                        events.on_setting(
                            u16::from_be_bytes([e[0], e[1]]),
                            u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                        );
                        self.entry_len = 0;
                    }
                }
            } else if self.kind == GOAWAY {
                let keep = take.min(KEPT_PAYLOAD - self.kept_len);
                self.kept[self.kept_len..self.kept_len + keep].copy_from_slice(&chunk[..keep]);
                self.kept_len += keep;
            }
            self.remaining -= take;
            bytes = &bytes[take..];
            if self.remaining == 0 {
                self.finish(events);
            }
        }
    }

    fn finish(&mut self, events: &ConnEvents) {
        if self.settings() {
            events.on_settings_end();
        } else if self.kind == GOAWAY {
            events.on_goaway(&self.kept[..self.kept_len]);
        }
        self.header_len = 0;
    }
}

/// What the tap concludes from server bytes read in these pieces: SETTINGS
/// seen, the stream limit, GOAWAY, `too_many_pings` (for the fuzz target).
#[cfg(feature = "fuzzing")]
pub(crate) fn observe(pieces: &[&[u8]]) -> (bool, u32, bool, bool) {
    let events = ConnEvents::new(Arc::new(Wake::new()));
    let mut parser = Parser::new();
    for piece in pieces {
        parser.feed(piece, &events);
    }
    (
        events.settings_seen.load(Ordering::Relaxed),
        events.max_streams(),
        events.going_away(),
        events.too_many_pings(),
    )
}

pin_project_lite::pin_project! {
    /// A byte stream whose reads are watched for SETTINGS and GOAWAY.
    pub(crate) struct Tap<T> {
        #[pin]
        inner: T,
        parser: Box<Parser>,
        events: Arc<ConnEvents>,
    }
}

impl<T> Tap<T> {
    pub(crate) fn new(inner: T, events: Arc<ConnEvents>) -> Self {
        Tap {
            inner,
            parser: Box::new(Parser::new()),
            events,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            this.parser.feed(&buf.filled()[before..], this.events);
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        out.extend_from_slice(payload);
        out
    }

    fn stream() -> Vec<u8> {
        let mut bytes = frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 4, 0, 4, 0, 1, 0, 0]);
        bytes.extend(frame(0x0, 0, &[7u8; 40_000]));
        bytes.extend(frame(SETTINGS, ACK, &[]));
        let mut goaway = vec![0, 0, 0, 1, 0, 0, 0, 0xb];
        goaway.extend_from_slice(b"too_many_pings");
        goaway.extend_from_slice(&[b'x'; 200]);
        bytes.extend(frame(GOAWAY, 0, &goaway));
        bytes
    }

    fn check(chunk: usize) {
        let events = ConnEvents::new(Arc::new(Wake::new()));
        let mut parser = Parser::new();
        let bytes = stream();
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            parser.feed(piece, &events);
            if i == 0 && chunk < 21 {
                assert!(!events.settings_seen.load(Ordering::Relaxed));
            }
        }
        assert!(
            events.settings_seen.load(Ordering::Relaxed),
            "chunk {chunk}"
        );
        assert_eq!(events.max_streams(), 4, "chunk {chunk}");
        assert!(events.going_away());
        assert!(events.too_many_pings());
    }

    #[test]
    fn frames_are_found_whatever_the_read_sizes() {
        for chunk in [1, 2, 5, 9, 10, 21, 1000, 16_384, 1 << 20] {
            check(chunk);
        }
    }

    #[test]
    fn the_stream_limit_is_found_late_in_a_long_settings_frame() {
        let mut payload = Vec::new();
        for id in 0..20u16 {
            payload.extend_from_slice(&(id + 0x10).to_be_bytes());
            payload.extend_from_slice(&[0, 0, 0, 1]);
        }
        payload.extend_from_slice(&[0, 3, 0, 0, 0, 7]);
        let events = ConnEvents::new(Arc::new(Wake::new()));
        let mut parser = Parser::new();
        for piece in frame(SETTINGS, 0, &payload).chunks(5) {
            parser.feed(piece, &events);
        }
        assert_eq!(events.max_streams(), 7);
        assert!(events.settings_seen.load(Ordering::Relaxed));
    }

    #[test]
    fn an_http1_answer_is_recognised_in_pieces() {
        let events = ConnEvents::new(Arc::new(Wake::new()));
        let mut parser = Parser::new();
        for piece in b"HTTP/1.1 400 Bad Request\r\n\r\n".chunks(2) {
            parser.feed(piece, &events);
        }
        assert!(events.http1());
        let events = ConnEvents::new(Arc::new(Wake::new()));
        Parser::new().feed(&frame(SETTINGS, 0, &[]), &events);
        assert!(!events.http1());
    }

    #[test]
    fn a_goaway_without_the_debug_data_is_not_about_pings() {
        let events = ConnEvents::new(Arc::new(Wake::new()));
        let mut parser = Parser::new();
        parser.feed(&frame(GOAWAY, 0, &[0, 0, 0, 1, 0, 0, 0, 0xb]), &events);
        assert!(events.going_away());
        assert!(!events.too_many_pings());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_walked_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), cut in 1usize..64) {
            let events = ConnEvents::new(Arc::new(Wake::new()));
            let mut parser = Parser::new();
            for piece in bytes.chunks(cut) {
                parser.feed(piece, &events);
            }
        }
    }
}
