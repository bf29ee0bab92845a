//! HTTP CONNECT proxies for `https` endpoints: `HTTPS_PROXY` and `NO_PROXY`
//! as grpc-go (and Go's `net/http`) read them, or a proxy given in code.
//!
//! | Question | Answer |
//! |---|---|
//! | Which endpoints? | `https` only; a plaintext `http` endpoint (h2c inside a cluster) never goes through a proxy |
//! | Which variables? | the first of `HTTPS_PROXY`, `https_proxy` that is set and not empty, and likewise `NO_PROXY`, `no_proxy`, read when the client is built; a malformed `HTTPS_PROXY` (or one that is not UTF-8) is a [`ConfigError`] naming it |
//! | Never proxied (environment) | `localhost` and loopback addresses, as Go |
//! | `NO_PROXY` entries | comma-separated: `*`; a host name and its subdomains (`.name` or `*.name`: the subdomains only); an IP address; a CIDR block; any of them with `:port` |
//! | Proxy URL | `http://[user:password@]host[:port]` (port 80 by default; no scheme means `http`); the credentials go as `Proxy-Authorization: Basic`. A TLS (`https://`) proxy is refused at build |
//! | On the wire | `CONNECT host:port HTTP/1.1` to the proxy, then TLS to the endpoint through the tunnel; the answer's status line is read within the connect timeout (at most 16 KiB of it) and anything but 2xx fails the connect, naming the proxy and its answer; 403 and 407 fail the waiting calls at once (the proxy's policy or credentials, not a passing fault) |

use std::net::IpAddr;

use base64::Engine as _;

use crate::config_error::{ConfigError, ConfigErrorKind};

/// How `https` endpoints reach their server.
///
/// ```
/// use ameide_sdk::{Proxy, TransportOptions};
/// assert_eq!(TransportOptions::default().proxy, Proxy::FromEnvironment);
/// let options = TransportOptions::default().with_proxy(Proxy::Disabled);
/// assert_eq!(options.proxy, Proxy::Disabled);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Proxy {
    /// `HTTPS_PROXY` and `NO_PROXY` (or their lower-case forms), read when
    /// the client is built, as grpc-go does; loopback endpoints never go
    /// through the proxy. The default.
    #[default]
    FromEnvironment,
    /// Always connect directly.
    Disabled,
    /// This proxy (`http://[user:password@]host[:port]`) for every `https`
    /// endpoint but those `no_proxy` names (`NO_PROXY`'s syntax).
    Url {
        /// The proxy.
        url: String,
        /// The endpoints that bypass it.
        no_proxy: String,
    },
}

/// A proxy a connection goes through.
#[derive(Clone)]
pub(crate) struct ProxyRoute {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `Proxy-Authorization` value, when the URL has credentials.
    pub(crate) authorization: Option<String>,
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The proxy for an `https` endpoint at `host:port`, if one applies.
/// `lookup` reads an environment variable.
pub(crate) fn route(
    proxy: &Proxy,
    host: &str,
    port: u16,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProxyRoute>, ConfigError> {
    let (url, no_proxy, source) = match proxy {
        Proxy::Disabled => return Ok(None),
        Proxy::Url { url, no_proxy } => (url.clone(), no_proxy.clone(), "proxy URL"),
        Proxy::FromEnvironment => {
            // The first of the two that is set and not empty, as Go.
            let first = |names: [&str; 2]| {
                names
                    .into_iter()
                    .filter_map(&lookup)
                    .find(|v| !v.trim().is_empty())
            };
            let Some(url) = first(["HTTPS_PROXY", "https_proxy"]) else {
                return Ok(None);
            };
            let no_proxy = first(["NO_PROXY", "no_proxy"]).unwrap_or_default();
            (url, no_proxy, "HTTPS_PROXY")
        }
    };
    let route = parse(&url).map_err(|why| {
        ConfigError::new(
            ConfigErrorKind::Transport,
            format!(
                "{source} {:?}: {why}",
                crate::peer::loggable(url.as_bytes())
            ),
        )
    })?;
    // Checked after the URL, so a malformed variable is an error whatever the endpoint.
    let from_environment = matches!(proxy, Proxy::FromEnvironment);
    if (from_environment && crate::config::is_loopback_host(host)) || bypass(&no_proxy, host, port)
    {
        return Ok(None);
    }
    Ok(Some(route))
}

/// Parses `http://[user:password@]host[:port]` (no scheme: `http`).
fn parse(url: &str) -> Result<ProxyRoute, String> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(
                "a TLS (https://) proxy is not supported: use an http:// proxy, which tunnels TLS with CONNECT"
                    .to_owned(),
            );
        }
        Some((scheme, _)) => {
            return Err(format!(
                "proxy scheme {:?} is not supported: use http://",
                crate::peer::loggable(scheme.as_bytes())
            ));
        }
        None => url,
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('?') {
        return Err("a proxy URL has no path or query".to_owned());
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let parsed: http::uri::Authority = hostport
        .parse()
        .map_err(|e| format!("not a host[:port]: {e}"))?;
    let host = crate::config::unbracketed(parsed.host()).to_owned();
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let authorization = userinfo.map(|userinfo| {
        let decoded = percent_encoding::percent_decode_str(userinfo).decode_utf8_lossy();
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes())
        )
    });
    let after_host = &hostport[hostport.rfind(']').map_or(0, |i| i + 1)..];
    let port = match after_host.rsplit_once(':') {
        Some((_, port)) => port.parse::<u16>().map_err(|_| {
            format!(
                "port {:?} is not a number",
                crate::peer::loggable(port.as_bytes())
            )
        })?,
        None => 80,
    };
    Ok(ProxyRoute {
        host,
        port,
        authorization,
    })
}

