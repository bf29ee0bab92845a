//! The opt-in in-flight limit: how many calls one [`AmeideClient`](crate::AmeideClient)
//! keeps on the wire at once, and how long a call waits for a place. Off by
//! default (like the TypeScript, Go and Python SDKs); turn it on with
//! [`AmeideClientBuilder::in_flight_limit`](crate::AmeideClientBuilder::in_flight_limit).
//!
//! | Question | Answer |
//! |---|---|
//! | Where? | [`Admit`], the tower service in front of the layered stack, in its `poll_ready` (in [`AmeideChannel`](crate::AmeideChannel), above every layer): a waiting call has built nothing yet (no request, no span, no timer but the wait's own) |
//! | Shared by? | every clone of the client and of its typed clients, over all connections |
//! | Held until? | the response headers of a unary call of the roster (its body comes with them); a streaming call gives its place back as it starts, since a stream may live for hours, and so does a call on a path outside the roster (its kind is unknown) |
//! | Waiting costs? | for the first [`InFlightLimit::max_wait`], a place in line, a timer and two small allocations, nothing of the call; a call still in line then is built and waits on, in the same place in line, inside its own deadline |
//! | Deadline? | the wait counts: the call's clock starts when it begins to wait; one whose deadline passes in line fails with `DEADLINE_EXCEEDED`, unsent |
//!
//! A call dropped while it waits (a `select!`, a timeout around it) leaves
//! the line with the typed client that made it. `client.graph().get_…()`
//! makes a fresh typed client per call, so nothing is kept; a typed client
//! kept and reused holds a place it was granted after its caller gave up
//! until its next call or its drop, as with tower's `ConcurrencyLimit`.
//!
//! Why: past a few hundred calls in flight, a client core spends more on each
//! call (the state of every call in flight no longer fits the CPU caches, and
//! the allocator works harder), so its rate *falls* as more callers pile in.
//! Waiting here, before the request is even built, keeps the rate at 1,024
//! callers close to the rate at 64 (`docs/BENCHMARKS.md`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};

use crate::call::CallStart;
use crate::config_error::{ConfigError, ConfigErrorKind};
use crate::wire_types::{BoxError, BoxFuture, HttpRequest, HttpResponse};

/// How many calls a client keeps on the wire at once, and how long a call
/// waits for a place before it is built (see [`AmeideClientBuilder::in_flight_limit`](crate::AmeideClientBuilder::in_flight_limit)).
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::InFlightLimit;
///
/// let limit = InFlightLimit::default();
/// assert_eq!(limit, InFlightLimit { max_calls: 128, max_wait: Duration::from_millis(50) });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightLimit {
    /// Calls on the wire at once, `1..=`[`InFlightLimit::MAX_CALLS`].
    pub max_calls: usize,
    /// How long a call waits for a place *before it is built*,
    /// `1 ms..=`[`InFlightLimit::MAX_WAIT`]. Waiting there holds nothing of
    /// the call (see the module docs); a call still in line after it is built and waits
    /// on, in the same place, until its own deadline. The call's clock starts
    /// when it begins to wait, but its own timeout is only known once it is
    /// built: a call whose timeout is *shorter* than this first wait fails
    /// with `DEADLINE_EXCEEDED` (unsent) when the wait ends, at most
    /// `max_wait` late. Every other call keeps its deadline exactly.
    pub max_wait: Duration,
}

impl InFlightLimit {
    /// The largest `max_calls` accepted.
    pub const MAX_CALLS: usize = 1 << 20;
    /// The longest `max_wait` accepted.
    pub const MAX_WAIT: Duration = Duration::from_secs(1);

    /// The defaults, from the measurement in `docs/BENCHMARKS.md`.
    pub const DEFAULT: InFlightLimit = InFlightLimit {
        max_calls: 128,
        max_wait: Duration::from_millis(50),
    };

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=Self::MAX_CALLS).contains(&self.max_calls) {
            return Err(ConfigError::new(
                ConfigErrorKind::Limit,
                format!(
                    "in-flight limit: max_calls {} must be within 1..={}; pass None to turn the limit off",
                    self.max_calls,
                    Self::MAX_CALLS
                ),
            ));
        }
        if self.max_wait < Duration::from_millis(1) || self.max_wait > Self::MAX_WAIT {
            return Err(ConfigError::new(
                ConfigErrorKind::Limit,
                format!(
                    "in-flight limit: max_wait {:?} must be within 1ms..={:?}",
                    self.max_wait,
                    Self::MAX_WAIT
                ),
            ));
        }
        Ok(())
    }
}

impl Default for InFlightLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The shared places of one client (one pointer in every channel clone).
#[derive(Debug, Clone)]
pub(crate) struct Gate(Arc<GateInner>);

