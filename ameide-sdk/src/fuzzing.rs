//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`,
//! hidden, not part of the API). Each takes raw bytes, drives one parser of
//! peer or user input the way the SDK does, and checks what must hold.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header pairs from bytes: lines of `name:value`; pairs `http` refuses are skipped.
pub fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// A status read from peer headers or trailers; after sanitizing, tonic's
/// own parser must not panic either; `Error` must render in one line.
pub fn peer_status(data: &[u8]) {
    let mut map = headers(data);
    if let Some(peer) = crate::peer::status_from_headers(&map) {
        assert!(peer.status.message().len() <= crate::peer::MAX_MESSAGE_BYTES);
        let shown = crate::Error::from(peer.status).to_string();
        assert!(!shown.contains('\n'));
    }
    let _ = crate::peer::sanitize(&mut map);
    let _ = tonic::Status::from_header_map(&map);
}

/// `grpc-status-details-bin` payloads (decoded bytes): the details, the
/// RetryInfo delay, the one-line `Error`.
pub fn status_details(data: &[u8]) {
    let status = tonic::Status::with_details(
        tonic::Code::Unavailable,
        "fuzz",
        bytes::Bytes::copy_from_slice(data),
    );
    if let Some(delay) = crate::peer::retry_delay(status.details()) {
        assert!(delay <= Duration::from_secs(315_576_000_001));
    }
    let err = crate::Error::from(status);
    assert!(!err.to_string().contains('\n'));
}

/// `grpc-timeout` and `grpc-retry-pushback-ms` values.
pub fn timeouts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(d) = crate::grpc_timeout::decode_grpc_timeout(text) {
        let encoded = crate::grpc_timeout::encode_grpc_timeout(d);
        let back = crate::grpc_timeout::decode_grpc_timeout(encoded.to_str().unwrap_or(""))
            .expect("what the SDK encodes, it decodes");
        assert!(back >= d.min(Duration::from_secs(99_999_999 * 3600)));
        let _ = crate::time::add(tokio::time::Instant::now(), d);
    }
    let _ = crate::layers::retry::parse_pushback(data);
}

/// Every header of an inbound request through the inbound layer.
pub fn inbound(data: &[u8]) {
    use tower::Layer;
    let mut request = http::Request::new(());
    *request.headers_mut() = headers(data);
    let service = crate::server::InboundLayer::new().layer(());
    let ctx = service.start(&mut request);
    assert!(crate::server::valid_request_id(ctx.request_id()));
    assert!(
        ctx.tenant_id()
            .is_none_or(|t| t.len() <= crate::server::MAX_IDENTITY_BYTES)
    );
    assert!(
        ctx.session_id()
            .is_none_or(|s| s.len() <= crate::server::MAX_IDENTITY_BYTES)
    );
}

/// An OAuth2 token endpoint's answer: first two bytes the HTTP status.
#[cfg(feature = "oauth2")]
pub fn token_response(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let code = u16::from_be_bytes([data[0], data[1]]) % 600;
    let Ok(status) = http::StatusCode::from_u16(code.max(100)) else {
        return;
    };
    if let Ok((_, Some(lifetime))) = crate::auth::oauth2::parse_token_response(status, &data[2..]) {
        assert!(lifetime <= crate::auth::ClientCredentials::MAX_EXPIRES_IN);
        let _ = crate::time::add(tokio::time::Instant::now(), lifetime);
    }
}

/// `AmeideConfig::from_lookup` over nine values split from the input by NUL.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\0').collect();
    let names = [
        crate::config::env::BASE_URL,
        crate::config::env::TENANT_ID,
        crate::config::env::USER_ID,
        crate::config::env::TIMEOUT_MS,
        crate::config::env::AUTH_TOKEN,
        crate::config::env::TLS_CA_FILE,
        crate::config::env::TLS_CLIENT_CERT_FILE,
        crate::config::env::TLS_CLIENT_KEY_FILE,
        crate::config::env::TLS_ROOTS,
    ];
    let lookup = |name: &str| {
        Ok(names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string()))
    };
    if let Ok(config) = crate::AmeideConfig::from_lookup(lookup) {
        assert!(config.timeout <= crate::config::MAX_TIMEOUT);
    }
}

