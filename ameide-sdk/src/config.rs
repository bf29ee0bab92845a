//! Client configuration: the contract's defaults, explicit loading from the
//! environment, and the validation every value goes through.
//!
//! | Variable | Field | Valid values |
//! |---|---|---|
//! | `AMEIDE_GRPC_BASE_URL` | [`AmeideConfig::endpoint`] | `http://host[:port]` (h2c) or `https://host[:port]`, or any target form of [`AmeideClientBuilder::endpoint`](crate::AmeideClientBuilder::endpoint) (`static:///`, `dns:///`, `unix:`; `scheme:///name` is checked at build, where its resolver is known) |
//! | `AMEIDE_TENANT_ID` | [`AmeideConfig::tenant_id`] | visible ASCII; system/bootstrap callers only |
//! | `AMEIDE_USER_ID` | [`AmeideConfig::user_id`] | visible ASCII |
//! | `AMEIDE_TIMEOUT_MS` | [`AmeideConfig::timeout`] | integer milliseconds, 1 ..= 8640000000 (100 days) |
//! | `AMEIDE_AUTH_TOKEN` | [`AmeideConfig::auth_token`] | visible ASCII bearer token |
//! | `AMEIDE_TLS_CA_FILE` | [`TlsFiles::ca_file`] | a PEM file of CA certificates, trusted on top of the roots |
//! | `AMEIDE_TLS_CLIENT_CERT_FILE` | [`TlsFiles::client_cert_file`] | a PEM certificate chain for mutual TLS (with the key) |
//! | `AMEIDE_TLS_CLIENT_KEY_FILE` | [`TlsFiles::client_key_file`] | its PEM private key (PKCS#8, PKCS#1 or SEC1) |
//! | `AMEIDE_TLS_ROOTS` | [`TlsFiles::roots`] | `bundled` (default), `system`, `bundled+system`, `ca-only` |
//!
//! The TLS files are read, parsed and matched (key to certificate) when the
//! client is built; an error names the file and what is wrong with it.
//!
//! Reading the environment is explicit ([`AmeideConfig::from_env`]); building a
//! client never reads it. A variable that is set but malformed (or empty) is an
//! error naming the variable, never a silent fallback.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use crate::auth::AccessToken;

/// The longest timeout accepted: 100 days. Longer values are almost always a
/// unit mistake, and `grpc-timeout` cannot carry arbitrary values.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(100 * 24 * 3600);

/// Plain client configuration with the contract's defaults.
///
/// ```
/// use std::time::Duration;
/// let config = ameide_sdk::AmeideConfig::default();
/// assert_eq!(config.endpoint, "https://api.ameide.io:443");
/// assert_eq!(config.timeout, Duration::from_secs(5));
/// assert!(config.tenant_id.is_none() && config.user_id.is_none() && config.session_id.is_none());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AmeideConfig {
    /// Where to connect: `https://…` (TLS with rustls) or `http://…` (plaintext h2c), or
    /// a target naming several replicas or a socket (`static:///`, `dns:///`, `unix:`,
    /// `scheme:///name` for a [`Resolver`](crate::Resolver); see
    /// [`AmeideClientBuilder::endpoint`](crate::AmeideClientBuilder::endpoint)).
    pub endpoint: String,
    /// Tenant sent as `x-tenant-id`; only for system/bootstrap callers.
    pub tenant_id: Option<String>,
    /// User sent as `x-user-id`.
    pub user_id: Option<String>,
    /// Session id sent as `ameide.session_id` in `baggage`.
    pub session_id: Option<String>,
    /// Whole-call timeout, all attempts included.
    pub timeout: Duration,
    /// A static bearer token; `None` sends no `authorization` header.
    pub auth_token: Option<AccessToken>,
    /// Extra metadata sent on every call (names are lower-cased when the client is built).
    pub headers: Vec<(String, String)>,
    /// TLS files and trust roots named by the environment; read and checked
    /// when the client is built. Options set with
    /// [`AmeideClientBuilder::transport_options`](crate::AmeideClientBuilder::transport_options) win.
    pub tls: TlsFiles,
}

