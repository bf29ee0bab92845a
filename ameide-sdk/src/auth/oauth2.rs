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
//! `expires_in` is read at every extreme of its JSON type: an integer, a
//! float or a numeric string; zero or negative means the token is already
//! due for renewal (it is used once, never cached as fresh); anything past
//! [`ClientCredentials::MAX_EXPIRES_IN`] (a year) is held there; a non-number is an error. The
//! token URL must be `https`, unless its host is a loopback address
//! (`localhost`, `127.0.0.0/8`, `::1`) or the caller opts in with
//! [`ClientCredentials::new_allowing_http`]: the request carries the client
//! secret.
//!
//! Wrap it in a [`CachingTokenProvider`](super::CachingTokenProvider) (or use
//! [`ClientCredentials::cached`]) so tokens are reused until they near expiry.

use crate::config::is_loopback_host as is_loopback;
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
use crate::config_error::{ConfigError, ConfigErrorKind};

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
    expires_in: Option<serde_json::Value>,
}

/// A token endpoint's answer, checked: the token and its lifetime (`None`
/// when the answer gave none). Pure, so it can be fuzzed.
pub(crate) fn parse_token_response(
    status: StatusCode,
    body: &[u8],
) -> Result<(String, Option<Duration>), TokenError> {
    if status != StatusCode::OK {
        let detail = serde_json::from_slice::<ErrorResponse>(body)
            .ok()
            .and_then(|e| match (e.error, e.error_description) {
                (Some(error), Some(description)) => Some(format!(
                    ": {} ({})",
                    crate::peer::bounded(&error, 256),
                    crate::peer::bounded(&description, 1024)
                )),
                (Some(error), None) => Some(format!(": {}", crate::peer::bounded(&error, 256))),
                _ => None,
            })
            .unwrap_or_default();
        let message = format!("token endpoint answered {status}{detail}");
        // RFC 6749 §5.2: 400 and 401 say the client's credentials or grant
        // were refused; anything else (5xx, 429, a proxy's page) is the
        // endpoint failing, which a later call may get past.
        return Err(
            if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
                TokenError::unauthenticated(message)
            } else {
                TokenError::new(message)
            },
        );
    }
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| TokenError::new(format!("token endpoint answered malformed JSON: {e}")))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::new("token endpoint answered without an access_token"))?;
    if let Some(kind) = &parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::new(format!(
            "token endpoint issued a {:?} token, not a Bearer token",
            crate::peer::bounded(kind, 64)
        )));
    }
    let lifetime = match &parsed.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(expires_in(value)?),
    };
    Ok((access_token, lifetime))
}

/// `expires_in` as a lifetime: any JSON number or numeric string, held to
/// `0 ..= MAX_EXPIRES_IN`.
fn expires_in(value: &serde_json::Value) -> Result<Duration, TokenError> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|s| !s.is_nan())
    .ok_or_else(|| {
        TokenError::new(format!(
            "token endpoint answered expires_in {}, not a number of seconds",
            crate::peer::bounded(&value.to_string(), 64)
        ))
    })?;
    Ok(crate::time::secs_f64(seconds).min(ClientCredentials::MAX_EXPIRES_IN))
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

impl ClientCredentials {
    /// The longest token lifetime believed: a year. An identity provider that
    /// says more is held to it (the cache still refreshes ahead of it).
    ///
    /// ```
    /// assert_eq!(ameide_sdk::auth::ClientCredentials::MAX_EXPIRES_IN.as_secs(), 365 * 24 * 3600);
    /// ```
    pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(365 * 24 * 3600);

    /// A provider for `token_url`: `https` (verified against the webpki
    /// roots), or `http` to a loopback host only. Must be created inside a
    /// Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::auth::ClientCredentials;
    /// assert!(ClientCredentials::new("http://127.0.0.1:8080/token", "id", "secret").is_ok());
    /// let err = ClientCredentials::new("http://idp.internal/token", "id", "secret").unwrap_err();
    /// assert!(err.to_string().contains("https"));
    /// assert!(ClientCredentials::new_allowing_http("http://idp.internal/token", "id", "secret").is_ok());
    /// # }
    /// ```
    pub fn new(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        Self::build(token_url, client_id.into(), client_secret.into(), false)
    }

    /// Like [`new`](Self::new), but accepts a plaintext `http` token URL to
    /// any host. The client secret then crosses the network in the clear:
    /// only for networks you trust (a sidecar, a mesh that encrypts).
    pub fn new_allowing_http(
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        Self::build(token_url, client_id.into(), client_secret.into(), true)
    }

    fn build(
        token_url: &str,
        client_id: String,
        client_secret: String,
        allow_http: bool,
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
        if uri.scheme_str() == Some("http") && !allow_http && !uri.host().is_some_and(is_loopback) {
            return Err(bad(
                "plaintext http would send the client secret in the clear: use https, a loopback host, or ClientCredentials::new_allowing_http",
            ));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(ClientCredentials {
            token_url: uri,
            client_id,
            client_secret,
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
        let (token, lifetime) = parse_token_response(status, &body)?;
        let token = AccessToken::new(token);
        Ok(Some(match lifetime {
            Some(lifetime) => token.with_expiry(crate::time::add(Instant::now(), lifetime)),
            None => token,
        }))
    }
}

impl TokenProvider for ClientCredentials {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(self.fetch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<(String, Option<Duration>), TokenError> {
        parse_token_response(StatusCode::OK, body.as_bytes())
    }

    #[test]
    fn expires_in_at_the_extremes_of_its_json_type() {
        let lifetime =
            |v: &str| ok(&format!(r#"{{"access_token":"t","expires_in":{v}}}"#)).map(|(_, l)| l);
        assert_eq!(lifetime("300").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(lifetime("\"300\"").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(
            lifetime("299.5").unwrap(),
            Some(Duration::from_millis(299_500))
        );
        assert_eq!(
            lifetime("18446744073709551615").unwrap(),
            Some(ClientCredentials::MAX_EXPIRES_IN)
        );
        assert_eq!(
            lifetime("1e308").unwrap(),
            Some(ClientCredentials::MAX_EXPIRES_IN)
        );
        assert_eq!(
            lifetime("-9223372036854775808").unwrap(),
            Some(Duration::ZERO)
        );
        assert_eq!(lifetime("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(lifetime("null").unwrap(), None);
        assert!(lifetime("\"soon\"").is_err());
        assert!(lifetime("[]").is_err());
    }

    #[test]
    fn error_answers_are_bounded() {
        let body = format!(
            r#"{{"error":"{}","error_description":"d"}}"#,
            "e".repeat(5000)
        );
        let err = parse_token_response(StatusCode::BAD_REQUEST, body.as_bytes()).unwrap_err();
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["idp.example.com", "10.0.0.1", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
