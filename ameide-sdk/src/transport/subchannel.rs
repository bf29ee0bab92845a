//! The subchannel: every HTTP/2 connection to the target, owned by the
//! subchannel and by no call, in the shape of grpc-go's `addrConn` and the
//! `grpc` crate's subchannel.
//!
//! | State | What a call does |
//! |---|---|
//! | READY: a connection has room (its open streams < the server's `SETTINGS_MAX_CONCURRENT_STREAMS`) | takes the next such connection, round-robin (the fast path: one lock, no allocation) |
//! | every connection full, fewer than `max_connections` | starts a connect (one at a time) and waits for it or for room |
//! | every connection full, at `max_connections` | waits for room, within its deadline |
//! | IDLE / CONNECTING: no connection | starts the connect task (or joins the one running) and waits for it, within its deadline |
//! | TRANSIENT_FAILURE: the last connect failed, the next one is due at `retry_at` | fails at once with `UNAVAILABLE` naming the connect error when its deadline falls before `retry_at` + 200 ms ([`CONNECT_GRACE`]) (or the error is about the certificate, the name, ALPN or a proxy's refusal); else waits for that connect |
//!
//! **The connect task** is spawned by the first caller that needs it and is
//! shared by every waiter. It is bounded by the connect timeout, never by a
//! caller's deadline: a caller that gives up leaves it running, and its
//! outcome is recorded either way. A failed connect sets the backoff
//! (gRPC connection backoff: [`TransportOptions::connect_backoff`](super::TransportOptions::connect_backoff)
//! × 1.6ⁿ up to [`connect_backoff_max`](super::TransportOptions::connect_backoff_max),
//! ±20 %); the task tries again when it is due while callers still wait,
//! and stops when nobody does. The backoff resets only on a connection whose
//! server sent its SETTINGS.
//!
//! **Transparent resends** (contract §8): a request that waited through
//! failed connects, or that hyper handed back unwritten when its connection
//! closed (at most [`MAX_UNWRITTEN_RESENDS`] times), carries
//! `grpc-transparent-retry-attempts`. None of them is an attempt of the retry
//! policy or spends a throttle token. A request that waited for a connection
//! or was resent has its `grpc-timeout` computed again from the call's
//! deadline when its stream is created.
//!
//! **Keepalive** (gRFC A8): a connection that ends with GOAWAY
//! ENHANCE_YOUR_CALM `too_many_pings` doubles the keepalive interval of the
//! target's next connections, with a warning.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::connection::{
    self, Conn, ConnectError, CountedBody, MAX_UNWRITTEN_RESENDS, StreamGuard,
    TRANSPARENT_ATTEMPTS, Target, Unwritten,
};
use super::outlier::{Pending, Tally, outcome_of_head};
use super::tap::Wake;
use crate::wire_types::{BoxError, HttpRequest, HttpResponse};

/// Failed connects a call waits through when it has no deadline (layers used alone).
const MAX_CONNECTS_WITHOUT_DEADLINE: u32 = 3;
/// A connect due this close to a caller's deadline cannot answer its call in
/// time (timers fire late and tasks wait for a core on a loaded machine; the
/// connect itself takes a round trip or more): the caller fails at once with
/// the connect error instead of meeting its deadline while the connect runs.
const CONNECT_GRACE: Duration = Duration::from_millis(200);
/// The next subchannel's id (0 means none, so ids start at 1).
static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
/// The largest keepalive interval doubling reaches.
const MAX_KEEPALIVE: Duration = Duration::from_secs(24 * 3600);

/// A subchannel's state as a balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// A connection takes new streams.
    Ready,
    /// No connection; the next connect is not due yet.
    Failing,
    /// No connection; one may be made now (or is being made).
    Idle,
}

/// How many connections, and how connects are paced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    pub(crate) min_connections: usize,
    pub(crate) max_connections: usize,
    pub(crate) backoff: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) keepalive: Option<Duration>,
    /// A balancer's replica: connect again after each backoff until a
    /// connection is up, whether or not a call waits (grpc-go's subconns
    /// reconnect on their own; a replica that comes back gets calls again).
    pub(crate) keep_connected: bool,
    /// Count each call's outcome ([`Tally`], for outlier ejection).
    pub(crate) count_outcomes: bool,
}

