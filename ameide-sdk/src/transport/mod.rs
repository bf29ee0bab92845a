//! The transport under the layers: a [`subchannel`] that owns its HTTP/2
//! connections ([`connection`], watched by a [`tap`]) over TCP, or over
//! rustls ([`tls`]: ring provider, no OpenSSL) for `https`; or any tower
//! service the caller provides. Wrapped in
//! a slot that [`AmeideClient::close`](crate::AmeideClient::close) empties.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::config::{ConfigError, ConfigErrorKind, TargetSpec};
use crate::telemetry::metrics::SubchannelMetrics;
use crate::wire_types::{BoxError, BoxFuture, HttpRequest, HttpResponse};

pub(crate) mod balancer;
pub(crate) mod connection;
#[cfg(feature = "dns")]
pub(crate) mod dns;
pub(crate) mod failure;
pub(crate) mod outlier;
pub(crate) mod proxy;
pub(crate) mod resolver;
pub(crate) mod subchannel;
pub(crate) mod tap;
pub(crate) mod tls;

pub use balancer::LoadBalancing;
use connection::Target;
pub use outlier::OutlierEjection;
pub use proxy::Proxy;
pub use resolver::{AddressStream, Resolver, ResolverAnswer};
use subchannel::{Pacing, Subchannel};
pub use tls::{ClientIdentity, TrustRoots};

/// A type-erased transport (or transport plus user layers).
pub type BoxTransport = BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>;

