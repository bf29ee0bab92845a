//! Load balancing over a static list of replicas: one [`Subchannel`] per
//! address, picked round-robin among the READY ones, as grpc-go's
//! `round_robin` policy does.
//!
//! | The subchannels | What a call does |
//! |---|---|
//! | some READY | takes the next READY one in turn; every IDLE one it passes starts connecting (all are kept connected) |
//! | none READY, some IDLE or connecting | takes the next IDLE one (its call waits for that connect, within its deadline) |
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
use crate::wire_types::{BoxError, BoxFuture, HttpRequest, HttpResponse};

/// Round-robin over the subchannels of a static list. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RoundRobin {
    subchannels: Arc<[Subchannel]>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub(crate) fn new(subchannels: Vec<Subchannel>) -> Self {
        RoundRobin {
            subchannels: subchannels.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The subchannel for the next call (see the module's table): the turn
    /// counts over the READY subchannels only, so that one that is down
    /// does not hand its share to its neighbour in the list.
    fn pick(&self) -> &Subchannel {
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
        let index = if count > 0 {
            ready[turn % count]
        } else {
            idle.unwrap_or(turn % n)
        };
        &self.subchannels[index]
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
        Box::pin(self.pick().clone().send(request))
    }
}