/// TLS material by file name, as `AMEIDE_TLS_*` give it.
///
/// ```
/// use ameide_sdk::{AmeideConfig, TrustRoots};
/// let vars = [("AMEIDE_TLS_CA_FILE", "/etc/ameide/ca.pem"), ("AMEIDE_TLS_ROOTS", "ca-only")];
/// let config = AmeideConfig::from_lookup(|n: &str| Ok(vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())))?;
/// assert_eq!(config.tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/ameide/ca.pem")));
/// assert_eq!(config.tls.roots, Some(TrustRoots::CaOnly));
///
/// let half = [("AMEIDE_TLS_CLIENT_CERT_FILE", "/etc/ameide/client.pem")];
/// let err = AmeideConfig::from_lookup(|n: &str| Ok(half.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())))
///     .unwrap_err();
/// assert!(err.to_string().contains("AMEIDE_TLS_CLIENT_KEY_FILE"));
/// # Ok::<(), ameide_sdk::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Extra CA certificate(s), PEM (`AMEIDE_TLS_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain, PEM (`AMEIDE_TLS_CLIENT_CERT_FILE`); needs the key too.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Client private key, PEM (`AMEIDE_TLS_CLIENT_KEY_FILE`); needs the certificate too.
    pub client_key_file: Option<std::path::PathBuf>,
    /// Trust roots (`AMEIDE_TLS_ROOTS`: `bundled`, `system`, `bundled+system`, `ca-only`).
    pub roots: Option<crate::TrustRoots>,
}

impl Default for AmeideConfig {
    fn default() -> Self {
        AmeideConfig {
            endpoint: crate::contract::DEFAULT_ENDPOINT.to_owned(),
            tenant_id: None,
            user_id: None,
            session_id: None,
            timeout: Duration::from_millis(crate::contract::DEFAULT_TIMEOUT_MS),
            auth_token: None,
            headers: Vec::new(),
            tls: TlsFiles::default(),
        }
    }
}

impl fmt::Debug for AmeideConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmeideConfig")
            .field("endpoint", &self.endpoint)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("session_id", &self.session_id)
            .field("timeout", &self.timeout)
            .field("auth_token", &self.auth_token)
            .field("headers", &self.headers)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Environment variable names read by [`AmeideConfig::from_env`].
pub mod env {
    /// Endpoint, e.g. `http://envoy-grpc:9000` in cluster.
    pub const BASE_URL: &str = "AMEIDE_GRPC_BASE_URL";
    /// Tenant id (system contexts only).
    pub const TENANT_ID: &str = "AMEIDE_TENANT_ID";
    /// User id.
    pub const USER_ID: &str = "AMEIDE_USER_ID";
    /// Whole-call timeout in milliseconds.
    pub const TIMEOUT_MS: &str = "AMEIDE_TIMEOUT_MS";
    /// Static bearer token.
    pub const AUTH_TOKEN: &str = "AMEIDE_AUTH_TOKEN";
    /// Extra CA certificate file (PEM) for `https` endpoints.
    pub const TLS_CA_FILE: &str = "AMEIDE_TLS_CA_FILE";
    /// Client certificate chain file (PEM) for mutual TLS.
    pub const TLS_CLIENT_CERT_FILE: &str = "AMEIDE_TLS_CLIENT_CERT_FILE";
    /// Client private key file (PEM) for mutual TLS.
    pub const TLS_CLIENT_KEY_FILE: &str = "AMEIDE_TLS_CLIENT_KEY_FILE";
    /// Trust roots: `bundled`, `system`, `bundled+system` or `ca-only`.
    pub const TLS_ROOTS: &str = "AMEIDE_TLS_ROOTS";
}

