//! Live changes from the log: one shape for every service that serves
//! live resources from a read model.
//!
//! [`push_resets`] follows the service's events from the store's head; once
//! the read model shows a page of them, it publishes, per tenant, a
//! [`Change::Reset`] of the resources the events touched (the service says
//! which). Connections holding one read it again and get what changed, so
//! a change never reaches a client before the read model shows it.
//!
//! A read model kept by a consumer (a service on its own, fed by another
//! service's public events) has no log of its own to follow: its handler,
//! wrapped in [`Announce`], publishes the same resets once the consumer's
//! transaction has committed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use cairn_core::{RecordedEvent, TenantId};
use cairn_domain::BusError;
use cairn_live::{CallAnswer, Change, Publisher};
use cairn_messaging::{EventHandler, HandlerError, IntegrationEvent};
use cairn_projection::Projections;
use cairn_res::ResError;
use cairn_runtime::{Controls, Running, Stage};
use cairn_store::{AllFilter, AllFollower, EventStore, FollowOptions};
use serde_json::json;

/// What a reset pusher has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStatus {
    /// The last position whose changes were published.
    pub position: u64,
    /// Resets published.
    pub published: u64,
    pub last_error: Option<String>,
}

/// The names of the live resources an event touched.
pub type Touched = Arc<dyn Fn(&RecordedEvent) -> Vec<String> + Send + Sync>;

/// Which events touch which live resources of a service.
#[derive(Clone)]
pub struct LiveFeed {
    /// The stream categories whose events change its resources.
    pub categories: Vec<&'static str>,
    /// The projection its resources are read from.
    pub projection: &'static str,
    /// The names of the resources an event touched.
    pub touched: Touched,
}

impl std::fmt::Debug for LiveFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFeed")
            .field("categories", &self.categories)
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

/// How long a page waits for the read model before its resets go anyway
/// (a read model stopped at a poison event would never show it; clients
/// then read what it does show).
const READ_MODEL_WAIT: Duration = Duration::from_secs(5);

/// Starts publishing resets of `feed`'s resources, from the store's head.
pub fn push_resets(
    store: Arc<dyn EventStore>,
    projections: Projections,
    feed: LiveFeed,
    publisher: Publisher,
) -> Running<PushStatus> {
    let from = *store.head().borrow();
    let follower = AllFollower::new(
        store,
        from,
        AllFilter::all_tenants().categories(feed.categories.iter().copied()),
        FollowOptions::default(),
    );
    Running::start(
        format!("live {}", feed.projection),
        Stage::Projections,
        PushStatus {
            position: from,
            ..PushStatus::default()
        },
        |controls| {
            vec![tokio::spawn(push(
                follower,
                projections,
                feed,
                publisher,
                controls,
            ))]
        },
    )
}

async fn push(
    mut follower: AllFollower,
    projections: Projections,
    feed: LiveFeed,
    publisher: Publisher,
    mut controls: Controls<PushStatus>,
) {
    loop {
        let page = tokio::select! {
            page = follower.read() => page,
            _ = controls.stop.wait_for(|stop| *stop) => return,
        };
        let events = match page {
            Ok(page) => page.events,
            Err(e) => {
                controls
                    .status
                    .send_modify(|s| s.last_error = Some(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = controls.stop.wait_for(|stop| *stop) => return,
                }
            }
        };
        let Some(last) = events.last().map(|e| e.position) else {
            tokio::select! {
                _ = follower.wait() => continue,
                _ = controls.stop.wait_for(|stop| *stop) => return,
            }
        };
        let _ = projections
            .catch_up(feed.projection, last, READ_MODEL_WAIT)
            .await;
        let mut touched: BTreeMap<TenantId, BTreeSet<String>> = BTreeMap::new();
        for event in &events {
            let names = (feed.touched)(event);
            if !names.is_empty() {
                touched
                    .entry(event.tenant.clone())
                    .or_default()
                    .extend(names);
            }
        }
        let resets = touched.len() as u64;
        for (tenant, names) in touched {
            publisher.publish(Change::Reset {
                tenant,
                names: names.into_iter().collect(),
            });
        }
        controls.status.send_modify(|s| {
            s.position = last;
            s.published += resets;
            s.last_error = None;
        });
    }
}

/// A bus error as a live client gets it: the same code as over HTTP.
pub fn bus_error(error: BusError) -> ResError {
    ResError::from_code(error.code(), error.to_string())
}

/// What a live call that wrote answers, once `projection` shows the write
/// (waited for up to `wait`, as HTTP waits): its version, its position and
/// whether the read model shows it (`readModel`: `current` or `pending`).
pub async fn written(
    projections: &Projections,
    projection: &str,
    version: Option<u64>,
    position: Option<u64>,
    wait: Duration,
) -> (bool, serde_json::Value) {
    let shown = match position {
        Some(position) => matches!(
            projections.catch_up(projection, position, wait).await,
            cairn_projection::CatchUp::Reached
        ),
        None => true,
    };
    let payload = json!({
        "version": version,
        "position": position,
        "readModel": if shown { "current" } else { "pending" },
    });
    (shown, payload)
}

/// A command's answer as a payload; see [`written`].
pub async fn written_answer(
    projections: &Projections,
    projection: &str,
    version: Option<u64>,
    position: Option<u64>,
    wait: Duration,
) -> CallAnswer {
    CallAnswer::Payload(
        written(projections, projection, version, position, wait)
            .await
            .1,
    )
}

/// A consumer's handler that, once what it wrote has committed, resets
/// the live resources `touched` names for each event (see the module
/// documentation).
pub struct Announce<H> {
    pub handler: H,
    /// Where to announce; without one (the runtime serves no live API
    /// here) it is `handler` as it is.
    pub publisher: Option<Publisher>,
    pub touched: Touched,
}

impl<H: Clone> Clone for Announce<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            publisher: self.publisher.clone(),
            touched: self.touched.clone(),
        }
    }
}

impl<H: std::fmt::Debug> std::fmt::Debug for Announce<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announce")
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<H: EventHandler> EventHandler for Announce<H> {
    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        self.handler.handle(tx, event).await
    }

    async fn handle_batch(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        events: &[&IntegrationEvent],
    ) -> Result<(), HandlerError> {
        self.handler.handle_batch(tx, events).await
    }

    async fn committed(&self, events: &[&IntegrationEvent]) {
        self.handler.committed(events).await;
        let Some(publisher) = &self.publisher else {
            return;
        };
        let mut touched: BTreeMap<TenantId, BTreeSet<String>> = BTreeMap::new();
        for event in events {
            let Ok(recorded) = event.to_recorded() else {
                continue;
            };
            let names = (self.touched)(&recorded);
            if !names.is_empty() {
                touched.entry(recorded.tenant).or_default().extend(names);
            }
        }
        for (tenant, names) in touched {
            publisher.publish(Change::Reset {
                tenant,
                names: names.into_iter().collect(),
            });
        }
    }
}
