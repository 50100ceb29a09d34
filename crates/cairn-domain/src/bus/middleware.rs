//! The middleware chain every dispatch passes through, and the built-in
//! links: a tracing span, the authorization hook and validation.
//!
//! A [`Middleware`] wraps the rest of the chain ("around" semantics): it
//! sees the [`Dispatch`] (context, message name and kind, the type-erased
//! message), may refuse it by returning an error, and otherwise calls
//! [`Next::run`] and may look at the result. The trait is object-safe, so a
//! chain is a list of `Arc<dyn Middleware>`.

use std::{any::Any, fmt, future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;
use cairn_core::{RequestContext, ValidationError};
use tracing::Instrument;

use super::{Authorizer, BusError, MessageInfo};

/// A boxed, sendable future, as handlers and middleware return.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler returned, type-erased while it travels back up the chain
/// (downcast it to the message's `Output` to inspect it).
pub type Reply = Box<dyn Any + Send>;

/// A command or query seen without its concrete type.
pub trait AnyMessage: Send + Sync + 'static {
    /// The message's own [`Command::validate`](super::Command::validate) or
    /// [`Query::validate`](super::Query::validate).
    fn validate(&self) -> Result<(), Vec<ValidationError>>;
    /// The concrete message, for `downcast_ref`.
    fn as_any(&self) -> &dyn Any;
    /// The concrete message, boxed, for the handler.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// One message on its way to its handler.
pub struct Dispatch<'a> {
    /// Who is asking, for which tenant, in which trace.
    pub ctx: &'a RequestContext,
    /// The message's kind and name.
    pub info: MessageInfo,
    /// The message itself.
    pub message: Box<dyn AnyMessage>,
}

impl Dispatch<'_> {
    /// The message as `T`, if it is one.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.message.as_any().downcast_ref()
    }
}

impl fmt::Debug for Dispatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("tenant", &self.ctx.tenant)
            .field("correlation_id", &self.ctx.correlation_id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A link of the chain around every dispatch.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Handles `dispatch`: refuse it with an error, or pass it on with
    /// `next.run(dispatch).await` and return (or inspect) the result.
    async fn handle(&self, dispatch: Dispatch<'_>, next: Next<'_>) -> Result<Reply, BusError>;
}

/// The final step of a chain: the registered handler (or the "no handler"
/// answer).
pub(crate) trait Endpoint: Send + Sync {
    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        message: Box<dyn AnyMessage>,
    ) -> BoxFuture<'a, Result<Reply, BusError>>;
}

/// The rest of the chain after the current middleware.
pub struct Next<'a> {
    chain: &'a [Arc<dyn Middleware>],
    endpoint: &'a dyn Endpoint,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("remaining_middleware", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Next<'a> {
    pub(crate) fn new(chain: &'a [Arc<dyn Middleware>], endpoint: &'a dyn Endpoint) -> Self {
        Self { chain, endpoint }
    }

    /// Runs the rest of the chain, then the handler.
    pub async fn run(self, dispatch: Dispatch<'_>) -> Result<Reply, BusError> {
        match self.chain.split_first() {
            Some((first, rest)) => first.handle(dispatch, Next::new(rest, self.endpoint)).await,
            None => self.endpoint.call(dispatch.ctx, dispatch.message).await,
        }
    }
}

/// Opens a span per dispatch (`bus.dispatch`, with kind, name, tenant and
/// correlation id) around the rest of the chain and records the error code
/// of a failure on it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TracingMiddleware;

#[async_trait]
impl Middleware for TracingMiddleware {
    async fn handle(&self, dispatch: Dispatch<'_>, next: Next<'_>) -> Result<Reply, BusError> {
        let span = tracing::info_span!(
            "bus.dispatch",
            kind = %dispatch.info.kind,
            name = dispatch.info.name,
            tenant = %dispatch.ctx.tenant,
            correlation_id = %dispatch.ctx.correlation_id,
            error_code = tracing::field::Empty,
        );
        let result = next.run(dispatch).instrument(span.clone()).await;
        if let Err(error) = &result {
            span.record("error_code", error.code().as_str());
            span.in_scope(|| tracing::debug!(%error, "dispatch failed"));
        }
        result
    }
}

/// Asks the [`Authorizer`] before anything else runs.
pub(crate) struct AuthorizationMiddleware {
    pub(crate) authorizer: Arc<dyn Authorizer>,
}

#[async_trait]
impl Middleware for AuthorizationMiddleware {
    async fn handle(&self, dispatch: Dispatch<'_>, next: Next<'_>) -> Result<Reply, BusError> {
        self.authorizer.authorize(dispatch.ctx, &dispatch.info)?;
        next.run(dispatch).await
    }
}

/// Calls the message's `validate()` and refuses it with
/// [`BusError::Validation`] before the handler runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ValidationMiddleware;

#[async_trait]
impl Middleware for ValidationMiddleware {
    async fn handle(&self, dispatch: Dispatch<'_>, next: Next<'_>) -> Result<Reply, BusError> {
        dispatch.message.validate().map_err(BusError::Validation)?;
        next.run(dispatch).await
    }
}