/// Every connection to one target; cloned into every call.
#[derive(Clone)]
pub(crate) struct Subchannel {
    shared: Arc<Shared>,
}

struct Shared {
    /// Tells subchannels apart (never reused).
    id: usize,
    target: Arc<Target>,
    pacing: Pacing,
    wake: Arc<Wake>,
    state: Mutex<State>,
    /// The calls' outcomes, when the target ejects outliers.
    tally: Option<Arc<Tally>>,
}

struct State {
    /// The connections that take new streams.
    conns: Vec<Arc<Conn>>,
    /// Where the round-robin goes on.
    next: usize,
    /// A connect task runs.
    connecting: bool,
    /// When the running connect task started (Happy Eyeballs staggers the
    /// next replica's connect on it).
    connect_started: Option<Instant>,
    next_id: u64,
    /// Failed connects since the last connection was made.
    failures: u32,
    /// When the next connect may start.
    retry_at: Option<Instant>,
    last_error: Option<ConnectError>,
    /// Failed connects ever: a waiter counts the ones it waited through.
    failed_connects: u64,
    /// The keepalive interval of the next connection (doubled by `too_many_pings`).
    keepalive: Option<Duration>,
}

impl State {
    /// A connection with room, its new stream counted; and whether a
    /// connection that takes no new streams was passed over (to prune).
    fn pick(&mut self) -> (Option<Arc<Conn>>, bool) {
        let n = self.conns.len();
        let mut dead = false;
        for i in 0..n {
            let index = (self.next + i) % n;
            let conn = &self.conns[index];
            if !conn.usable() {
                dead = true;
                continue;
            }
            if conn.try_open() {
                self.next = index + 1;
                return (Some(conn.clone()), dead);
            }
        }
        (None, dead)
    }

