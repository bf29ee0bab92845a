//! Load balancing over a static list of replicas: one [`Subchannel`] per
//! address, picked round-robin among the READY ones, as grpc-go's
//! `round_robin` policy does.
//!
//! | The subchannels | What a call does |
//! |---|---|
//! | some READY | takes the next READY one in turn; every IDLE one it passes starts connecting (all are kept connected) |
//! | none READY, some IDLE or connecting | starts every IDLE one connecting and waits, within its deadline, for the first to become READY (grpc-go's picker blocks the same way) |
//! | all backing off after failed connects | takes the next in turn, which fails at once naming its connect error (or waits for its connect when the deadline allows) |
//!
//! A call never goes to an address whose connect failed while another is
//! READY. Draining is the subchannel's: a connection that sent GOAWAY takes
//! no new stream, and a request handed back unwritten is resent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tower::Service;

use super::subchannel::{Health, Subchannel};
use super::tap::Wake;
use crate::wire_types::{BoxError, BoxFuture, HttpRequest, HttpResponse};

/// Round-robin over the subchannels of a static list. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RoundRobin {
    subchannels: Arc<[Subchannel]>,
    next: Arc<AtomicUsize>,
    /// Shared by every subchannel: woken by any of their changes.
    wake: Arc<Wake>,
}

/// What one look at the subchannels found.
enum Pick {
    Ready(usize),
    /// None READY; some may become so (IDLE, or connecting).
    Wait(usize),
    /// Every one backs off after a failed connect.
    Failing(usize),
}

impl RoundRobin {
    pub(crate) fn new(subchannels: Vec<Subchannel>, wake: Arc<Wake>) -> Self {
        RoundRobin {
            subchannels: subchannels.into(),
            next: Arc::new(AtomicUsize::new(0)),
            wake,
        }
    }

    /// The subchannel for a call: a READY one at once, else (none READY,
    /// some connecting) the first to become READY within the deadline.
    async fn pick_ready(self, deadline: Option<tokio::time::Instant>) -> Subchannel {
        let wake = self.wake.clone();
        loop {
            let notified = wake.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let index = match self.pick() {
                Pick::Ready(i) | Pick::Failing(i) => return self.subchannels[i].clone(),
                Pick::Wait(i) => i,
            };
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        // Its send fails the call the way its deadline says.
                        return self.subchannels[index].clone();
                    }
                }
                None => notified.await,
            }
        }
    }

    /// One look (see the module's table): the turn counts over the READY
    /// subchannels only, so that one that is down does not hand its share
    /// to its neighbour in the list.
    fn pick(&self) -> Pick {
        let n = self.subchannels.len();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // At most MAX_STATIC_ENDPOINTS (64) subchannels: on the stack.
        let mut ready = [0usize; crate::config::MAX_STATIC_ENDPOINTS];
        let mut count = 0;
        let mut idle = None;
        for (i, sub) in self.subchannels.iter().enumerate() {
            match sub.health() {
                Health::Ready if count < ready.len() => {
                    ready[count] = i;
                    count += 1;
                }
                Health::Ready => {}
                Health::Idle => {
                    sub.request_connection();
                    idle.get_or_insert(i);
                }
                Health::Failing => {}
            }
        }
        if count > 0 {
            Pick::Ready(ready[turn % count])
        } else if let Some(i) = idle {
            Pick::Wait(i)
        } else {
            Pick::Failing(turn % n)
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
        if let Pick::Ready(i) = self.pick() {
            return Box::pin(self.subchannels[i].clone().send(request));
        }
        let deadline = crate::call::deadline_of(&request);
        let balancer = self.clone();
        Box::pin(async move { balancer.pick_ready(deadline).await.send(request).await })
    }
}
