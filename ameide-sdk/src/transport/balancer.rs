//! Load balancing over the replicas of a target: one [`Subchannel`] per
//! address, picked round-robin among the READY ones, as grpc-go's
//! `round_robin` policy does. The addresses are a static list
//! (`static:///a:1,b:2`) or what DNS answers for a `dns:` target, resolved
//! again as it changes (`dns.rs`).
//!
//! | The subchannels | What a call does |
//! |---|---|
//! | some READY | takes the next READY one in turn; every IDLE one it passes starts connecting (all are kept connected) |
//! | none READY, some IDLE or connecting | starts every IDLE one connecting and waits, within its deadline, for the first to become READY (grpc-go's picker blocks the same way) |
//! | all failing (their last connect failed; they keep reconnecting after each backoff) | fails at once with `UNAVAILABLE` naming a replica's connect error, as grpc-go does when every subconn is in TRANSIENT_FAILURE |
//! | none yet (DNS has not answered) | waits for the first answer within its deadline; fails `UNAVAILABLE` naming the resolution error when DNS failed and no address was ever known |
//!
//! A call never goes to an address whose connect failed while another is
//! READY. Draining is the subchannel's: a connection that sent GOAWAY takes
//! no new stream, and a request handed back unwritten is resent. A replica
//! that leaves the list gets no new calls; its calls in flight finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tower::Service;

use super::connection::ConnectError;
use super::subchannel::{Health, Subchannel};
use super::tap::Wake;
use crate::wire_types::{BoxError, BoxFuture, HttpRequest, HttpResponse};

/// One replica: its address (as the list names it) and its subchannel.
#[derive(Clone)]
pub(crate) struct Replica {
    pub(crate) key: String,
    pub(crate) subchannel: Subchannel,
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

/// Round-robin over the replicas of a target. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RoundRobin {
    replicas: ReplicaList,
    next: Arc<AtomicUsize>,
    /// Shared by every subchannel and the resolver: woken by any change.
    wake: Arc<Wake>,
    /// For a resolved target: the resolver's state.
    resolution: Option<Arc<Resolution>>,
}

/// What one look at the subchannels found.
enum Pick {
    Ready(Subchannel),
    /// None READY; some may become so (IDLE, or connecting).
    Wait(Subchannel),
    /// Every one backs off after a failed connect.
    Failing(Subchannel),
    /// No replica yet (the resolver has not answered, or answered nothing).
    Empty,
}

impl RoundRobin {
    pub(crate) fn new(
        replicas: ReplicaList,
        wake: Arc<Wake>,
        resolution: Option<Arc<Resolution>>,
    ) -> Self {
        RoundRobin {
            replicas,
            next: Arc::new(AtomicUsize::new(0)),
            wake,
            resolution,
        }
    }

    /// The subchannel for a call: a READY one at once, else (none READY,
    /// some connecting, or no replica yet) the first to become READY within
    /// the deadline.
    async fn pick_ready(
        self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Subchannel, BoxError> {
        let wake = self.wake.clone();
        loop {
            let notified = wake.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let fallback = match self.pick() {
                Pick::Ready(sub) => return Ok(sub),
                Pick::Failing(sub) => {
                    let why = sub
                        .last_error()
                        .map_or_else(|| "no connection".to_owned(), |e| e.message);
                    return Err(Box::new(ConnectError {
                        message: format!("every replica of the target is failing; {why}"),
                        permanent: false,
                    }));
                }
                Pick::Wait(sub) => Some(sub),
                Pick::Empty => {
                    if let Some(error) = self.resolution_error() {
                        return Err(Box::new(ConnectError {
                            message: error,
                            permanent: false,
                        }));
                    }
                    None
                }
            };
            let woken = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, notified).await.is_ok(),
                None => {
                    notified.await;
                    true
                }
            };
            if !woken {
                // The deadline: its send fails the call the way the deadline says.
                return match fallback {
                    Some(sub) => Ok(sub),
                    None => Err(Box::new(ConnectError {
                        message: "no address of the target is known yet: DNS has not answered \
                                  within the call's deadline"
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

    /// One look (see the module's table): the turn counts over the READY
    /// subchannels only, so that one that is down does not hand its share
    /// to its neighbour in the list.
    fn pick(&self) -> Pick {
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
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // At most MAX_STATIC_ENDPOINTS (64) are counted: on the stack.
        let mut ready = [0usize; crate::config::MAX_STATIC_ENDPOINTS];
        let mut count = 0;
        let mut idle = None;
        let mut all_ready = true;
        for (i, replica) in replicas.iter().enumerate() {
            match replica.subchannel.health() {
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
        let pick = |i: usize| replicas[i].subchannel.clone();
        if count > 0 {
            Pick::Ready(pick(ready[turn % count]))
        } else if let Some(i) = idle {
            Pick::Wait(pick(i))
        } else {
            Pick::Failing(pick(turn % n))
        }
    }
}

impl Service<HttpRequest> for RoundRobin {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        // The fast path: a READY subchannel, no waiting.
        if let Pick::Ready(sub) = self.pick() {
            return Box::pin(sub.send(request));
        }
        let deadline = crate::call::deadline_of(&request);
        let balancer = self.clone();
        Box::pin(async move { balancer.pick_ready(deadline).await?.send(request).await })
    }
}
