//! TLS for `https` endpoints: rustls with the ring provider (no OpenSSL),
//! trust roots as [`TrustRoots`] says, an optional extra CA, an optional
//! client certificate (mTLS), ALPN `h2` only.
//!
//! The first configuration is decided when the client is built: a PEM that
//! does not parse, a key that does not match its certificate, or a system
//! store with no usable certificate is a [`ConfigError`] naming the option (or
//! file) and the fault, never a failure of the first call.
//!
//! Material read from files (the CA of `AMEIDE_TLS_CA_FILE` or
//! [`TransportOptions::with_ca_certificate_file`](super::TransportOptions::with_ca_certificate_file),
//! a [`ClientIdentity::from_files`]) rotates: [`TlsMaterial`] reads the files
//! again before each new connection and, when their content changed, uses the
//! new configuration from that connection on (cert-manager replaces mTLS
//! certificates in place). A rotation caught half-way (a new certificate
//! beside the old key) keeps the last good configuration, with a warning,
//! until the files agree again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config_error::{ConfigError, ConfigErrorKind};

/// Which certificate authorities an `https` endpoint's certificate may chain to.
/// An extra CA ([`TransportOptions::ca_certificate_pem`](super::TransportOptions::ca_certificate_pem))
/// is trusted on top of the chosen set.
///
/// ```
/// use ameide_sdk::TrustRoots;
/// assert_eq!(TrustRoots::default(), TrustRoots::Bundled);
/// assert_eq!("system".parse::<TrustRoots>().unwrap(), TrustRoots::System);
/// assert!("os".parse::<TrustRoots>().unwrap_err().to_string().contains("bundled"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TrustRoots {
    /// The Mozilla roots compiled into the crate (`webpki-roots`): the same on
    /// every machine, updated with the crate.
    #[default]
    Bundled,
    /// The operating system's store (read once, at build) instead of the bundled roots.
    System,
    /// Both the bundled roots and the operating system's store.
    BundledAndSystem,
    /// Only the extra CA; building fails without one. For private clusters
    /// where no public CA should be accepted.
    CaOnly,
}

impl std::str::FromStr for TrustRoots {
    type Err = ConfigError;

    /// `bundled`, `system`, `bundled+system` or `ca-only` (the values of `AMEIDE_TLS_ROOTS`).
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        match value.trim() {
            "bundled" => Ok(TrustRoots::Bundled),
            "system" => Ok(TrustRoots::System),
            "bundled+system" => Ok(TrustRoots::BundledAndSystem),
            "ca-only" => Ok(TrustRoots::CaOnly),
            other => Err(ConfigError::new(
                ConfigErrorKind::Tls,
                format!(
                    "trust roots {:?} unknown: use bundled, system, bundled+system or ca-only",
                    crate::peer::loggable(other.as_bytes())
                ),
            )),
        }
    }
}

/// A client certificate chain and its private key, both PEM, for mutual TLS.
///
/// ```
/// let identity = ameide_sdk::ClientIdentity::from_pem(b"-----BEGIN CERTIFICATE-----".to_vec(), b"key".to_vec());
/// assert!(format!("{identity:?}").contains("redacted"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub(crate) cert_chain_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
    /// Where they were read from, for error messages.
    pub(crate) origin: Option<(PathBuf, PathBuf)>,
}

impl ClientIdentity {
    /// A certificate chain (leaf first) and a PKCS#8, PKCS#1 or SEC1 key, PEM.
    pub fn from_pem(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        ClientIdentity {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            origin: None,
        }
    }

    /// Reads the two PEM files; the error names the file that cannot be read.
    ///
    /// ```
    /// let err = ameide_sdk::ClientIdentity::from_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    /// assert!(err.to_string().contains("/nonexistent/cert.pem"));
    /// ```
    pub fn from_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        Ok(ClientIdentity {
            cert_chain_pem: read_file("client certificate", cert_path)?,
            key_pem: read_file("client key", key_path)?,
            origin: Some((cert_path.to_owned(), key_path.to_owned())),
        })
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"redacted")
            .field("origin", &self.origin)
            .finish()
    }
}

/// The largest PEM file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file of at most 1 MiB; the error names what and where.
pub(crate) fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let fail = |why: String| {
        ConfigError::new(
            ConfigErrorKind::Tls,
            format!("{what} file {}: {why}", path.display()),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!(
            "larger than {MAX_PEM_BYTES} bytes: not a PEM file"
        )));
    }
    Ok(bytes)
}

/// Parses every certificate of a PEM text; at least one must be there.
fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(ConfigErrorKind::Tls, format!("{what}: invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            ConfigErrorKind::Tls,
            format!("{what}: no CERTIFICATE block in the PEM text"),
        ));
    }
    Ok(certs)
}

