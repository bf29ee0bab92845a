//! The retry policy: attempts, backoff, retried codes, safe-retry mode, replay
//! cap, throttling choice, and their validation.

use std::time::Duration;

use tonic::Code;

use super::throttle::ThrottleConfig;
use crate::config_error::{ConfigError, ConfigErrorKind};

/// When and how often to retry.
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::layers::RetryPolicy;
/// let policy = RetryPolicy::default();
/// assert_eq!(policy.max_attempts(), 3);
/// assert_eq!(policy.base_delay(2), Duration::from_millis(250));
/// assert_eq!(policy.base_delay(3), Duration::from_millis(500));
/// assert!(policy.retries(tonic::Code::Unavailable));
/// assert!(!policy.retries(tonic::Code::Internal));
///
/// let custom = RetryPolicy::default().with_max_attempts(5).with_initial_backoff(Duration::from_millis(100));
/// assert!(custom.validate().is_ok());
/// assert!(RetryPolicy::default().with_max_attempts(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max_backoff: Duration,
    pub(crate) jitter: (f64, f64),
    pub(crate) retryable: Vec<Code>,
    pub(crate) max_replay_bytes: usize,
    pub(crate) safe: bool,
    pub(crate) throttle: Option<ThrottleConfig>,
}

/// The longest `max_backoff` accepted (with the other bounds below, checked
/// by [`RetryPolicy::validate`]).
///
/// ```
/// use ameide_sdk::layers::{retry, RetryPolicy};
/// let too_long = RetryPolicy::default().with_max_backoff(retry::MAX_BACKOFF * 2);
/// assert!(too_long.validate().unwrap_err().to_string().contains("max_backoff"));
/// let too_steep = RetryPolicy::default().with_multiplier(retry::MAX_MULTIPLIER * 2.0);
/// assert!(too_steep.validate().is_err());
/// let too_wide = RetryPolicy::default().with_jitter(0.5, retry::MAX_JITTER + 1.0);
/// assert!(too_wide.validate().is_err());
/// let too_big = RetryPolicy::default().with_max_replay_bytes(retry::MAX_REPLAY_BYTES + 1);
/// assert!(too_big.validate().is_err());
/// assert_eq!(retry::MAX_HINT_WITHOUT_DEADLINE.as_secs(), 3600);
/// ```
pub const MAX_BACKOFF: Duration = crate::config::MAX_TIMEOUT;
/// The largest backoff multiplier accepted.
pub const MAX_MULTIPLIER: f64 = 100.0;
/// The largest jitter factor accepted.
pub const MAX_JITTER: f64 = 10.0;
/// The largest request buffered for replay.
pub const MAX_REPLAY_BYTES: usize = 256 * 1024 * 1024;
/// Without a deadline (the layer used alone), a server's retry hint longer
/// than this stops retrying instead of sleeping.
pub const MAX_HINT_WITHOUT_DEADLINE: Duration = Duration::from_secs(3600);

impl Default for RetryPolicy {
    fn default() -> Self {
        use crate::contract as c;
        RetryPolicy {
            max_attempts: c::RETRY_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(c::RETRY_INITIAL_BACKOFF_MS),
            multiplier: c::RETRY_BACKOFF_MULTIPLIER,
            max_backoff: Duration::from_millis(c::RETRY_MAX_BACKOFF_MS),
            jitter: (c::RETRY_JITTER_MIN, c::RETRY_JITTER_MAX),
            // The contract's names are the one source of the default codes.
            retryable: c::RETRYABLE_CODES
                .iter()
                .filter_map(|name| {
                    (0..=16)
                        .map(Code::from_i32)
                        .find(|code| crate::error::canonical_code_name(*code) == *name)
                })
                .collect(),
            max_replay_bytes: crate::layers::replay::DEFAULT_MAX_REPLAY_BYTES,
            safe: false,
            throttle: Some(ThrottleConfig::default()),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn disabled() -> Self {
        Self::default().with_max_attempts(1)
    }

    /// Sets the attempt limit (the first attempt included).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the delay before the second attempt (before jitter).
    pub fn with_initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// Sets the growth factor of the delay.
    pub fn with_multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }

    /// Sets the delay cap (before jitter).
    pub fn with_max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Sets the range of the random factor each delay is multiplied by.
    pub fn with_jitter(mut self, min: f64, max: f64) -> Self {
        self.jitter = (min, max);
        self
    }

    /// Sets the codes that are retried.
    pub fn with_retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable = codes.into_iter().collect();
        self
    }

    /// Sets the largest request that is buffered for replay; larger ones are sent once.
    pub fn with_max_replay_bytes(mut self, bytes: usize) -> Self {
        self.max_replay_bytes = bytes;
        self
    }

