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

use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

use crate::config_error::{ConfigError, ConfigErrorKind};

/// gRPC's default receive limit.
pub const DEFAULT_MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
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
            accept_compressed: &[CompressionEncoding::Gzip, CompressionEncoding::Zstd],
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
    /// The encoding whose compressed messages are checked here (a stream's,
    /// see [`check_compressed`](Self::check_compressed)).
    checked: Option<CompressionEncoding>,
    /// The compressed message being collected for that check.
    collected: Option<Vec<u8>>,
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
            collected: None,
        }
    }

    /// For a stream of responses compressed with `encoding`: each compressed
    /// message is decompressed here (its output bounded by the limit and
    /// thrown away), so that a corrupt one fails the call with the facts.
    /// tonic decompresses it again above the layers, where a failure in the
    /// middle of a stream could not be given them. Unary responses need no
    /// such check (the generated client stamps tonic's error).
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
                if let Some(collected) = self.collected.as_mut() {
                    collected.extend_from_slice(&data[..n]);
                    if self.left == 0 {
                        let message = self.collected.take().unwrap_or_default();
                        if let Some(encoding) = self.checked {
                            decompresses(encoding, &message, self.limit)?;
                        }
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
            if flag == 1 && self.checked.is_some() {
                if len == 0 {
                    if let Some(encoding) = self.checked {
                        decompresses(encoding, &[], self.limit)?;
                    }
                } else {
                    self.collected = Some(Vec::with_capacity(len));
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

/// Whether `message` decompresses with `encoding` (into at most `limit`
/// bytes, thrown away); the error is the status the call fails with.
fn decompresses(encoding: CompressionEncoding, message: &[u8], limit: usize) -> Result<(), Status> {
    use std::io::Read;
    let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let result = match encoding {
        CompressionEncoding::Gzip => std::io::copy(
            &mut flate2::read::GzDecoder::new(message).take(bound),
            &mut std::io::sink(),
        ),
        CompressionEncoding::Zstd => zstd::stream::read::Decoder::with_buffer(message)
            .and_then(|d| std::io::copy(&mut d.take(bound), &mut std::io::sink())),
        _ => return Ok(()),
    };
    match result {
        Ok(n) if n >= bound => Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "a compressed response message decompresses to more than the client's limit of {limit} bytes (CodecOptions::max_decoding_message_size)"
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(Status::internal(format!(
            "a compressed response message does not decompress ({encoding:?}): {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
