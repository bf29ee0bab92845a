//! The inbound request context: what a server handler knows about the
//! request it serves, kept in a task-local while the handler runs.
//!
//! The server side (`ameide_sdk::server::InboundLayer`) creates it; the client
//! layers read two facts from it (the request id to continue, the deadline
//! to inherit) so that a call made while handling a request continues it.
//! Both sides depend on this module; neither depends on the other.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tokio::time::Instant;

use crate::call::CallOptions;

tokio::task_local! {
    pub(crate) static INBOUND: InboundContext;
}

/// What a handler knows about the request it is serving. Cheap to clone.
///
/// ```
/// # async fn handler(request: ameide_sdk::tonic::Request<()>) {
/// use ameide_sdk::server::InboundContext;
/// if let Some(ctx) = InboundContext::of(&request) {
///     println!("request {} for tenant {:?}", ctx.request_id(), ctx.tenant_id());
/// }
/// // Or, anywhere inside the handler's task:
/// let same = InboundContext::current();
/// # }
/// ```
#[derive(Clone)]
pub struct InboundContext {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) tenant_id: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) request_id: Arc<str>,
    pub(crate) session_id: Option<String>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) otel: Context,
}

impl fmt::Debug for InboundContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundContext")
            .field("tenant_id", &self.inner.tenant_id)
            .field("user_id", &self.inner.user_id)
            .field("request_id", &self.inner.request_id)
            .field("session_id", &self.inner.session_id)
            .field("deadline", &self.inner.deadline)
            .field("trace_id", &self.trace_id())
            .finish()
    }
}

impl InboundContext {
    /// The context of the request being handled by the current task, if any.
    pub fn current() -> Option<InboundContext> {
        INBOUND.try_with(Clone::clone).ok()
    }

    /// The context the inbound layer attached to `request`.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&InboundContext> {
        request.extensions().get::<InboundContext>()
    }

    /// `x-tenant-id` as received.
    pub fn tenant_id(&self) -> Option<&str> {
        self.inner.tenant_id.as_deref()
    }

    /// `x-user-id` as received.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }

    /// `x-request-id` as received, or the one generated for this request.
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// `ameide.session_id` from the inbound `baggage`.
    pub fn session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    /// When the caller stops waiting (from `grpc-timeout`), if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Budget left until [`deadline`](Self::deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.inner
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The OpenTelemetry context of the SERVER span (with the inbound baggage).
    pub fn otel_context(&self) -> &Context {
        &self.inner.otel
    }

    /// The trace this request belongs to, when it is traced.
    pub fn trace_id(&self) -> Option<TraceId> {
        let span = self.inner.otel.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.trace_id())
    }

    /// Per-call options that forward the inbound tenant and user to a downstream call.
    ///
    /// ```
    /// # async fn handler(client: ameide_sdk::AmeideClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use ameide_sdk::server::InboundContext;
    /// use ameide_sdk::proto::inference::v1::ListAgentsRequest;
    /// if let Some(ctx) = InboundContext::current() {
    ///     let request = ctx.forward_identity().into_request(ListAgentsRequest::default())?;
    ///     client.inference().list_agents(request).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn forward_identity(&self) -> CallOptions {
        let mut options = CallOptions::new();
        if let Some(tenant) = &self.inner.tenant_id {
            options = options.header(crate::contract::HEADER_TENANT, tenant.clone());
        }
        if let Some(user) = &self.inner.user_id {
            options = options.header(crate::contract::HEADER_USER, user.clone());
        }
        options
    }

    /// Runs `future` as part of this request (for work spawned onto another task):
    /// outbound calls in it continue the request as if made by the handler.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        let otel = self.inner.otel.clone();
        INBOUND.scope(self, future.with_context(otel)).await
    }
}

/// The inbound request id of the current task, for the client's metadata layer.
pub(crate) fn inbound_request_id() -> Option<Arc<str>> {
    INBOUND.try_with(|c| c.inner.request_id.clone()).ok()
}

/// The inbound deadline of the current task, for the client's timeout layer.
pub(crate) fn inbound_deadline() -> Option<Instant> {
    INBOUND.try_with(|c| c.inner.deadline).ok().flatten()
}