    /// A connect task should run: too few connections, or (for a waiter)
    /// every one full and the cap not reached.
    fn wants_connect(&self, pacing: &Pacing, waiting: bool) -> bool {
        !self.connecting
            && (self.conns.len() < pacing.min_connections
                || (waiting && self.conns.len() < pacing.max_connections))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_connect(self: &Arc<Self>, state: &mut State) {
        state.connecting = true;
        state.connect_started = Some(Instant::now());
        let mark = ConnectTaskMark {
            shared: Arc::downgrade(self),
            armed: true,
        };
        tokio::spawn(connect_task(mark));
    }

    /// Drops the connections that take no new streams (closed, or GOAWAY).
    fn prune(&self, state: &mut State) {
        let mut i = 0;
        while i < state.conns.len() {
            if state.conns[i].usable() {
                i += 1;
            } else {
                let gone = state.conns.remove(i);
                self.retire(state, &gone);
            }
        }
    }

    /// A connection leaves the list: gRFC A8's doubling when the server
    /// said its pings were too many.
    fn retire(&self, state: &mut State, conn: &Conn) {
        ::tracing::debug!(
            target_address = %format_args!("{}:{}", self.target.host, self.target.port),
            connection = conn.id,
            connections = state.conns.len(),
            "subchannel: a connection stopped taking streams (GOAWAY or closed)"
        );
        if !conn.events.too_many_pings() {
            return;
        }
        let Some(used) = conn.keepalive else { return };
        let doubled = used.saturating_mul(2).min(MAX_KEEPALIVE);
        if state.keepalive.is_some_and(|now| now < doubled) {
            state.keepalive = Some(doubled);
            ::tracing::warn!(
                target_address = %format_args!("{}:{}", self.target.host, self.target.port),
                was = ?used,
                now = ?doubled,
                "the server closed a connection with GOAWAY ENHANCE_YOUR_CALM \"too_many_pings\": \
                 its keepalive policy allows fewer pings; the keepalive interval of the next \
                 connections is doubled (gRFC A8)"
            );
        }
    }
}

/// Connects, again after each backoff while callers wait or the subchannel
/// has fewer connections than it keeps; records every outcome. Owned by no
/// call, and holds the subchannel only weakly while it sleeps: a client
/// dropped meanwhile ends it.
async fn connect_task(mut mark: ConnectTaskMark) {
    loop {
        let Some(shared) = mark.shared.upgrade() else {
            mark.armed = false;
            return;
        };
        let retry_at = shared.lock().retry_at;
        if let Some(at) = retry_at {
            drop(shared);
            tokio::time::sleep_until(at).await;
            let Some(again) = mark.shared.upgrade() else {
                mark.armed = false;
                return;
            };
            let mut state = again.lock();
            let waiting = again.wake.waiters.load(std::sync::atomic::Ordering::SeqCst) > 0;
            let topping_up =
                !state.conns.is_empty() && state.conns.len() < again.pacing.min_connections;
            let keeping = again.pacing.keep_connected && !state.conns.iter().any(|c| c.usable());
            if !waiting && !topping_up && !keeping {
                state.connecting = false;
                mark.armed = false;
                drop(state);
                again.wake.changed();
                return;
            }
        }
        let Some(shared) = mark.shared.upgrade() else {
            mark.armed = false;
            return;
        };
        let (keepalive, id) = {
            let mut state = shared.lock();
            state.next_id = state.next_id.wrapping_add(1);
            (state.keepalive, state.next_id)
        };
        let outcome = connection::connect(&shared.target, id, keepalive, shared.wake.clone()).await;
        let mut state = shared.lock();
        let stop = match outcome {
            Ok(conn) => {
                ::tracing::debug!(
                    target_address = %format_args!("{}:{}", shared.target.host, shared.target.port),
                    connection = id,
                    connections = state.conns.len() + 1,
                    "subchannel READY: connected"
                );
                if let Some(metrics) = &shared.target.metrics
                    && conn.events.count_open()
                {
                    metrics.connected(shared.target.tls.is_some());
                }
                state.conns.push(Arc::new(conn));
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                true
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = connect_backoff(
                    state.failures,
                    shared.pacing.backoff,
                    shared.pacing.backoff_max,
                );
                state.retry_at = Some(crate::time::add(Instant::now(), backoff));
                state.failed_connects = state.failed_connects.saturating_add(1);
                if let Some(metrics) = &shared.target.metrics {
                    metrics.connect_failed(shared.target.tls.is_some());
                }
                ::tracing::debug!(
                    target_address = %format_args!("{}:{}", shared.target.host, shared.target.port),
                    error = %error.message,
                    ?backoff,
                    failures = state.failures,
                    "subchannel TRANSIENT_FAILURE: connect failed; next connect after the backoff"
                );
                // A balancer's replica keeps trying even a permanent verdict
                // (after the backoff): rotated certificates may cure it.
                let stop = error.permanent && !shared.pacing.keep_connected;
                state.last_error = Some(error);
                stop
            }
        };
        if stop {
            state.connecting = false;
            mark.armed = false;
        }
        drop(state);
        shared.wake.changed();
        if stop {
            return;
        }
    }
}

/// Counts a caller among the waiters while it waits.
struct Waiting<'a>(&'a Wake);

impl<'a> Waiting<'a> {
    /// `SeqCst`: see `Conn::try_open`.
    fn new(wake: &'a Wake) -> Self {
        wake.waiters
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(wake)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiters
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Marks the subchannel's connect task as running; a task dropped before it
/// finished (its runtime shutting down) clears the mark on the way out, so
/// the next caller starts another.
struct ConnectTaskMark {
    shared: Weak<Shared>,
    armed: bool,
}

impl Drop for ConnectTaskMark {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().connecting = false;
            shared.wake.changed();
        }
    }
}

impl Subchannel {
    pub(crate) fn new(target: Arc<Target>, pacing: Pacing) -> Self {
        Self::with_wake(target, pacing, Arc::new(Wake::new()))
    }