#[derive(Debug)]
struct GateInner {
    permits: Arc<Semaphore>,
    max_wait: Duration,
    /// The client's whole-call timeout, to bound the second part of a wait.
    timeout: Duration,
}

impl Gate {
    pub(crate) fn new(limit: InFlightLimit, timeout: Duration) -> Self {
        Gate(Arc::new(GateInner {
            permits: Arc::new(Semaphore::new(limit.max_calls)),
            max_wait: limit.max_wait,
            timeout,
        }))
    }

    /// The client's whole-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.0.timeout
    }
}

/// A place in line (boxed only when a call has to wait).
pub(crate) type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>;

/// What [`Admission::take`] hands to the call.
pub(crate) enum Admitted {
    /// Not limited (no gate, or the call was made without `poll_ready`).
    Free,
    /// A place, after a wait that began at `since` (if it had to wait).
    Place(OwnedSemaphorePermit, Option<Instant>),
    /// Still in line after `max_wait` (begun at `since`): the call keeps its
    /// place in line and waits on inside its own deadline.
    InLine(Acquire, Instant),
}

pin_project! {
    /// A call waiting for a place.
    struct Waiting {
        since: Instant,
        // Taken by `Admission::take` when the call goes on waiting.
        acquire: Option<Acquire>,
        // Ends the first part of the wait.
        #[pin]
        patience: Sleep,
    }
}

/// One channel instance's way through the gate, from `poll_ready` to `call`.
#[derive(Default)]
pub(crate) struct Admission {
    /// `poll_admit` returned `Ready` and `take` has not run since.
    admitted: bool,
    permit: Option<OwnedSemaphorePermit>,
    /// Boxed only when the call has to wait.
    waiting: Option<Pin<Box<Waiting>>>,
}

impl Admission {
    /// Ready once the call has a place, or has waited `max_wait` for one.
    /// Returns whether the call has its place (false: still in line).
    pub(crate) fn poll_admit(&mut self, gate: &Gate, cx: &mut Context<'_>) -> Poll<bool> {
        if self.admitted {
            let in_line = self.waiting.as_ref().is_some_and(|w| w.acquire.is_some());
            return Poll::Ready(!in_line);
        }
        let waiting = match &mut self.waiting {
            Some(waiting) => waiting,
            None => match gate.0.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.permit = Some(permit);
                    self.admitted = true;
                    return Poll::Ready(true);
                }
                // The gate is never closed; if it were, it would not limit.
                Err(TryAcquireError::Closed) => {
                    self.admitted = true;
                    return Poll::Ready(true);
                }
                Err(TryAcquireError::NoPermits) => {
                    let since = Instant::now();
                    self.waiting.insert(Box::pin(Waiting {
                        since,
                        acquire: Some(Box::pin(gate.0.permits.clone().acquire_owned())),
                        patience: tokio::time::sleep_until(since + gate.0.max_wait),
                    }))
                }
            },
        };
        let waiting = waiting.as_mut().project();
        let Some(acquire) = waiting.acquire.as_mut() else {
            // Nothing left to wait for.
            self.admitted = true;
            return Poll::Ready(true);
        };
        if let Poll::Ready(outcome) = acquire.as_mut().poll(cx) {
            // The place is ours (`since` stays in `waiting` for `take`).
            *waiting.acquire = None;
            self.permit = outcome.ok();
            self.admitted = true;
            return Poll::Ready(true);
        }
        std::task::ready!(waiting.patience.poll(cx));
        self.admitted = true;
        Poll::Ready(false)
    }

    /// Hands the outcome of `poll_admit` to the call.
    pub(crate) fn take(&mut self) -> Admitted {
        let admitted = std::mem::take(&mut self.admitted);
        let waiting = self.waiting.take();
        match (self.permit.take(), waiting) {
            (Some(permit), waiting) => Admitted::Place(permit, waiting.map(|w| w.since)),
            (None, Some(mut waiting)) if admitted => {
                let since = waiting.since;
                match waiting.as_mut().project().acquire.take() {
                    Some(acquire) => Admitted::InLine(acquire, since),
                    None => Admitted::Free,
                }
            }
            _ => Admitted::Free,
        }
    }
}

/// Only a unary call keeps its place until its response headers arrive: it
/// ends by its deadline, so the place always comes back. A stream (a watch,
/// say) may live for hours; keeping a place for it would starve the rest.
fn is_unary(path: &str) -> bool {
    ameide_proto::method(path).is_some_and(|m| m.kind == ameide_proto::StreamingKind::Unary)
}

