//! The protobuf codec of the generated clients and servers: tonic-prost's
//! encoder and decoder with a 1 KiB starting buffer instead of tonic's 8 KiB.
//!
//! Every call allocates one encode and one decode buffer. Most Ameide
//! messages are far below 1 KiB, and a buffer of at most 1 KiB stays in the
//! allocator's fast per-thread caches (glibc's tcache serves up to 1,032
//! bytes), where an 8 KiB one takes the slow path and keeps 16 KiB alive per
//! call in flight. Larger messages grow the buffer as before; the yield
//! threshold (32 KiB) is tonic's.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Starting size of the per-call encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;
/// Bytes after which a stream encoder yields (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with [`BUFFER_SIZE`] buffers; the generated
/// stubs use it through `codec_path`.
///
/// ```
/// use tonic::codec::Codec;
/// let mut codec = ameide_proto::codec::ProstCodec::<prost_types::Duration, prost_types::Duration>::default();
/// let _encoder = codec.encoder();
/// ```
#[derive(Debug)]
pub struct ProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        ProstCodec(PhantomData)
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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
