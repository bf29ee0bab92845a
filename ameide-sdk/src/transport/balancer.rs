//! Load balancing over the replicas of a target: one [`Subchannel`] per
//! address, and a policy ([`LoadBalancing`]) that picks among the READY
//! ones: `round_robin` (the default) and `pick_first` as grpc-go's, and a
//! least-loaded policy (power of two choices over the streams in flight).
//! The addresses are a static list (`static:///a:1,b:2`), what DNS
//! answers for a `dns:` target, resolved again as it changes (`dns.rs`),
//! or what a registered `Resolver` answers (`resolver.rs`).
//!
//! | The subchannels | What a call does |
//! |---|---|
//! | some READY | takes one by the policy (round-robin: the next in turn; least-loaded: of two at random, the one with fewer streams in flight; pick_first: the one it selected while READY, else the first READY in the list's order); under round-robin and least-loaded a retry of the call prefers another than its last attempt's |
//! | none READY, some IDLE or connecting | round-robin and least-loaded start every IDLE one connecting (all are kept connected); pick_first starts the first and the next after 250 ms or its failure (Happy Eyeballs, gRFC A61); the call waits, within its deadline, for the first to become READY (grpc-go's picker blocks the same way) |
//! | all failing (their last connect failed; they keep reconnecting after each backoff) | fails at once with `UNAVAILABLE` naming a replica's connect error, as grpc-go does when every subconn is in TRANSIENT_FAILURE |
//! | none yet (the resolver has not answered) | waits for the first answer within its deadline; fails `UNAVAILABLE` naming the resolution error when resolution failed and no address was ever known, or a resolver answered an empty list |
//!
//! A call never goes to an address whose connect failed while another is
//! READY. **Draining**: a connection that sent GOAWAY takes no new stream;
//! a request its replica cannot take after the pick (the connection was
//! lost meanwhile) or hands back unwritten goes to another replica
//! (transparent, no attempt spent). A replica that leaves the list gets no
//! new calls; its calls in flight finish. **Outlier ejection** (opt-in,
//! `outlier.rs`): a READY replica that fails most of its calls is skipped
//! while another READY one is not ejected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;

use super::connection::{ConnectError, HAPPY_EYEBALLS_DELAY};
use super::subchannel::{Failed, Health, Resends, Subchannel};
use super::tap::Wake;
use crate::call::CallState;
use crate::wire_types::{BoxError, BoxFuture, HttpRequest, HttpResponse};

/// How a client with several addresses for its target (a `static:` list or
/// a `dns:` name) spreads its calls over them: grpc-go's `pick_first` and
/// `round_robin`, and a least-loaded policy. A plain `http(s)://host:port`
/// endpoint has one subchannel and no policy.
///
/// ```
/// use ameide_sdk::{LoadBalancing, TransportOptions};
/// // Round-robin is the default for static lists and dns: targets.
/// assert_eq!(TransportOptions::default().load_balancing, LoadBalancing::RoundRobin);
/// let options = TransportOptions::default().with_load_balancing(LoadBalancing::LeastLoaded);
/// assert_eq!(options.load_balancing, LoadBalancing::LeastLoaded);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoadBalancing {
    /// Every call to the first address, in the list's order, that connects
    /// (grpc-go's default): with Happy Eyeballs (gRFC A61), the next address's
    /// connect starts when the one before has not connected within 250 ms or
    /// has failed, the two address families in turn. The address selected
    /// keeps every call, retries too, while it is READY; the others are not
    /// kept connected (a connect that completes after another was selected
    /// stays open, idle, until its server closes it). A `dns:` target keeps
    /// the DNS answer's order. For a target whose replicas must not be
    /// balanced (a leader, a sticky cache).
    PickFirst,
    /// The READY replicas in turn (grpc-go's `round_robin`); every replica
    /// kept connected. The default.
    #[default]
    RoundRobin,
    /// Power of two choices over the streams each READY replica has in
    /// flight from this client: of two replicas picked at random, the one
    /// with fewer (a slow replica accumulates calls and gets fewer new
    /// ones). Every replica kept connected.
    LeastLoaded,
}

/// How often a call that found its replica unable to take it (its
/// connection lost between pick and send, or its request handed back
/// unwritten) picks another; past it, it waits on the last one.
const MAX_REPICKS: u32 = 8;

/// The replicas a call's last attempts went to (subchannel ids; 0: none):
/// a retry or a hedge prefers another.
type Avoid = [usize; crate::call::AVOIDED_REPLICAS];