/// How the default transport connects: the subchannel's connections to the
/// target (see `docs/ARCHITECTURE.md`, "The subchannel"). Every default
/// follows grpc-go's client unless its doc says why not.
///
/// ```
/// use std::time::Duration;
/// let options = ameide_sdk::TransportOptions::default();
/// // No HTTP/2 keepalive pings by default (gRFC A8, as grpc-go): servers'
/// // default policy allows one per 5 minutes. TCP keepalive is on.
/// assert_eq!(options.keepalive_interval, None);
/// assert_eq!(options.tcp_keepalive, Some(Duration::from_secs(15)));
/// // Unread streams never stall the connection: its window is the largest.
/// assert_eq!(options.connection_window, (1 << 31) - 1);
/// assert_eq!(options.max_header_list_size, 16 << 20);
/// assert_eq!((options.connections, options.max_connections), (1, 8));
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportOptions {
    /// HTTP/2 PING interval (gRFC A8); `None` (the default, as grpc-go)
    /// sends none. At least 10 s. gRPC servers allow one ping per 5 minutes
    /// by default and close the connection (GOAWAY ENHANCE_YOUR_CALM
    /// `too_many_pings`) after three too early: when that happens, the
    /// interval of the target's next connections is doubled and a warning
    /// logged. TCP keepalive ([`tcp_keepalive`](Self::tcp_keepalive))
    /// already finds dead peers and keeps NAT entries alive without it.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for a PING acknowledgement before closing the connection.
    pub keepalive_timeout: Duration,
    /// Pings also while no call is in flight (grpc-go's `PermitWithoutStream`;
    /// the server must allow it). Off by default.
    pub keepalive_without_calls: bool,
    /// TCP keepalive on the socket: idle time before the first probe, and the
    /// interval between probes; `None` leaves the system's setting. 15 s, as
    /// Go's (and so grpc-go's) dialer.
    pub tcp_keepalive: Option<Duration>,
    /// TCP, TLS and HTTP/2 handshake, up to the server's first SETTINGS frame.
    pub connect_timeout: Duration,
    /// The first delay after a failed connect; each next one is 1.6 × longer
    /// up to [`connect_backoff_max`](Self::connect_backoff_max), each ±20 %
    /// (gRPC's connection backoff). 1 s.
    pub connect_backoff: Duration,
    /// The longest delay between connects. 30 s, not gRPC's 120 s: with a
    /// 5 s call budget, calls fail fast with `UNAVAILABLE` while the
    /// subchannel backs off, so the cap is how long a client keeps failing
    /// after its server is back.
    pub connect_backoff_max: Duration,
    /// HTTP/2 stream flow-control window: how much of one response the
    /// connection buffers before the application reads it. 2 MiB.
    pub stream_window: u32,
    /// HTTP/2 connection flow-control window. The default, the largest
    /// allowed (2³¹−1), makes the per-stream windows the only bound, as
    /// grpc-go's window updates on receipt do: a stream nobody reads never
    /// stops the others.
    pub connection_window: u32,
    /// The largest HTTP/2 frame the server may send (16 KiB ..= 16 MiB − 1).
    pub max_frame_size: u32,
    /// The largest header block (headers or trailers) accepted from the
    /// server. 16 MiB, as grpc-go: a large error's trailers
    /// (`grpc-status-details-bin`) are not turned into INTERNAL.
    pub max_header_list_size: u32,
    /// Extra CA certificate(s) (PEM) trusted for `https` endpoints, e.g. a
    /// cluster CA, on top of [`trust_roots`](Self::trust_roots).
    pub ca_certificate_pem: Option<Vec<u8>>,
    /// Which roots an `https` server's certificate may chain to (default: the bundled Mozilla roots).
    pub trust_roots: TrustRoots,
    /// A client certificate and key for mutual TLS. Read with
    /// [`ClientIdentity::from_files`], it is read again before each new
    /// connection and a changed pair is used from then on.
    pub client_identity: Option<ClientIdentity>,
    /// The `:authority` of every request and, for `https`, the name the
    /// server's certificate must carry (SNI): for an IP endpoint whose
    /// certificate names a host (grpc-go's `WithAuthority`). Default: the
    /// endpoint's host and port.
    pub authority: Option<String>,
    /// Whether `https` endpoints go through an HTTP CONNECT proxy: by
    /// default `HTTPS_PROXY`/`NO_PROXY`, read when the client is built, as
    /// grpc-go does ([`Proxy`] says how); [`Proxy::Disabled`] turns it off.
    /// `dns:` and [`Resolver`] targets never do (the client connects to the
    /// addresses it resolved): the environment is ignored for them, and an
    /// explicit [`Proxy::Url`] with [`tls`](Self::tls) is a configuration error.
    pub proxy: Proxy,
    /// Where [`ca_certificate_pem`](Self::ca_certificate_pem) was read from:
    /// read again before each new connection (see
    /// [`with_ca_certificate_file`](Self::with_ca_certificate_file)).
    /// (With the bytes read from it: a PEM set otherwise since wins.)
    ca_file: Option<(PathBuf, Vec<u8>)>,
    /// HTTP/2 connections the subchannel keeps to the target, 1 ..= 64,
    /// made as calls come (one connect at a time; a failed one is tried
    /// again after the backoff); calls are spread over those with room
    /// round-robin. One connection multiplexes streams, but its single
    /// connection task becomes the bottleneck with hundreds in flight.
    pub connections: usize,
    /// The most connections to the target ([`connections`](Self::connections) ..= 64):
    /// when every connection has as many streams open as its server's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` allows, another is opened, up to
    /// this cap (gRFC A105's `max_connections_per_subchannel`); past it,
    /// calls wait for room within their deadline. 8.
    pub max_connections: usize,
    /// For a `dns:` target: how often its name is resolved again, so that
    /// a new replica gets calls (30 s). It is also resolved again, no more
    /// often than [`dns_min_interval`](Self::dns_min_interval), when a
    /// replica's connection is lost or a call finds one not READY.
    pub dns_refresh: Duration,
    /// For a `dns:` target: the least time between two resolutions, 30 s
    /// as grpc-go (10 ms ..= `dns_refresh`); for a [`Resolver`] target, the
    /// least time between two [`resolve_now`](Resolver::resolve_now) hints.
    pub dns_min_interval: Duration,
    /// How the calls of a `static:`, `dns:` or [`Resolver`] target are
    /// spread over its addresses ([`LoadBalancing`]); round-robin by default.
    pub load_balancing: LoadBalancing,
    /// TLS to each address of a `dns:` or [`Resolver`] target, whose form
    /// has no scheme to say it: the server's certificate must carry the
    /// target's name (`dns:///api.ns.svc:443` → `api.ns.svc`), or the
    /// [`authority`](Self::authority)'s host when set; the trust settings
    /// above apply. Off by default (h2c, as Kubernetes-internal gRPC
    /// usually is). An endpoint or a `static:` entry says `https://`
    /// itself, and setting this for one is a configuration error, as for a
    /// `unix:` socket (plaintext).
    pub tls: bool,
    /// For a `static:`, `dns:` or [`Resolver`] target balanced round-robin
    /// or least-loaded: take a replica that fails most of its calls out of
    /// the picks for a while ([`OutlierEjection`], gRFC A50). Off (`None`)
    /// by default; a plain endpoint and `pick_first` have nothing to
    /// eject from and ignore it.
    pub outlier_ejection: Option<OutlierEjection>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            keepalive_without_calls: false,
            tcp_keepalive: Some(Duration::from_secs(15)),
            connect_timeout: Duration::from_secs(10),
            connect_backoff: Duration::from_secs(1),
            connect_backoff_max: Duration::from_secs(30),
            stream_window: 2 << 20,
            connection_window: MAX_WINDOW,
            max_frame_size: 16 << 10,
            max_header_list_size: 16 << 20,
            ca_certificate_pem: None,
            trust_roots: TrustRoots::default(),
            client_identity: None,
            authority: None,
            proxy: Proxy::FromEnvironment,
            ca_file: None,
            connections: DEFAULT_CONNECTIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            dns_refresh: Duration::from_secs(30),
            dns_min_interval: Duration::from_secs(30),
            load_balancing: LoadBalancing::RoundRobin,
            tls: false,
            outlier_ejection: None,
        }
    }
}

