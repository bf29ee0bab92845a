//! Bearer tokens: the async [`TokenProvider`] trait and the providers the SDK ships:
//! [`StaticTokenProvider`], [`EnvTokenProvider`], [`CachingTokenProvider`] (over any
//! provider whose tokens expire) and, with the `oauth2` feature (default),
//! [`ClientCredentials`] (OAuth2 client credentials, the flow Keycloak serves).
//!
//! The auth layer asks the provider once per call (not per attempt) and sends
//! `authorization: Bearer <token>` when it returns a token, nothing when it
//! returns `None`. A provider error fails the call with the error's code
//! (`UNAVAILABLE` for a provider that is down, `UNAUTHENTICATED` for refused
//! credentials; see [`TokenError`]) and the provider's message. Tokens never appear in `Debug` output or logs, and
//! the header is marked sensitive so HTTP/2 never indexes it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use http::HeaderValue;
use tokio::time::Instant;

use crate::config_error::{ConfigError, ConfigErrorKind};

mod cache;
#[cfg(feature = "oauth2")]
pub(crate) mod oauth2;

pub use cache::CachingTokenProvider;
#[cfg(feature = "oauth2")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth2")))]
pub use oauth2::ClientCredentials;

pub use crate::wire_types::BoxFuture;

/// A bearer token and, optionally, when it stops being valid.
///
/// ```
/// let token = ameide_sdk::auth::AccessToken::new("s3cr3t");
/// assert_eq!(token.secret(), "s3cr3t");
/// assert_eq!(format!("{token:?}"), "AccessToken(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    secret: Arc<str>,
    expires_at: Option<Instant>,
}

impl AccessToken {
    /// A token without a known expiry.
    pub fn new(secret: impl Into<String>) -> Self {
        AccessToken {
            secret: Arc::from(secret.into()),
            expires_at: None,
        }
    }