/// One replica: its address (as the list names it) and its subchannel.
#[derive(Clone)]
pub(crate) struct Replica {
    pub(crate) key: String,
    pub(crate) peer: PeerAddress,
    pub(crate) subchannel: Subchannel,
}

/// The replica an attempt went to, on its response's extensions: the
/// tracing layer puts it on the attempt's span (`network.peer.address`,
/// `network.peer.port`).
#[derive(Debug, Clone)]
pub(crate) struct PeerAddress {
    pub(crate) address: Arc<str>,
    pub(crate) port: u16,
}

/// The replicas, replaced whole when the resolver's answer changes.
pub(crate) type ReplicaList = Arc<RwLock<Arc<[Replica]>>>;

/// What a resolver says besides its list: its last failure, and the way to
/// ask it to resolve again.
#[derive(Default)]
pub(crate) struct Resolution {
    /// The last resolution failed with this (cleared by a good answer).
    error: std::sync::Mutex<Option<String>>,
    /// Asks the resolver for an early resolution (it keeps its minimum interval).
    pub(crate) again: Notify,
}

impl Resolution {
    /// The last resolution's failure, if it failed.
    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the last resolution's outcome (`None`: it succeeded).
    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
}

/// The balancer over the replicas of a target. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Balancer {
    replicas: ReplicaList,
    policy: LoadBalancing,
    next: Arc<AtomicUsize>,
    /// pick_first's choice (a subchannel id; 0: none): kept while READY.
    selected: Arc<AtomicUsize>,
    /// Shared by every subchannel and the resolver: woken by any change.
    wake: Arc<Wake>,
    /// For a resolved target: the resolver's state.
    resolution: Option<Arc<Resolution>>,
    /// Dropped with the last clone: ends a resolver's watch task.
    lifetime: Option<Arc<tokio::sync::oneshot::Sender<()>>>,
}

/// What one look at the subchannels found.
enum Pick {
    Ready(Replica),
    /// None READY; some may become so (IDLE, or connecting); look again
    /// at the instant, if any (Happy Eyeballs' next connect).
    Wait(Replica, Option<Instant>),
    /// Every one backs off after a failed connect.
    Failing(Replica),
    /// No replica yet (the resolver has not answered, or answered nothing).
    Empty,
}

impl Balancer {
    pub(crate) fn new(
        replicas: ReplicaList,
        policy: LoadBalancing,
        wake: Arc<Wake>,
        resolution: Option<Arc<Resolution>>,
    ) -> Self {
        Balancer {
            replicas,
            policy,
            next: Arc::new(AtomicUsize::new(0)),
            selected: Arc::new(AtomicUsize::new(0)),
            wake,
            resolution,
            lifetime: None,
        }
    }

    /// Keeps `sender` while any clone lives: its receiver learns when the
    /// client is gone.
    pub(crate) fn with_lifetime(mut self, sender: tokio::sync::oneshot::Sender<()>) -> Self {
        self.lifetime = Some(Arc::new(sender));
        self
    }

    /// The replica for a call: a READY one at once, else (none READY,
    /// some connecting, or no replica yet) the first to become READY within
    /// the deadline; and whether it is READY (at the deadline, it may not be).
    async fn pick_ready(
        &self,
        deadline: Option<Instant>,
        avoid: Avoid,
    ) -> Result<(Replica, bool), BoxError> {
        let wake = self.wake.clone();
        loop {
            let notified = wake.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (fallback, again_at) = match self.pick(avoid) {
                Pick::Ready(replica) => return Ok((replica, true)),
                Pick::Failing(replica) => {
                    let why = replica
                        .subchannel
                        .last_error()
                        .map_or_else(|| "no connection".to_owned(), |e| e.message);
                    return Err(Box::new(ConnectError {
                        message: format!("every replica of the target is failing; {why}"),
                        permanent: false,
                    }));
                }
                Pick::Wait(replica, again_at) => (Some(replica), again_at),
                Pick::Empty => {
                    if let Some(error) = self.resolution_error() {
                        return Err(Box::new(ConnectError {
                            message: error,
                            permanent: false,
                        }));
                    }
                    (None, None)
                }
            };
            let until = match (deadline, again_at) {
                (Some(d), Some(a)) => Some(d.min(a)),
                (d, a) => d.or(a),
            };
            // Woken by a change, or the timer: either way, look again.
            match until {
                Some(until) => {
                    let _ = tokio::time::timeout_at(until, notified).await;
                }
                None => notified.await,
            }
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            if past_deadline {
                // The deadline: its send fails the call the way the deadline says.
                return match fallback {
                    Some(replica) => Ok((replica, false)),
                    None => Err(Box::new(ConnectError {
                        message: "no address of the target is known yet: its resolver has not \
                                  answered within the call's deadline"
                            .to_owned(),
                        permanent: false,
                    })),
                };
            }
        }
    }