/// The default pool size (see `docs/BENCHMARKS.md` for the measurement).
pub const DEFAULT_CONNECTIONS: usize = 1;
/// The default [`TransportOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// The largest HTTP/2 flow-control window.
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// gRFC A8's floor for the keepalive interval.
const MIN_KEEPALIVE: Duration = Duration::from_secs(10);

impl TransportOptions {
    /// Sets [`keepalive_interval`](Self::keepalive_interval).
    pub fn with_keepalive_interval(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.keepalive_interval = value.into();
        self
    }

    /// Sets [`keepalive_timeout`](Self::keepalive_timeout).
    pub fn with_keepalive_timeout(mut self, value: Duration) -> Self {
        self.keepalive_timeout = value;
        self
    }

    /// Sets [`keepalive_without_calls`](Self::keepalive_without_calls).
    pub fn with_keepalive_without_calls(mut self, value: bool) -> Self {
        self.keepalive_without_calls = value;
        self
    }

    /// Sets [`tcp_keepalive`](Self::tcp_keepalive).
    pub fn with_tcp_keepalive(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.tcp_keepalive = value.into();
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, value: Duration) -> Self {
        self.connect_timeout = value;
        self
    }

    /// Sets [`connect_backoff`](Self::connect_backoff) and
    /// [`connect_backoff_max`](Self::connect_backoff_max).
    pub fn with_connect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.connect_backoff = initial;
        self.connect_backoff_max = max;
        self
    }

    /// Sets [`stream_window`](Self::stream_window) and
    /// [`connection_window`](Self::connection_window).
    pub fn with_windows(mut self, stream: u32, connection: u32) -> Self {
        self.stream_window = stream;
        self.connection_window = connection;
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn with_max_frame_size(mut self, value: u32) -> Self {
        self.max_frame_size = value;
        self
    }

    /// Sets [`max_header_list_size`](Self::max_header_list_size).
    pub fn with_max_header_list_size(mut self, value: u32) -> Self {
        self.max_header_list_size = value;
        self
    }

    /// Sets [`ca_certificate_pem`](Self::ca_certificate_pem) (read once:
    /// see [`with_ca_certificate_file`](Self::with_ca_certificate_file) for a
    /// CA that rotates).
    pub fn with_ca_certificate_pem(mut self, value: impl Into<Option<Vec<u8>>>) -> Self {
        self.ca_certificate_pem = value.into();
        self.ca_file = None;
        self
    }

    /// Reads [`ca_certificate_pem`](Self::ca_certificate_pem) from a PEM
    /// file, and again before each new connection: a rotated CA is trusted
    /// from the next connection on.
    ///
    /// ```
    /// let err = ameide_sdk::TransportOptions::default()
    ///     .with_ca_certificate_file("/nonexistent/ca.pem")
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("/nonexistent/ca.pem"));
    /// ```
    pub fn with_ca_certificate_file(mut self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let pem = tls::read_file("CA certificate", path)?;
        self.ca_file = Some((path.to_owned(), pem.clone()));
        self.ca_certificate_pem = Some(pem);
        Ok(self)
    }

    /// Sets [`proxy`](Self::proxy).
    pub fn with_proxy(mut self, value: Proxy) -> Self {
        self.proxy = value;
        self
    }

    /// Sets [`authority`](Self::authority).
    pub fn with_authority(mut self, value: impl Into<Option<String>>) -> Self {
        self.authority = value.into();
        self
    }

    /// Sets [`trust_roots`](Self::trust_roots).
    pub fn with_trust_roots(mut self, value: TrustRoots) -> Self {
        self.trust_roots = value;
        self
    }

    /// Sets [`client_identity`](Self::client_identity).
    pub fn with_client_identity(mut self, value: impl Into<Option<ClientIdentity>>) -> Self {
        self.client_identity = value.into();
        self
    }

    /// Sets [`load_balancing`](Self::load_balancing).
    pub fn with_load_balancing(mut self, value: LoadBalancing) -> Self {
        self.load_balancing = value;
        self
    }

    /// Sets [`outlier_ejection`](Self::outlier_ejection).
    pub fn with_outlier_ejection(mut self, value: impl Into<Option<OutlierEjection>>) -> Self {
        self.outlier_ejection = value.into();
        self
    }

    /// Sets [`tls`](Self::tls).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use ameide_sdk::{AmeideClient, TransportOptions};
    /// let tls = TransportOptions::default().with_tls(true);
    /// assert!(tls.tls);
    /// // Every address of the name over TLS, verified against the name.
    /// AmeideClient::builder()
    ///     .endpoint("dns:///api.prod.svc.cluster.local:443")
    ///     .transport_options(tls.clone())
    ///     .build()
    ///     .unwrap();
    /// // An endpoint says https:// itself.
    /// let err = AmeideClient::builder()
    ///     .endpoint("http://127.0.0.1:50051")
    ///     .transport_options(tls)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("write https://"));
    /// # }
    /// ```
    pub fn with_tls(mut self, value: bool) -> Self {
        self.tls = value;
        self
    }

    /// Sets [`dns_refresh`](Self::dns_refresh) and
    /// [`dns_min_interval`](Self::dns_min_interval).
    pub fn with_dns_refresh(mut self, refresh: Duration, min_interval: Duration) -> Self {
        self.dns_refresh = refresh;
        self.dns_min_interval = min_interval;
        self
    }

    /// Sets [`connections`](Self::connections).
    pub fn with_connections(mut self, value: usize) -> Self {
        self.connections = value;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, value: usize) -> Self {
        self.max_connections = value;
        self
    }

    /// Checks every option against its range; the error names the option.
    /// [`AmeideClientBuilder::build`](crate::AmeideClientBuilder::build) calls it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ameide_sdk::TransportOptions;
    /// assert!(TransportOptions::default().validate().is_ok());
    /// let bad = TransportOptions::default().with_keepalive_timeout(Duration::MAX);
    /// assert!(bad.validate().unwrap_err().to_string().contains("keepalive_timeout"));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis(1);
        let fail = |message: String| Err(ConfigError::new(ConfigErrorKind::Transport, message));
        let check = |name: &str, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                return fail(format!(
                    "transport option {name} {value:?} must be within {min:?}..={max:?}"
                ));
            }
            Ok(())
        };
        if let Some(problem) = self
            .outlier_ejection
            .as_ref()
            .and_then(OutlierEjection::problem)
        {
            return fail(format!("transport option {problem}"));
        }
        check(
            "dns_refresh",
            self.dns_refresh,
            Duration::from_millis(100),
            Duration::from_secs(24 * 3600),
        )?;
        check(
            "dns_min_interval",
            self.dns_min_interval,
            10 * ms,
            self.dns_refresh,
        )?;
        let day = Duration::from_secs(24 * 3600);
        if let Some(interval) = self.keepalive_interval {
            check("keepalive_interval", interval, MIN_KEEPALIVE, day)?;
        }
        if let Some(idle) = self.tcp_keepalive {
            check(
                "tcp_keepalive",
                idle,
                Duration::from_secs(1),
                Duration::from_secs(7200),
            )?;
        }
        check(
            "keepalive_timeout",
            self.keepalive_timeout,
            ms,
            Duration::from_secs(3600),
        )?;
        check(
            "connect_timeout",
            self.connect_timeout,
            ms,
            crate::config::MAX_TIMEOUT,
        )?;
        check("connect_backoff", self.connect_backoff, ms, day)?;
        check(
            "connect_backoff_max",
            self.connect_backoff_max,
            self.connect_backoff,
            day,
        )?;
        let sized = |name: &str, value: u32, min: u32, max: u32| {
            if !(min..=max).contains(&value) {
                return fail(format!(
                    "transport option {name} {value} must be within {min}..={max}"
                ));
            }
            Ok(())
        };
        sized("stream_window", self.stream_window, 65_535, MAX_WINDOW)?;
        sized(
            "connection_window",
            self.connection_window,
            65_535,
            MAX_WINDOW,
        )?;
        sized("max_frame_size", self.max_frame_size, 16_384, 16_777_215)?;
        sized(
            "max_header_list_size",
            self.max_header_list_size,
            1024,
            256 << 20,
        )?;
        if let Some(authority) = &self.authority
            && (authority.contains('@') || authority.parse::<http::uri::Authority>().is_err())
        {
            return fail(format!(
                "transport option authority {:?} must be host[:port] (no user info)",
                crate::peer::loggable(authority.as_bytes())
            ));
        }
        if !(1..=64).contains(&self.connections) {
            return fail(format!(
                "transport option connections {} must be within 1..=64",
                self.connections
            ));
        }
        if !(self.connections..=64).contains(&self.max_connections) {
            return fail(format!(
                "transport option max_connections {} must be within connections ({})..=64",
                self.max_connections, self.connections
            ));
        }
        Ok(())
    }
}

