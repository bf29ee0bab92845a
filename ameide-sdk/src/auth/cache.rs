//! A caching token provider: single-flight fetches that outlive their callers,
//! refresh ahead of expiry.
//!
//! | Situation | What the cache does |
//! |---|---|
//! | a fresh token is cached | returns it; no fetch |
//! | no usable token (none yet, expired, invalidated) | starts one fetch; every caller waits for that same fetch (single flight) |
//! | a caller gives up while it waits (its deadline passed, it was dropped) | the fetch goes on by itself (a task of its own) and its token is cached for the next caller: a provider slower than the call timeout still ends up serving tokens |
//! | the token is still valid but inside the refresh window | returns it at once and starts one refresh in the background; nobody waits |
//! | a refresh fails while the token is still valid | keeps serving the last good token; tries again after the backoff |
//! | a fetch fails with no valid token | the error reaches every waiting caller; calls during the backoff get that error at once, without a fetch; the first call after it fetches again |
//! | fetches keep failing | the backoff doubles from `retry_after_failure` (1 s) up to 30 s, each ±20 %: a provider that is down is asked about once per backoff, not once per call |
//! | a fetch abandoned by no fault of the provider (the runtime shut down, the caller driving it inline gave up) | its waiters are told; it sets no backoff |
//! | a provider panics inside a fetch | the waiting callers get an error saying so; the next call fetches again |
//! | a provider never answers | the fetch is abandoned after `fetch_timeout` (default 30 s) with an error; the next call fetches again |
//! | the server answered UNAUTHENTICATED | [`invalidate`](TokenProvider::invalidate) drops that token only if it is still the cached one: a burst of rejections of one token causes one refetch |
//!
//! The refresh window starts `refresh_ahead × (1 + jitter)` before expiry,
//! the jitter drawn per token so that many clients do not refresh in
//! lockstep, but never before half the token's remaining life: a token that
//! lives less than the refresh window (a 30 s token against 60 s ahead) is
//! refreshed once, at half-life, not on every call. All time arithmetic saturates: no setting and no expiry can
//! overflow it. Fetches run on the Tokio runtime of the caller that starts
//! them; outside a runtime the caller drives the fetch itself.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{AccessToken, BoxFuture, TokenError, TokenProvider};
use crate::time;

type Fetched = Result<Option<AccessToken>, TokenError>;

struct State {
    token: Option<AccessToken>,
    refresh_at: Option<Instant>,
    /// Consecutive failed fetches, the backoff they set, and the last error.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<TokenError>,
    /// The fetch in flight, if any: every caller that needs a token waits on it.
    fetch: Option<watch::Receiver<Option<Fetched>>>,
    refresh_ahead: Duration,
    jitter: f64,
    retry_after_failure: Duration,
    fetch_timeout: Duration,
}

struct Shared<P> {
    provider: P,
    state: Mutex<State>,
}

impl<P> Shared<P> {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Caches the tokens of another provider (see the module table).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use ameide_sdk::auth::{AccessToken, CachingTokenProvider, TokenProvider};
/// let cached = CachingTokenProvider::new(|| async {
///     Ok(Some(AccessToken::new("t").with_expiry(tokio::time::Instant::now() + Duration::from_secs(300))))
/// })
/// .refresh_ahead(Duration::from_secs(30));
/// let token = cached.token().await.unwrap().unwrap();
/// assert_eq!(token.secret(), "t");
/// // Rejected by a server: dropped, so the next call fetches a new one.
/// assert!(cached.invalidate(&token));
/// # }
/// ```
pub struct CachingTokenProvider<P> {
    shared: Arc<Shared<P>>,
}

impl<P> fmt::Debug for CachingTokenProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("CachingTokenProvider")
            .field("refresh_ahead", &state.refresh_ahead)
            .field("jitter", &state.jitter)
            .field("retry_after_failure", &state.retry_after_failure)
            .finish_non_exhaustive()
    }
}

impl<P: TokenProvider> CachingTokenProvider<P> {
    /// Caches `provider`'s tokens: refresh 60 s (+ up to 20 %) before expiry,
    /// retry a failed refresh after 1 s.
    pub fn new(provider: P) -> Self {
        CachingTokenProvider {
            shared: Arc::new(Shared {
                provider,
                state: Mutex::new(State {
                    token: None,
                    refresh_at: None,
                    failures: 0,
                    retry_at: None,
                    last_error: None,
                    fetch: None,
                    refresh_ahead: Duration::from_secs(60),
                    jitter: 0.2,
                    retry_after_failure: Duration::from_secs(1),
                    fetch_timeout: Duration::from_secs(30),
                }),
            }),
        }
    }

