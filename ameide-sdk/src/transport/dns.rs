//! The resolver of a `dns:` target: every A and AAAA record of the name is
//! a replica, resolved with hickory-resolver (the system's name servers, or
//! the one the target names: `dns://10.0.0.10:53/name:port`), again every
//! [`dns_refresh`](super::TransportOptions::dns_refresh) and early (no
//! sooner than [`dns_min_interval`](super::TransportOptions::dns_min_interval))
//! when the balancer sees a replica that is not READY. While DNS fails, the
//! last good list keeps serving and the resolver backs off (the minimum
//! interval, doubling, at most the refresh interval).
//!
//! The task holds the balancer's list only weakly, and ends as soon as the
//! client is dropped (the balancer's lifetime sender goes with it).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use tokio::time::Instant;

use super::balancer::{Replica, Resolution};
use super::resolver::{MakeSubchannel, apply, select_addresses};
use super::tap::Wake;
use crate::config::{ConfigError, ConfigErrorKind, DnsTarget};

/// A resolver for `target`: its own name server, or the system's.
pub(crate) fn resolver(target: &DnsTarget) -> Result<TokioResolver, ConfigError> {
    let mut builder = match target.server {
        Some(server) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
            let mut builder =
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
            // The named server's answer, not /etc/hosts'.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder(TokioConnectionProvider::default()).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::Endpoint,
                format!("cannot read the system's DNS configuration: {e}"),
            )
        })?,
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Re-resolution is ours: an answer is never older than the refresh.
    options.cache_size = 0;
    options.timeout = Duration::from_secs(5);
    options.attempts = 2;
    Ok(builder.build())
}

/// Resolves `target` until the client is dropped, keeping `list` to the answer.
pub(crate) struct DnsTask {
    pub(crate) target: DnsTarget,
    pub(crate) resolver: TokioResolver,
    pub(crate) list: Weak<std::sync::RwLock<Arc<[Replica]>>>,
    pub(crate) resolution: Arc<Resolution>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) make: MakeSubchannel,
    pub(crate) refresh: Duration,
    pub(crate) min_interval: Duration,
    /// Fires when the last balancer clone (the client) is gone.
    pub(crate) ended: tokio::sync::oneshot::Receiver<()>,
}

impl DnsTask {
    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            if self.list.strong_count() == 0 {
                return;
            }
            let started = Instant::now();
            let name = crate::config::unbracketed(&self.target.host);
            let answer = tokio::select! {
                _ = &mut self.ended => return,
                answer = self.resolver.lookup_ip(name) => answer,
            };
            let Some(list) = self.list.upgrade() else {
                return;
            };
            let outcome = match answer {
                Ok(lookup) => {
                    // The answer's order (pick_first walks it: a DNS
                    // server's rotation spreads pick_first clients).
                    let addrs = select_addresses(
                        lookup
                            .iter()
                            .map(|ip| SocketAddr::new(ip, self.target.port)),
                        &list,
                        &self.target.host,
                    );
                    if addrs.is_empty() {
                        Err(format!("DNS has no address for {}", self.target.host))
                    } else {
                        apply(&list, &addrs, &self.make, &self.target.host)
                    }
                }
                Err(e) => Err(format!("cannot resolve {}: {e}", self.target.host)),
            };
            drop(list);
            match outcome {
                Ok(()) => {
                    failures = 0;
                    self.resolution.set_error(None);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    ::tracing::warn!(
                        target_name = %self.target.host,
                        %error,
                        "DNS resolution failed; the last good list of replicas keeps serving"
                    );
                    self.resolution.set_error(Some(error));
                }
            }
            self.wake.changed();
            // The next resolution: at the refresh, or earlier when asked,
            // never sooner than the minimum interval (doubling while DNS fails).
            let spacing = if failures == 0 {
                self.min_interval
            } else {
                self.min_interval
                    .saturating_mul(1u32 << failures.min(16))
                    .min(self.refresh)
            };
            let earliest = crate::time::add(started, spacing);
            tokio::select! {
                _ = &mut self.ended => return,
                () = tokio::time::sleep_until(crate::time::add(started, self.refresh)) => {}
                () = self.resolution.again.notified() => {
                    tokio::select! {
                        _ = &mut self.ended => return,
                        () = tokio::time::sleep_until(earliest) => {}
                    }
                }
            }
        }
    }
}
