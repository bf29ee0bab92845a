//! The `grpc-timeout` header codec (gRPC over HTTP/2: at most 8 digits and
//! a unit, `H M S m u n`), used by the client's timeout and retry layers to
//! send the budget left and by the server's inbound layer to read it.

use std::time::Duration;

use http::HeaderValue;

/// Encodes a duration as a `grpc-timeout` value: at most 8 digits and a unit,
/// rounded up so that a tiny remaining budget is never sent as zero.
struct Encoded {
    buf: [u8; 9],
    len: usize,
}

impl AsRef<[u8]> for Encoded {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (size, unit) in units {
        let value = nanos.div_ceil(size);
        if value <= MAX {
            // At most 8 digits and a unit: write them into a stack buffer.
            let mut buf = [0u8; 9];
            let mut len = 0;
            let mut digits = [0u8; 8];
            let mut n = value;
            let mut count = 0;
            loop {
                digits[count] = b'0' + (n % 10) as u8;
                count += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for d in digits[..count].iter().rev() {
                buf[len] = *d;
                len += 1;
            }
            buf[len] = unit as u8;
            len += 1;
            // Owned by the Bytes itself: one allocation, and the per-attempt
            // copies the retry layer makes are reference counts.
            let mut value =
                HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(Encoded { buf, len }))
                    .expect("digits and a unit letter form a valid header value");
            // Unique per attempt: keep it out of the HPACK dynamic table.
            value.set_sensitive(true);
            return value;
        }
    }
    HeaderValue::from_static("99999999H")
}

/// Decodes a `grpc-timeout` value; `None` when malformed.
pub(crate) fn decode_grpc_timeout(value: &str) -> Option<Duration> {
    // Bytes, not string slices: a non-ASCII value must be rejected, not split
    // inside a character (found by the property tests).
    let bytes = value.as_bytes();
    if bytes.len() < 2 || bytes.len() > 9 {
        return None;
    }
    let (digits, unit) = bytes.split_at(bytes.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b"n" => Duration::from_nanos(n),
        b"u" => Duration::from_micros(n),
        b"m" => Duration::from_millis(n),
        b"S" => Duration::from_secs(n),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trips_within_one_unit() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(250),
            Duration::from_secs(5),
            Duration::from_secs(4 * 3600),
            Duration::from_secs(100 * 24 * 3600),
        ] {
            let encoded = encode_grpc_timeout(d);
            let text = encoded.to_str().unwrap();
            assert!(text.len() <= 9, "{text}");
            let decoded = decode_grpc_timeout(text).unwrap();
            assert!(decoded >= d, "{d:?} -> {text} -> {decoded:?}");
        }
        assert_eq!(encode_grpc_timeout(Duration::from_millis(5000)), "5000000u");
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "1n");
    }

    #[test]
    fn malformed_grpc_timeout_is_rejected() {
        for bad in [
            "",
            "5",
            "S",
            "1x",
            "-1S",
            "123456789S",
            "1.5S",
            "１S",
            "n*Æ",
            "1Æ",
            "Æ",
        ] {
            assert_eq!(decode_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