impl AmeideConfig {
    /// The defaults, overridden by whichever `AMEIDE_*` variables are set.
    ///
    /// ```
    /// // SAFETY of the example: single-threaded doctest.
    /// let config = ameide_sdk::AmeideConfig::from_env()?;
    /// # Ok::<(), ameide_sdk::ConfigError>(())
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(
                ConfigErrorKind::Environment,
                format!("{name} is not valid UTF-8"),
            )),
        })
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`
    /// (for tests and for configuration systems other than the process environment).
    ///
    /// ```
    /// use ameide_sdk::AmeideConfig;
    /// let vars = [("AMEIDE_TIMEOUT_MS", "250"), ("AMEIDE_GRPC_BASE_URL", "http://envoy-grpc:9000")];
    /// let lookup = |name: &str| Ok(vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()));
    /// let config = AmeideConfig::from_lookup(lookup)?;
    /// assert_eq!(config.timeout.as_millis(), 250);
    ///
    /// let bad = [("AMEIDE_TIMEOUT_MS", "5s")];
    /// let err = AmeideConfig::from_lookup(|n: &str| Ok(bad.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("AMEIDE_TIMEOUT_MS"));
    /// # Ok::<(), ameide_sdk::ConfigError>(())
    /// ```
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let read = |name: &str| -> Result<Option<String>, ConfigError> {
            match lookup(name)? {
                Some(value) if value.trim().is_empty() => Err(ConfigError::new(
                    ConfigErrorKind::Environment,
                    format!("{name} is set but empty: unset it or give it a value"),
                )),
                other => Ok(other),
            }
        };
        let env_err = |name: &str, e: ConfigError| {
            ConfigError::new(
                ConfigErrorKind::Environment,
                format!("{name}: {}", e.message),
            )
        };
        let mut config = AmeideConfig::default();
        if let Some(url) = read(env::BASE_URL)? {
            parse_target(&url).map_err(|e| env_err(env::BASE_URL, e))?;
            config.endpoint = url;
        }
        if let Some(tenant) = read(env::TENANT_ID)? {
            header_value("tenant id", &tenant).map_err(|e| env_err(env::TENANT_ID, e))?;
            config.tenant_id = Some(tenant);
        }
        if let Some(user) = read(env::USER_ID)? {
            header_value("user id", &user).map_err(|e| env_err(env::USER_ID, e))?;
            config.user_id = Some(user);
        }
        if let Some(ms) = read(env::TIMEOUT_MS)? {
            let millis: u64 = ms.trim().parse().map_err(|_| {
                ConfigError::new(
                    ConfigErrorKind::Environment,
                    format!(
                        "{}={ms:?} is not a whole number of milliseconds (e.g. 5000)",
                        env::TIMEOUT_MS
                    ),
                )
            })?;
            let timeout = Duration::from_millis(millis);
            validate_timeout("timeout", timeout).map_err(|e| env_err(env::TIMEOUT_MS, e))?;
            config.timeout = timeout;
        }
        if let Some(token) = read(env::AUTH_TOKEN)? {
            let token = AccessToken::new(token);
            token
                .header_value()
                .map_err(|e| env_err(env::AUTH_TOKEN, e))?;
            config.auth_token = Some(token);
        }
        config.tls = TlsFiles {
            ca_file: read(env::TLS_CA_FILE)?.map(Into::into),
            client_cert_file: read(env::TLS_CLIENT_CERT_FILE)?.map(Into::into),
            client_key_file: read(env::TLS_CLIENT_KEY_FILE)?.map(Into::into),
            roots: match read(env::TLS_ROOTS)? {
                Some(roots) => Some(roots.parse().map_err(|e| env_err(env::TLS_ROOTS, e))?),
                None => None,
            },
        };
        match (&config.tls.client_cert_file, &config.tls.client_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::new(
                    ConfigErrorKind::Environment,
                    format!(
                        "{} and {} go together: set both for mutual TLS, or neither",
                        env::TLS_CLIENT_CERT_FILE,
                        env::TLS_CLIENT_KEY_FILE
                    ),
                ));
            }
            _ => {}
        }
        Ok(config)
    }
}

