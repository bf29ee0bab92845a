//! Resolvers: what turns a target into its replicas' addresses. The SDK's
//! own are the `dns:` resolver (`dns.rs`) and the fixed `static:` list;
//! [`Resolver`] is the public trait for a service registry's (Consul,
//! etcd, a Kubernetes EndpointSlice watch…), registered with
//! [`AmeideClientBuilder::resolver`](crate::AmeideClientBuilder::resolver)
//! for a scheme and used by targets `scheme:///name`.
//!
//! Both feed the balancer's list the same way ([`apply`]): each answer
//! replaces the list; the subchannels of addresses still there are kept
//! (with their connections), new ones made, the rest dropped (no new
//! calls; calls in flight finish).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::Instant;

use super::balancer::{PeerAddress, Replica, ReplicaList, Resolution};
use super::connection::interleave_families;
use super::subchannel::Subchannel;
use super::tap::Wake;
use crate::config::{ConfigError, MAX_STATIC_ENDPOINTS};
use crate::wire_types::BoxError;

/// One answer of a [`Resolver`]: the addresses of the target's replicas
/// now, or why they are not known.
///
/// ```
/// let answer: ameide_sdk::ResolverAnswer = Err("the registry is unreachable".into());
/// assert_eq!(answer.unwrap_err().to_string(), "the registry is unreachable");
/// ```
pub type ResolverAnswer = Result<Vec<SocketAddr>, BoxError>;

/// The answers of a [`Resolver`] for one target, as they change: any
/// `Stream` of [`ResolverAnswer`]s, boxed.
///
/// ```
/// use ameide_sdk::AddressStream;
/// let one_answer: AddressStream =
///     Box::pin(tokio_stream::iter([Ok(vec!["10.0.0.7:50051".parse().unwrap()])]));
/// # drop(one_answer);
/// ```
pub type AddressStream = Pin<Box<dyn Stream<Item = ResolverAnswer> + Send>>;

/// A source of the addresses behind a target (gRPC's name resolver), for a
/// service registry the SDK does not know. Registered with
/// [`AmeideClientBuilder::resolver`](crate::AmeideClientBuilder::resolver)
/// for a scheme; a client whose target is `scheme:///name` calls
/// [`watch`](Self::watch) once, when it is built, and balances its calls
/// over the addresses of the latest answer with its
/// [`LoadBalancing`](crate::LoadBalancing) policy.
///
/// What an answer does:
/// - `Ok(addresses)`: the list from now on (each address once, at most 64:
///   a random 64 of more). Subchannels of addresses still listed keep their
///   connections; an address that leaves the list gets no new calls and its
///   calls in flight finish. An empty list means no replica: calls fail at
///   once with `UNAVAILABLE` naming the target, until an answer lists one.
/// - `Err(error)`: the resolver cannot tell now. The last good list keeps
///   serving; with none, calls fail with `UNAVAILABLE` carrying the error.
/// - The stream ends: the last answer stands for the client's life (a
///   stream that ends before any answer fails the calls with `UNAVAILABLE`
///   saying so).
///
/// Before the first answer, calls wait for it within their deadline.
/// Both methods are called on the client's runtime (`watch` inside
/// [`build`](crate::AmeideClientBuilder::build)) and must not block: do the
/// registry's I/O in the stream. One resolver may serve many clients:
/// register an `Arc` of it with each (`Arc<R>` is a `Resolver`).
/// `:authority` (and, with [`TransportOptions::tls`](crate::TransportOptions::tls),
/// the TLS server name) is `name`, unless
/// [`TransportOptions::authority`](crate::TransportOptions::authority) says
/// otherwise. The stream is dropped with the client.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::net::SocketAddr;
/// use ameide_sdk::{AddressStream, AmeideClient, Resolver};
///
/// /// A registry that knows one service.
/// struct Registry;
/// impl Resolver for Registry {
///     fn watch(&self, name: &str) -> AddressStream {
///         let addresses: Vec<SocketAddr> = match name {
///             "orders" => vec!["10.0.0.7:50051".parse().unwrap(), "10.0.0.8:50051".parse().unwrap()],
///             _ => Vec::new(),
///         };
///         // A real registry answers again on every change (a watch).
///         Box::pin(tokio_stream::iter([Ok(addresses)]))
///     }
/// }
///
/// let client = AmeideClient::builder()
///     .endpoint("registry:///orders")
///     .resolver("registry", Registry)
///     .build()
///     .unwrap();
/// assert_eq!(client.endpoint(), "registry:///orders");
///
/// // A target whose scheme has no resolver is a configuration error.
/// let err = AmeideClient::builder().endpoint("consul:///orders").build().unwrap_err();
/// assert!(err.to_string().contains("no resolver is registered for the scheme \"consul\""));
/// # }
/// ```
pub trait Resolver: Send + Sync + 'static {
    /// The answers for `name` (what follows `scheme:///` in the target),
    /// from now on. Called once per client, when it is built (inside its
    /// Tokio runtime); the stream is polled on that runtime.
    fn watch(&self, name: &str) -> AddressStream;

    /// A hint that an answer may be stale or is awaited: a replica's
    /// connection was lost, a call found one not READY, or a call waits for
    /// the first answer. At most once per
    /// [`dns_min_interval`](crate::TransportOptions::dns_min_interval) (a
    /// hint within it is deferred to its end). A watch-based resolver can
    /// ignore it (the default does nothing).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use ameide_sdk::{AddressStream, Resolver};
    /// struct Polling { asked: AtomicUsize }
    /// impl Resolver for Polling {
    ///     fn watch(&self, _name: &str) -> AddressStream { Box::pin(tokio_stream::empty()) }
    ///     fn resolve_now(&self, _name: &str) { self.asked.fetch_add(1, Ordering::Relaxed); }
    /// }
    /// let polling = Polling { asked: AtomicUsize::new(0) };
    /// polling.resolve_now("orders");
    /// assert_eq!(polling.asked.load(Ordering::Relaxed), 1);
    /// ```
    fn resolve_now(&self, name: &str) {
        let _ = name;
    }
}