/// Builds the default transport for `target` (parsed: `spec`): lazily made
/// HTTP/2 connections, with `options` as `AmeideClientBuilder::build`
/// validated them; `resolver` is the one registered for a resolver
/// target's scheme. `ca_file` names where the CA came from, for error messages.
pub(crate) fn http2_transport(
    target: &str,
    spec: TargetSpec,
    options: &TransportOptions,
    ca_file: Option<&Path>,
    metrics: Option<Arc<SubchannelMetrics>>,
    resolver: Option<Arc<dyn Resolver>>,
) -> Result<BoxTransport, ConfigError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ConfigError::new(
            ConfigErrorKind::Runtime,
            "AmeideClient::build() must be called inside a Tokio runtime (the transport spawns its connection task there)",
        ));
    }
    let resolved = matches!(spec, TargetSpec::Dns(_) | TargetSpec::Resolver { .. });
    if options.tls && !resolved {
        return Err(ConfigError::new(
            ConfigErrorKind::Transport,
            format!(
                "transport option tls applies to dns: and resolver targets, not {:?}: write https:// in the endpoint (or in each static entry); unix: sockets are plaintext",
                crate::peer::bounded(target, 256)
            ),
        ));
    }
    if resolved && options.tls && matches!(options.proxy, Proxy::Url { .. }) {
        return Err(ConfigError::new(
            ConfigErrorKind::Transport,
            format!(
                "{:?} cannot go through a proxy: the client balances over the addresses it resolves and connects to them directly; use an https:// endpoint for a proxied target",
                crate::peer::bounded(target, 256)
            ),
        ));
    }
    match spec {
        #[cfg(not(feature = "dns"))]
        TargetSpec::Dns(_) => Err(ConfigError::new(
            ConfigErrorKind::Endpoint,
            format!(
                "{:?} is a dns: target, which needs the `dns` feature of ameide-sdk (on by default): turn it on, or give http(s)://host:port endpoints",
                crate::peer::bounded(target, 256)
            ),
        )),
        #[cfg(feature = "dns")]
        TargetSpec::Dns(dns) => {
            let authority = format!("{}:{}", dns.host, dns.port);
            let resolver = dns::resolver(&dns)?;
            resolved_transport(
                target,
                authority,
                options,
                ca_file,
                metrics,
                move |list, resolution, wake, make| {
                    let (lifetime, ended) = tokio::sync::oneshot::channel();
                    tokio::spawn(
                        dns::DnsTask {
                            target: dns,
                            resolver,
                            list,
                            resolution,
                            wake,
                            make,
                            refresh: options.dns_refresh,
                            min_interval: options.dns_min_interval,
                            ended,
                        }
                        .run(),
                    );
                    lifetime
                },
            )
        }
        TargetSpec::Resolver { scheme, name } => {
            let resolver = resolver.ok_or_else(|| {
                ConfigError::new(
                    ConfigErrorKind::Endpoint,
                    format!(
                        "no resolver is registered for the scheme {scheme:?} of the target {:?}: register one with AmeideClientBuilder::resolver, or check the scheme (set with AmeideClientBuilder::endpoint or AMEIDE_GRPC_BASE_URL)",
                        crate::peer::bounded(target, 256)
                    ),
                )
            })?;
            let min_interval = options.dns_min_interval;
            let target_name = target.to_owned();
            resolved_transport(
                target,
                name.clone(),
                options,
                ca_file,
                metrics,
                move |list, resolution, wake, make| {
                    let (lifetime, ended) = tokio::sync::oneshot::channel();
                    // Watched only once the target is known to be good.
                    let stream = resolver.watch(&name);
                    tokio::spawn(
                        resolver::WatchTask {
                            target: target_name,
                            name,
                            resolver,
                            stream,
                            list,
                            resolution,
                            wake,
                            make,
                            min_interval,
                            ended,
                        }
                        .run(),
                    );
                    lifetime
                },
            )
        }
        TargetSpec::Unix(path) => {
            let endpoint = "http://localhost";
            let uri = crate::config::validate_endpoint(endpoint)?;
            let mut local = options.clone();
            local.proxy = Proxy::Disabled;
            Ok(BoxCloneSyncService::new(subchannel(
                endpoint,
                uri,
                &local,
                None,
                None,
                metrics,
                Some(path),
            )?))
        }
        TargetSpec::Endpoints(endpoints) if target.starts_with("static:///") => {
            let wake = Arc::new(tap::Wake::new());
            // One scheme for all: one TLS material for all.
            let material = match endpoints.first() {
                Some((_, uri)) if uri.scheme_str() == Some("https") => {
                    Some(tls_material(options, ca_file)?)
                }
                _ => None,
            };
            let replicas = endpoints
                .iter()
                .map(|(endpoint, uri)| {
                    Ok(balancer::Replica {
                        key: endpoint.clone(),
                        peer: balancer::PeerAddress {
                            address: Arc::from(bare_host(uri)),
                            port: crate::config::port_of(uri),
                        },
                        subchannel: subchannel(
                            endpoint,
                            uri.clone(),
                            options,
                            material.as_ref(),
                            Some(wake.clone()),
                            metrics.clone(),
                            None,
                        )?,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let list: balancer::ReplicaList = Arc::new(std::sync::RwLock::new(replicas.into()));
            eject_outliers(options, &list);
            Ok(BoxCloneSyncService::new(balancer::Balancer::new(
                list,
                options.load_balancing,
                wake,
                None,
            )))
        }
        TargetSpec::Endpoints(endpoints) => {
            let (endpoint, uri) = endpoints.into_iter().next().ok_or_else(|| {
                ConfigError::new(ConfigErrorKind::Endpoint, "no endpoint".to_owned())
            })?;
            let material = match uri.scheme_str() {
                Some("https") => Some(tls_material(options, ca_file)?),
                _ => None,
            };
            Ok(BoxCloneSyncService::new(subchannel(
                &endpoint,
                uri,
                options,
                material.as_ref(),
                None,
                metrics,
                None,
            )?))
        }
    }
}

/// A URI's host without an IPv6 literal's brackets.
fn bare_host(uri: &http::Uri) -> &str {
    crate::config::unbracketed(uri.host().unwrap_or_default())
}

/// A resolved target (`dns:` or a resolver's): a balancer over the
/// addresses its resolver task keeps in the list, each reached over h2c,
/// or TLS with [`TransportOptions::tls`], with `authority` as `:authority`
/// and TLS server name unless [`TransportOptions::authority`] is set.
/// Never through a proxy (checked by the caller for an explicit one).
fn resolved_transport(
    target: &str,
    authority: String,
    options: &TransportOptions,
    ca_file: Option<&Path>,
    metrics: Option<Arc<SubchannelMetrics>>,
    start: impl FnOnce(
        std::sync::Weak<RwLock<Arc<[balancer::Replica]>>>,
        Arc<balancer::Resolution>,
        Arc<tap::Wake>,
        resolver::MakeSubchannel,
    ) -> tokio::sync::oneshot::Sender<()>,
) -> Result<BoxTransport, ConfigError> {
    let wake = Arc::new(tap::Wake::new());
    let list: balancer::ReplicaList = Arc::new(RwLock::new(Arc::from(Vec::new())));
    let resolution = Arc::new(balancer::Resolution::default());
    let mut per_address = options.clone();
    per_address.proxy = Proxy::Disabled;
    if per_address.authority.is_none() {
        if authority.contains('@') || authority.parse::<http::uri::Authority>().is_err() {
            return Err(ConfigError::new(
                ConfigErrorKind::Endpoint,
                format!(
                    "the name of the target {:?} is not a host[:port] to send as :authority; set TransportOptions::authority",
                    crate::peer::bounded(target, 256)
                ),
            ));
        }
        per_address.authority = Some(authority);
    }
    let scheme = if options.tls { "https" } else { "http" };
    let material = match options.tls {
        true => Some(tls_material(&per_address, ca_file)?),
        false => None,
    };
    let make_wake = wake.clone();
    let make: resolver::MakeSubchannel = Box::new(move |addr| {
        let endpoint = format!("{scheme}://{addr}");
        let uri = crate::config::validate_endpoint(&endpoint)?;
        subchannel(
            &endpoint,
            uri,
            &per_address,
            material.as_ref(),
            Some(make_wake.clone()),
            metrics.clone(),
            None,
        )
    });
    // The TLS server name is checked now, not at the first answer.
    if options.tls {
        let probe = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        drop(make(probe)?);
    }
    eject_outliers(options, &list);
    let lifetime = start(
        Arc::downgrade(&list),
        resolution.clone(),
        wake.clone(),
        make,
    );
    Ok(BoxCloneSyncService::new(
        balancer::Balancer::new(list, options.load_balancing, wake, Some(resolution))
            .with_lifetime(lifetime),
    ))
}

/// Outlier ejection for a balanced target, when configured: a task that
/// judges its replicas' tallies while the client lives.
fn eject_outliers(options: &TransportOptions, list: &balancer::ReplicaList) {
    let Some(config) = outlier_ejection(options) else {
        return;
    };
    let list = Arc::downgrade(list);
    outlier::start(config, move || {
        let list = list.upgrade()?;
        let replicas = list.read().unwrap_or_else(|p| p.into_inner()).clone();
        Some(
            replicas
                .iter()
                .filter_map(|r| Some((r.key.clone(), r.subchannel.tally()?.clone())))
                .collect(),
        )
    });
}

/// The outlier ejection a balanced target runs: none for pick_first, which
/// does not balance and so has nothing to eject from.
fn outlier_ejection(options: &TransportOptions) -> Option<OutlierEjection> {
    options
        .outlier_ejection
        .filter(|_| options.load_balancing != LoadBalancing::PickFirst)
}

/// The TLS material of `options` (trust roots, CA, client identity; the
/// files read again before each new connection), built once and shared by
/// every subchannel of a target: a system trust store is read once.
/// `ca_file` names where the CA came from when the options do not.
fn tls_material(
    options: &TransportOptions,
    ca_file: Option<&Path>,
) -> Result<Arc<tls::TlsMaterial>, ConfigError> {
    Ok(Arc::new(tls::TlsMaterial::new(
        options.trust_roots,
        options.ca_certificate_pem.clone(),
        // The file is read again only while the PEM is still what was
        // read from it (the public field may have been set since).
        options
            .ca_file
            .as_ref()
            .filter(|(_, read)| options.ca_certificate_pem.as_ref() == Some(read))
            .map(|(path, _)| path.clone())
            .or_else(|| ca_file.map(Path::to_owned)),
        options.client_identity.clone(),
    )?))
}

/// One subchannel: the connections to one endpoint (or, with `unix`, to
/// that socket, `endpoint` giving `:authority`).
fn subchannel(
    endpoint: &str,
    uri: http::Uri,
    options: &TransportOptions,
    material: Option<&Arc<tls::TlsMaterial>>,
    wake: Option<Arc<tap::Wake>>,
    metrics: Option<Arc<SubchannelMetrics>>,
    unix: Option<PathBuf>,
) -> Result<Subchannel, ConfigError> {
    let https = uri.scheme_str() == Some("https");
    let host = bare_host(&uri).to_owned();
    let authority = match &options.authority {
        Some(value) => value.parse::<http::uri::Authority>().map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::Transport,
                format!(
                    "transport option authority {:?} is not a host[:port]: {e}",
                    crate::peer::loggable(value.as_bytes())
                ),
            )
        })?,
        None => uri.authority().cloned().ok_or_else(|| {
            ConfigError::new(
                ConfigErrorKind::Endpoint,
                format!("invalid endpoint {endpoint:?}: no host"),
            )
        })?,
    };
    let tls = if https {
        let material = match material {
            Some(material) => material.clone(),
            None => tls_material(options, None)?,
        };
        // The name the certificate must carry: the authority's host when it
        // is overridden (an IP endpoint with a named certificate), else the endpoint's.
        let tls_host = match &options.authority {
            Some(_) => crate::config::unbracketed(authority.host()).to_owned(),
            None => host.clone(),
        };
        let name = rustls_pki_types::ServerName::try_from(tls_host.clone()).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::Tls,
                format!("{endpoint:?}: {tls_host:?} is not a TLS server name: {e}"),
            )
        })?;
        Some((material, name))
    } else {
        None
    };
    let port = crate::config::port_of(&uri);
    let proxy = if https {
        // Not UTF-8: lossy, so the URL fails to parse and the error names the variable.
        proxy::route(&options.proxy, &host, port, |name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })?
    } else {
        None
    };
    let target = Arc::new(Target {
        scheme: if https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        },
        authority,
        host,
        port,
        unix,
        proxy,
        tls,
        connect_timeout: options.connect_timeout,
        keepalive_timeout: options.keepalive_timeout,
        keepalive_without_calls: options.keepalive_without_calls,
        tcp_keepalive: options.tcp_keepalive,
        stream_window: options.stream_window,
        connection_window: options.connection_window,
        max_frame_size: options.max_frame_size,
        max_header_list_size: options.max_header_list_size,
        user_agent: http::HeaderValue::from_static(concat!(
            "ameide-sdk-rust/",
            env!("CARGO_PKG_VERSION")
        )),
        metrics,
    });
    let pacing = Pacing {
        min_connections: options.connections,
        max_connections: options.max_connections,
        backoff: options.connect_backoff,
        backoff_max: options.connect_backoff_max,
        keepalive: options.keepalive_interval,
        // pick_first connects the addresses it tries, not all of them.
        keep_connected: wake.is_some() && options.load_balancing != LoadBalancing::PickFirst,
        // A balanced replica's calls are counted for outlier ejection.
        count_outcomes: wake.is_some() && outlier_ejection(options).is_some(),
    };
    Ok(match wake {
        Some(wake) => Subchannel::with_wake(target, pacing, wake),
        None => Subchannel::new(target, pacing),
    })
}