pub use crate::config_error::{ConfigError, ConfigErrorKind};

/// A host as a name or an address: an IPv6 literal without its brackets
/// (`[::1]` → `::1`), anything else as it is.
pub(crate) fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `host` (a name, an IP address, or a bracketed IPv6 address) is
/// this machine: `localhost` or a loopback address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = unbracketed(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Validates an endpoint: `http` or `https`, a host, an optional port, no path or query.
/// The port of an endpoint URI: its own, else 443 for `https` and 80 for `http`.
pub(crate) fn port_of(uri: &Uri) -> u16 {
    uri.port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        })
}

/// A `dns:` target (grpc-go's form): `dns:///host:port`, `dns:host:port`,
/// or `dns://server:port/host:port` to ask that DNS server instead of the
/// system's. Every address the name has (A and AAAA) is a replica (h2c).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsTarget {
    pub(crate) server: Option<std::net::SocketAddr>,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// `Some` for a `dns:` target (validated), `None` for any other.
pub(crate) fn dns_target(target: &str) -> Result<Option<DnsTarget>, ConfigError> {
    let Some(rest) = target.strip_prefix("dns:") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ConfigError::new(
            ConfigErrorKind::Endpoint,
            format!(
                "invalid target {:?}: {why}; expected dns:///host:port or dns://dns-server:port/host:port",
                crate::peer::bounded(target, 256)
            ),
        )
    };
    let (server, name) = match rest.strip_prefix("//") {
        Some(rest) => {
            let (authority, name) = rest.split_once('/').ok_or_else(|| bad("no host:port"))?;
            let server = if authority.is_empty() {
                None
            } else {
                // grpc-go's default DNS port is 53.
                let with_port = if authority.parse::<std::net::IpAddr>().is_ok() {
                    format!("{authority}:53")
                } else {
                    authority.to_owned()
                };
                Some(
                    with_port
                        .parse::<std::net::SocketAddr>()
                        .map_err(|_| bad("the DNS server must be an ip[:port]"))?,
                )
            };
            (server, name)
        }
        None => (None, rest),
    };
    let (host, port) = name.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    // An IPv6 literal keeps its brackets (the endpoint and `:authority`
    // need them); a name has no ':'.
    let host = match host.strip_prefix('[') {
        Some(inner) => {
            let ip = inner
                .strip_suffix(']')
                .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok())
                .ok_or_else(|| bad("an unbalanced or invalid [IPv6] host"))?;
            format!("[{ip}]")
        }
        None => host.to_owned(),
    };
    if host.is_empty()
        || host.len() > 253
        || !(host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
    {
        return Err(bad("the host is not a DNS name"));
    }
    Ok(Some(DnsTarget { server, host, port }))
}

/// What a target names: grpc-go's target forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetSpec {
    /// `http(s)://host[:port]`, or each entry of a `static:///a:1,b:2` list.
    Endpoints(Vec<(String, Uri)>),
    /// `dns:///host:port`: every address of the name, resolved again.
    Dns(DnsTarget),
    /// `unix:path` or `unix:///absolute/path`: a Unix domain socket.
    Unix(std::path::PathBuf),
    /// `scheme:///name`: the addresses a [`Resolver`](crate::Resolver)
    /// registered for `scheme` with the builder gives for `name`.
    Resolver {
        /// The target's scheme (lower-case).
        scheme: String,
        /// What follows `scheme:///`.
        name: String,
    },
}

/// The schemes the SDK itself gives a meaning; a resolver cannot take them.
pub(crate) const OWN_SCHEMES: [&str; 5] = ["http", "https", "dns", "static", "unix"];

