//! Message size limits and compression, set once for a client.
//!
//! | Setting | Default | Where it acts |
//! |---|---|---|
//! | [`CodecOptions::max_decoding_message_size`] | 4 MiB (gRPC's default) | every response message, checked by the SDK on the wire length before tonic decodes it (the error is `RESOURCE_EXHAUSTED` with the request id), and by tonic on the decompressed size |
//! | [`CodecOptions::max_encoding_message_size`] | 4 GiB − 1 (the gRPC frame's limit) | every request message, by tonic's encoder (`OUT_OF_RANGE`, with the request id) |
//! | [`CodecOptions::send_compressed`] | `None`: requests go uncompressed | `gzip` or `zstd` for every request message |
//! | [`CodecOptions::accept_compressed`] | gzip and zstd, advertised in `grpc-accept-encoding` | which compressed responses are decoded |
//!
//! Set them client-wide with [`AmeideClientBuilder::codec`](crate::AmeideClientBuilder::codec);
//! for one call (or a group of calls) take a clone of the client with other
//! settings, [`AmeideClient::with_codec`](crate::AmeideClient::with_codec):
//! it shares the connection, the layers and the retry budget. The typed
//! clients' own tonic setters still work on the client they are called on,
//! but a larger decoding limit set that way is capped by the SDK's check; use
//! `with_codec` to raise it.
//!
//! The SDK also checks the response's gRPC framing as it passes: a
//! compression flag other than 0 or 1 and a body that ends inside a message
//! are `INTERNAL` errors that carry the request id, attempts and history.

use std::fmt;

use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

use crate::config_error::{ConfigError, ConfigErrorKind};

/// gRPC's default receive limit.
pub const DEFAULT_MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// An encoding's `grpc-encoding` name (tonic keeps its own private).
pub(crate) fn encoding_name(encoding: CompressionEncoding) -> &'static str {
    match encoding {
        CompressionEncoding::Gzip => "gzip",
        CompressionEncoding::Zstd => "zstd",
        _ => "unknown",
    }
}

/// The response encodings a client accepts unless told otherwise.
pub(crate) const DEFAULT_ACCEPT_COMPRESSED: &[CompressionEncoding] =
    &[CompressionEncoding::Gzip, CompressionEncoding::Zstd];
/// The largest message a gRPC frame can carry (its length is a `u32`).
pub const MAX_MESSAGE_SIZE: usize = u32::MAX as usize;

/// Message size limits and compression (see the [module docs](self)).
///
/// ```
/// use ameide_sdk::CodecOptions;
/// use ameide_sdk::tonic::codec::CompressionEncoding;
/// let options = CodecOptions::default();
/// assert_eq!(options.max_decoding_message_size, 4 * 1024 * 1024);
/// assert_eq!(options.send_compressed, None);
/// assert_eq!(options.accept_compressed, &[CompressionEncoding::Gzip, CompressionEncoding::Zstd]);
/// let large = options.with_max_decoding_message_size(16 << 20);
/// assert!(large.validate().is_ok());
/// assert!(options.with_max_decoding_message_size(0).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CodecOptions {
    /// The largest response message accepted, in bytes (1 ..= 4 GiB − 1).
    pub max_decoding_message_size: usize,
    /// The largest request message sent, in bytes (1 ..= 4 GiB − 1).
    pub max_encoding_message_size: usize,
    /// Compress request messages with this encoding.
    pub send_compressed: Option<CompressionEncoding>,
    /// Encodings the client decodes (and advertises).
    pub accept_compressed: &'static [CompressionEncoding],
}

impl Default for CodecOptions {
    fn default() -> Self {
        CodecOptions {
            max_decoding_message_size: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
            max_encoding_message_size: MAX_MESSAGE_SIZE,
            send_compressed: None,
            accept_compressed: DEFAULT_ACCEPT_COMPRESSED,
        }
    }
}

impl CodecOptions {
    /// Sets [`max_decoding_message_size`](Self::max_decoding_message_size).
    pub fn with_max_decoding_message_size(mut self, value: usize) -> Self {
        self.max_decoding_message_size = value;
        self
    }

