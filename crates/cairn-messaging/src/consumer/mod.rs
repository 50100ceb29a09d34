//! Consumers: a service's reaction to another service's public events.
//!
//! - **Durable and competing**: a consumer is a broker group; instances of a
//!   service that run the same consumer share its events.
//! - **Exactly-once effect**: a handler gets a transaction on the service's
//!   database; the event id goes into the inbox in that same transaction,
//!   and the broker message is acked only after it commits. A redelivered
//!   event finds its id in the inbox and has no second effect. A handler
//!   whose effect lives elsewhere (a command on an aggregate) must be
//!   idempotent itself, which deciders usually are.
//! - **Per-stream order**, also across instances: each event names the
//!   previous public version of its stream (`prevsequence`), and the inbox
//!   keeps the last version handled per stream. An event whose predecessor
//!   has not been handled yet goes back to the broker for a moment. If the
//!   predecessor never shows up (the broker no longer has it), the event is
//!   handled anyway after [`ConsumerOptions::order_wait`].
//! - **Retries and dead letters**: a failed handler is retried with
//!   exponential backoff; after [`ConsumerOptions::max_attempts`] (or at
//!   once, for [`HandlerError::Reject`] and undecodable messages) the event
//!   goes to the dead-letter table with its last error, the stream's order
//!   moves past it, and the consumer carries on. `cairn dlq` lists, shows,
//!   replays and drops dead letters; a replay is picked up by a running
//!   instance of the consumer.

mod dead_letters;
mod inbox;
mod lanes;
mod ordering;

use std::{
    collections::HashMap,
    fmt,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use cairn_core::EventId;
use cairn_runtime::{Running, Stage};
use cairn_service_db::{DbKind, ServiceDb};
use serde::Serialize;
use sqlx::{Any, Transaction};
use tokio::sync::{mpsc, watch};

use crate::{Broker, ConsumerSpec, Delivery, IntegrationEvent, MessagingError, schema};

/// Why a handler did not handle an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try (a dependency was down, a conflict).
    #[error("{0}")]
    Retry(String),
    /// Never going to work (the event breaks the handler's expectations):
    /// dead-lettered at once.
    #[error("{0}")]
    Reject(String),
}

/// Handles one type of event.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event`. Everything written through `tx` commits together
    /// with the inbox entry, or not at all.
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError>;

    /// Applies several events at once, in the order given, in the
    /// transaction of a consumer batch: events delivered together that go
    /// to this handler one after another and were never handled before, in
    /// delivery order (per stream, version order). Override it to write them in fewer
    /// statements (one multi-row insert, say); the default calls
    /// [`handle`](Self::handle) for each.
    ///
    /// An error rolls the whole batch back, and each of its events is then
    /// handled on its own through `handle`, with the usual retries and dead
    /// letters: which event failed, and how, is decided there.
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[&IntegrationEvent],
    ) -> Result<(), HandlerError> {
        for event in events {
            self.handle(tx, event).await?;
        }
        Ok(())
    }

    /// Called once what [`handle`](Self::handle) or
    /// [`handle_batch`](Self::handle_batch) wrote for `events` has
    /// committed: for what must follow the commit and never precede it
    /// (telling live clients to read again). Not called for what rolled
    /// back; a crash between the commit and this call loses the call, so
    /// it must be a hint, never a write. Default: nothing.
    async fn committed(&self, events: &[&IntegrationEvent]) {
        let _ = events;
    }
}