/// Whether `scheme` can name a [`Resolver`](crate::Resolver): lower-case
/// ASCII letters, digits, `+`, `-` and `.`, starting with a letter, at most
/// 32 bytes, and not one of [`OWN_SCHEMES`].
pub(crate) fn is_resolver_scheme(scheme: &str) -> bool {
    scheme.len() <= 32
        && scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && !OWN_SCHEMES.contains(&scheme)
}

/// The longest Unix socket path: `sun_path` holds 108 bytes with its NUL
/// on Linux, 104 on the BSDs and macOS.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_UNIX_PATH: usize = 107;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MAX_UNIX_PATH: usize = 103;

impl TargetSpec {
    /// The server the target names, as spans give it (`server.address`,
    /// `server.port`): the first endpoint's host and port, the DNS name, the
    /// socket's path (port 0: none), or the resolver's name.
    pub(crate) fn server(&self) -> (String, u16) {
        match self {
            TargetSpec::Endpoints(endpoints) => endpoints.first().map_or_else(
                || (String::new(), 0),
                |(_, uri)| (uri.host().unwrap_or_default().to_owned(), port_of(uri)),
            ),
            TargetSpec::Dns(dns) => (dns.host.clone(), dns.port),
            TargetSpec::Unix(path) => (path.to_string_lossy().into_owned(), 0),
            TargetSpec::Resolver { name, .. } => match name.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => {
                    (host.to_owned(), port.parse().unwrap_or(0))
                }
                _ => (name.clone(), 0),
            },
        }
    }
}

/// Parses and validates a target (an endpoint, a `static:`, `dns:` or
/// `unix:` target, or `scheme:///name` for a resolver); the error names
/// what is wrong and the forms expected.
///
/// ```ignore
/// assert!(matches!(parse_target("unix:///run/ameide.sock")?, TargetSpec::Unix(_)));
/// ```
pub(crate) fn parse_target(target: &str) -> Result<TargetSpec, ConfigError> {
    if let Some(dns) = dns_target(target)? {
        return Ok(TargetSpec::Dns(dns));
    }
    if let Some(path) = unix_target(target)? {
        return Ok(TargetSpec::Unix(path));
    }
    if let Some((scheme, name)) = target.split_once(":///")
        && is_resolver_scheme(scheme)
    {
        if name.is_empty() || name.len() > 1024 || name.bytes().any(|b| !(0x21..0x7f).contains(&b))
        {
            return Err(ConfigError::new(
                ConfigErrorKind::Endpoint,
                format!(
                    "invalid target {:?}: a resolver's target is {scheme}:///name, with a name of visible ASCII (1..=1024 bytes)",
                    crate::peer::bounded(target, 256)
                ),
            ));
        }
        return Ok(TargetSpec::Resolver {
            scheme: scheme.to_owned(),
            name: name.to_owned(),
        });
    }
    endpoints_of(target).map(TargetSpec::Endpoints)
}

/// `Some` for a `unix:` target (grpc-go's forms: `unix:path`, relative or
/// absolute, and `unix:///absolute/path`), validated; `None` for any other.
fn unix_target(target: &str) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(rest) = target.strip_prefix("unix:") else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ConfigError::new(
            ConfigErrorKind::Endpoint,
            format!(
                "invalid target {:?}: {why}; expected unix:path or unix:///absolute/path",
                crate::peer::bounded(target, 256)
            ),
        )
    };
    let path = match rest.strip_prefix("//") {
        // unix://authority/path has no meaning for a local socket.
        Some(absolute) if absolute.starts_with('/') => absolute,
        Some(_) => return Err(bad("a unix: target names no host")),
        None => rest,
    };
    if path.is_empty() {
        return Err(bad("no socket path"));
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(bad(&format!(
            "the socket path is {} bytes, more than the {MAX_UNIX_PATH} a Unix socket address holds",
            path.len()
        )));
    }
    if path.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        return Err(bad("the socket path has a control character"));
    }
    Ok(Some(std::path::PathBuf::from(path)))
}

/// The most addresses a static target may list.
pub(crate) const MAX_STATIC_ENDPOINTS: usize = 64;

