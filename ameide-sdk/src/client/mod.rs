//! [`AmeideClient`]: the layered channel and one typed client per roster service.
//!
//! The stack, outermost first (contract §4; the table in [`crate::layers`] says what each does):
//!
//! ```text
//! AmeideChannel ─ in-flight limit ─ metadata → closed? → auth → timeout → retry → tracing → user layers… → transport
//! ```
//!
//! The closed check sits under the metadata layer, so that a call after
//! [`AmeideClient::close`] fails with its request id like any other.
//! The in-flight limit ([`InFlightLimit`]) is a tower service of its own
//! (`Admit`, `gate.rs`) between the channel and the stack: it
//! admits in `poll_ready`, so that a call waiting for a place has built
//! nothing yet, and its response future holds a unary call's place.

mod builder;
mod channel;

pub use builder::AmeideClientBuilder;
pub use channel::{AmeideChannel, ResponseFuture};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::codec::CodecOptions;
use crate::config::ConfigError;
use crate::transport::TransportSlot;

/// The Ameide client: one layered channel, a typed client per roster service.
///
/// ```no_run
/// # async fn demo() -> ameide_sdk::Result<()> {
/// use ameide_sdk::AmeideClient;
/// use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
///
/// let client = AmeideClient::builder()
///     .endpoint("http://envoy-grpc:9000")
///     .user_id("user-1")
///     .bearer_token("t0k3n")
///     .build()?;
/// let repos = client.graph().list_repositories(ListRepositoriesRequest::default()).await?;
/// println!("{} repositories", repos.get_ref().repositories.len());
/// client.close();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmeideClient {
    channel: AmeideChannel,
    slot: TransportSlot,
    endpoint: Arc<str>,
}

impl fmt::Debug for AmeideClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmeideClient")
            .field("endpoint", &self.endpoint)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Sets a typed client up with its channel's [`CodecOptions`].
macro_rules! configure_client {
    ($channel:expr, $client:expr) => {{
        let codec: &CodecOptions = &*$channel.codec;
        let mut client = $client
            .max_decoding_message_size(codec.max_decoding_message_size)
            .max_encoding_message_size(codec.max_encoding_message_size);
        for &encoding in codec.accept_compressed {
            client = client.accept_compressed(encoding);
        }
        if let Some(encoding) = codec.send_compressed {
            client = client.send_compressed(encoding);
        }
        client
    }};
}

ameide_proto::__ameide_client_set!(AmeideClient, AmeideChannel, configure_client);

impl AmeideClient {
    /// Starts a builder with the contract's defaults.
    pub fn builder() -> AmeideClientBuilder {
        AmeideClientBuilder::new()
    }

    /// The layered channel, for building other tonic clients on the same stack.
    pub fn channel(&self) -> AmeideChannel {
        self.channel.clone()
    }

    /// A clone of this client whose typed clients use `codec` (message size
    /// limits, compression): for one call or a group of calls. It shares the
    /// connection, the layers and the retry budget with this client.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::AmeideClient;
    /// use ameide_sdk::tonic::codec::CompressionEncoding;
    /// let client = AmeideClient::builder().endpoint("http://127.0.0.1:50051").build().unwrap();
    /// let big = client
    ///     .with_codec(
    ///         client
    ///             .codec()
    ///             .with_max_decoding_message_size(64 << 20)
    ///             .with_send_compressed(CompressionEncoding::Zstd),
    ///     )
    ///     .unwrap();
    /// assert_eq!(big.codec().max_decoding_message_size, 64 << 20);
    /// assert_eq!(client.codec().max_decoding_message_size, 4 << 20);
    /// assert!(client.with_codec(client.codec().with_max_decoding_message_size(0)).is_err());
    /// # }
    /// ```
    pub fn with_codec(&self, codec: CodecOptions) -> Result<AmeideClient, ConfigError> {
        codec.validate()?;
        let mut client = self.clone();
        client.channel.codec = Arc::new(codec);
        Ok(client)
    }

    /// The limits and compression of this client's typed clients.
    pub fn codec(&self) -> CodecOptions {
        *self.channel.codec
    }

    /// The endpoint the client was built for.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Releases the transport. Every later call, through any clone of this
    /// client or of its typed clients, fails at once with `CANCELLED`
    /// ("AmeideClient is closed…"). Calls already in flight finish.
    pub fn close(&self) {
        self.channel.closed.store(true, Ordering::Release);
        self.slot.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.channel.closed.load(Ordering::Acquire)
    }
}
