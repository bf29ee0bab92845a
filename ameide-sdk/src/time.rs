//! Saturating arithmetic on durations and instants.
//!
//! `Instant + Duration`, `Duration::mul_f64` and `Duration::from_secs_f64`
//! panic on overflow, on negative and on non-finite input. Durations here come
//! from users (settings) and from peers (retry hints, `expires_in`), so every
//! such computation in the SDK goes through these helpers instead, which
//! saturate: at [`far_future`] for instants, at `Duration::MAX` for durations,
//! at zero for negative or NaN input.

use std::time::Duration;

use tokio::time::Instant;

/// About a hundred years: "never", as an offset every clock can add.
pub(crate) const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `from + by`, or [`far_future`] when that would overflow (or lie further).
pub(crate) fn add(from: Instant, by: Duration) -> Instant {
    from.checked_add(by.min(FAR))
        .unwrap_or_else(|| far_future(from))
}

/// An instant about a hundred years after `from`.
pub(crate) fn far_future(from: Instant) -> Instant {
    from.checked_add(FAR).unwrap_or(from)
}

/// `seconds` as a duration: negative or NaN → zero; too large → `Duration::MAX`.
pub(crate) fn secs_f64(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// `d × factor`, saturating (see [`secs_f64`]).
pub(crate) fn mul_f64(d: Duration, factor: f64) -> Duration {
    secs_f64(d.as_secs_f64() * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(add(now, Duration::MAX), far_future(now));
        assert_eq!(
            add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(secs_f64(f64::NAN), Duration::ZERO);
        assert_eq!(secs_f64(-1.0), Duration::ZERO);
        assert_eq!(secs_f64(f64::INFINITY), Duration::MAX);
        assert_eq!(secs_f64(1e300), Duration::MAX);
        assert_eq!(mul_f64(Duration::MAX, 1.5), Duration::MAX);
        assert_eq!(mul_f64(Duration::from_secs(2), 0.5), Duration::from_secs(1));
        assert_eq!(mul_f64(Duration::from_secs(2), f64::NAN), Duration::ZERO);
    }
}