impl<R: Resolver + ?Sized> Resolver for Arc<R> {
    fn watch(&self, name: &str) -> AddressStream {
        (**self).watch(name)
    }

    fn resolve_now(&self, name: &str) {
        (**self).resolve_now(name);
    }
}

/// Makes the subchannel of one resolved address.
pub(crate) type MakeSubchannel =
    Box<dyn Fn(SocketAddr) -> Result<Subchannel, ConfigError> + Send + Sync>;

/// An answer as the balancer keeps it: each address once, at most 64 (a
/// random 64 of more, so that every client does not keep the same ones),
/// the two address families in turn (the order `pick_first` walks, gRFC
/// A61), each in the answer's order.
pub(crate) fn select_addresses(
    answer: impl IntoIterator<Item = SocketAddr>,
    list: &ReplicaList,
    target: &str,
) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    let mut addrs: Vec<SocketAddr> = answer.into_iter().filter(|a| seen.insert(*a)).collect();
    if addrs.len() > MAX_STATIC_ENDPOINTS {
        // The addresses already kept stay (their connections with them);
        // the rest of the 64 are drawn at random from the new ones.
        let current: HashSet<String> = list
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.key.clone())
            .collect();
        let (mut kept, mut new): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.iter().partition(|a| current.contains(&a.to_string()));
        fastrand::shuffle(&mut new);
        kept.truncate(MAX_STATIC_ENDPOINTS);
        kept.extend(new.into_iter().take(MAX_STATIC_ENDPOINTS - kept.len()));
        ::tracing::warn!(
            target_name = %target,
            addresses = addrs.len(),
            kept = MAX_STATIC_ENDPOINTS,
            "the resolver answered more addresses than a client balances over; a subset is kept"
        );
        // In the answer's order.
        let chosen: HashSet<SocketAddr> = kept.into_iter().collect();
        addrs.retain(|a| chosen.contains(a));
    }
    interleave_families(&mut addrs);
    addrs
}

