//! The protobuf codec of the generated clients and servers: tonic-prost's
//! encoder and decoder with a 1 KiB starting buffer instead of tonic's 8 KiB.
//!
//! Every call allocates one encode and one decode buffer. Most Ameide
//! messages are far below 1 KiB, and a buffer of at most 1 KiB stays in the
//! allocator's fast per-thread caches (glibc's tcache serves up to 1,032
//! bytes), where an 8 KiB one takes the slow path and keeps 16 KiB alive per
//! call in flight. Larger messages grow the buffer as before; the yield
//! threshold (32 KiB) is tonic's.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Starting size of the per-call encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;
/// Bytes after which a stream encoder yields (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with [`BUFFER_SIZE`] buffers; the generated
/// stubs use it through `codec_path`. A generated client makes it with
/// [`ProstCodec::stamped`], so that a response it cannot decode fails with
/// the call's facts (see [`ErrorStamp`]).
///
/// ```
/// use tonic::codec::Codec;
/// let mut codec = ameide_proto::codec::ProstCodec::<prost_types::Duration, prost_types::Duration>::default();
/// let _encoder = codec.encoder();
/// ```
#[derive(Debug)]
pub struct ProstCodec<T, U> {
    stamp: Option<ErrorStamp>,
    types: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        ProstCodec {
            stamp: None,
            types: PhantomData,
        }
    }
}

impl<T, U> ProstCodec<T, U> {
    /// A codec whose decoder stamps its errors through `stamp`.
    ///
    /// ```
    /// use ameide_proto::codec::{ErrorStamp, ProstCodec};
    /// let stamp = ErrorStamp::default();
    /// let codec = ProstCodec::<prost_types::Duration, prost_types::Duration>::stamped(stamp.clone());
    /// assert!(format!("{codec:?}").contains("ErrorStamp { filled: false }"));
    /// stamp.fill(std::sync::Arc::new(()), |_, status| status);
    /// assert!(format!("{codec:?}").contains("ErrorStamp { filled: true }"), "one stamp, shared");
    /// ```
    pub fn stamped(stamp: ErrorStamp) -> Self {
        ProstCodec {
            stamp: Some(stamp),
            types: PhantomData,
        }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StampedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StampedDecoder {
            inner: ProstDecoder::new(settings()),
            stamp: self.stamp.clone(),
        }
    }
}

/// tonic-prost's decoder, whose errors (a message that is not valid
/// protobuf for its type) go through the call's [`ErrorStamp`].
#[derive(Debug)]
pub struct StampedDecoder<U> {
    inner: ProstDecoder<U>,
    stamp: Option<ErrorStamp>,
}

impl<U: prost::Message + Default> Decoder for StampedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| match &self.stamp {
            Some(stamp) => stamp.stamp(status),
            None => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// The way an error that tonic raises above the SDK's layers (a response it
/// cannot decode or decompress, a unary response without its message) gets
/// the call's facts (request id, attempts, history) like every other error.
///
/// A generated client method puts one in its request's extensions and keeps
/// a clone; the SDK's metadata layer, which knows the call, fills it; the
/// method passes its error through [`stamp`](Self::stamp). Unfilled (no SDK
/// stack, e.g. a plain tonic channel), it changes nothing.
///
/// ```
/// use ameide_proto::codec::ErrorStamp;
/// let stamp = ErrorStamp::default();
/// let status = stamp.stamp(tonic::Status::internal("bad bytes"));
/// assert_eq!(status.message(), "bad bytes");
/// stamp.fill(std::sync::Arc::new(7u8), |_, status| tonic::Status::internal(format!("{} (stamped)", status.message())));
/// assert_eq!(stamp.stamp(status).message(), "bad bytes (stamped)");
/// ```
#[derive(Clone, Default)]
pub struct ErrorStamp(Arc<OnceLock<Stamper>>);

/// What the SDK filled in: the call's state and the function that stamps.
type StampFn = fn(&Arc<dyn Any + Send + Sync>, Status) -> Status;

struct Stamper {
    call: Arc<dyn Any + Send + Sync>,
    apply: StampFn,
}

impl ErrorStamp {
    /// Fills the stamp (once; later fills are ignored): `apply(call, status)`
    /// is what [`stamp`](Self::stamp) does from now on.
    pub fn fill(&self, call: Arc<dyn Any + Send + Sync>, apply: StampFn) {
        let _ = self.0.set(Stamper { call, apply });
    }

    /// `status` with the call's facts, when the stamp was filled.
    pub fn stamp(&self, status: Status) -> Status {
        match self.0.get() {
            Some(stamper) => (stamper.apply)(&stamper.call, status),
            None => status,
        }
    }
}

impl std::fmt::Debug for ErrorStamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorStamp")
            .field("filled", &self.0.get().is_some())
            .finish()
    }
}