/// Consumer tuning.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Attempts before an event is dead-lettered. Default 5.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt. Default 200 ms.
    pub backoff: Duration,
    /// Longest retry delay. Default 30 s.
    pub max_backoff: Duration,
    /// How long an event waits for its stream predecessor before it is
    /// handled out of order. Default 60 s.
    pub order_wait: Duration,
    /// Streams handled concurrently by this instance (events of one stream
    /// are always handled one at a time). Default 8.
    pub lanes: usize,
    /// Unacked messages this instance holds (on NATS: the whole group).
    /// Default 512: enough that each lane finds a batch waiting.
    pub prefetch: u16,
    /// Redelivery delay for a message this instance took and never settled
    /// (it died). Default 30 s.
    pub ack_wait: Duration,
    /// How often dead letters marked for replay are looked for. Default 1 s.
    pub replay_poll: Duration,
    /// Most messages a lane handles in one transaction when several are
    /// waiting (one commit, then their acks). A failure in the batch rolls
    /// it back and its messages are handled one by one. Default 64; 1
    /// handles every message on its own.
    pub max_batch: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            order_wait: Duration::from_secs(60),
            lanes: 8,
            prefetch: 512,
            ack_wait: Duration::from_secs(30),
            replay_poll: Duration::from_secs(1),
            max_batch: 64,
        }
    }
}

/// What a consumer has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub group: String,
    pub source: String,
    /// Events a handler took, committed and acked.
    pub handled: u64,
    /// Events of a type no handler takes: recorded in the inbox and the
    /// stream's cursor (so order and redelivery work as for the rest) and
    /// acked, with no handler run.
    pub skipped: u64,
    pub duplicates: u64,
    pub retries: u64,
    pub waited_for_order: u64,
    pub dead_lettered: u64,
    pub replayed: u64,
    pub last_error: Option<String>,
    pub connected: bool,
}

/// A consumer to be started.
pub struct Consumer {
    group: String,
    source: String,
    db: ServiceDb,
    broker: Arc<dyn Broker>,
    handlers: HashMap<String, Arc<dyn EventHandler>>,
    fallback: Option<Arc<dyn EventHandler>>,
    options: ConsumerOptions,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("source", &self.source)
            .field("types", &types)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer named `group` of `source`'s public events, keeping its
    /// inbox in `db`.
    pub fn new(
        group: impl Into<String>,
        source: impl Into<String>,
        db: ServiceDb,
        broker: Arc<dyn Broker>,
    ) -> Self {
        Self {
            group: group.into(),
            source: source.into(),
            db,
            broker,
            handlers: HashMap::new(),
            fallback: None,
            options: ConsumerOptions::default(),
        }
    }

    /// Handles every event type without a handler of its own with
    /// `handler` (an audit log, a mirror).
    pub fn on_any(mut self, handler: impl EventHandler) -> Self {
        self.fallback = Some(Arc::new(handler));
        self
    }

    /// The consumer group's durable name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The service whose events it reads.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The event types it has a handler for, sorted (empty when one handler
    /// takes every type).
    pub fn types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }

    /// Handles events of `event_type` with `handler`. Types without a
    /// handler are acknowledged and skipped (in order).
    pub fn on(mut self, event_type: impl Into<String>, handler: impl EventHandler) -> Self {
        self.handlers.insert(event_type.into(), Arc::new(handler));
        self
    }

    pub fn with_options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Opens the group and starts handling.
    pub async fn start(self) -> Result<ConsumerHandle, MessagingError> {
        crate::validate_service(&self.group)?;
        crate::validate_service(&self.source)?;
        schema::ensure(&self.db).await?;
        let spec = ConsumerSpec {
            group: self.group.clone(),
            source: self.source.clone(),
            prefetch: self.options.prefetch,
            ack_wait: self.options.ack_wait,
        };
        let deliveries = self.broker.consume(&spec).await?;
        let initial = ConsumerStatus {
            group: self.group.clone(),
            source: self.source.clone(),
            connected: true,
            ..ConsumerStatus::default()
        };
        let name = format!("consumer {}", self.group);
        Ok(Running::start(
            name,
            Stage::Consumers,
            initial,
            |controls| {
                let core = Arc::new(Core {
                    group: self.group,
                    db: self.db,
                    handlers: self.handlers,
                    fallback: self.fallback,
                    options: self.options,
                    status: controls.status,
                    waiting: Mutex::new(HashMap::new()),
                });
                vec![
                    tokio::spawn(core.clone().replays(controls.stop.clone())),
                    tokio::spawn(core.receive(self.broker, spec, deliveries, controls.stop)),
                ]
            },
        ))
    }
}