    fn resolution_error(&self) -> Option<String> {
        self.resolution.as_ref()?.error()
    }

    /// One look (see the module's table). `avoid` are the replicas the
    /// call's last attempts went to: another READY one is preferred.
    fn pick(&self, avoid: Avoid) -> Pick {
        let replicas = self
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let n = replicas.len();
        if n == 0 {
            if let Some(resolution) = &self.resolution {
                resolution.again.notify_one();
            }
            return Pick::Empty;
        }
        if self.policy == LoadBalancing::PickFirst {
            return self.pick_first(&replicas);
        }
        // At most MAX_STATIC_ENDPOINTS (64) are counted: on the stack.
        let mut ready = [0usize; crate::config::MAX_STATIC_ENDPOINTS];
        let mut count = 0;
        let mut idle = None;
        let mut all_ready = true;
        // Outlier ejection: READY but out of the picks while another is in.
        let mut ejected = [0usize; crate::config::MAX_STATIC_ENDPOINTS];
        let mut ejected_count = 0;
        for (i, replica) in replicas.iter().enumerate() {
            match replica.subchannel.health() {
                Health::Ready if replica.subchannel.is_ejected() => {
                    if ejected_count < ejected.len() {
                        ejected[ejected_count] = i;
                        ejected_count += 1;
                    }
                }
                Health::Ready => {
                    if count < ready.len() {
                        ready[count] = i;
                        count += 1;
                    }
                }
                Health::Idle => {
                    all_ready = false;
                    replica.subchannel.request_connection();
                    idle.get_or_insert(i);
                }
                Health::Failing => {
                    all_ready = false;
                    // A no-op while its connect task runs; else (its last
                    // connection closed after a failed extra connect) one
                    // starts, after the backoff.
                    replica.subchannel.request_connection();
                }
            }
        }
        if !all_ready && let Some(resolution) = &self.resolution {
            // A replica is down or not yet up: DNS may know better.
            resolution.again.notify_one();
        }
        if count == 0 && ejected_count > 0 {
            // Every READY replica is ejected: better them than none.
            ready = ejected;
            count = ejected_count;
        }
        if count > 0 {
            let ready = &ready[..count];
            let chosen = match self.policy {
                LoadBalancing::RoundRobin => {
                    // The turn counts over the READY ones only, so that one
                    // that is down does not hand its share to its neighbour.
                    let turn = self.next.fetch_add(1, Ordering::Relaxed);
                    (0..count)
                        .map(|k| ready[(turn + k) % count])
                        .find(|&i| !avoid.contains(&replicas[i].subchannel.id()))
                        .unwrap_or(ready[turn % count])
                }
                LoadBalancing::LeastLoaded | LoadBalancing::PickFirst => {
                    least_loaded(&replicas, ready, avoid)
                }
            };
            return Pick::Ready(replicas[chosen].clone());
        }
        match idle {
            Some(i) => Pick::Wait(replicas[i].clone(), None),
            None => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                Pick::Failing(replicas[turn % n].clone())
            }
        }
    }

    /// pick_first: the selected replica while it is READY (a retry too:
    /// the replicas are not balanced); else the first READY one in the
    /// list's order becomes the selected one; else Happy Eyeballs.
    fn pick_first(&self, replicas: &[Replica]) -> Pick {
        let selected = self.selected.load(Ordering::Relaxed);
        if selected != 0
            && let Some(replica) = replicas.iter().find(|r| r.subchannel.id() == selected)
            && replica.subchannel.health() == Health::Ready
        {
            return Pick::Ready(replica.clone());
        }
        let pick = happy_eyeballs(replicas, &self.resolution);
        if let Pick::Ready(replica) = &pick {
            self.selected
                .store(replica.subchannel.id(), Ordering::Relaxed);
        }
        pick
    }

    /// Sends `request` to `replica`, and again to another replica while the
    /// one it went to hands it back unsent (its connection lost between
    /// pick and send, or the request handed back unwritten by a connection
    /// that closed): a replica going away loses no call that it did not
    /// take. The replica goes on the response for the attempt's span.
    async fn send(
        self,
        mut request: HttpRequest,
        mut replica: Replica,
        mut ready: bool,
        waited: bool,
    ) -> Result<HttpResponse, BoxError> {
        let deadline = crate::call::deadline_of(&request);
        let mut resends = Resends::default();
        if waited {
            resends.waited();
        }
        let mut repicks = 0u32;
        loop {
            if let Some(state) = request.extensions().get::<CallState>() {
                state.set_replica(replica.subchannel.id());
            }
            let hand_back = ready && repicks < MAX_REPICKS;
            match replica
                .subchannel
                .clone()
                .send_or_hand_back(request, resends, hand_back)
                .await
            {
                Ok(mut response) => {
                    response.extensions_mut().insert(replica.peer);
                    return Ok(response);
                }
                Err(Failed::Error(error)) => return Err(error),
                Err(Failed::HandedBack(unsent, so_far)) => {
                    (request, resends) = (*unsent, so_far);
                    repicks += 1;
                    let avoid = request
                        .extensions()
                        .get::<CallState>()
                        .map_or([replica.subchannel.id(), 0, 0, 0], CallState::replicas);
                    (replica, ready) = self.pick_ready(deadline, avoid).await?;
                    resends.waited();
                }
            }
        }
    }
}