    /// The same token, valid until `expires_at`.
    pub fn with_expiry(mut self, expires_at: Instant) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The token itself. Handle with care: never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When the token expires, if known.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// `Bearer <token>` as a sensitive header value; an error when the token
    /// holds characters a header cannot carry.
    pub fn header_value(&self) -> Result<HeaderValue, ConfigError> {
        let valid =
            !self.secret.is_empty() && self.secret.bytes().all(|b| (0x21..0x7f).contains(&b));
        if !valid {
            return Err(ConfigError::new(
                ConfigErrorKind::Header,
                "bearer token is empty or holds characters other than visible ASCII",
            ));
        }
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.secret)).map_err(|_| {
            ConfigError::new(
                ConfigErrorKind::Header,
                "bearer token is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// A token provider failed: the call fails with the error's [`code`](Self::code)
/// and its message, before anything is sent (zero attempts).
///
/// Which code, as in grpc-go and gRFC A54 (a credential failure is the
/// client's control plane, not the server's answer):
///
/// - [`TokenError::new`]: the provider is down, unreachable, slow or broken:
///   `UNAVAILABLE`, retryable (a later call may get a token).
/// - [`TokenError::unauthenticated`]: the credentials themselves were refused
///   (an OAuth2 `invalid_client`, a secret that is set but empty):
///   `UNAUTHENTICATED`, not retryable.
/// - [`TokenError::with_code`]: any other code the provider means; the codes
///   A54 keeps for servers (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`,
///   `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`, `DATA_LOSS`) and `OK`
///   become `INTERNAL`, so that a caller never mistakes them for the server's.
///
/// ```
/// use ameide_sdk::auth::TokenError;
/// use tonic::Code;
///
/// let err = TokenError::new("identity provider unreachable");
/// assert_eq!(err.to_string(), "identity provider unreachable");
/// assert_eq!(err.code(), Code::Unavailable);
/// assert_eq!(TokenError::unauthenticated("invalid_client").code(), Code::Unauthenticated);
/// assert_eq!(TokenError::with_code(Code::PermissionDenied, "no scope").code(), Code::PermissionDenied);
/// assert_eq!(TokenError::with_code(Code::NotFound, "no such key").code(), Code::Internal);
/// ```
#[derive(Debug, Clone)]
pub struct TokenError {
    code: tonic::Code,
    message: String,
}

impl TokenError {
    /// The provider could not give a token now (down, unreachable, slow,
    /// malformed answer): the call fails `UNAVAILABLE`. Never include the
    /// token itself in the message.
    pub fn new(message: impl Into<String>) -> Self {
        TokenError {
            code: tonic::Code::Unavailable,
            message: message.into(),
        }
    }

    /// The credentials were refused or are missing: the call fails
    /// `UNAUTHENTICATED` (not retryable).
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        TokenError {
            code: tonic::Code::Unauthenticated,
            message: message.into(),
        }
    }

    /// A failure with the code the provider means, held to gRFC A54 (see
    /// the type's documentation).
    pub fn with_code(code: tonic::Code, message: impl Into<String>) -> Self {
        use tonic::Code;
        let code = match code {
            Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss => Code::Internal,
            other => other,
        };
        TokenError {
            code,
            message: message.into(),
        }
    }

    /// The code the call fails with.
    pub fn code(&self) -> tonic::Code {
        self.code
    }

    /// The same failure (its code kept) told with another message.
    pub(crate) fn reworded(&self, message: String) -> Self {
        TokenError {
            code: self.code,
            message,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TokenError {}

/// Supplies the bearer token for each call.
///
/// Implement it for your identity source, or pass an async closure:
///
/// ```
/// use ameide_sdk::auth::{AccessToken, TokenProvider};
/// let provider = || async { Ok(Some(AccessToken::new("from-my-idp"))) };
/// # fn takes(_: impl TokenProvider) {}
/// takes(provider);
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// The token for the next call; `Ok(None)` sends no `authorization` header.
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>>;

    /// The server rejected `rejected` (UNAUTHENTICATED): forget it if it is
    /// still the cached token (a newer one stays, so a burst of rejections of
    /// one token causes one refetch). Providers that cache return `true`, and
    /// the auth layer then asks again and replays the call once; the default
    /// does nothing and returns `false`.
    fn invalidate(&self, rejected: &AccessToken) -> bool {
        let _ = rejected;
        false
    }
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<AccessToken>, TokenError>> + Send + 'static,
{
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        Box::pin(self())
    }
}

/// Always returns the same token.
///
/// ```
/// # tokio_test_block(async {
/// use ameide_sdk::auth::{StaticTokenProvider, TokenProvider};
/// let provider = StaticTokenProvider::new("abc");
/// assert_eq!(provider.token().await.unwrap().unwrap().secret(), "abc");
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StaticTokenProvider {
    token: AccessToken,
}

impl StaticTokenProvider {
    /// A provider of `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        StaticTokenProvider {
            token: AccessToken::new(secret),
        }
    }
}

impl TokenProvider for StaticTokenProvider {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        let token = self.token.clone();
        Box::pin(async move { Ok(Some(token)) })
    }
}

/// Reads the token from an environment variable on every call, so a rotated
/// value is picked up without rebuilding the client. Unset means no token;
/// set but empty or non-UTF-8 is an error.
///
/// ```
/// let provider = ameide_sdk::auth::EnvTokenProvider::new("AMEIDE_AUTH_TOKEN");
/// assert_eq!(provider.variable(), "AMEIDE_AUTH_TOKEN");
/// ```
#[derive(Debug, Clone)]
pub struct EnvTokenProvider {
    variable: String,
}

impl EnvTokenProvider {
    /// A provider reading `variable`.
    pub fn new(variable: impl Into<String>) -> Self {
        EnvTokenProvider {
            variable: variable.into(),
        }
    }

    /// The variable it reads.
    pub fn variable(&self) -> &str {
        &self.variable
    }
}

impl TokenProvider for EnvTokenProvider {
    fn token(&self) -> BoxFuture<'_, Result<Option<AccessToken>, TokenError>> {
        let result = match std::env::var(&self.variable) {
            Ok(value) if value.is_empty() => Err(TokenError::unauthenticated(format!(
                "{} is set but empty",
                self.variable
            ))),
            Ok(value) => Ok(Some(AccessToken::new(value))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(TokenError::unauthenticated(format!(
                "{} is not valid UTF-8",
                self.variable
            ))),
        };
        Box::pin(async move { result })
    }
}