/// The response future of [`AmeideChannel`](crate::AmeideChannel): the layered stack's future, plus
/// the in-flight place a unary call keeps until its response headers arrive
/// (see [`InFlightLimit`]). Dropping it gives the place back.
///
/// ```
/// use ameide_sdk::layers::HttpRequest;
/// use ameide_sdk::{AmeideChannel, ResponseFuture};
///
/// fn takes<S: tower::Service<HttpRequest, Future = ResponseFuture>>(_: &S) {}
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = ameide_sdk::AmeideClient::builder()
///     .endpoint("http://127.0.0.1:50051")
///     .build()
///     .unwrap();
/// let channel: AmeideChannel = client.channel();
/// takes(&channel);
/// # }
/// ```
pub struct ResponseFuture {
    inner: BoxFuture<'static, Result<HttpResponse, BoxError>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("holds_place", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<HttpResponse, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        self.permit = None;
        Poll::Ready(result)
    }
}

/// The in-flight limit as a tower service over the layered stack: admission
/// in `poll_ready`, the place kept by the [`ResponseFuture`] of a unary call
/// until its response headers arrive. Without a gate it passes calls through.
pub(crate) struct Admit<S> {
    inner: S,
    gate: Option<Gate>,
    /// This instance's way through the gate, from `poll_ready` to `call`.
    admission: Admission,
    /// `inner` was polled ready for the next call.
    inner_ready: bool,
}

impl<S: Clone> Clone for Admit<S> {
    fn clone(&self) -> Self {
        // A clone starts unready: readiness (and a place) belong to the instance polled.
        Admit {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            admission: Admission::default(),
            inner_ready: false,
        }
    }
}

impl ResponseFuture {
    /// A call that takes no place in the gate (one refused anyway).
    pub(crate) fn ungated(inner: BoxFuture<'static, Result<HttpResponse, BoxError>>) -> Self {
        ResponseFuture {
            inner,
            permit: None,
        }
    }
}

impl<S> Admit<S> {
    /// Gives up what `poll_ready` obtained, if anything, and the stack under
    /// the gate: for a call sent past it (the closed client's refusal).
    pub(crate) fn bypass(&mut self) -> &S {
        drop(self.admission.take());
        &self.inner
    }

    pub(crate) fn new(inner: S, gate: Option<Gate>) -> Self {
        Admit {
            inner,
            gate,
            admission: Admission::default(),
            inner_ready: false,
        }
    }
}

impl<S> Service<HttpRequest> for Admit<S>
where
    S: Service<
            HttpRequest,
            Response = HttpResponse,
            Error = BoxError,
            Future = BoxFuture<'static, Result<HttpResponse, BoxError>>,
        > + Clone
        + Send
        + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(gate) = &self.gate {
            // Still in line after `max_wait`: ready now, without readying the
            // stack (a call waiting on must not hold a slot of the transport's
            // request buffer); `call` waits on inside the call's deadline.
            if !std::task::ready!(self.admission.poll_admit(gate, cx)) {
                return Poll::Ready(Ok(()));
            }
        }
        if !self.inner_ready {
            std::task::ready!(self.inner.poll_ready(cx))?;
            self.inner_ready = true;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let unary = is_unary(request.uri().path());
        let permit = match self.admission.take() {
            Admitted::Free => None,
            Admitted::Place(permit, since) => {
                if let Some(since) = since {
                    // The wait counts against the call's deadline.
                    request.extensions_mut().insert(CallStart(since));
                }
                // A stream gives its place back as it starts.
                unary.then_some(permit)
            }
            Admitted::InLine(acquire, since) => {
                request.extensions_mut().insert(CallStart(since));
                if unary {
                    // Still in line after `max_wait`: wait on, in the same
                    // place, until the call's deadline. One whose deadline
                    // passes in line still goes down the stack, where the
                    // timeout layer fails it with `DEADLINE_EXCEEDED`
                    // (request id and all) without sending it.
                    let timeout = self.gate.as_ref().map_or(Duration::ZERO, Gate::timeout);
                    let (deadline, _) = crate::layers::timeout::call_deadline(&request, timeout);
                    let service = self.inner.clone();
                    return ResponseFuture {
                        inner: Box::pin(async move {
                            let permit = tokio::time::timeout_at(deadline, acquire)
                                .await
                                .ok()
                                .and_then(Result::ok);
                            let response = service.oneshot(request).await;
                            drop(permit);
                            response
                        }),
                        permit: None,
                    };
                }
                None
            }
        };
        let inner = if std::mem::take(&mut self.inner_ready) {
            self.inner.call(request)
        } else {
            // Not readied by poll_ready: ready a clone now.
            Box::pin(self.inner.clone().oneshot(request))
        };
        ResponseFuture { inner, permit }
    }
}