/// Power of two choices: of two READY replicas picked at random (other
/// than `avoid` when there are more), the one with fewer streams in flight.
fn least_loaded(replicas: &[Replica], ready: &[usize], avoid: Avoid) -> usize {
    let mut candidates = [0usize; crate::config::MAX_STATIC_ENDPOINTS];
    let mut count = 0;
    for &i in ready {
        if !avoid.contains(&replicas[i].subchannel.id()) {
            candidates[count] = i;
            count += 1;
        }
    }
    let candidates = if count == 0 {
        ready
    } else {
        &candidates[..count]
    };
    if candidates.len() == 1 {
        return candidates[0];
    }
    let a = fastrand::usize(..candidates.len());
    let mut b = fastrand::usize(..candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (candidates[a], candidates[b]);
    if replicas[b].subchannel.in_flight() < replicas[a].subchannel.in_flight() {
        b
    } else {
        a
    }
}

/// `pick_first` with no READY replica (gRFC A61): walks the list in order;
/// an address whose connect failed passes the turn at once, one still
/// connecting after [`HAPPY_EYEBALLS_DELAY`] lets the next start too; the
/// first not yet tried is started, and the call looks again when its
/// stagger runs out (or when any replica changes).
fn happy_eyeballs(replicas: &[Replica], resolution: &Option<Arc<Resolution>>) -> Pick {
    let now = Instant::now();
    let mut first_waiting = None;
    for replica in replicas {
        match replica.subchannel.health() {
            Health::Failing => continue,
            Health::Ready => return Pick::Ready(replica.clone()),
            Health::Idle => {}
        }
        first_waiting.get_or_insert(replica);
        match replica.subchannel.connecting_since() {
            None => {
                replica.subchannel.request_connection();
                return Pick::Wait(replica.clone(), Some(now + HAPPY_EYEBALLS_DELAY));
            }
            Some(since) if now.saturating_duration_since(since) < HAPPY_EYEBALLS_DELAY => {
                return Pick::Wait(replica.clone(), Some(since + HAPPY_EYEBALLS_DELAY));
            }
            Some(_) => {}
        }
    }
    match first_waiting {
        // Every address is connecting: wait for the first to connect.
        Some(replica) => Pick::Wait(replica.clone(), None),
        None => {
            // Every address failed: each connects again after its backoff
            // (a no-op while its connect task runs), and DNS may know better.
            for replica in replicas {
                replica.subchannel.request_connection();
            }
            if let Some(resolution) = resolution {
                resolution.again.notify_one();
            }
            Pick::Failing(replicas[0].clone())
        }
    }
}

impl Service<HttpRequest> for Balancer {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let avoid = request
            .extensions()
            .get::<CallState>()
            .map_or([0; crate::call::AVOIDED_REPLICAS], CallState::replicas);
        let balancer = self.clone();
        // The fast path: a READY replica, no waiting.
        if let Pick::Ready(replica) = self.pick(avoid) {
            return Box::pin(balancer.send(request, replica, true, false));
        }
        let deadline = crate::call::deadline_of(&request);
        Box::pin(async move {
            let (replica, ready) = balancer.pick_ready(deadline, avoid).await?;
            balancer.send(request, replica, ready, true).await
        })
    }
}