/// Whether `NO_PROXY`'s list names `host:port`.
pub(crate) fn bypass(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            if let Some((net, bits)) = entry.split_once('/') {
                return match (ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_block(ip, net, bits),
                    _ => false,
                };
            }
            let (name, want_port) = split_port(&entry);
            if want_port.is_some_and(|p| p != port) {
                return false;
            }
            // As Go: `example.com` is the host and its subdomains;
            // `.example.com` and `*.example.com` only the subdomains.
            let subdomains_only = name.starts_with('.') || name.starts_with("*.");
            let name = name.trim_start_matches('*').trim_start_matches('.');
            let name = name.trim_end_matches('.');
            match (ip, name.parse::<IpAddr>()) {
                (Some(ip), Ok(entry_ip)) => ip == entry_ip,
                (Some(_), Err(_)) | (None, Ok(_)) => false,
                (None, Err(_)) => {
                    !name.is_empty()
                        && ((host == name && !subdomains_only)
                            || host.strip_suffix(name).is_some_and(|p| p.ends_with('.')))
                }
            }
        })
}

/// `host:port`, `[v6]:port`, `v6`, or `host`.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The largest CONNECT answer read.
const MAX_ANSWER: usize = 16 << 10;

/// Why a tunnel was not opened, and whether the proxy's answer stands
/// (403 forbidden, 407 credentials wanted: trying again cannot help).
pub(crate) struct TunnelError {
    pub(crate) message: String,
    pub(crate) permanent: bool,
}

impl From<String> for TunnelError {
    fn from(message: String) -> Self {
        TunnelError {
            message,
            permanent: false,
        }
    }
}

/// Opens a tunnel to `host:port` through the proxy on `stream`: sends
/// CONNECT, reads the answer's head, succeeds on 2xx.
pub(crate) async fn tunnel(
    stream: &mut tokio::net::TcpStream,
    route: &ProxyRoute,
    host: &str,
    port: u16,
) -> Result<(), TunnelError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &route.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| TunnelError::from(format!("cannot send CONNECT to the proxy {route}: {e}")))?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        if let Some(end) = find_head_end(&answer) {
            break end;
        }
        if answer.len() >= MAX_ANSWER {
            return Err(format!(
                "the proxy {route} answered CONNECT with more than {MAX_ANSWER} bytes of headers"
            )
            .into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| {
            TunnelError::from(format!("the proxy {route} did not answer CONNECT: {e}"))
        })?;
        if n == 0 {
            return Err(format!(
                "the proxy {route} closed the connection before answering CONNECT"
            )
            .into());
        }
        answer.extend_from_slice(&chunk[..n]);
    };
    judge(&answer, head_end, route, &target)
}

