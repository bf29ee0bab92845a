//! A caching token provider: single-flight fetches that outlive their callers,
//! refresh ahead of expiry.
//!
//! | Situation | What the cache does |
//! |---|---|
//! | a fresh token is cached | returns it; no fetch |
//! | no usable token (none yet, expired, invalidated) | starts one fetch; every caller waits for that same fetch (single flight) |
//! | a caller gives up while it waits (its deadline passed, it was dropped) | the fetch goes on by itself (a task of its own) and its token is cached for the next caller: a provider slower than the call timeout still ends up serving tokens |
//! | the token is still valid but inside the refresh window | returns it at once and starts one refresh in the background; nobody waits |
//! | a refresh fails while the token is still valid | keeps serving the last good token; tries again after `retry_after_failure` |
//! | a fetch fails with no valid token | the error reaches every waiting caller; nothing is cached, so the next call fetches again |
//! | a provider panics inside a fetch | the waiting callers get an error saying so; the next call fetches again |
//! | a provider never answers | the fetch is abandoned after `fetch_timeout` (default 30 s) with an error; the next call fetches again |
//! | the server answered UNAUTHENTICATED | [`invalidate`](TokenProvider::invalidate) drops that token only if it is still the cached one: a burst of rejections of one token causes one refetch |
//!
//! The refresh window starts `refresh_ahead × (1 + jitter)` before expiry,
//! the jitter drawn per token so that many clients do not refresh in
//! lockstep. All time arithmetic saturates: no setting and no expiry can
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
    last_failure: Option<Instant>,
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
                    last_failure: None,
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

    /// How long to wait after a failed refresh before trying again.
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
        // Decided under the lock; awaited after it is released.
        let (plan, inline) = self.plan(Instant::now());
        if let Some(fetch) = inline {
            fetch.await;
        }
        match plan {
            Plan::Cached(token) => Ok(Some(token)),
            Plan::Wait(fetch) => wait(fetch).await,
        }
    }

    /// What a call does now (state lock held, nothing awaited): use a valid
    /// token (maybe starting a background refresh), or wait for the fetch;
    /// plus the fetch to drive inline when there is no runtime to spawn it on.
    fn plan(&self, now: Instant) -> (Plan, Option<BoxFuture<'static, ()>>) {
        let mut state = self.shared.state();
        if let Some(token) = state
            .token
            .as_ref()
            .filter(|t| t.expires_at().is_none_or(|e| now < e))
            .cloned()
        {
            let due = state.refresh_at.is_some_and(|r| now >= r);
            let backing_off = state
                .last_failure
                .is_some_and(|f| now < time::add(f, state.retry_after_failure));
            if due && !backing_off && state.fetch.is_none() {
                // Refresh in the background; this caller has a valid token.
                let (_, inline) = start_fetch(&self.shared, &mut state);
                return (Plan::Cached(token), inline);
            }
            return (Plan::Cached(token), None);
        }
        let (waiting, inline) = start_fetch(&self.shared, &mut state);
        (Plan::Wait(waiting), inline)
    }
}

/// What one call to the cache does.
enum Plan {
    /// Use this valid token.
    Cached(AccessToken),
    /// Wait for the fetch in flight.
    Wait(watch::Receiver<Option<Fetched>>),
}

/// Joins the fetch in flight or starts one (state lock held). The fetch runs
/// as a task of its own, so it completes and is cached even if every caller
/// gives up; outside a Tokio runtime it is handed back for the caller to drive.
fn start_fetch<P: TokenProvider>(
    shared: &Arc<Shared<P>>,
    state: &mut State,
) -> (
    watch::Receiver<Option<Fetched>>,
    Option<BoxFuture<'static, ()>>,
) {
    if let Some(fetch) = &state.fetch {
        return (fetch.clone(), None);
    }
    let (tx, rx) = watch::channel(None);
    state.fetch = Some(rx.clone());
    let guard = FetchGuard {
        shared: shared.clone(),
        tx: Some(tx),
    };
    let limit = state.fetch_timeout;
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
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
            (rx, None)
        }
        // No runtime to run it on (nor a timer): the caller drives it.
        Err(_) => {
            let fetch: BoxFuture<'static, ()> = Box::pin(async move {
                let mut guard = guard;
                let fetched = guard.shared.provider.token().await;
                guard.finish(fetched);
            });
            (rx, Some(fetch))
        }
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
        {
            let mut state = self.shared.state();
            state.fetch = None;
            match &fetched {
                Ok(token) => store(&mut state, token.clone()),
                Err(e) => {
                    ::tracing::warn!(error = %e, "token fetch failed");
                    state.last_failure = Some(Instant::now());
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
            self.finish(Err(TokenError::new(
                "token provider stopped without answering (it panicked, or the runtime shut down)",
            )));
        }
    }
}

fn store(state: &mut State, token: Option<AccessToken>) {
    let now = Instant::now();
    state.refresh_at = token.as_ref().and_then(|t| t.expires_at()).map(|expiry| {
        let ahead = time::mul_f64(state.refresh_ahead, 1.0 + state.jitter * fastrand::f64());
        expiry.checked_sub(ahead).unwrap_or(now)
    });
    state.token = token;
    state.last_failure = None;
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
