//! OAuth2 client credentials (RFC 6749 §4.4), the flow Keycloak serves to services.
//!
//! `POST token_url` with `grant_type=client_credentials`, the client id and
//! secret and an optional scope as a form; a `200` JSON answer with
//! `access_token`, `token_type` (Bearer) and `expires_in` becomes an
//! [`AccessToken`] with that expiry. Everything else is a [`TokenError`] that
//! says what went wrong, never the secret:
//!
//! | Endpoint does | Error says |
//! |---|---|
//! | answers non-2xx with an OAuth error body | the status and `error` / `error_description` |
//! | answers non-2xx otherwise | the status |
//! | takes longer than the timeout (default 10 s) | that it did not answer in time |
//! | answers something that is not the JSON above | what is malformed |
//! | is unreachable | the connection error |
//!
//! Wrap it in a [`CachingTokenProvider`](super::CachingTokenProvider) (or use
//! [`ClientCredentials::cached`]) so tokens are reused until they near expiry.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::time::Instant;

use super::{AccessToken, BoxFuture, CachingTokenProvider, TokenError, TokenProvider};
use crate::config::{ConfigError, ConfigErrorKind};

/// Largest token response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An OAuth2 client-credentials token provider.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use ameide_sdk::auth::ClientCredentials;
/// let provider = ClientCredentials::new("https://id.example.com/realms/ameide/protocol/openid-connect/token", "svc-agents", "s3cret")
///     .unwrap()
///     .scope("ameide.api");
/// assert!(!format!("{provider:?}").contains("s3cret"));
/// let cached = provider.cached(); // reuse tokens until they near expiry
/// # let _ = cached;
/// assert!(ClientCredentials::new("not a url", "id", "secret").is_err());
/// # }
/// ```
pub struct ClientCredentials {
    token_url: Uri,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

impl ClientCredentials {
    /// A provider for `token_url` (`http` or `https`; https verified against
    /// the webpki roots). Must be created inside a Tokio runtime.
    pub fn new(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(
                ConfigErrorKind::Endpoint,
                format!(
                    "invalid token URL {token_url:?}: {why}; expected http(s)://host[:port]/path"
                ),
            )
        };
        let uri: Uri = token_url.parse().map_err(|_| bad("not a URI"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad("needs an http or https scheme and a host"));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(ClientCredentials {
            token_url: uri,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scope: None,
            timeout: Duration::from_secs(10),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Asks for `scope`.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// How long to wait for the token endpoint (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// This provider behind a [`CachingTokenProvider`] with its defaults.
    pub fn cached(self) -> CachingTokenProvider<ClientCredentials> {
        CachingTokenProvider::new(self)
    }

    fn form(&self) -> String {
        let enc = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let mut form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            enc(&self.client_id),
            enc(&self.client_secret)
        );
        if let Some(scope) = &self.scope {
            form.push_str(&format!("&scope={}", enc(scope)));
        }
        form
    }

    async fn fetch(&self) -> Result<Option<AccessToken>, TokenError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(self.form())))
            .map_err(|e| TokenError::new(format!("cannot build the token request: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                TokenError::new(format!(
                    "token endpoint {} unreachable: {e}",
                    self.token_url
                ))
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| TokenError::new(format!("cannot read the token response: {e}")))?
                .to_bytes();
            Ok::<_, TokenError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                TokenError::new(format!(
                    "token endpoint did not answer within {:?}",
                    self.timeout
                ))
            })??;
        if status != StatusCode::OK {
            let detail = serde_json::from_slice::<ErrorResponse>(&body)
                .ok()
                .and_then(|e| match (e.error, e.error_description) {
                    (Some(error), Some(description)) => Some(format!(": {error} ({description})")),
                    (Some(error), None) => Some(format!(": {error}")),
                    _ => None,
                })
                .unwrap_or_default();
            return Err(TokenError::new(format!(
                "token endpoint answered {status}{detail}"
            )));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| TokenError::new(format!("token endpoint answered malformed JSON: {e}")))?;
        let access_token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TokenError::new("token endpoint answered without an access_token"))?;
        if let Some(kind) = &parsed.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenError::new(format!(
                "token endpoint issued a {kind:?} token, not a Bearer token"
            )));
        }
        let token = AccessToken::new(access_token);
        Ok(Some(match parsed.expires_in {
            Some(seconds) => token.with_expiry(Instant::now() + Duration::from_secs(seconds)),
            None => token,
        }))
    }
}

impl TokenProvider for ClientCredentials {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(self.fetch())
    }
}