/// A running consumer: its [`ConsumerStatus`] as a watch, and a shutdown
/// that stops taking messages and lets the events in hand finish (messages
/// taken but not handled go back to the broker).
pub type ConsumerHandle = Running<ConsumerStatus>;

struct Core {
    group: String,
    db: ServiceDb,
    handlers: HashMap<String, Arc<dyn EventHandler>>,
    fallback: Option<Arc<dyn EventHandler>>,
    options: ConsumerOptions,
    status: watch::Sender<ConsumerStatus>,
    /// When each out-of-order event was first seen waiting.
    waiting: Mutex<HashMap<EventId, Instant>>,
}

/// What a batch did with one of its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchOutcome {
    Handled,
    Skipped,
    Duplicate,
    OutOfOrder,
}

/// A batch rolled back (a handler or a statement failed).
#[derive(Debug)]
struct BatchFailed;

impl From<sqlx::Error> for BatchFailed {
    fn from(_: sqlx::Error) -> Self {
        BatchFailed
    }
}

enum Outcome {
    Handled,
    Skipped,
    Duplicate,
    OutOfOrder,
    Failed(HandlerError),
}

impl Core {
    /// Acks an event handled or found a duplicate; puts one that waits for
    /// its stream's predecessor back for a moment. Counts either way.
    async fn settle(&self, delivery: Delivery, event: EventId, outcome: BatchOutcome) {
        self.give_back(delivery, event, outcome).await;
        self.tally(&[outcome]);
    }

    /// The broker side of [`Self::settle`], without counting.
    async fn give_back(&self, delivery: Delivery, event: EventId, outcome: BatchOutcome) {
        match outcome {
            BatchOutcome::Handled | BatchOutcome::Skipped | BatchOutcome::Duplicate => {
                self.forget_wait(event);
                let _ = delivery.acker.ack().await;
            }
            BatchOutcome::OutOfOrder => {
                let _ = delivery
                    .acker
                    .nack(Duration::from_millis(20 + rand::random::<u64>() % 80))
                    .await;
            }
        }
    }

    /// Counts settled deliveries: one status change (one wake-up of whoever
    /// waits on the status) however many there are.
    fn tally(&self, outcomes: &[BatchOutcome]) {
        let of = |kind: BatchOutcome| outcomes.iter().filter(|o| **o == kind).count() as u64;
        let (handled, skipped, duplicates, waited) = (
            of(BatchOutcome::Handled),
            of(BatchOutcome::Skipped),
            of(BatchOutcome::Duplicate),
            of(BatchOutcome::OutOfOrder),
        );
        if handled + skipped + duplicates + waited == 0 {
            return;
        }
        self.status.send_modify(|s| {
            s.handled += handled;
            s.skipped += skipped;
            s.duplicates += duplicates;
            s.waited_for_order += waited;
        });
        for (outcome, n) in [
            ("handled", handled),
            ("skipped", skipped),
            ("duplicate", duplicates),
            ("waited_for_order", waited),
        ] {
            if n > 0 {
                self.count(outcome, n);
            }
        }
    }

    fn count(&self, outcome: &'static str, n: u64) {
        metrics::counter!(
            "cairn_consumer_messages_total",
            "group" => self.group.clone(),
            "outcome" => outcome
        )
        .increment(n);
    }

    fn note_error(&self, error: String) {
        self.status.send_modify(|s| s.last_error = Some(error));
    }

    /// The handler of `event`'s type, or the catch-all one.
    fn handler_of(&self, event: &IntegrationEvent) -> Option<&Arc<dyn EventHandler>> {
        self.handlers
            .get(&event.event_type)
            .or(self.fallback.as_ref())
    }
}