/// Makes `list` the replicas of `addrs` (see the module's doc).
pub(crate) fn apply(
    list: &ReplicaList,
    addrs: &[SocketAddr],
    make: &MakeSubchannel,
    target: &str,
) -> Result<(), String> {
    let current = list.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut known: HashMap<&str, &Replica> = current.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut next = Vec::with_capacity(addrs.len());
    for addr in addrs.iter().take(MAX_STATIC_ENDPOINTS) {
        let key = addr.to_string();
        match known.remove(key.as_str()) {
            Some(replica) => next.push(replica.clone()),
            None => {
                let subchannel = make(*addr).map_err(|e| e.to_string())?;
                next.push(Replica {
                    key,
                    peer: PeerAddress {
                        address: Arc::from(addr.ip().to_string()),
                        port: addr.port(),
                    },
                    subchannel,
                });
            }
        }
    }
    if next.len() != current.len() || !known.is_empty() {
        ::tracing::info!(
            target_name = %target,
            replicas = next.len(),
            "the replicas of the target changed"
        );
    }
    *list.write().unwrap_or_else(|p| p.into_inner()) = next.into();
    Ok(())
}

/// Follows a [`Resolver`]'s answers for one target until the client is
/// dropped (`ended` fires when the last balancer clone goes) or the stream ends.
pub(crate) struct WatchTask {
    pub(crate) target: String,
    pub(crate) name: String,
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) stream: AddressStream,
    pub(crate) list: Weak<std::sync::RwLock<Arc<[Replica]>>>,
    pub(crate) resolution: Arc<Resolution>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) make: MakeSubchannel,
    pub(crate) min_interval: Duration,
    pub(crate) ended: tokio::sync::oneshot::Receiver<()>,
}

impl WatchTask {
    pub(crate) async fn run(mut self) {
        let mut hinted: Option<Instant> = None;
        // A hint that came within the minimum interval: given at its end.
        let mut deferred: Option<Instant> = None;
        let mut answered = false;
        loop {
            let next = std::future::poll_fn(|cx| self.stream.as_mut().poll_next(cx));
            let hint_at = deferred.unwrap_or_else(Instant::now);
            let answer = tokio::select! {
                _ = &mut self.ended => return,
                answer = next => answer,
                () = self.resolution.again.notified(), if deferred.is_none() => {
                    let now = Instant::now();
                    match hinted.map(|at| crate::time::add(at, self.min_interval)) {
                        Some(earliest) if earliest > now => deferred = Some(earliest),
                        _ => {
                            hinted = Some(now);
                            self.resolver.resolve_now(&self.name);
                        }
                    }
                    continue;
                }
                () = tokio::time::sleep_until(hint_at), if deferred.is_some() => {
                    deferred = None;
                    hinted = Some(Instant::now());
                    self.resolver.resolve_now(&self.name);
                    continue;
                }
            };
            let Some(answer) = answer else {
                if !answered {
                    self.resolution.set_error(Some(format!(
                        "the resolver of {} ended its answers without giving one",
                        self.target
                    )));
                    self.wake.changed();
                }
                ::tracing::debug!(target_name = %self.target, "the resolver's stream ended; its last answer stands");
                return;
            };
            let Some(list) = self.list.upgrade() else {
                return;
            };
            let outcome = match answer {
                Ok(addrs) => {
                    answered = true;
                    let addrs = select_addresses(addrs, &list, &self.target);
                    match apply(&list, &addrs, &self.make, &self.target) {
                        // No replica: calls fail at once, naming why.
                        Ok(()) if addrs.is_empty() => Some(format!(
                            "the resolver of {} answered no address",
                            self.target
                        )),
                        Ok(()) => None,
                        Err(error) => Some(error),
                    }
                }
                Err(error) => {
                    let error = format!("the resolver of {} failed: {error}", self.target);
                    ::tracing::warn!(
                        target_name = %self.target,
                        %error,
                        "resolution failed; the last good list of replicas keeps serving"
                    );
                    Some(error)
                }
            };
            drop(list);
            self.resolution.set_error(outcome);
            self.wake.changed();
        }
    }
}