    /// Sets [`max_encoding_message_size`](Self::max_encoding_message_size).
    pub fn with_max_encoding_message_size(mut self, value: usize) -> Self {
        self.max_encoding_message_size = value;
        self
    }

    /// Sets [`send_compressed`](Self::send_compressed).
    pub fn with_send_compressed(mut self, value: impl Into<Option<CompressionEncoding>>) -> Self {
        self.send_compressed = value.into();
        self
    }

    /// Sets [`accept_compressed`](Self::accept_compressed).
    pub fn with_accept_compressed(mut self, value: &'static [CompressionEncoding]) -> Self {
        self.accept_compressed = value;
        self
    }

    /// Checks the sizes; the error names the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_decoding_message_size", self.max_decoding_message_size),
            ("max_encoding_message_size", self.max_encoding_message_size),
        ] {
            if !(1..=MAX_MESSAGE_SIZE).contains(&value) {
                return Err(ConfigError::new(
                    ConfigErrorKind::Transport,
                    format!(
                        "codec option {name} {value} must be within 1..={MAX_MESSAGE_SIZE} bytes"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The decoding limit of one call, when it is not the stack's own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeLimit(pub(crate) usize);

/// Follows the gRPC framing (1 flag byte, 4 length bytes, the message) of a
/// response body chunk by chunk, without copying it.
#[derive(Debug)]
pub(crate) struct FrameCheck {
    limit: usize,
    head: [u8; 5],
    filled: u8,
    left: usize,
    /// Length of the message being read, for the cut-off message.
    len: usize,
    /// Message bytes read so far (prefixes left out), for the metrics.
    message_bytes: u64,
    /// Messages whose header has been read.
    messages: u64,
    /// The response named a `grpc-encoding`: the compressed flag is allowed.
    compressed_ok: bool,
    /// The encoding whose compressed messages are checked here (see
    /// [`check_compressed`](Self::check_compressed)).
    checked: Option<CompressionEncoding>,
    /// The compressed message being decompressed for that check, chunk by
    /// chunk as it arrives (nothing of it is kept).
    inflate: Option<Inflate>,
}

impl FrameCheck {
    pub(crate) fn new(limit: usize) -> Self {
        FrameCheck {
            limit,
            head: [0; 5],
            filled: 0,
            left: 0,
            len: 0,
            message_bytes: 0,
            messages: 0,
            compressed_ok: true,
            checked: None,
            inflate: None,
        }
    }

    /// For a response compressed with `encoding`: each compressed message is
    /// decompressed here as its chunks arrive (the output counted against
    /// the limit and thrown away), so that a corrupt one, or one that
    /// inflates past the limit, fails the call with the facts and the right
    /// code in the call metric. tonic decompresses it again above the layers,
    /// where its error could not be given them before the body is dropped.
    pub(crate) fn check_compressed(mut self, encoding: CompressionEncoding) -> Self {
        self.checked = Some(encoding);
        self
    }

    /// For a response without `grpc-encoding`: a message with the compressed
    /// flag set cannot be decompressed, and fails the call with the facts
    /// (tonic would raise it above the layers, without them).
    pub(crate) fn uncompressed_only(mut self) -> Self {
        self.compressed_ok = false;
        self
    }

    /// Messages begun so far.
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// Reads one data chunk; the error is the status the call fails with.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                self.message_bytes = self.message_bytes.saturating_add(n as u64);
                if let Some(inflate) = self.inflate.as_mut() {
                    inflate.feed(&data[..n])?;
                    if self.left == 0
                        && let Some(inflate) = self.inflate.take()
                    {
                        inflate.finish()?;
                    }
                }
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
            let flag = self.head[0];
            if flag > 1 {
                return Err(Status::internal(format!(
                    "protocol error: a response message has compression flag {flag} (valid flags are 0 and 1): the server or a proxy sent bytes that are not gRPC framing"
                )));
            }
            if flag == 1 && !self.compressed_ok {
                return Err(Status::internal(
                    "protocol error: a response message is marked compressed but the response \
                     named no grpc-encoding: the server sent a message the client cannot decompress",
                ));
            }
            self.messages = self.messages.saturating_add(1);
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > self.limit {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "a response message of {len} bytes exceeds the client's limit of {} bytes (CodecOptions::max_decoding_message_size)",
                        self.limit
                    ),
                ));
            }
            self.len = len;
            self.left = len;
            if flag == 1
                && let Some(encoding) = self.checked
            {
                let inflate = Inflate::new(encoding, self.limit)?;
                if len == 0 {
                    inflate.finish()?;
                } else {
                    self.inflate = Some(inflate);
                }
            }
        }
        Ok(())
    }

    /// Message bytes read so far, the 5-byte prefixes left out.
    pub(crate) fn message_bytes(&self) -> u64 {
        self.message_bytes
    }

    /// The status of a body that ends here, when it ends inside a message.
    pub(crate) fn cut_off(&self) -> Option<Status> {
        if self.filled > 0 {
            return Some(Status::internal(format!(
                "the response ended inside a message header ({} of 5 bytes)",
                self.filled
            )));
        }
        (self.left > 0).then(|| {
            Status::internal(format!(
                "the response ended inside a message ({} of {} bytes arrived)",
                self.len - self.left,
                self.len
            ))
        })
    }
}

