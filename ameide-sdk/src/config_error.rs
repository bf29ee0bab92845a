//! The error of every rejected setting (builder, environment, layer
//! options): what kind of value, and a message naming it and what would be
//! valid. Below everything that validates settings.

use std::fmt;

/// Why a configuration value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The endpoint is not `http(s)://host[:port]`.
    Endpoint,
    /// A header name or value (including tenant, user, session and request ids) is invalid.
    Header,
    /// A timeout is zero or too long.
    Timeout,
    /// An environment variable is malformed.
    Environment,
    /// A retry policy parameter is out of range.
    Retry,
    /// TLS could not be configured.
    Tls,
    /// The client was built outside a Tokio runtime.
    Runtime,
    /// An in-flight limit is out of range.
    Limit,
    /// A transport option (keepalive, connect timeout, pool size) is out of range.
    Transport,
}

/// A configuration value was rejected; the message names the value and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    pub(crate) message: String,
}

impl ConfigError {
    pub(crate) fn new(kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            message: message.into(),
        }
    }

    /// What kind of value was rejected.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
