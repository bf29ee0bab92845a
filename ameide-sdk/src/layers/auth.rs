//! Auth layer: asks a [`TokenProvider`] for a bearer token once per call.
//!
//! - A token → `authorization: Bearer <token>` (marked sensitive).
//! - `None`, or an empty token → no header.
//! - A provider error fails the call at once with the error's code and
//!   message: `UNAVAILABLE` for a provider that is down, unreachable or
//!   broken, `UNAUTHENTICATED` only when it says the credentials were
//!   refused (grpc-go's and gRFC A54's rule; see [`TokenError`](crate::auth::TokenError)).
//!   No answer before the call's deadline is `DEADLINE_EXCEEDED`; none
//!   within `max_wait` (shorter than a long per-call timeout) `UNAVAILABLE`;
//!   a token that cannot be a header value `INTERNAL`. The transport is
//!   never reached (zero attempts).
//! - A request that already carries `authorization` (set per call) is left as it is.
//! - When the server answers UNAUTHENTICATED and the provider caches tokens
//!   ([`TokenProvider::invalidate`] returns `true`, e.g. [`CachingTokenProvider`](crate::auth::CachingTokenProvider)),
//!   the cached token is dropped, a new one fetched, and the call replayed
//!   once (single-request calls up to 4 MiB, with the same request id).
//!
//! Sitting outside the retry layer, it asks once however many attempts follow.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use http::header::AUTHORIZATION;
use pin_project_lite::pin_project;
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

use super::replay::{Buffered, buffer, replay_request};
use super::timeout::call_deadline;
use super::{BoxError, HttpRequest, HttpResponse, status_response, trailers_only_status};
use crate::auth::{AccessToken, BoxFuture, TokenProvider};
use crate::config_error::ConfigError;

/// Adds `authorization: Bearer …` from a [`TokenProvider`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use ameide_sdk::{auth::StaticTokenProvider, layers::{AuthLayer, HttpRequest}};
/// use tower::{Layer, ServiceExt};
///
/// let server = tower::service_fn(|request: HttpRequest| async move {
///     assert_eq!(request.headers()["authorization"], "Bearer t0k3n");
///     Ok::<_, std::convert::Infallible>(tonic::Status::ok("").into_http())
/// });
/// let layer = AuthLayer::new(StaticTokenProvider::new("t0k3n")).max_wait(Duration::from_secs(1));
/// let request = http::Request::builder()
///     .uri("/ameide_core_proto.graph.v1.GraphService/ListRepositories")
///     .body(tonic::body::Body::empty())
///     .unwrap();
/// let response = layer.layer(server).oneshot(request).await.unwrap();
/// assert_eq!(response.headers()["grpc-status"], "0");
/// # }
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    source: TokenSource,
    max_wait: Duration,
}

