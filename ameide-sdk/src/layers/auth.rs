//! Auth layer: asks a [`TokenProvider`] for a bearer token once per call.
//!
//! - A token → `authorization: Bearer <token>` (marked sensitive).
//! - `None` → no header.
//! - A provider error, an unusable token, or no answer within `max_wait` →
//!   the call fails at once with `UNAUTHENTICATED` carrying the reason; the
//!   transport is never reached.
//! - A request that already carries `authorization` (set per call) is left as it is.
//!
//! Sitting outside the retry layer, it asks once however many attempts follow.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use tonic::Status;
use tower::{Layer, Service};

use super::{BoxError, HttpRequest, HttpResponse, status_response};
use crate::auth::{BoxFuture, TokenProvider};

/// Adds `authorization: Bearer …` from a [`TokenProvider`].
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::{auth::StaticTokenProvider, layers::AuthLayer};
/// let layer = AuthLayer::new(StaticTokenProvider::new("t0k3n")).max_wait(Duration::from_secs(1));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    provider: Arc<dyn TokenProvider>,
    max_wait: Duration,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// A layer asking `provider`, waiting at most the contract's default timeout for it.
    pub fn new(provider: impl TokenProvider) -> Self {
        Self::from_arc(Arc::new(provider))
    }

    /// A layer asking a shared provider.
    pub fn from_arc(provider: Arc<dyn TokenProvider>) -> Self {
        AuthLayer {
            provider,
            max_wait: Duration::from_millis(crate::contract::DEFAULT_TIMEOUT_MS),
        }
    }

    /// How long to wait for the provider before failing the call (the client
    /// sets it to its timeout).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            provider: self.provider.clone(),
            max_wait: self.max_wait,
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    provider: Arc<dyn TokenProvider>,
    max_wait: Duration,
}

impl<S> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S> Service<HttpRequest> for AuthService<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let provider = self.provider.clone();
        let max_wait = self.max_wait;
        Box::pin(async move {
            if !request.headers().contains_key(AUTHORIZATION) {
                let token = tokio::time::timeout(max_wait, provider.token()).await;
                match token {
                    Ok(Ok(Some(token))) => match token.header_value() {
                        Ok(value) => {
                            request.headers_mut().insert(AUTHORIZATION, value);
                        }
                        Err(e) => {
                            return Ok(status_response(Status::unauthenticated(format!(
                                "token provider returned an unusable token: {e}"
                            ))));
                        }
                    },
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        return Ok(status_response(Status::unauthenticated(format!(
                            "token provider failed: {e}"
                        ))));
                    }
                    Err(_) => {
                        return Ok(status_response(Status::unauthenticated(format!(
                            "token provider did not answer within {max_wait:?}"
                        ))));
                    }
                }
            }
            inner.call(request).await.map_err(Into::into)
        })
    }
}
