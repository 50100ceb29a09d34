//! Sagas reacting to events: [`SagaEvents`] is a consumer handler
//! ([`cairn_messaging::EventHandler`]) that turns integration events into
//! saga inputs and feeds them to a [`SagaRunner`].
//!
//! The consumer's inbox keeps the handler from running twice for one
//! delivery once it succeeded; a redelivery after a crash in between feeds
//! the input again, so a saga reacting to events must ignore an input its
//! state has already taken (as a decider usually does: "start" on a started
//! saga decides nothing).
//!
//! The runner writes its deadlines through its own connections while the
//! consumer's transaction is open. On SQLite, where a file has one writer
//! at a time, the runner's database must therefore be another file than
//! the consumer's (PostgreSQL has no such limit).

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use cairn_core::RequestContext;
use cairn_messaging::{EventHandler, HandlerError, IntegrationEvent};
use sqlx::{Any, Transaction};

use crate::{Saga, SagaError, SagaRunner};

type Route<S> = dyn Fn(&IntegrationEvent) -> Option<(String, <S as Saga>::Input)> + Send + Sync;

/// Feeds integration events to the saga instance `route` picks (saga id and
/// input), or to none when it returns `None`.
pub struct SagaEvents<S: Saga> {
    runner: Arc<SagaRunner<S>>,
    route: Arc<Route<S>>,
}

impl<S: Saga> Clone for SagaEvents<S> {
    fn clone(&self) -> Self {
        Self {
            runner: self.runner.clone(),
            route: self.route.clone(),
        }
    }
}

impl<S: Saga> fmt::Debug for SagaEvents<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaEvents")
            .field("saga", &S::NAME)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaEvents<S> {
    pub fn new(
        runner: Arc<SagaRunner<S>>,
        route: impl Fn(&IntegrationEvent) -> Option<(String, S::Input)> + Send + Sync + 'static,
    ) -> Self {
        Self {
            runner,
            route: Arc::new(route),
        }
    }
}

#[async_trait]
impl<S: Saga> EventHandler for SagaEvents<S> {
    async fn handle(
        &self,
        _tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        let Some((saga_id, input)) = (self.route)(event) else {
            return Ok(());
        };
        let mut ctx = RequestContext::new(event.tenantid.clone())
            .with_actor(format!("saga:{}", S::NAME))
            .with_causation_id(event.id.to_string());
        if let Some(correlation) = &event.correlationid {
            ctx = ctx.with_correlation_id(correlation.clone());
        }
        if let Some(traceparent) = &event.traceparent {
            ctx = ctx.with_traceparent(traceparent.clone());
        }
        match self.runner.feed(&ctx, &saga_id, input).await {
            Ok(_) => Ok(()),
            Err(e @ SagaError::Invalid(_)) => Err(HandlerError::Reject(e.to_string())),
            Err(e) => Err(HandlerError::Retry(e.to_string())),
        }
    }
}