/// One compressed message being decompressed as it arrives, into a sink
/// that counts the output against the limit (a decompression bomb stops at
/// the limit, not at the bottom of memory).
enum Inflate {
    Gzip(Box<flate2::write::GzDecoder<Bounded>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Bounded>>),
}

impl fmt::Debug for Inflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Inflate::Gzip(_) => "Inflate::Gzip",
            Inflate::Zstd(_) => "Inflate::Zstd",
        })
    }
}

/// The sink of [`Inflate`]: fails once more than `limit` bytes came out.
struct Bounded {
    written: usize,
    limit: usize,
}

/// The error [`Bounded`] fails with.
#[derive(Debug)]
struct PastLimit;

impl fmt::Display for PastLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("past the limit")
    }
}

impl std::error::Error for PastLimit {}

impl std::io::Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(bytes.len());
        if self.written > self.limit {
            return Err(std::io::Error::other(PastLimit));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Inflate {
    fn new(encoding: CompressionEncoding, limit: usize) -> Result<Self, Status> {
        let sink = Bounded { written: 0, limit };
        match encoding {
            CompressionEncoding::Gzip => {
                Ok(Inflate::Gzip(Box::new(flate2::write::GzDecoder::new(sink))))
            }
            // zstd's default window limit (128 MiB), as tonic's own decoder:
            // streaming compressors declare windows far past small messages
            // (2 MiB at level 3), so a tighter limit would refuse good ones.
            CompressionEncoding::Zstd => zstd::stream::write::Decoder::new(sink)
                .map(|d| Inflate::Zstd(Box::new(d)))
                .map_err(|e| Self::failed(&e)),
            _ => Err(Status::internal(format!(
                "a response message is compressed with {encoding:?}, which the SDK cannot check"
            ))),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), Status> {
        use std::io::Write;
        // Flushed after every chunk: the decoders keep up to 32 KiB of
        // output back otherwise, and how much reached the bounded sink (the
        // limit's verdict) would depend on how the body was split into reads.
        match self {
            Inflate::Gzip(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Inflate::Zstd(d) => d.write_all(chunk).and_then(|()| d.flush()),
        }
        .map_err(|e| Self::failed(&e))
    }

    /// The message is complete: its compressed data must be too.
    fn finish(self) -> Result<(), Status> {
        match self {
            Inflate::Gzip(mut d) => d.try_finish(),
            Inflate::Zstd(mut d) => d.do_finish(),
        }
        .map_err(|e| Self::failed(&e))
    }

    fn failed(error: &std::io::Error) -> Status {
        if error.get_ref().is_some_and(|e| e.is::<PastLimit>()) {
            return Status::new(
                Code::ResourceExhausted,
                "a compressed response message inflates past the client's limit \
                 (CodecOptions::max_decoding_message_size)",
            );
        }
        Status::internal(format!(
            "a compressed response message does not decompress: {error}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 3).unwrap()
    }

    /// A compressed message whose body is cut off gets the same verdict
    /// however the body was split into reads, for limits around what it
    /// inflates to: the decoders' held-back output is flushed to the
    /// bounded sink after every chunk (found by the `frames` fuzz target:
    /// one write let 32 KiB out, two writes of the same bytes 10 KiB).
    #[test]
    fn a_cut_message_gets_one_verdict_whatever_the_split() {
        // Text that compresses a little, so the cut falls inside the output.
        let text: Vec<u8> = (0..60_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i / 97) as u8)
            .collect();
        for (encoding, pack) in [
            (CompressionEncoding::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (CompressionEncoding::Zstd, zstd as fn(&[u8]) -> Vec<u8>),
        ] {
            let packed = pack(&text);
            let mut body = frame(1, &packed);
            body.truncate(5 + packed.len() * 3 / 4);
            for limit in (2_000..64_000).step_by(1_500) {
                let verdict = |at: usize| {
                    let mut frames = FrameCheck::new(limit).check_compressed(encoding);
                    let at = at.min(body.len());
                    frames
                        .feed(&body[..at])
                        .and_then(|()| frames.feed(&body[at..]))
                        .map_err(|s| s.code())
                };
                let whole = verdict(body.len());
                for at in [
                    1,
                    6,
                    64,
                    300,
                    body.len() / 3,
                    body.len() / 2,
                    body.len() - 1,
                ] {
                    assert_eq!(
                        verdict(at),
                        whole,
                        "{encoding:?}, limit {limit}, split at {at}"
                    );
                }
            }
        }
    }

    /// Each compressed message decompresses, chunk by chunk, into a sink
    /// bounded by the limit: good ones pass whatever the split, a truncated
    /// or corrupt one is INTERNAL, a bomb RESOURCE_EXHAUSTED.
    #[test]
    fn compressed_messages_are_checked_as_they_arrive() {
        let text = b"hello hello hello hello".repeat(20);
        for (encoding, pack) in [
            (CompressionEncoding::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (CompressionEncoding::Zstd, zstd as fn(&[u8]) -> Vec<u8>),
        ] {
            let check = |body: &[u8], at: usize| {
                let mut frames = FrameCheck::new(1024).check_compressed(encoding);
                let at = at.min(body.len());
                frames
                    .feed(&body[..at])
                    .and_then(|()| frames.feed(&body[at..]))
                    .map_err(|s| s.code())
            };
            let good = frame(1, &pack(&text));
            for at in [0, 3, 7, 20, good.len()] {
                assert_eq!(check(&good, at), Ok(()), "{encoding:?} split at {at}");
            }
            let packed = pack(&text);
            let truncated = frame(1, &packed[..packed.len() - 4]);
            assert_eq!(
                check(&truncated, 9),
                Err(Code::Internal),
                "{encoding:?} truncated"
            );
            let corrupt = frame(1, b"not compressed at all");
            assert_eq!(
                check(&corrupt, 9),
                Err(Code::Internal),
                "{encoding:?} corrupt"
            );
            let bomb = frame(1, &pack(&vec![0u8; 256 << 10]));
            assert_eq!(
                check(&bomb, 9),
                Err(Code::ResourceExhausted),
                "{encoding:?} bomb"
            );
            assert_eq!(
                check(&frame(1, b""), 0),
                Err(Code::Internal),
                "{encoding:?} empty"
            );
        }
    }

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        let mut wire = frame(0, b"hello");
        wire.extend(frame(1, &[7; 300]));
        for split in 0..wire.len() {
            let mut check = FrameCheck::new(1024);
            check.feed(&wire[..split]).unwrap();
            check.feed(&wire[split..]).unwrap();
            assert!(check.cut_off().is_none(), "split at {split}");
        }
        let mut check = FrameCheck::new(1024);
        check.feed(&wire[..wire.len() - 1]).unwrap();
        assert!(check.cut_off().unwrap().message().contains("299 of 300"));
    }

    #[test]
    fn a_bad_flag_and_an_oversized_message_are_named() {
        let err = FrameCheck::new(10).feed(&frame(60, b"x")).unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        assert!(err.message().contains("flag 60"));
        let err = FrameCheck::new(10)
            .feed(&frame(0, &[0; 11])[..5])
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.message().contains("11 bytes"));
    }
}