    /// A subchannel whose changes (a connect's outcome, a connection that
    /// stops taking streams) also wake whoever waits on `wake`: a balancer
    /// waiting for any of its subchannels to become READY.
    pub(crate) fn with_wake(target: Arc<Target>, pacing: Pacing, wake: Arc<Wake>) -> Self {
        Subchannel {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                target,
                pacing,
                wake,
                state: Mutex::new(State {
                    conns: Vec::new(),
                    next: 0,
                    connecting: false,
                    connect_started: None,
                    next_id: 0,
                    failures: 0,
                    retry_at: None,
                    last_error: None,
                    failed_connects: 0,
                    keepalive: pacing.keepalive,
                }),
                tally: pacing.count_outcomes.then(Arc::default),
            }),
        }
    }

    /// What a balancer sees: READY (a connection takes streams), FAILING
    /// (its last connect failed and it backs off), or IDLE / CONNECTING.
    pub(crate) fn health(&self) -> Health {
        let state = self.shared.lock();
        if state.conns.iter().any(|c| c.usable()) {
            Health::Ready
        } else if state.last_error.is_some() {
            // Sticky, as grpc-go's TRANSIENT_FAILURE: until a connect
            // succeeds (the connect task keeps trying for a balancer).
            Health::Failing
        } else {
            Health::Idle
        }
    }

    /// The last connect error, while no connection is up.
    pub(crate) fn last_error(&self) -> Option<ConnectError> {
        let state = self.shared.lock();
        if state.conns.iter().any(|c| c.usable()) {
            return None;
        }
        state.last_error.clone()
    }

    /// Streams open on its connections now (the least-loaded policy's load).
    pub(crate) fn in_flight(&self) -> usize {
        let state = self.shared.lock();
        state.conns.iter().map(|c| c.open_streams()).sum()
    }

    /// When its running connect started, while one runs and no connection
    /// is up (Happy Eyeballs staggers the next address on it).
    pub(crate) fn connecting_since(&self) -> Option<Instant> {
        let state = self.shared.lock();
        if !state.connecting || state.conns.iter().any(|c| c.usable()) {
            return None;
        }
        state.connect_started
    }

    /// The calls' outcomes, when the target ejects outliers.
    pub(crate) fn tally(&self) -> Option<&Arc<Tally>> {
        self.shared.tally.as_ref()
    }

    /// Ejected from the picks now (outlier ejection).
    pub(crate) fn is_ejected(&self) -> bool {
        self.shared
            .tally
            .as_ref()
            .is_some_and(|t| t.is_ejected(Instant::now()))
    }

    /// Tells one subchannel from another (while both live).
    pub(crate) fn id(&self) -> usize {
        self.shared.id
    }

    /// Starts a connect unless one runs or a connection is up (a balancer
    /// keeps every subchannel of its list connected, as grpc-go's
    /// `round_robin` does). The connect task waits out the backoff first.
    pub(crate) fn request_connection(&self) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.connecting || state.conns.iter().any(|c| c.usable()) {
            return;
        }
        shared.prune(&mut state);
        shared.start_connect(&mut state);
    }

    /// The fast path: a ready connection with room, or `None`.
    fn pick_now(&self) -> Option<Arc<Conn>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let (conn, dead) = state.pick();
        let conn = conn?;
        if dead {
            shared.prune(&mut state);
        }
        if state.wants_connect(&shared.pacing, false) {
            shared.start_connect(&mut state);
        }
        Some(conn)
    }

    /// Forgets `conn` (only that one) when it takes no new streams.
    fn forget(&self, conn: &Arc<Conn>) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if conn.usable() {
            return;
        }
        if let Some(index) = state.conns.iter().position(|c| c.id == conn.id) {
            let gone = state.conns.remove(index);
            shared.retire(&mut state, &gone);
        }
    }

    /// The slow path: waits for a connection with room. Returns it (its
    /// stream counted) and how many failed connects the caller waited
    /// through; fails with the connect error when waiting cannot help.
    async fn wait(&self, deadline: Option<Instant>) -> Result<(Arc<Conn>, u32), ConnectError> {
        let shared = &self.shared;
        let wake = shared.wake.clone();
        let mut seen_from = None;
        loop {
            let notified = wake.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Counted before looking for room: a stream that ends after the
            // look sees this waiter and wakes it.
            let _waiting = Waiting::new(&wake);
            {
                let mut state = shared.lock();
                shared.prune(&mut state);
                let from = *seen_from.get_or_insert(state.failed_connects);
                let waited =
                    u32::try_from(state.failed_connects.saturating_sub(from)).unwrap_or(u32::MAX);
                if let (Some(conn), _) = state.pick() {
                    if state.wants_connect(&shared.pacing, false) {
                        shared.start_connect(&mut state);
                    }
                    return Ok((conn, waited));
                }
                if state.conns.is_empty()
                    && let Some(error) = &state.last_error
                {
                    let now = Instant::now();
                    let backing_off = state.retry_at.is_some_and(|at| at > now);
                    let too_late = deadline.is_some_and(|d| {
                        now >= d
                            || state
                                .retry_at
                                .is_some_and(|at| crate::time::add(at, CONNECT_GRACE) >= d)
                    });
                    let enough = deadline.is_none() && waited >= MAX_CONNECTS_WITHOUT_DEADLINE;
                    if (error.permanent && backing_off) || too_late || enough {
                        return Err(error.clone());
                    }
                }
                if state.wants_connect(&shared.pacing, true) {
                    shared.start_connect(&mut state);
                }
            }
            notified.await;
        }
    }

    /// Sends `request` on a connection with room, connecting first if
    /// needed; resends it while it is provably unsent (see the module doc).
    pub(crate) fn send(
        self,
        request: HttpRequest,
    ) -> impl Future<Output = Result<HttpResponse, BoxError>> + Send + 'static {
        let sent = self.send_or_hand_back(request, Resends::default(), false);
        async move {
            match sent.await {
                Ok(response) => Ok(response),
                Err(Failed::Error(error)) => Err(error),
                // Never without `hand_back`; an unsent request if it were.
                Err(Failed::HandedBack(_, _)) => Err(Box::new(ConnectError {
                    message: "the request was not sent".to_owned(),
                    permanent: false,
                }) as BoxError),
            }
        }
    }

    /// [`send`](Self::send), for a balancer when `hand_back`: a request this
    /// subchannel cannot take now (it has no usable connection) or that its
    /// connection handed back unwritten comes back to the caller, unsent,
    /// to go to another replica.
    ///
    /// An `async` block over the arguments rather than an `async fn`, whose
    /// future would keep the request twice (it is boxed on every call).
    pub(crate) fn send_or_hand_back(
        self,
        mut request: HttpRequest,
        resends: Resends,
        hand_back: bool,
    ) -> impl Future<Output = Result<HttpResponse, Failed>> + Send + 'static {
        let origin = set_origin(&mut request, &self.shared.target);
        async move {
            origin.map_err(Failed::Error)?;
            let deadline = crate::call::deadline_of(&request);
            // Failed connects waited through, and requests handed back
            // unwritten: the header counts both, the cap only the second.
            let Resends {
                mut waited_connects,
                mut unwritten,
                waited,
            } = resends;
            loop {
                let conn = match self.pick_now() {
                    Some(conn) => {
                        if unwritten > 0 || waited {
                            refresh_timeout(&mut request, deadline);
                        }
                        conn
                    }
                    None if hand_back && self.health() != Health::Ready => {
                        return Err(Failed::HandedBack(
                            Box::new(request),
                            Resends {
                                waited_connects,
                                unwritten,
                                waited,
                            },
                        ));
                    }
                    None => {
                        // Large and rare: boxed, so the per-call future stays small.
                        let (conn, waited) = Box::pin(self.wait(deadline))
                            .await
                            .map_err(|e| Failed::Error(Box::new(e)))?;
                        if waited > 0 {
                            waited_connects = waited_connects.saturating_add(waited);
                            mark_resend(&mut request, waited_connects.saturating_add(unwritten));
                        }
                        refresh_timeout(&mut request, deadline);
                        conn
                    }
                };
                let guard = StreamGuard { conn };
                let Some(mut sender) = guard.conn.sender() else {
                    // Its task ended since the pick: not sent, pick again.
                    let conn = guard.conn.clone();
                    drop(guard);
                    self.forget(&conn);
                    continue;
                };
                // Queued, then the sender let go before the wait (see
                // `connection::Dispatch`): the future holds no sender.
                let sent = sender.try_send_request(request);
                drop(sender);
                // Outlier ejection: the outcome, once known; a call its
                // deadline drops while it waits here counts as a failure.
                let mut outcome = Pending::new(self.shared.tally.clone(), deadline);
                match sent.await {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        // The head may decide the outcome, else the trailers will.
                        if outcome.is_open() {
                            use http_body::Body as _;
                            if let Some(ok) = outcome_of_head(&parts, body.is_end_stream()) {
                                outcome.record(ok);
                            }
                        }
                        let body = CountedBody::new(body, guard, outcome);
                        return Ok(http::Response::from_parts(
                            parts,
                            tonic::body::Body::new(body),
                        ));
                    }
                    Err(mut failed) => {
                        let handed_back = failed.take_message();
                        let conn = guard.conn.clone();
                        drop(guard);
                        self.forget(&conn);
                        match handed_back {
                            Some(unsent) if unwritten < MAX_UNWRITTEN_RESENDS => {
                                ::tracing::debug!(
                                    error = %failed.error(),
                                    "request not written before its connection closed: sending it again"
                                );
                                request = unsent;
                                unwritten = unwritten.saturating_add(1);
                                mark_resend(
                                    &mut request,
                                    waited_connects.saturating_add(unwritten),
                                );
                                if hand_back {
                                    return Err(Failed::HandedBack(
                                        Box::new(request),
                                        Resends {
                                            waited_connects,
                                            unwritten,
                                            waited: true,
                                        },
                                    ));
                                }
                            }
                            Some(_) => {
                                return Err(Failed::Error(Box::new(Unwritten {
                                    source: failed.into_error(),
                                })));
                            }
                            None => {
                                // Written, then lost (a reset, the connection).
                                outcome.record(false);
                                return Err(Failed::Error(Box::new(failed.into_error())));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The transparent resends a request has had so far (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resends {
    waited_connects: u32,
    unwritten: u32,
    /// The request waited (for a replica) since its `grpc-timeout` was written.
    waited: bool,
}

impl Resends {
    /// The request waited before it reached this subchannel: its
    /// `grpc-timeout` is written again from the time left.
    pub(crate) fn waited(&mut self) {
        self.waited = true;
    }
}

/// Why [`Subchannel::send_or_hand_back`] returned no response.
pub(crate) enum Failed {
    /// The call fails with this.
    Error(BoxError),
    /// Not sent: the request (boxed: rare, and the result stays small),
    /// for another replica.
    HandedBack(Box<HttpRequest>, Resends),
}

/// `grpc-timeout` from the time left now, for a request that waited for a
/// connection or is resent (the retry layer wrote it before the wait). A
/// call without the header (a long-lived stream) gets none.
fn refresh_timeout(request: &mut HttpRequest, deadline: Option<Instant>) {
    let Some(deadline) = deadline else { return };
    let name = crate::grpc_headers::names::GRPC_TIMEOUT;
    if request.headers().contains_key(&name) {
        let left = deadline.saturating_duration_since(Instant::now());
        request
            .headers_mut()
            .insert(name, crate::grpc_timeout::encode_grpc_timeout(left));
    }
}

fn mark_resend(request: &mut HttpRequest, resends: u32) {
    request
        .headers_mut()
        .insert(TRANSPARENT_ATTEMPTS, HeaderValue::from(resends));
}

/// `initial × 1.6^(failures−1)`, at most `max`, times a factor in [0.8, 1.2]
/// (gRPC's connection backoff).
fn connect_backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(64) as i32;
    let base = initial.as_secs_f64() * 1.6f64.powi(exponent);
    let capped = base.min(max.as_secs_f64());
    crate::time::secs_f64(capped * (0.8 + 0.4 * fastrand::f64()))
}

/// Gives a path-only request (as tonic's generated clients make them) the
/// target's scheme and authority, and the SDK's user agent.
fn set_origin(request: &mut HttpRequest, target: &Target) -> Result<(), BoxError> {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = http::Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path)
        .build()?;
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .entry(http::header::USER_AGENT)
        .or_insert_with(|| target.user_agent.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(120));
        for _ in 0..100 {
            let first = connect_backoff(1, initial, max);
            assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
            let second = connect_backoff(2, initial, max);
            assert!(second >= Duration::from_millis(1280) && second <= Duration::from_millis(1920));
            assert!(connect_backoff(u32::MAX, initial, max) <= Duration::from_secs(144));
        }
    }
}