/// The rustls client configuration of an `https` endpoint.
pub(crate) fn client_config(
    roots_choice: TrustRoots,
    ca_pem: Option<&[u8]>,
    ca_origin: Option<&Path>,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let tls_err = |message: String| ConfigError::new(ConfigErrorKind::Tls, message);
    let mut roots = RootCertStore::empty();
    if matches!(
        roots_choice,
        TrustRoots::Bundled | TrustRoots::BundledAndSystem
    ) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if matches!(
        roots_choice,
        TrustRoots::System | TrustRoots::BundledAndSystem
    ) {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "the store is empty".to_owned(), |e| e.to_string());
            return Err(tls_err(format!(
                "trust roots {roots_choice:?}: no usable certificate in the operating system's store ({why})"
            )));
        }
    }
    let ca_name = match ca_origin {
        Some(path) => format!("CA certificate file {}", path.display()),
        None => "CA certificate (ca_certificate_pem)".to_owned(),
    };
    match ca_pem {
        Some(pem) => {
            for cert in certificates(&ca_name, pem)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("{ca_name}: not a usable CA certificate: {e}")))?;
            }
        }
        None if roots_choice == TrustRoots::CaOnly => {
            return Err(tls_err(
                "trust roots CaOnly need a CA certificate (ca_certificate_pem or AMEIDE_TLS_CA_FILE)"
                    .to_owned(),
            ));
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let (cert_name, key_name) = match &identity.origin {
                Some((cert, key)) => (
                    format!("client certificate file {}", cert.display()),
                    format!("client key file {}", key.display()),
                ),
                None => ("client certificate".to_owned(), "client key".to_owned()),
            };
            let chain = certificates(&cert_name, &identity.cert_chain_pem)?;
            let key = PrivateKeyDer::from_pem_slice(&identity.key_pem).map_err(|e| {
                tls_err(format!(
                    "{key_name}: no PKCS#8, PKCS#1 or SEC1 private key in the PEM text ({e})"
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_err(format!(
                    "{cert_name} and {key_name} cannot be used together: {e}"
                ))
            })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A target's TLS client configuration, and the files it came from.
pub(crate) struct TlsMaterial {
    roots: TrustRoots,
    ca_file: Option<PathBuf>,
    identity_files: Option<(PathBuf, PathBuf)>,
    current: Mutex<Current>,
}

/// The configuration in use and the file contents it was built from.
struct Current {
    ca_pem: Option<Vec<u8>>,
    identity: Option<ClientIdentity>,
    config: Arc<rustls::ClientConfig>,
}

impl TlsMaterial {
    /// Builds the configuration now; errors name the option or file.
    pub(crate) fn new(
        roots: TrustRoots,
        ca_pem: Option<Vec<u8>>,
        ca_file: Option<PathBuf>,
        identity: Option<ClientIdentity>,
    ) -> Result<Self, ConfigError> {
        let config = client_config(
            roots,
            ca_pem.as_deref(),
            ca_file.as_deref(),
            identity.as_ref(),
        )?;
        Ok(TlsMaterial {
            roots,
            ca_file,
            identity_files: identity.as_ref().and_then(|i| i.origin.clone()),
            current: Mutex::new(Current {
                ca_pem,
                identity,
                config,
            }),
        })
    }

    /// The configuration for the next connection: rebuilt first when a
    /// file it came from changed and the new content is usable.
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if self.ca_file.is_none() && self.identity_files.is_none() {
            return current.config.clone();
        }
        let fresh = (|| {
            let ca_pem = match &self.ca_file {
                Some(path) => Some(read_file("CA certificate", path)?),
                None => current.ca_pem.clone(),
            };
            let identity = match &self.identity_files {
                Some((cert, key)) => Some(ClientIdentity::from_files(cert, key)?),
                None => current.identity.clone(),
            };
            if ca_pem == current.ca_pem && identity == current.identity {
                return Ok(None);
            }
            let config = client_config(
                self.roots,
                ca_pem.as_deref(),
                self.ca_file.as_deref(),
                identity.as_ref(),
            )?;
            Ok::<_, ConfigError>(Some(Current {
                ca_pem,
                identity,
                config,
            }))
        })();
        match fresh {
            Ok(None) => {}
            Ok(Some(fresh)) => {
                ::tracing::info!(
                    "TLS files changed: the next connections use the new CA and client certificate"
                );
                *current = fresh;
            }
            Err(error) => ::tracing::warn!(
                %error,
                "TLS files changed but cannot be used (yet): the last good configuration stays in use"
            ),
        }
        current.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_only_needs_a_ca() {
        let err = client_config(TrustRoots::CaOnly, None, None, None).unwrap_err();
        assert!(err.to_string().contains("CaOnly"), "{err}");
    }

    #[test]
    fn garbage_pem_is_named() {
        let err = client_config(TrustRoots::Bundled, Some(b"not pem"), None, None).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let identity = ClientIdentity::from_pem(b"x".to_vec(), b"y".to_vec());
        let err = client_config(TrustRoots::Bundled, None, None, Some(&identity)).unwrap_err();
        assert!(err.to_string().contains("client certificate"), "{err}");
    }

    #[test]
    fn bundled_roots_build() {
        let config = client_config(TrustRoots::Bundled, None, None, None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }
}