    /// How long before expiry refreshing starts (any value: the arithmetic saturates).
    pub fn refresh_ahead(self, ahead: Duration) -> Self {
        self.shared.state().refresh_ahead = ahead;
        self
    }

    /// The random extra on `refresh_ahead`, as a fraction in `[0, 1]`
    /// (values outside are held to it; NaN counts as 0).
    pub fn jitter(self, fraction: f64) -> Self {
        let fraction = if fraction.is_nan() { 0.0 } else { fraction };
        self.shared.state().jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// How long to wait after a failed fetch before trying again; it
    /// doubles with each failure in a row, up to 30 s (a longer value is
    /// held to 30 s: callers without a valid token fail fast meanwhile).
    pub fn retry_after_failure(self, wait: Duration) -> Self {
        self.shared.state().retry_after_failure = wait;
        self
    }

    /// How long one fetch may take before it is abandoned as failed, so that
    /// a provider that never answers cannot hold every later call (default 30 s).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::time::Duration;
    /// use ameide_sdk::auth::{AccessToken, CachingTokenProvider, TokenProvider};
    /// let stuck = CachingTokenProvider::new(|| async {
    ///     std::future::pending::<()>().await;
    ///     Ok(Some(AccessToken::new("never")))
    /// })
    /// .fetch_timeout(Duration::from_secs(1));
    /// let err = stuck.token().await.unwrap_err();
    /// assert!(err.to_string().contains("did not answer within 1s"));
    /// # }
    /// ```
    pub fn fetch_timeout(self, timeout: Duration) -> Self {
        self.shared.state().fetch_timeout = timeout;
        self
    }

    async fn get(&self) -> Fetched {
        // Decided under the lock; the fetch is spawned (or driven) and
        // awaited after the lock is released: a task dropped at once by a
        // runtime that is shutting down finishes under that same lock.
        let (plan, start) = self.plan(Instant::now());
        match start {
            Start::Nothing => {}
            Start::Spawn(fetch) => {
                tokio::spawn(fetch);
            }
            Start::Inline(fetch) => fetch.await,
        }
        match plan {
            Plan::Cached(token) => Ok(Some(token)),
            Plan::Failed(error) => Err(error),
            Plan::Wait(fetch) => wait(fetch).await,
        }
    }

    /// What a call does now (state lock held, nothing awaited): use a valid
    /// token (maybe starting a background refresh), fail with the last
    /// error while backing off, or wait for the fetch; plus the fetch to
    /// start once the lock is released.
    fn plan(&self, now: Instant) -> (Plan, Start) {
        let mut state = self.shared.state();
        let backing_off = state.retry_at.is_some_and(|at| now < at);
        if let Some(token) = state
            .token
            .as_ref()
            .filter(|t| t.expires_at().is_none_or(|e| now < e))
            .cloned()
        {
            let due = state.refresh_at.is_some_and(|r| now >= r);
            if due && !backing_off && state.fetch.is_none() {
                // Refresh in the background; this caller has a valid token.
                let (_, start) = start_fetch(&self.shared, &mut state);
                return (Plan::Cached(token), start);
            }
            return (Plan::Cached(token), Start::Nothing);
        }
        if state.fetch.is_none()
            && backing_off
            && let Some(error) = &state.last_error
        {
            let wait = state
                .retry_at
                .map(|at| at.saturating_duration_since(now))
                .unwrap_or_default();
            return (
                Plan::Failed(error.reworded(format!(
                    "{error} (the token provider failed {} time(s) in a row; asked again in {wait:?})",
                    state.failures
                ))),
                Start::Nothing,
            );
        }
        let (waiting, start) = start_fetch(&self.shared, &mut state);
        (Plan::Wait(waiting), start)
    }
}

/// What one call to the cache does.
enum Plan {
    /// Use this valid token.
    Cached(AccessToken),
    /// The provider failed and is not asked again yet.
    Failed(TokenError),
    /// Wait for the fetch in flight.
    Wait(watch::Receiver<Option<Fetched>>),
}

/// A fetch to start once the state lock is released.
enum Start {
    Nothing,
    /// On the caller's runtime, as a task of its own.
    Spawn(BoxFuture<'static, ()>),
    /// No runtime: the caller drives it.
    Inline(BoxFuture<'static, ()>),
}

/// Joins the fetch in flight or makes one (state lock held; the caller
/// starts it after releasing the lock). The fetch runs as a task of its own,
/// so it completes and is cached even if every caller gives up; outside a
/// Tokio runtime it is handed back for the caller to drive.
fn start_fetch<P: TokenProvider>(
    shared: &Arc<Shared<P>>,
    state: &mut State,
) -> (watch::Receiver<Option<Fetched>>, Start) {
    if let Some(fetch) = &state.fetch {
        return (fetch.clone(), Start::Nothing);
    }
    let (tx, rx) = watch::channel(None);
    state.fetch = Some(rx.clone());
    let guard = FetchGuard {
        shared: shared.clone(),
        tx: Some(tx),
    };
    let limit = state.fetch_timeout;
    if tokio::runtime::Handle::try_current().is_ok() {
        let fetch: BoxFuture<'static, ()> = Box::pin(async move {
            let mut guard = guard;
            let fetched = tokio::time::timeout(limit, guard.shared.provider.token())
                .await
                .unwrap_or_else(|_| {
                    Err(TokenError::new(format!(
                        "token provider did not answer within {limit:?}; the next call asks again"
                    )))
                });
            guard.finish(fetched);
        });
        (rx, Start::Spawn(fetch))
    } else {
        // No runtime to run it on (nor a timer): the caller drives it.
        let fetch: BoxFuture<'static, ()> = Box::pin(async move {
            let mut guard = guard;
            let fetched = guard.shared.provider.token().await;
            guard.finish(fetched);
        });
        (rx, Start::Inline(fetch))
    }
}

