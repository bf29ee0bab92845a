//! Request ids: the generator of ids for calls (and inbound requests) that
//! arrive without one. UUID v4 unless the user gives a function.

use http::HeaderValue;
use std::fmt;
use std::sync::Arc;

/// Makes request ids for calls that arrive without one.
///
/// ```
/// let generator = ameide_sdk::layers::RequestIdGenerator::new(|| "fixed-id".to_string());
/// assert_eq!(generator.generate(), "fixed-id");
/// assert_eq!(ameide_sdk::layers::RequestIdGenerator::uuid_v4().generate().len(), 36);
/// ```
#[derive(Clone)]
pub struct RequestIdGenerator(Generator);

#[derive(Clone)]
enum Generator {
    /// The default: formatted straight into the header value's storage.
    UuidV4,
    Custom(Arc<dyn Fn() -> String + Send + Sync>),
}

/// The bytes of an id shared by the header value and [`CallState`]: one
/// allocation, and clones of the header (one per retry attempt) are
/// reference counts, not copies.
struct SharedId(Arc<str>);

impl AsRef<[u8]> for SharedId {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn uuid_v4_into(buf: &mut [u8; 36]) -> &str {
    let bytes = fastrand::u128(..).to_le_bytes();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    id.hyphenated().encode_lower(buf)
}

impl RequestIdGenerator {
    /// A generator from a function.
    pub fn new(generate: impl Fn() -> String + Send + Sync + 'static) -> Self {
        RequestIdGenerator(Generator::Custom(Arc::new(generate)))
    }

    /// Random UUID v4 ids, the default. The random bits come from a fast
    /// thread-local generator (not the OS: a request id is a correlation key,
    /// not a secret), which keeps a syscall off every call.
    pub fn uuid_v4() -> Self {
        RequestIdGenerator(Generator::UuidV4)
    }

    /// A new id.
    pub fn generate(&self) -> String {
        match &self.0 {
            Generator::UuidV4 => uuid_v4_into(&mut [0; 36]).to_owned(),
            Generator::Custom(f) => f(),
        }
    }

    /// A new id as the header value and the shared string; `Err` carries
    /// what the generator returned when it is not a valid, non-empty header
    /// value (for the warning).
    pub(crate) fn generate_shared(&self) -> Result<(HeaderValue, Arc<str>), String> {
        let id: Arc<str> = match &self.0 {
            Generator::UuidV4 => Arc::from(uuid_v4_into(&mut [0; 36])),
            Generator::Custom(f) => Arc::from(f()),
        };
        if id.is_empty() {
            return Err(String::new());
        }
        let bytes = bytes::Bytes::from_owner(SharedId(id.clone()));
        match HeaderValue::from_maybe_shared(bytes) {
            Ok(value) => Ok((value, id)),
            Err(_) => Err(id.to_string()),
        }
    }
}

impl fmt::Debug for RequestIdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestIdGenerator")
    }
}
