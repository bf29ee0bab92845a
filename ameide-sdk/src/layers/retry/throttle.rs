//! gRFC A6 retry throttling: a token bucket per target, shared by every
//! client of that target in the process.

use std::sync::Arc;

/// gRFC A6 retry throttling: a token bucket per target. Every failed attempt
/// with a retryable code (or a pushback) costs one token, every success adds
/// `token_ratio`; retries are allowed only while more than half of
/// `max_tokens` remain. When a target is failing broadly, clients back off
/// together instead of tripling its load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Bucket size (and starting level), 1 ..= 1000.
    pub max_tokens: f64,
    /// Tokens a success adds back, in (0, 1].
    pub token_ratio: f64,
}

impl Default for ThrottleConfig {
    /// 10 tokens, 0.1 per success: after 5 straight failures retries pause
    /// until about 10 successes have come back per token spent.
    fn default() -> Self {
        ThrottleConfig {
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }
}

/// The token bucket of one target (see [`ThrottleConfig`]).
#[derive(Debug)]
pub struct Throttle {
    pub(crate) config: ThrottleConfig,
    pub(crate) tokens: std::sync::Mutex<f64>,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config,
            tokens: std::sync::Mutex::new(config.max_tokens),
        }
    }

    /// The bucket shared by every retry layer for `target` with the same
    /// configuration (clients built separately for one target share it).
    pub(crate) fn for_target(target: &str, config: ThrottleConfig) -> Arc<Throttle> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock, Weak};
        static BUCKETS: OnceLock<Mutex<HashMap<String, Weak<Throttle>>>> = OnceLock::new();
        let key = format!("{target}|{}|{}", config.max_tokens, config.token_ratio);
        let mut buckets = BUCKETS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = buckets.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let bucket = Arc::new(Throttle::new(config));
        buckets.insert(key, Arc::downgrade(&bucket));
        bucket
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn allows_retry(&self) -> bool {
        self.tokens() > self.config.max_tokens / 2.0
    }

    pub(crate) fn failure(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t - 1.0).max(0.0);
    }

    pub(crate) fn success(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + self.config.token_ratio).min(self.config.max_tokens);
    }
}