/// Waits for the fetch's result.
async fn wait(mut fetch: watch::Receiver<Option<Fetched>>) -> Fetched {
    loop {
        if let Some(result) = fetch.borrow_and_update().clone() {
            return result;
        }
        if fetch.changed().await.is_err() {
            return fetch.borrow().clone().unwrap_or_else(|| {
                Err(TokenError::new("token provider stopped without answering"))
            });
        }
    }
}

/// Publishes a fetch's result and caches it; if the fetch never finishes
/// (the provider panicked, the runtime shut down), tells the waiters so.
struct FetchGuard<P> {
    shared: Arc<Shared<P>>,
    tx: Option<watch::Sender<Option<Fetched>>>,
}

impl<P> FetchGuard<P> {
    fn finish(&mut self, fetched: Fetched) {
        self.finish_with(fetched, true);
    }

    /// `provider_failed`: an error counts toward the backoff only when the
    /// provider gave it, not when the fetch was abandoned.
    fn finish_with(&mut self, fetched: Fetched, provider_failed: bool) {
        {
            let mut state = self.shared.state();
            state.fetch = None;
            match &fetched {
                Ok(token) => store(&mut state, token.clone()),
                Err(_) if !provider_failed => {}
                Err(e) => {
                    state.failures = state.failures.saturating_add(1);
                    let backoff = failure_backoff(state.retry_after_failure, state.failures);
                    state.retry_at = Some(time::add(Instant::now(), backoff));
                    state.last_error = Some(e.clone());
                    ::tracing::warn!(error = %e, failures = state.failures, ?backoff, "token fetch failed");
                }
            }
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(fetched));
        }
    }
}

impl<P> Drop for FetchGuard<P> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // A provider that panicked did fail; a runtime shutting down (or
            // a caller dropping the fetch it drove) is no verdict on it.
            let panicked = std::thread::panicking();
            self.finish_with(
                Err(TokenError::new(
                    "token provider stopped without answering (it panicked, or the runtime shut down)",
                )),
                panicked,
            );
        }
    }
}

/// The longest a failed provider is left alone: callers without a valid
/// token fail fast for at most this long.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// `initial × 2^(failures−1)`, at most 30 s, ±20 %.
fn failure_backoff(initial: Duration, failures: u32) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    time::mul_f64(
        doubled.min(MAX_FAILURE_BACKOFF),
        0.8 + 0.4 * fastrand::f64(),
    )
}

fn store(state: &mut State, token: Option<AccessToken>) {
    let now = Instant::now();
    state.refresh_at = token.as_ref().and_then(|t| t.expires_at()).map(|expiry| {
        let ahead = time::mul_f64(state.refresh_ahead, 1.0 + state.jitter * fastrand::f64());
        // Never before half the remaining life: a short-lived token is not
        // due the moment it is stored.
        let half_life = time::add(now, expiry.saturating_duration_since(now) / 2);
        expiry.checked_sub(ahead).unwrap_or(now).max(half_life)
    });
    state.token = token;
    state.failures = 0;
    state.retry_at = None;
    state.last_error = None;
}

impl<P: TokenProvider> TokenProvider for CachingTokenProvider<P> {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(self.get())
    }

    fn invalidate(&self, rejected: &AccessToken) -> bool {
        let mut state = self.shared.state();
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.secret() == rejected.secret())
        {
            state.token = None;
            state.refresh_at = None;
        }
        true
    }
}