/// The verdict on a CONNECT answer whose head ends at `head_end`.
pub(crate) fn judge(
    answer: &[u8],
    head_end: usize,
    route: &ProxyRoute,
    target: &str,
) -> Result<(), TunnelError> {
    let status_line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let status_line = status_line.strip_suffix(b"\r").unwrap_or(status_line);
    let mut parts = status_line.splitn(3, |b| *b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts
        .next()
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200..=299) if version.starts_with(b"HTTP/1.") => {
            if head_end < answer.len() {
                return Err(format!(
                    "the proxy {route} sent bytes after its CONNECT answer, before the server could speak"
                )
                .into());
            }
            Ok(())
        }
        _ => Err(TunnelError {
            message: format!(
                "the proxy {route} refused the tunnel to {target}: {}",
                crate::peer::loggable(status_line)
            ),
            permanent: matches!(code, Some(403 | 407)),
        }),
    }
}

/// Everything a peer or a user can hand this module, for the fuzz target:
/// NUL-separated proxy URL, `NO_PROXY` list, host, then a CONNECT answer.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == 0);
    let url = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let no_proxy = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let host = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let answer = parts.next().unwrap_or_default();
    let port = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let _ = bypass(&no_proxy, &host, port);
    let chosen = route(
        &Proxy::Url {
            url,
            no_proxy: no_proxy.clone(),
        },
        &host,
        port,
        |_| None,
    );
    let route = match chosen {
        Ok(Some(route)) => route,
        _ => ProxyRoute {
            host: "proxy".to_owned(),
            port: 1,
            authorization: None,
        },
    };
    if let Some(end) = find_head_end(answer) {
        match judge(answer, end, &route, "target:443") {
            Ok(()) => assert!(answer.starts_with(b"HTTP/1.")),
            Err(e) => assert!(!e.message.contains('\n')),
        }
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn no_proxy_entries_match_like_go() {
        let list = "example.com, .internal, *.svc, 10.0.0.0/8, 192.168.1.7, [::1]:8443, api.test:443, fd00::/8";
        let cases = [
            ("example.com", 443, true),
            ("a.example.com", 443, true),
            ("notexample.com", 443, false),
            ("x.internal", 1, true),
            ("internal", 1, false),
            ("cluster.svc", 443, true),
            ("svc", 443, false),
            ("10.2.3.4", 443, true),
            ("11.2.3.4", 443, false),
            ("192.168.1.7", 9, true),
            ("192.168.1.8", 9, false),
            ("::1", 8443, true),
            ("::1", 443, false),
            ("api.test", 443, true),
            ("api.test", 8443, false),
            ("fd12::1", 443, true),
            ("EXAMPLE.COM.", 443, true),
            ("ameide.io", 443, false),
        ];
        for (host, port, want) in cases {
            assert_eq!(bypass(list, host, port), want, "{host}:{port}");
        }
        assert!(bypass("*", "anything", 1));
        assert!(!bypass("", "anything", 1));
        assert!(!bypass(" , ,", "anything", 1));
    }

    #[test]
    fn environment_urls_are_parsed_or_named() {
        let vars = [("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128")];
        let found = route(&Proxy::FromEnvironment, "api.ameide.io", 443, env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!((found.host.as_str(), found.port), ("proxy.corp", 3128));
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(found.authorization, Some(format!("Basic {expected}")));

        let vars = [("HTTPS_PROXY", " "), ("https_proxy", "proxy.corp")];
        let found = route(&Proxy::FromEnvironment, "api.ameide.io", 443, env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(found.port, 80);

        // Loopback and NO_PROXY bypass it; http-only endpoints never ask.
        let vars = [("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", ".ameide.io")];
        for host in ["localhost", "127.0.0.2", "::1", "api.ameide.io"] {
            assert!(
                route(&Proxy::FromEnvironment, host, 443, env(&vars))
                    .unwrap()
                    .is_none(),
                "{host}"
            );
        }
        assert!(
            route(&Proxy::Disabled, "api.ameide.io", 443, env(&vars))
                .unwrap()
                .is_none()
        );

        for bad in [
            "https://p:1",
            "socks5://p:1",
            "http://p:1/path",
            "http://:1",
            "http://p:x",
        ] {
            let vars = [("HTTPS_PROXY", bad)];
            let err = route(&Proxy::FromEnvironment, "api.ameide.io", 443, env(&vars)).unwrap_err();
            assert!(err.to_string().contains("HTTPS_PROXY"), "{bad}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_no_proxy_and_host_are_matched_without_panic(list in ".{0,64}", host in ".{0,32}", port in proptest::num::u16::ANY) {
            let _ = bypass(&list, &host, port);
            let _ = parse(&list);
        }
    }
}