/// The endpoints a target names: itself, or for `static:///a:1,b:2` (a
/// static list of replicas, balanced round-robin) each entry as an endpoint
/// (`host:port` is `http://host:port`; an entry may carry its own `http://`
/// or `https://`, the same for all). Each is validated.
///
/// ```ignore
/// assert_eq!(endpoints_of("static:///10.0.0.1:50051,10.0.0.2:50051")?.len(), 2);
/// ```
fn endpoints_of(target: &str) -> Result<Vec<(String, Uri)>, ConfigError> {
    let Some(list) = target.strip_prefix("static:///") else {
        return Ok(vec![(target.to_owned(), validate_endpoint(target)?)]);
    };
    let bad = |why: String| {
        ConfigError::new(
            ConfigErrorKind::Endpoint,
            format!(
                "invalid target {:?}: {why}",
                crate::peer::bounded(target, 256)
            ),
        )
    };
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.iter().any(|e| e.is_empty()) {
        return Err(bad(
            "an empty entry; expected static:///host:port,host:port".to_owned(),
        ));
    }
    if entries.len() > MAX_STATIC_ENDPOINTS {
        return Err(bad(format!(
            "{} entries, more than {MAX_STATIC_ENDPOINTS}",
            entries.len()
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let endpoint = if entry.contains("://") {
            entry.to_owned()
        } else {
            format!("http://{entry}")
        };
        let uri = validate_endpoint(&endpoint)?;
        if let Some((_, first)) = out.first() {
            let first: &Uri = first;
            if first.scheme_str() != uri.scheme_str() {
                return Err(bad("entries mix http:// and https://".to_owned()));
            }
        }
        out.push((endpoint, uri));
    }
    Ok(out)
}

pub(crate) fn validate_endpoint(endpoint: &str) -> Result<Uri, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            ConfigErrorKind::Endpoint,
            format!(
                "invalid endpoint {endpoint:?}: {why}; expected http://host[:port] (h2c) or https://host[:port] (TLS)"
            ),
        )
    };
    let uri: Uri = endpoint.parse().map_err(|_| bad("not a URI"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(bad(&format!("scheme {other:?} is not supported"))),
        None => return Err(bad("no scheme")),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(bad("no host")),
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad("endpoints take no path"));
    }
    if uri.query().is_some() {
        return Err(bad("endpoints take no query"));
    }
    Ok(uri)
}

/// Validates a metadata value: non-empty visible ASCII.
pub(crate) fn header_value(what: &str, value: &str) -> Result<HeaderValue, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(
            ConfigErrorKind::Header,
            format!("{what} is empty"),
        ));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ConfigError::new(
            ConfigErrorKind::Header,
            format!(
                "{what} {value:?} is not valid metadata: use visible ASCII characters and spaces only"
            ),
        ));
    }
    HeaderValue::from_str(value).map_err(|_| {
        ConfigError::new(
            ConfigErrorKind::Header,
            format!("{what} {value:?} is not a valid header value"),
        )
    })
}

/// Validates an extra header: a lower-cased, non-reserved name and an ASCII value
/// (base64 for `-bin` names).
pub(crate) fn validate_header(
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let lower = name.to_ascii_lowercase();
    let header = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
        ConfigError::new(
            ConfigErrorKind::Header,
            format!(
                "invalid header name {name:?}: use lower-case letters, digits, '-', '_' and '.'"
            ),
        )
    })?;
    if lower.starts_with("grpc-") || matches!(lower.as_str(), "content-type" | "te" | "host") {
        return Err(ConfigError::new(
            ConfigErrorKind::Header,
            format!("header name {name:?} is reserved by gRPC/HTTP2 and cannot be set"),
        ));
    }
    let value = if lower.ends_with("-bin") {
        use base64_check::is_base64;
        if !is_base64(value) {
            return Err(ConfigError::new(
                ConfigErrorKind::Header,
                format!("value of binary header {name:?} must be base64"),
            ));
        }
        header_value(&format!("value of header {name:?}"), value)?
    } else {
        header_value(&format!("value of header {name:?}"), value)?
    };
    Ok((header, value))
}