    /// Safe-retry mode: DEADLINE_EXCEEDED, ABORTED and UNAVAILABLE sent by the
    /// server are retried only for `NO_SIDE_EFFECTS` and `IDEMPOTENT` methods,
    /// because the server may have acted on the request. UNAVAILABLE from the
    /// transport (the request never got a response: connect failure, refused
    /// stream) and RESOURCE_EXHAUSTED stay retryable for every method. Off by
    /// default, which is the contract's behaviour: fewer spurious failures, at
    /// the price of possibly repeating a non-idempotent write.
    pub fn with_safe_retries(mut self, safe: bool) -> Self {
        self.safe = safe;
        self
    }

    /// Sets (or with `None` switches off) retry throttling.
    pub fn with_throttling(mut self, throttle: Option<ThrottleConfig>) -> Self {
        self.throttle = throttle;
        self
    }

    /// Whether safe-retry mode is on.
    pub fn safe_retries(&self) -> bool {
        self.safe
    }

    /// Checks every parameter; the error names the bad one and the valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::new(ConfigErrorKind::Retry, m));
        if !(1..=10).contains(&self.max_attempts) {
            return err(format!(
                "retry max_attempts {} must be within 1..=10",
                self.max_attempts
            ));
        }
        if self.max_backoff > MAX_BACKOFF {
            return err(format!(
                "retry max_backoff {:?} must be at most {MAX_BACKOFF:?}",
                self.max_backoff
            ));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return err(format!(
                "retry initial_backoff {:?} must be > 0 and <= max_backoff {:?}",
                self.initial_backoff, self.max_backoff
            ));
        }
        if !(self.multiplier.is_finite() && (1.0..=MAX_MULTIPLIER).contains(&self.multiplier)) {
            return err(format!(
                "retry multiplier {} must be within 1..={MAX_MULTIPLIER}",
                self.multiplier
            ));
        }
        let (lo, hi) = self.jitter;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= MAX_JITTER) {
            return err(format!(
                "retry jitter [{lo}, {hi}] must satisfy 0 <= min <= max <= {MAX_JITTER}"
            ));
        }
        if self.retryable.contains(&Code::Ok) {
            return err("retry codes must not include OK: an OK call is never retried".into());
        }
        if self.max_replay_bytes > MAX_REPLAY_BYTES {
            return err(format!(
                "retry max_replay_bytes {} must be at most {MAX_REPLAY_BYTES}",
                self.max_replay_bytes
            ));
        }
        if let Some(t) = self.throttle
            && !(t.max_tokens.is_finite()
                && (1.0..=1000.0).contains(&t.max_tokens)
                && t.token_ratio > 0.0
                && t.token_ratio <= 1.0)
        {
            return err(format!(
                "retry throttling max_tokens {} must be within 1..=1000 and token_ratio {} within (0, 1]",
                t.max_tokens, t.token_ratio
            ));
        }
        Ok(())
    }

    /// The attempt limit.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether `code` is retried.
    pub fn retries(&self, code: Code) -> bool {
        self.retryable.contains(&code)
    }

    /// The jitter range.
    pub fn jitter(&self) -> (f64, f64) {
        self.jitter
    }

    /// The delay before attempt `attempt` (≥ 2), before jitter: never more
    /// than `max_backoff`, whatever the parameters (the arithmetic saturates).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(2).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        crate::time::secs_f64(secs).min(self.max_backoff)
    }

    /// The delay before attempt `attempt` (≥ 2) with jitter `factor`: the
    /// base delay times the factor, the factor held inside the policy's
    /// jitter range (a factor that is not a number counts as 1).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::layers::RetryPolicy;
    /// let policy = RetryPolicy::default(); // 250 ms ×2 up to 5 s, jitter [0.5, 1.5]
    /// assert_eq!(policy.delay(2, 1.0), Duration::from_millis(250));
    /// assert_eq!(policy.delay(3, 99.0), Duration::from_millis(750), "factor held to 1.5");
    /// assert_eq!(policy.delay(u32::MAX, f64::NAN), Duration::from_secs(5), "capped, NaN is 1");
    /// ```
    pub fn delay(&self, attempt: u32, factor: f64) -> Duration {
        let (lo, hi) = self.jitter;
        let factor = if factor.is_finite() { factor } else { 1.0 };
        crate::time::mul_f64(self.base_delay(attempt), factor.clamp(lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_codes_are_the_contracts() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.retryable.len(),
            crate::contract::RETRYABLE_CODES.len(),
            "every contract name maps to a code"
        );
        for name in crate::contract::RETRYABLE_CODES {
            assert!(
                policy
                    .retryable
                    .iter()
                    .any(|c| crate::error::canonical_code_name(*c) == *name)
            );
        }
    }
}
