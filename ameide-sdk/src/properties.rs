//! Property tests (proptest, on stable, in the ordinary test suite) for the
//! duration arithmetic and the header codecs peers and users reach.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use crate::grpc_timeout::{decode_grpc_timeout, encode_grpc_timeout};
use crate::layers::RetryPolicy;

fn header_pairs() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let names = prop_oneof![
        Just("grpc-status".to_string()),
        Just("grpc-message".to_string()),
        Just("grpc-status-details-bin".to_string()),
        Just("grpc-retry-pushback-ms".to_string()),
        "[a-z][a-z0-9-]{0,12}",
    ];
    prop::collection::vec((names, prop::collection::vec(any::<u8>(), 0..64)), 0..8)
}

fn map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

proptest! {
    #[test]
    fn grpc_timeout_round_trips_rounded_up_within_one_unit(nanos in any::<u64>()) {
        let d = Duration::from_nanos(nanos);
        let encoded = encode_grpc_timeout(d);
        let text = encoded.to_str().unwrap();
        prop_assert!(text.len() <= 9);
        let back = decode_grpc_timeout(text).unwrap();
        prop_assert!(back >= d);
        // Rounded up by less than one unit of the one chosen.
        let unit = match text.as_bytes()[text.len() - 1] {
            b'n' => Duration::from_nanos(1),
            b'u' => Duration::from_micros(1),
            b'm' => Duration::from_millis(1),
            b'S' => Duration::from_secs(1),
            b'M' => Duration::from_secs(60),
            _ => Duration::from_secs(3600),
        };
        prop_assert!(back - d < unit);
    }

    #[test]
    fn grpc_timeout_decoding_never_panics_and_never_overflows_a_deadline(text in ".{0,12}") {
        if let Some(d) = decode_grpc_timeout(&text) {
            let _ = crate::time::add(tokio::time::Instant::now(), d);
        }
    }

    #[test]
    fn saturating_time_never_panics(secs in any::<u64>(), nanos in 0u32..1_000_000_000, factor in any::<f64>()) {
        let d = Duration::new(secs, nanos);
        let now = tokio::time::Instant::now();
        prop_assert!(crate::time::add(now, d) >= now);
        let scaled = crate::time::mul_f64(d, factor);
        if factor.is_finite() && factor >= 1.0 {
            prop_assert!(scaled >= d || scaled == Duration::MAX);
        }
        let _ = crate::time::secs_f64(factor);
    }

    #[test]
    fn retry_delays_stay_within_the_cap_times_the_jitter(
        initial_ms in 1u64..10_000,
        extra_ms in 0u64..1_000_000,
        multiplier in 1.0f64..=100.0,
        lo in 0.0f64..=10.0,
        span in 0.0f64..=10.0,
        attempt in any::<u32>(),
        factor in any::<f64>(),
    ) {
        let hi = (lo + span).min(10.0);
        let policy = RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(initial_ms))
            .with_max_backoff(Duration::from_millis(initial_ms + extra_ms))
            .with_multiplier(multiplier)
            .with_jitter(lo, hi);
        prop_assert!(policy.validate().is_ok());
        let delay = policy.delay(attempt, factor);
        let cap = Duration::from_millis(initial_ms + extra_ms).as_secs_f64() * hi;
        prop_assert!(delay.as_secs_f64() <= cap * (1.0 + 1e-9) + 1e-9, "{delay:?} > {cap}");
    }

    #[test]
    fn peer_status_headers_never_panic_and_leave_tonic_safe(pairs in header_pairs()) {
        let mut headers = map(&pairs);
        if let Some(peer) = crate::peer::status_from_headers(&headers) {
            prop_assert!(peer.status.message().len() <= crate::peer::MAX_MESSAGE_BYTES);
            let shown = crate::Error::from(peer.status).to_string();
            prop_assert!(!shown.contains('\n'));
        }
        let _ = crate::peer::sanitize(&mut headers);
        let _ = tonic::Status::from_header_map(&headers);
    }

    #[test]
    fn status_details_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Some(delay) = crate::peer::retry_delay(&bytes) {
            prop_assert!(delay <= Duration::from_secs(315_576_000_001));
        }
        let _ = crate::peer::error_details(&bytes);
    }

    #[test]
    fn proto_durations_are_always_in_range(seconds in any::<i64>(), nanos in any::<i32>()) {
        let d = crate::peer::proto_duration(prost_types::Duration { seconds, nanos });
        prop_assert!(d <= Duration::new(315_576_000_000, 999_999_999));
    }

    #[test]
    fn inbound_request_ids_kept_are_always_valid(id in ".{0,200}") {
        if crate::server::valid_request_id(&id) {
            prop_assert!(id.len() <= crate::server::MAX_REQUEST_ID_BYTES);
            prop_assert!(HeaderValue::from_str(&id).is_ok());
        }
    }
}

proptest! {
    /// The response framing check gives the same verdict however the body is
    /// split into chunks (HTTP/2 DATA frames split messages anywhere).
    #[test]
    fn frame_check_is_split_invariant(
        data in prop::collection::vec(any::<u8>(), 0..512),
        at in any::<usize>(),
        limit in 1usize..4096,
    ) {
        let mut whole = crate::codec::FrameCheck::new(limit);
        let whole_result = whole.feed(&data).map_err(|s| s.code());
        let at = at % (data.len() + 1);
        let mut split = crate::codec::FrameCheck::new(limit);
        let split_result = split
            .feed(&data[..at])
            .and_then(|()| split.feed(&data[at..]))
            .map_err(|s| s.code());
        prop_assert_eq!(whole_result, split_result);
        if whole_result.is_ok() {
            prop_assert_eq!(whole.cut_off().is_some(), split.cut_off().is_some());
            // The metrics' count of message bytes agrees too.
            prop_assert_eq!(whole.message_bytes(), split.message_bytes());
        }
    }

    /// The metrics' message-byte counter, on any bytes a peer sends: never
    /// panics, never counts more than arrived, the same however split, and
    /// on well-framed messages exactly their lengths.
    #[test]
    fn message_bytes_are_split_invariant_and_bounded(
        data in prop::collection::vec(any::<u8>(), 0..512),
        at in any::<usize>(),
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..6),
    ) {
        use crate::telemetry::metrics::MessageBytes;
        let mut whole = MessageBytes::default();
        whole.feed(&data);
        let at = at % (data.len() + 1);
        let mut split = MessageBytes::default();
        split.feed(&data[..at]);
        split.feed(&data[at..]);
        prop_assert_eq!(whole.total(), split.total());
        prop_assert!(whole.total() <= data.len() as u64);

        let mut framed = Vec::new();
        for m in &messages {
            framed.push(0);
            framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
            framed.extend_from_slice(m);
        }
        let mut count = MessageBytes::default();
        count.feed(&framed);
        prop_assert_eq!(count.total(), messages.iter().map(|m| m.len() as u64).sum::<u64>());
    }
}
