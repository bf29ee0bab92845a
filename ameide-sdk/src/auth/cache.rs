//! A caching token provider: single-flight refresh, refresh ahead of expiry.
//!
//! | Situation | What the cache does |
//! |---|---|
//! | a fresh token is cached | returns it; no fetch |
//! | no usable token (none yet, expired, invalidated) | one caller fetches; concurrent callers wait for that one fetch (single flight) |
//! | the token is still valid but inside the refresh window | one caller refreshes; everyone else keeps using the valid token meanwhile |
//! | a refresh fails while the token is still valid | keeps serving the last good token; tries again after `retry_after_failure` |
//! | a fetch fails with no valid token | the error reaches the caller; nothing is cached, so the next call fetches again |
//! | the server answered UNAUTHENTICATED | [`invalidate`](TokenProvider::invalidate) drops the token; the auth layer fetches a new one and replays the call once |
//!
//! The refresh window starts `refresh_ahead × (1 + jitter)` before expiry,
//! the jitter drawn per token so that many clients do not refresh in lockstep.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{AccessToken, BoxFuture, TokenError, TokenProvider};

struct State {
    token: Option<AccessToken>,
    refresh_at: Option<Instant>,
    last_failure: Option<Instant>,
}

/// Caches the tokens of another provider (see the module table).
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::auth::{AccessToken, CachingTokenProvider};
/// let cached = CachingTokenProvider::new(|| async {
///     Ok(Some(AccessToken::new("t").with_expiry(tokio::time::Instant::now() + Duration::from_secs(300))))
/// })
/// .refresh_ahead(Duration::from_secs(30));
/// # let _ = cached;
/// ```
pub struct CachingTokenProvider<P> {
    provider: P,
    state: Mutex<State>,
    refresh: tokio::sync::Mutex<()>,
    refresh_ahead: Duration,
    jitter: f64,
    retry_after_failure: Duration,
}

impl<P> fmt::Debug for CachingTokenProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingTokenProvider")
            .field("refresh_ahead", &self.refresh_ahead)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl<P: TokenProvider> CachingTokenProvider<P> {
    /// Caches `provider`'s tokens: refresh 60 s (+ up to 20 %) before expiry,
    /// retry a failed refresh after 1 s.
    pub fn new(provider: P) -> Self {
        CachingTokenProvider {
            provider,
            state: Mutex::new(State {
                token: None,
                refresh_at: None,
                last_failure: None,
            }),
            refresh: tokio::sync::Mutex::new(()),
            refresh_ahead: Duration::from_secs(60),
            jitter: 0.2,
            retry_after_failure: Duration::from_secs(1),
        }
    }

    /// How long before expiry refreshing starts.
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }

    /// The random extra on `refresh_ahead`, as a fraction in `[0, 1]`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// How long to wait after a failed refresh before trying again.
    pub fn retry_after_failure(mut self, wait: Duration) -> Self {
        self.retry_after_failure = wait;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(usable token, is it fresh)`.
    fn cached(&self, now: Instant) -> (Option<AccessToken>, bool) {
        let state = self.state();
        match &state.token {
            Some(token) if token.expires_at().is_none_or(|e| now < e) => {
                let fresh = state.refresh_at.is_none_or(|r| now < r);
                (Some(token.clone()), fresh)
            }
            _ => (None, false),
        }
    }

    fn store(&self, token: Option<AccessToken>) {
        let refresh_at = token.as_ref().and_then(|t| t.expires_at()).map(|expiry| {
            let ahead = self
                .refresh_ahead
                .mul_f64(1.0 + self.jitter * fastrand::f64());
            expiry.checked_sub(ahead).unwrap_or_else(Instant::now)
        });
        let mut state = self.state();
        state.token = token;
        state.refresh_at = refresh_at;
        state.last_failure = None;
    }

    async fn fetch(&self) -> Result<Option<AccessToken>, TokenError> {
        let fetched = self.provider.token().await;
        match &fetched {
            Ok(token) => self.store(token.clone()),
            Err(_) => self.state().last_failure = Some(Instant::now()),
        }
        fetched
    }

    async fn get(&self) -> Result<Option<AccessToken>, TokenError> {
        let now = Instant::now();
        match self.cached(now) {
            (Some(token), true) => return Ok(Some(token)),
            (Some(token), false) => {
                // Valid but due for a refresh: one caller refreshes, the rest carry on.
                let backing_off = self
                    .state()
                    .last_failure
                    .is_some_and(|f| now < f + self.retry_after_failure);
                if backing_off {
                    return Ok(Some(token));
                }
                let Ok(_refreshing) = self.refresh.try_lock() else {
                    return Ok(Some(token));
                };
                return match self.fetch().await {
                    Ok(fresh) => Ok(fresh),
                    Err(e) => {
                        ::tracing::warn!(error = %e, "token refresh failed; serving the cached token until it expires");
                        Ok(Some(token))
                    }
                };
            }
            (None, _) => {}
        }
        // Nothing usable: single flight. Whoever holds the lock fetches; the
        // others find the fresh token once it is released.
        let _fetching = self.refresh.lock().await;
        if let (Some(token), true) = self.cached(Instant::now()) {
            return Ok(Some(token));
        }
        self.fetch().await
    }
}

impl<P: TokenProvider> TokenProvider for CachingTokenProvider<P> {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(self.get())
    }

    fn invalidate(&self) -> bool {
        let mut state = self.state();
        state.token = None;
        state.refresh_at = None;
        true
    }
}