impl Service<HttpRequest> for Subchannel {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// The transport behind a lock, so that closing the client releases it for
/// every clone of every typed client at once.
///
/// `poll_ready` takes a clone of the transport out of the lock and drives
/// *its* readiness (so the transport's back-pressure reaches the caller);
/// `call` hands the request to that ready clone. The clone lives from
/// `poll_ready` to `call` only, so `close()` really releases the transport.
pub(crate) struct TransportSlot {
    slot: Arc<RwLock<Option<BoxTransport>>>,
    ready: Option<BoxTransport>,
}

impl Clone for TransportSlot {
    fn clone(&self) -> Self {
        // A clone starts unready: readiness belongs to the instance polled.
        TransportSlot {
            slot: self.slot.clone(),
            ready: None,
        }
    }
}

impl TransportSlot {
    pub(crate) fn new(transport: BoxTransport) -> Self {
        TransportSlot {
            slot: Arc::new(RwLock::new(Some(transport))),
            ready: None,
        }
    }

    /// Drops the transport; later calls fail with `CANCELLED`.
    pub(crate) fn close(&self) {
        let taken = match self.slot.write() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(taken);
    }

    fn current(&self) -> Option<BoxTransport> {
        match self.slot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

pub(crate) fn closed_status() -> Status {
    Status::cancelled("AmeideClient is closed: calls after close() are refused; build a new client")
}

/// The response future of [`TransportSlot`]: the transport's own, then, for a
/// response that is not gRPC (a proxy's error page, a wrong content type),
/// the conversion into a trailers-only gRPC status (see [`non_grpc_response`]).
/// The gRPC path costs no allocation.
pub(crate) struct SlotFuture {
    inner: BoxFuture<'static, Result<HttpResponse, BoxError>>,
    converted: bool,
}

impl SlotFuture {
    fn new(inner: BoxFuture<'static, Result<HttpResponse, BoxError>>) -> Self {
        SlotFuture {
            inner,
            converted: false,
        }
    }
}

impl std::future::Future for SlotFuture {
    type Output = Result<HttpResponse, BoxError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let result = std::task::ready!(self.inner.as_mut().poll(cx));
            if self.converted {
                return Poll::Ready(result);
            }
            let response = match result {
                Ok(response) => response,
                Err(error) => return Poll::Ready(Err(error)),
            };
            match crate::peer::non_grpc_code(response.status(), response.headers()) {
                None => return Poll::Ready(Ok(response)),
                Some(code) => {
                    self.inner = Box::pin(non_grpc_response(response, code));
                    self.converted = true;
                }
            }
        }
    }
}

/// How much of a non-gRPC body is read for the status message, and for how long.
const NON_GRPC_READ_BYTES: usize = 1024;
const NON_GRPC_READ_WAIT: Duration = Duration::from_millis(200);

/// A response that is not gRPC, as the trailers-only status gRPC's
/// HTTP-to-gRPC mapping gives it (contract §8). Decided from the HTTP status
/// and content type before any body byte is decoded as gRPC; then up to
/// 1 KiB of the body is read (for at most 200 ms, so a proxy trickling its
/// page cannot hold the call) to quote in the message. The layers above see
/// an ordinary failed attempt: retried per the policy, stamped with the
/// request id, attempts and history.
async fn non_grpc_response(
    response: HttpResponse,
    code: tonic::Code,
) -> Result<HttpResponse, BoxError> {
    use http_body_util::BodyExt;
    let (parts, mut body) = response.into_parts();
    let mut quoted = Vec::new();
    let mut complete = false;
    let _ = tokio::time::timeout(NON_GRPC_READ_WAIT, async {
        while quoted.len() < NON_GRPC_READ_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = NON_GRPC_READ_BYTES - quoted.len();
                        quoted.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) => break,
                None => {
                    complete = true;
                    break;
                }
            }
        }
    })
    .await;
    let message = crate::peer::non_grpc_message(
        parts.status,
        parts.headers.get(http::header::CONTENT_TYPE),
        &quoted,
        complete,
    );
    let mut metadata = parts.headers;
    for name in [http::header::CONTENT_TYPE, http::header::CONTENT_LENGTH] {
        metadata.remove(name);
    }
    let status = Status::with_metadata(
        code,
        message,
        tonic::metadata::MetadataMap::from_headers(metadata),
    );
    Ok(status.into_http())
}

impl Service<HttpRequest> for TransportSlot {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = SlotFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready.is_none() {
            match self.current() {
                Some(transport) => self.ready = Some(transport),
                // Closed: ready, and `call` answers CANCELLED.
                None => return Poll::Ready(Ok(())),
            }
        }
        match self.ready.as_mut() {
            Some(transport) => transport.poll_ready(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        SlotFuture::new(match self.ready.take() {
            Some(mut transport) => transport.call(request),
            // Called without poll_ready (or after close): a ready clone now.
            None => match self.current() {
                Some(transport) => Box::pin(transport.oneshot(request)),
                None => Box::pin(async { Err(Box::new(closed_status()) as BoxError) }),
            },
        })
    }
}
