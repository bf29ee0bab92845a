//! Proto-JSON ↔ protobuf bytes through the bundle's descriptor set, and a
//! tonic codec that passes bytes through, so one adapter calls any method.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The descriptor pool of the bundle (and the well-known types).
pub fn pool() -> Result<DescriptorPool, String> {
    DescriptorPool::decode(ameide_sdk::proto::DESCRIPTOR_SET)
        .map_err(|e| format!("bad descriptor set: {e}"))
}

/// The method at `/package.Service/Method`.
pub fn method(pool: &DescriptorPool, path: &str) -> Result<MethodDescriptor, String> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .ok_or_else(|| format!("{path:?} is not /package.Service/Method"))?;
    pool.get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .ok_or_else(|| format!("{path} is not in the bundle"))
}

/// Encodes proto-JSON as a message of `descriptor`'s type.
pub fn encode(
    descriptor: prost_reflect::MessageDescriptor,
    json: &serde_json::Value,
) -> Result<Bytes, String> {
    let message = DynamicMessage::deserialize(descriptor.clone(), json)
        .map_err(|e| format!("{} is not a valid {}: {e}", json, descriptor.full_name()))?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// Passes already-encoded messages through tonic.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