/// The retry delay of any policy `validate` accepts, any attempt, any jitter.
pub fn retry_delay(data: &[u8]) {
    let mut words = data
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .chain(std::iter::repeat(0));
    let mut next = || words.next().unwrap_or(0);
    let policy = crate::layers::RetryPolicy::default()
        .with_initial_backoff(Duration::from_nanos(next()))
        .with_max_backoff(Duration::new(next(), (next() % 1_000_000_000) as u32))
        .with_multiplier(f64::from_bits(next()))
        .with_jitter(f64::from_bits(next()), f64::from_bits(next()));
    let attempt = next() as u32;
    let factor = f64::from_bits(next());
    if policy.validate().is_ok() {
        let delay = policy.delay(attempt, factor);
        let (_, hi) = policy.jitter();
        assert!(
            delay.as_secs_f64() <= policy.base_delay(attempt).as_secs_f64() * hi * 1.000_001 + 1e-9
        );
        let _ = crate::time::add(tokio::time::Instant::now(), delay);
    }
}

/// The response framing check, fed the input whole and split at a point the
/// input's first byte chooses: the same verdict either way, never a panic.
pub fn frames(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let limit = 1 + usize::from(first) * 64;
    // The first byte also picks a mode: plain, a response without an
    // encoding (compressed flags refused), or gzip / zstd messages checked
    // by decompressing them (the decompressors see whatever the peer sent).
    let mode = first % 4;
    let make = || {
        let frames = crate::codec::FrameCheck::new(limit);
        match mode {
            1 => frames.check_compressed(tonic::codec::CompressionEncoding::Gzip),
            2 => frames.uncompressed_only(),
            3 => frames.check_compressed(tonic::codec::CompressionEncoding::Zstd),
            _ => frames,
        }
    };
    let mut whole = make();
    let whole_result = whole.feed(rest).map_err(|s| s.code());
    let at = usize::from(first) % (rest.len() + 1);
    let mut split = make();
    let split_result = split
        .feed(&rest[..at])
        .and_then(|()| split.feed(&rest[at..]))
        .map_err(|s| s.code());
    if mode % 2 == 1 {
        // Decompression: the same verdict, failed or not.
        assert_eq!(whole_result.is_ok(), split_result.is_ok());
    } else {
        assert_eq!(whole_result, split_result);
    }
    if whole_result.is_ok() && split_result.is_ok() {
        assert_eq!(whole.cut_off().is_some(), split.cut_off().is_some());
        assert_eq!(whole.messages(), split.messages());
    }
}

/// TLS material as a user or the environment gives it: a CA PEM and a client
/// certificate and key, split from the input by NUL. A clear error or a
/// configuration, never a panic.
pub fn tls_material(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let ca = parts.next().unwrap_or_default();
    let cert = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    let identity = crate::ClientIdentity::from_pem(cert.to_vec(), key.to_vec());
    for roots in [crate::TrustRoots::Bundled, crate::TrustRoots::CaOnly] {
        let _ = crate::transport::tls::client_config(roots, Some(ca), None, Some(&identity));
        let _ = crate::transport::tls::client_config(roots, Some(ca), None, None);
    }
    let _ = String::from_utf8_lossy(data).parse::<crate::TrustRoots>();
}

/// Server bytes as the transport's tap reads them under hyper, whole and
/// split at one point: the same SETTINGS, stream limit and GOAWAY either way.
pub fn connection_frames(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(first) % (rest.len() + 1);
    let whole = crate::transport::tap::observe(&[rest]);
    let split = crate::transport::tap::observe(&[&rest[..at], &rest[at..]]);
    assert_eq!(whole, split);
}

/// A proxy URL, a `NO_PROXY` list, a host and a proxy's CONNECT answer
/// (NUL-separated): parsed and judged without a panic; a refusal reads in one line.
pub fn proxy(data: &[u8]) {
    crate::transport::proxy::fuzz(data);
}
