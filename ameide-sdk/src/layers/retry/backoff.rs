//! Sleeping between attempts and the random factor of each delay, both
//! injectable so tests can drive time.

use std::time::Duration;

use crate::auth::BoxFuture;

/// Sleeps between attempts. The default uses `tokio::time::sleep` (paused-clock aware).
pub trait Sleeper: Send + Sync + 'static {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Picks the random factor of each delay.
pub trait Jitter: Send + Sync + 'static {
    /// A factor in `[min, max]`.
    fn factor(&self, min: f64, max: f64) -> f64;
}

#[derive(Debug)]
pub(crate) struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[derive(Debug)]
pub(crate) struct UniformJitter;

impl Jitter for UniformJitter {
    fn factor(&self, min: f64, max: f64) -> f64 {
        min + fastrand::f64() * (max - min)
    }
}

impl<F: Fn(f64, f64) -> f64 + Send + Sync + 'static> Jitter for F {
    fn factor(&self, min: f64, max: f64) -> f64 {
        // The policy clamps again (and treats NaN as 1): a closure cannot
        // push a delay outside the range.
        self(min, max)
    }
}