/// Where the token comes from: a fixed header value (no per-call work) or a provider.
#[derive(Clone)]
enum TokenSource {
    Static(HeaderValue),
    Provider(Arc<dyn TokenProvider>),
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
            source: TokenSource::Provider(provider),
            max_wait: Duration::from_millis(crate::contract::DEFAULT_TIMEOUT_MS),
        }
    }

    /// A layer sending one fixed token; the header is built once, here, and an
    /// unusable token is rejected here rather than on every call.
    ///
    /// ```
    /// use ameide_sdk::{auth::AccessToken, layers::AuthLayer};
    /// assert!(AuthLayer::static_token(&AccessToken::new("abc")).is_ok());
    /// assert!(AuthLayer::static_token(&AccessToken::new("a\nb")).is_err());
    /// ```
    pub fn static_token(token: &AccessToken) -> Result<Self, ConfigError> {
        Ok(AuthLayer {
            source: TokenSource::Static(token.header_value()?),
            max_wait: Duration::from_millis(crate::contract::DEFAULT_TIMEOUT_MS),
        })
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
            source: self.source.clone(),
            max_wait: self.max_wait,
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    source: TokenSource,
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
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let provider = match &self.source {
            _ if request.headers().contains_key(AUTHORIZATION) => None,
            TokenSource::Static(value) => {
                request.headers_mut().insert(AUTHORIZATION, value.clone());
                None
            }
            TokenSource::Provider(provider) => Some(provider.clone()),
        };
        let Some(provider) = provider else {
            return AuthFuture {
                kind: Kind::Direct {
                    inner: self.inner.call(request),
                },
            };
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Wait no longer than the call's own deadline (a per-call timeout may
        // be shorter than the layer's) nor `max_wait`.
        let (deadline, _) = call_deadline(&request, self.max_wait);
        let wait_until = deadline.min(crate::time::add(tokio::time::Instant::now(), self.max_wait));
        AuthFuture {
            kind: Kind::Provider {
                inner: Box::pin(async move {
                    let sent = match authorize(&mut request, &*provider, deadline, wait_until).await
                    {
                        Ok(sent) => sent,
                        Err(response) => {
                            // Failed before any attempt: the error reports 0 attempts.
                            if let Some(state) =
                                request.extensions().get::<crate::call::CallState>()
                            {
                                state.record_unsent();
                            }
                            return Ok(response);
                        }
                    };
                    let replayable = crate::call::method_of(&request)
                        .is_some_and(|m| m.kind.has_single_request());
                    if !replayable {
                        return inner.call(request).await.map_err(Into::into);
                    }
                    // Keep the request so that a rejected token can be replaced once.
                    let (parts, body) = request.into_parts();
                    let bytes = match buffer(body, REPLAY_LIMIT).await {
                        Ok(Buffered::Complete(bytes)) => bytes,
                        Ok(Buffered::TooLarge(body)) => {
                            return inner
                                .call(http::Request::from_parts(parts, body))
                                .await
                                .map_err(Into::into);
                        }
                        Err(status) => return Ok(status_response(status)),
                    };
                    let response = inner
                        .call(replay_request(&parts, &bytes))
                        .await
                        .map_err(Into::into)?;
                    let rejected = trailers_only_status(&response)
                        .is_some_and(|s| s.code() == tonic::Code::Unauthenticated);
                    let Some(sent) = sent.filter(|_| rejected) else {
                        return Ok(response);
                    };
                    if !provider.invalidate(&sent) {
                        return Ok(response);
                    }
                    ::tracing::debug!(
                        "the server rejected the token; fetching a new one and replaying once"
                    );
                    let mut again = replay_request(&parts, &bytes);
                    again.headers_mut().remove(AUTHORIZATION);
                    if let Err(response) =
                        authorize(&mut again, &*provider, deadline, wait_until).await
                    {
                        return Ok(response);
                    }
                    inner.ready().await.map_err(Into::into)?;
                    inner.call(again).await.map_err(Into::into)
                }),
            },
        }
    }
}

/// Largest request kept for the one replay after a rejected token.
const REPLAY_LIMIT: usize = super::replay::DEFAULT_MAX_REPLAY_BYTES;

/// Asks the provider and sets `authorization`; `Ok` holds the token sent
/// (if any), `Err` is the response to return instead of calling: the
/// provider's failure with its code (`UNAVAILABLE` unless it named another,
/// see [`TokenError`](crate::auth::TokenError)), `DEADLINE_EXCEEDED` when the
/// call's deadline came first, `UNAVAILABLE` when the layer's own wait did,
/// `INTERNAL` for a token that cannot be a header (grpc-go's verdict on
/// invalid metadata from credentials).
async fn authorize(
    request: &mut HttpRequest,
    provider: &dyn TokenProvider,
    deadline: tokio::time::Instant,
    wait_until: tokio::time::Instant,
) -> Result<Option<AccessToken>, HttpResponse> {
    let max_wait = wait_until.saturating_duration_since(tokio::time::Instant::now());
    match tokio::time::timeout_at(wait_until, provider.token()).await {
        // An empty token is no token (as in the other SDKs, where an empty
        // string is falsy): no header, the call goes on.
        Ok(Ok(Some(token))) if token.secret().is_empty() => Ok(None),
        Ok(Ok(Some(token))) => match token.header_value() {
            Ok(value) => {
                request.headers_mut().insert(AUTHORIZATION, value);
                Ok(Some(token))
            }
            Err(e) => Err(status_response(Status::internal(format!(
                "token provider returned an unusable token: {e}"
            )))),
        },
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(status_response(Status::new(
            e.code(),
            format!("token provider failed: {e}"),
        ))),
        Err(_) if wait_until >= deadline => {
            Err(status_response(Status::deadline_exceeded(format!(
                "deadline exceeded: the token provider had not answered within the call's time budget ({max_wait:?})"
            ))))
        }
        Err(_) => Err(status_response(Status::unavailable(format!(
            "token provider did not answer within {max_wait:?}"
        )))),
    }
}

pin_project! {
    /// The response future of [`AuthService`]: the inner call directly (static
    /// token, or a token set per call), or a boxed provider round trip.
    pub struct AuthFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Direct { #[pin] inner: F },
        Provider { inner: BoxFuture<'static, Result<HttpResponse, BoxError>> },
    }
}

impl<F, E> std::future::Future for AuthFuture<F>
where
    F: std::future::Future<Output = Result<HttpResponse, E>>,
    E: Into<BoxError>,
{
    type Output = Result<HttpResponse, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Direct { inner } => inner.poll(cx).map_err(Into::into),
            KindProj::Provider { inner } => inner.as_mut().poll(cx),
        }
    }
}