mod base64_check {
    pub(super) fn is_base64(value: &str) -> bool {
        !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    }
}

/// Validates a timeout: at least 1 ms, at most [`MAX_TIMEOUT`].
pub(crate) fn validate_timeout(what: &str, timeout: Duration) -> Result<(), ConfigError> {
    if timeout < Duration::from_millis(1) {
        return Err(ConfigError::new(
            ConfigErrorKind::Timeout,
            format!("{what} {timeout:?} is too short: use at least 1 ms"),
        ));
    }
    if timeout > MAX_TIMEOUT {
        return Err(ConfigError::new(
            ConfigErrorKind::Timeout,
            format!("{what} {timeout:?} is longer than the maximum of 100 days"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod dns_target_tests {
    use super::{DnsTarget, TargetSpec, dns_target, parse_target};

    #[test]
    fn every_target_form_parses_and_bad_ones_name_the_form() {
        let unix = |s: &str| match parse_target(s).unwrap() {
            TargetSpec::Unix(path) => path.to_string_lossy().into_owned(),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(unix("unix:///run/ameide.sock"), "/run/ameide.sock");
        assert_eq!(unix("unix:/run/ameide.sock"), "/run/ameide.sock");
        assert_eq!(unix("unix:relative.sock"), "relative.sock");
        assert_eq!(
            parse_target("registry:///orders").unwrap(),
            TargetSpec::Resolver {
                scheme: "registry".into(),
                name: "orders".into()
            }
        );
        assert_eq!(
            parse_target("consul+v2:///orders.prod:50051")
                .unwrap()
                .server(),
            ("orders.prod".to_owned(), 50051)
        );
        assert_eq!(
            parse_target("unix:///run/a.sock").unwrap().server(),
            ("/run/a.sock".to_owned(), 0)
        );
        assert!(matches!(
            parse_target("static:///127.0.0.1:1,127.0.0.1:2").unwrap(),
            TargetSpec::Endpoints(list) if list.len() == 2
        ));
        assert!(matches!(
            parse_target("dns:///svc:1").unwrap(),
            TargetSpec::Dns(_)
        ));
        let long = format!("unix:///{}", "a".repeat(200));
        for (bad, needle) in [
            ("unix:", "no socket path"),
            ("unix://host/x.sock", "names no host"),
            (long.as_str(), "more than the 107"),
            ("unix:/tmp/a\nb", "control character"),
            ("registry:///", "visible ASCII"),
            ("registry:///a b", "visible ASCII"),
            ("Registry:///x", "expected http://host"),
            ("ftp://x:1", "not supported"),
        ] {
            let err = parse_target(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn dns_targets_parse_as_grpc_go_writes_them() {
        let t = |s: &str| dns_target(s).unwrap().unwrap();
        assert_eq!(
            t("dns:///svc.ns:50051"),
            DnsTarget {
                server: None,
                host: "svc.ns".into(),
                port: 50051
            }
        );
        assert_eq!(t("dns:svc:1").host, "svc");
        assert_eq!(
            t("dns://10.0.0.10/svc:1").server,
            Some("10.0.0.10:53".parse().unwrap()),
            "grpc-go's default DNS port"
        );
        assert_eq!(
            t("dns://127.0.0.1:5353/svc:1").server,
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(t("dns:///[::1]:50051").host, "[::1]");
        assert!(dns_target("http://x:1").unwrap().is_none());
        for bad in [
            "dns:",
            "dns:///",
            "dns:///svc",
            "dns:///svc:0",
            "dns:///svc:x",
            "dns:///a:b:1",
            "dns:///[foo:1",
            "dns:///[::1:1",
            "dns://nonsense/svc:1",
            "dns:///bad name:1",
        ] {
            assert!(dns_target(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(
        vars: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Result<Option<String>, ConfigError> {
        move |name| {
            Ok(vars
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string()))
        }
    }

    #[test]
    fn from_lookup_without_variables_gives_the_contract_defaults() {
        assert_eq!(
            AmeideConfig::from_lookup(lookup(&[])).unwrap(),
            AmeideConfig::default()
        );
    }

    #[test]
    fn from_lookup_reads_every_variable() {
        let config = AmeideConfig::from_lookup(lookup(&[
            ("AMEIDE_GRPC_BASE_URL", "http://envoy-grpc:9000"),
            ("AMEIDE_TENANT_ID", "tenant-a"),
            ("AMEIDE_USER_ID", "user-b"),
            ("AMEIDE_TIMEOUT_MS", "1500"),
            ("AMEIDE_AUTH_TOKEN", "tok-123"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint, "http://envoy-grpc:9000");
        assert_eq!(config.tenant_id.as_deref(), Some("tenant-a"));
        assert_eq!(config.user_id.as_deref(), Some("user-b"));
        assert_eq!(config.timeout, Duration::from_millis(1500));
        assert_eq!(config.auth_token.unwrap().secret(), "tok-123");
    }

    #[test]
    fn malformed_variables_are_errors_naming_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("AMEIDE_TIMEOUT_MS", "5s")], "AMEIDE_TIMEOUT_MS"),
            (&[("AMEIDE_TIMEOUT_MS", "0")], "AMEIDE_TIMEOUT_MS"),
            (&[("AMEIDE_TIMEOUT_MS", "-1")], "AMEIDE_TIMEOUT_MS"),
            (&[("AMEIDE_TIMEOUT_MS", "")], "AMEIDE_TIMEOUT_MS"),
            (
                &[("AMEIDE_GRPC_BASE_URL", "envoy:9000")],
                "AMEIDE_GRPC_BASE_URL",
            ),
            (
                &[("AMEIDE_GRPC_BASE_URL", "ftp://envoy:9000")],
                "AMEIDE_GRPC_BASE_URL",
            ),
            (
                &[("AMEIDE_GRPC_BASE_URL", "http://envoy:9000/api")],
                "AMEIDE_GRPC_BASE_URL",
            ),
            (&[("AMEIDE_TENANT_ID", "t\n1")], "AMEIDE_TENANT_ID"),
            (&[("AMEIDE_USER_ID", " ")], "AMEIDE_USER_ID"),
            (&[("AMEIDE_AUTH_TOKEN", "tök")], "AMEIDE_AUTH_TOKEN"),
        ];
        for (vars, name) in cases {
            let vars: &'static [(&'static str, &'static str)] =
                Box::leak(vars.to_vec().into_boxed_slice());
            let err = AmeideConfig::from_lookup(lookup(vars)).unwrap_err();
            assert_eq!(err.kind(), ConfigErrorKind::Environment, "{err}");
            assert!(err.to_string().contains(name), "{err} should name {name}");
        }
    }

    #[test]
    fn token_never_appears_in_debug_output() {
        let config = AmeideConfig {
            auth_token: Some(AccessToken::new("super-secret")),
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("super-secret"));
    }

    #[test]
    fn header_validation_lowercases_and_rejects_reserved_and_invalid() {
        let (name, value) = validate_header("X-Trace-Me", "yes").unwrap();
        assert_eq!(name.as_str(), "x-trace-me");
        assert_eq!(value, "yes");
        for (name, value, needle) in [
            ("bad name", "v", "invalid header name"),
            ("grpc-timeout", "1S", "reserved"),
            ("content-type", "x", "reserved"),
            ("x-ok", "line\nbreak", "visible ASCII"),
            ("x-ok", "", "empty"),
            ("x-data-bin", "not base64!", "base64"),
        ] {
            let err = validate_header(name, value).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}={value:?}: {err}");
        }
    }
}
