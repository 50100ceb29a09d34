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

    async fn receive(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        spec: ConsumerSpec,
        mut deliveries: Box<dyn crate::Deliveries>,
        mut stop: watch::Receiver<bool>,
    ) {
        let lanes: Vec<_> = (0..self.options.lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Delivery>(64);
                let core = self.clone();
                let task = tokio::spawn(async move {
                    let max = core.options.max_batch.max(1);
                    while let Some(first) = rx.recv().await {
                        let mut batch = vec![first];
                        while batch.len() < max {
                            match rx.try_recv() {
                                Ok(more) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        if batch.len() == 1 {
                            core.process(batch.pop().expect("one delivery")).await;
                        } else {
                            core.process_batch(batch).await;
                        }
                    }
                });
                (tx, task)
            })
            .collect();
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                next = deliveries.next() => next,
                _ = stop.changed() => break,
            };
            match next {
                Some(Ok(delivery)) => {
                    failures = 0;
                    let lane = lane_of(&delivery, lanes.len());
                    if lanes[lane].0.send(delivery).await.is_err() {
                        break;
                    }
                }
                other => {
                    let error = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "the broker closed the consumer".to_owned(),
                    };
                    failures += 1;
                    tracing::warn!(group = %self.group, error = %error, "consumer lost its broker; reopening");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(error);
                    });
                    let pause = crate::relay::next_backoff(
                        Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6)),
                        Duration::from_secs(5),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => break,
                    }
                    if let Ok(reopened) = broker.consume(&spec).await {
                        deliveries = reopened;
                        self.status.send_modify(|s| s.connected = true);
                    }
                }
            }
        }
        drop(deliveries);
        for (tx, task) in lanes {
            drop(tx);
            let _ = task.await;
        }
    }

    /// Several deliveries of one lane in one transaction: order checked
    /// against each stream's cursor (locked once, in a fixed order), one
    /// inbox insert for all, the handlers, one cursor update per stream,
    /// one commit, then the acks. If a handler or a statement fails, the
    /// transaction rolls back and each delivery is handled on its own
    /// (retries, dead letters), so a batch never changes what happens, only
    /// how many transactions it takes.
    async fn process_batch(&self, batch: Vec<Delivery>) {
        let mut decoded = Vec::with_capacity(batch.len());
        for delivery in batch {
            match IntegrationEvent::from_json(&delivery.body) {
                Ok(event) => decoded.push((delivery, event)),
                // Not an event: the single path dead-letters it.
                Err(_) => self.process(delivery).await,
            }
        }
        if decoded.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.try_batch(&decoded).await {
            Ok(outcomes) => {
                let elapsed = started.elapsed().as_secs_f64() / decoded.len() as f64;
                let histogram = metrics::histogram!(
                    "cairn_consumer_handle_duration_seconds",
                    "group" => self.group.clone()
                );
                for _ in 0..decoded.len() {
                    histogram.record(elapsed);
                }
                // The acks of a committed batch all go out at once rather
                // than one broker round trip after another.
                futures_util::future::join_all(decoded.into_iter().zip(outcomes.iter()).map(
                    |((delivery, event), outcome)| self.give_back(delivery, event.id, *outcome),
                ))
                .await;
                self.tally(&outcomes);
            }
            Err(_) => {
                for (delivery, _) in decoded {
                    self.process(delivery).await;
                }
            }
        }
    }

    /// The batch's transaction; `Err` (rolled back) when anything failed.
    async fn try_batch(
        &self,
        batch: &[(Delivery, IntegrationEvent)],
    ) -> Result<Vec<BatchOutcome>, BatchFailed> {
        let mut tx = self.db.begin().await?;
        // Lock every stream's cursor, in a fixed order so two instances
        // never wait on each other.
        let mut streams: Vec<(&str, &str)> = batch
            .iter()
            .map(|(_, e)| (e.tenantid.as_str(), e.subject.as_str()))
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let mut last = self.lock_streams(&mut tx, &streams).await?;
        let mut moved: HashMap<(&str, &str), i64> = HashMap::new();
        // Order: which events may be handled now.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut candidates = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        for (i, (_, event)) in batch.iter().enumerate() {
            // The same event twice in one batch (a re-send): once is enough.
            if !in_batch.insert(event.id) {
                outcomes.push(BatchOutcome::Duplicate);
                continue;
            }
            let key = (event.tenantid.as_str(), event.subject.as_str());
            let version = event
                .version()
                .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
            let prev = event
                .prev_version()
                .ok()
                .flatten()
                .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
            let cursor = *last.get(&key).unwrap_or(&-1);
            if version > cursor && prev > cursor && !self.waited_too_long(event.id) {
                self.waiting
                    .lock()
                    .expect("waiting lock")
                    .entry(event.id)
                    .or_insert_with(Instant::now);
                outcomes.push(BatchOutcome::OutOfOrder);
                continue;
            }
            if version > cursor {
                last.insert(key, version);
                moved.insert(key, version);
            }
            outcomes.push(BatchOutcome::Handled);
            candidates.push(i);
        }
        // Inbox: one insert; the ids it did not insert were handled before.
        let mut fresh: std::collections::HashSet<String> = std::collections::HashSet::new();
        if !candidates.is_empty() {
            let mut sql = String::from(
                "INSERT INTO cairn_inbox (consumer, event_id, tenant, stream, version, handled_at) VALUES ",
            );
            sql.push_str(&schema::placeholder_rows(
                candidates.len(),
                6,
                0,
                ", ",
                |p| format!("({})", p.join(", ")),
            ));
            sql.push_str(" ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id");
            let now = schema::now();
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for i in &candidates {
                let event = &batch[*i].1;
                query = query
                    .bind(&self.group)
                    .bind(event.id.to_string())
                    .bind(event.tenantid.as_str())
                    .bind(event.subject.as_str())
                    .bind(
                        event
                            .version()
                            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                    )
                    .bind(now.clone());
            }
            fresh = query.fetch_all(&mut *tx).await?.into_iter().collect();
        }
        // The handlers: each gets its consecutive run of the batch's events
        // at once, so the order of effects is the order of the batch.
        let mut run: Vec<&IntegrationEvent> = Vec::new();
        let mut run_handler: Option<&Arc<dyn EventHandler>> = None;
        for i in &candidates {
            let event = &batch[*i].1;
            if !fresh.contains(&event.id.to_string()) {
                outcomes[*i] = BatchOutcome::Duplicate;
                continue;
            }
            let Some(handler) = self.handler_of(event) else {
                outcomes[*i] = BatchOutcome::Skipped;
                continue;
            };
            if let Some(previous) = run_handler
                && !Arc::ptr_eq(previous, handler)
            {
                previous
                    .handle_batch(&mut tx, &run)
                    .await
                    .map_err(|_| BatchFailed)?;
                run.clear();
            }
            run_handler = Some(handler);
            run.push(event);
        }
        if let Some(handler) = run_handler {
            handler
                .handle_batch(&mut tx, &run)
                .await
                .map_err(|_| BatchFailed)?;
        }
        let moved: Vec<_> = moved
            .into_iter()
            .map(|((tenant, stream), version)| (tenant, stream, version))
            .collect();
        set_cursors(&mut tx, &self.group, &moved).await?;
        // Earlier failed attempts of what was handled are over.
        let retried: Vec<String> = candidates
            .iter()
            .filter(|i| batch[**i].0.delivery_count > 1)
            .map(|i| batch[*i].1.id.to_string())
            .collect();
        for id in retried {
            sqlx::query(
                "DELETE FROM cairn_consumer_failures WHERE consumer = $1 AND event_id = $2",
            )
            .bind(&self.group)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The cursors of `streams` (`(tenant, stream)`, sorted, distinct; -1
    /// before a stream's first event), locked until the transaction ends so
    /// two instances take turns on a stream. Two statements whatever the
    /// number of streams: one creates the missing cursors, one reads and
    /// locks them all in a fixed order (so two instances never wait on each
    /// other).
    async fn lock_streams<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        streams: &[(&'a str, &'a str)],
    ) -> Result<HashMap<(&'a str, &'a str), i64>, sqlx::Error> {
        let mut cursors = HashMap::with_capacity(streams.len());
        if streams.is_empty() {
            return Ok(cursors);
        }
        let mut insert = String::from(
            "INSERT INTO cairn_inbox_streams (consumer, tenant, stream, last_version) VALUES ",
        );
        insert.push_str(&schema::placeholder_rows(streams.len(), 3, 0, ", ", |p| {
            format!("({}, -1)", p.join(", "))
        }));
        let mut select = String::from(
            "SELECT tenant, stream, last_version FROM cairn_inbox_streams WHERE consumer = $1 AND (",
        );
        select.push_str(&schema::placeholder_rows(
            streams.len(),
            2,
            1,
            " OR ",
            |p| format!("(tenant = {} AND stream = {})", p[0], p[1]),
        ));
        insert.push_str(" ON CONFLICT (consumer, tenant, stream) DO NOTHING");
        select.push_str(") ORDER BY tenant, stream");
        if self.db.kind() == DbKind::Postgres {
            select.push_str(" FOR UPDATE");
        }
        let mut query = sqlx::query(&insert);
        for (tenant, stream) in streams {
            query = query.bind(&self.group).bind(*tenant).bind(*stream);
        }
        query.execute(&mut **tx).await?;
        let mut query = sqlx::query_as::<_, (String, String, i64)>(&select).bind(&self.group);
        for (tenant, stream) in streams {
            query = query.bind(*tenant).bind(*stream);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        for (tenant, stream, version) in rows {
            if let Some(key) = streams
                .iter()
                .find(|(t, s)| *t == tenant.as_str() && *s == stream.as_str())
            {
                cursors.insert(*key, version);
            }
        }
        Ok(cursors)
    }

    async fn process(&self, delivery: Delivery) {
        let event = match IntegrationEvent::from_json(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                let body = String::from_utf8_lossy(&delivery.body).into_owned();
                let id = EventId::new();
                tracing::warn!(group = %self.group, error = %e, "undecodable message dead-lettered");
                match self.dead_letter_raw(id, &body, &e.to_string()).await {
                    Ok(()) => {
                        let _ = delivery.acker.ack().await;
                        self.status.send_modify(|s| s.dead_lettered += 1);
                        self.count("dead_lettered", 1);
                    }
                    Err(db) => {
                        self.note_error(db.to_string());
                        let _ = delivery.acker.nack(self.options.backoff).await;
                    }
                }
                return;
            }
        };
        let force = self.waited_too_long(event.id);
        let started = Instant::now();
        let outcome = match self.try_handle(&event, force, false).await {
            Ok(outcome) => outcome,
            Err(db) => Outcome::Failed(HandlerError::Retry(format!("database: {db}"))),
        };
        metrics::histogram!("cairn_consumer_handle_duration_seconds", "group" => self.group.clone())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Handled => self.settle(delivery, event.id, BatchOutcome::Handled).await,
            Outcome::Skipped => self.settle(delivery, event.id, BatchOutcome::Skipped).await,
            Outcome::Duplicate => {
                self.settle(delivery, event.id, BatchOutcome::Duplicate)
                    .await
            }
            Outcome::OutOfOrder => {
                self.settle(delivery, event.id, BatchOutcome::OutOfOrder)
                    .await
            }
            Outcome::Failed(error) => {
                self.note_error(error.to_string());
                let attempts = match self.record_failure(&event, &error).await {
                    Ok(a) => a,
                    Err(db) => {
                        self.note_error(db.to_string());
                        let _ = delivery.acker.nack(self.options.backoff).await;
                        return;
                    }
                };
                let give_up = matches!(error, HandlerError::Reject(_))
                    || attempts >= u64::from(self.options.max_attempts);
                if give_up {
                    match self.dead_letter(&event, &error, attempts).await {
                        Ok(()) => {
                            self.forget_wait(event.id);
                            let _ = delivery.acker.ack().await;
                            tracing::warn!(group = %self.group, event = %event.id, attempts, error = %error, "event dead-lettered");
                            self.status.send_modify(|s| s.dead_lettered += 1);
                            self.count("dead_lettered", 1);
                        }
                        Err(db) => {
                            self.note_error(db.to_string());
                            let _ = delivery.acker.nack(self.options.backoff).await;
                        }
                    }
                } else {
                    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
                    let delay = self
                        .options
                        .backoff
                        .saturating_mul(2u32.saturating_pow(exp.min(16)))
                        .min(self.options.max_backoff);
                    let _ = delivery.acker.nack(delay).await;
                    self.status.send_modify(|s| s.retries += 1);
                    self.count("retried", 1);
                }
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

    fn waited_too_long(&self, id: EventId) -> bool {
        let waiting = self.waiting.lock().expect("waiting lock");
        waiting
            .get(&id)
            .is_some_and(|since| since.elapsed() >= self.options.order_wait)
    }

    fn forget_wait(&self, id: EventId) {
        self.waiting.lock().expect("waiting lock").remove(&id);
    }

    /// One attempt in one transaction: inbox, order, handler, cursor.
    /// `replay` handles a dead letter marked for replay: its row is deleted
    /// in the same transaction, and there is no order check or cursor move.
    async fn try_handle(
        &self,
        event: &IntegrationEvent,
        force: bool,
        replay: bool,
    ) -> Result<Outcome, sqlx::Error> {
        let version = event
            .version()
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let prev = event
            .prev_version()
            .ok()
            .flatten()
            .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let mut tx = self.db.begin().await?;
        if replay {
            let claimed = sqlx::query(
                "DELETE FROM cairn_dead_letters
                 WHERE consumer = $1 AND event_id = $2 AND replay = 1",
            )
            .bind(&self.group)
            .bind(event.id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                // Another instance replayed it, or it was dropped.
                tx.rollback().await?;
                return Ok(Outcome::Duplicate);
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO cairn_inbox (consumer, event_id, tenant, stream, version, handled_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.group)
        .bind(event.id.to_string())
        .bind(event.tenantid.as_str())
        .bind(event.subject.as_str())
        .bind(version)
        .bind(schema::now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Handled before: a redelivery, or a replay of something handled.
            if replay {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            return Ok(Outcome::Duplicate);
        }
        let last = self.lock_cursor(&mut tx, event).await?;
        let advance = !replay && version > last;
        if advance && prev > last && !force {
            tx.rollback().await?;
            self.waiting
                .lock()
                .expect("waiting lock")
                .entry(event.id)
                .or_insert_with(Instant::now);
            return Ok(Outcome::OutOfOrder);
        }
        if advance && prev > last {
            tracing::warn!(group = %self.group, event = %event.id, stream = %event.subject, "predecessor never arrived; handling out of order");
        }
        let handler = self.handler_of(event);
        if let Some(handler) = handler
            && let Err(error) = handler.handle(&mut tx, event).await
        {
            tx.rollback().await?;
            return Ok(Outcome::Failed(error));
        }
        if advance {
            set_cursor(&mut tx, &self.group, event, version).await?;
        }
        sqlx::query("DELETE FROM cairn_consumer_failures WHERE consumer = $1 AND event_id = $2")
            .bind(&self.group)
            .bind(event.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if handler.is_some() {
            Outcome::Handled
        } else {
            Outcome::Skipped
        })
    }

    /// The handler of `event`'s type, or the catch-all one.
    fn handler_of(&self, event: &IntegrationEvent) -> Option<&Arc<dyn EventHandler>> {
        self.handlers
            .get(&event.event_type)
            .or(self.fallback.as_ref())
    }

    /// The stream's last handled version (-1 if none), locked until the
    /// transaction ends so two instances take turns on a stream.
    async fn lock_cursor(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<i64, sqlx::Error> {
        let key = (event.tenantid.as_str(), event.subject.as_str());
        let cursors = self.lock_streams(tx, &[key]).await?;
        Ok(cursors.get(&key).copied().unwrap_or(-1))
    }

    async fn record_failure(
        &self,
        event: &IntegrationEvent,
        error: &HandlerError,
    ) -> Result<u64, sqlx::Error> {
        let attempts: i64 = sqlx::query_scalar(
            "INSERT INTO cairn_consumer_failures (consumer, event_id, attempts, last_error, updated_at)
             VALUES ($1, $2, 1, $3, $4)
             ON CONFLICT (consumer, event_id) DO UPDATE
                SET attempts = cairn_consumer_failures.attempts + 1,
                    last_error = excluded.last_error, updated_at = excluded.updated_at
             RETURNING attempts",
        )
        .bind(&self.group)
        .bind(event.id.to_string())
        .bind(error.to_string())
        .bind(schema::now())
        .fetch_one(self.db.pool())
        .await?;
        Ok(u64::try_from(attempts).unwrap_or(0))
    }

    /// Moves `event` to the dead letters and the stream's order past it.
    async fn dead_letter(
        &self,
        event: &IntegrationEvent,
        error: &HandlerError,
        attempts: u64,
    ) -> Result<(), sqlx::Error> {
        let version = event
            .version()
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let mut tx = self.db.begin().await?;
        insert_dead_letter(
            &mut tx,
            &self.group,
            event.id,
            Some(event),
            &String::from_utf8_lossy(&event.to_json()),
            attempts,
            &error.to_string(),
        )
        .await?;
        let last = self.lock_cursor(&mut tx, event).await?;
        if version > last {
            set_cursor(&mut tx, &self.group, event, version).await?;
        }
        sqlx::query("DELETE FROM cairn_consumer_failures WHERE consumer = $1 AND event_id = $2")
            .bind(&self.group)
            .bind(event.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    async fn dead_letter_raw(
        &self,
        id: EventId,
        body: &str,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        insert_dead_letter(&mut tx, &self.group, id, None, body, 1, error).await?;
        tx.commit().await
    }

    /// Handles dead letters marked for replay, one transaction each.
    async fn replays(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.replay_poll) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.replay_marked().await {
                self.note_error(format!("replaying dead letters: {e}"));
            }
        }
    }

    async fn replay_marked(&self) -> Result<(), sqlx::Error> {
        let marked: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, body FROM cairn_dead_letters
             WHERE consumer = $1 AND replay = 1 ORDER BY dead_at LIMIT 50",
        )
        .bind(&self.group)
        .fetch_all(self.db.pool())
        .await?;
        for (id, body) in marked {
            let event = match IntegrationEvent::from_json(body.as_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    self.replay_failed(&id, &format!("still undecodable: {e}"))
                        .await?;
                    continue;
                }
            };
            match self.try_handle(&event, true, true).await {
                Ok(Outcome::Handled | Outcome::Skipped) => {
                    tracing::info!(group = %self.group, event = %event.id, "dead letter replayed");
                    self.status.send_modify(|s| s.replayed += 1);
                    self.count("replayed", 1);
                }
                Ok(Outcome::Duplicate | Outcome::OutOfOrder) => {}
                Ok(Outcome::Failed(error)) => {
                    self.replay_failed(&id, &format!("replay failed: {error}"))
                        .await?;
                }
                Err(e) => {
                    self.replay_failed(&id, &format!("replay failed: {e}"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn replay_failed(&self, id: &str, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE cairn_dead_letters SET replay = 0, attempts = attempts + 1, error = $3
             WHERE consumer = $1 AND event_id = $2",
        )
        .bind(&self.group)
        .bind(id)
        .bind(error)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

async fn set_cursor(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    event: &IntegrationEvent,
    version: i64,
) -> Result<(), sqlx::Error> {
    set_cursors(
        tx,
        group,
        &[(event.tenantid.as_str(), event.subject.as_str(), version)],
    )
    .await
}

/// Moves the cursors of `moved` (`(tenant, stream, version)`, cursors
/// already locked) in one statement.
async fn set_cursors(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    moved: &[(&str, &str, i64)],
) -> Result<(), sqlx::Error> {
    if moved.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("UPDATE cairn_inbox_streams SET last_version = v.version FROM (");
    sql.push_str(&schema::placeholder_rows(
        moved.len(),
        3,
        1,
        " UNION ALL ",
        |p| {
            format!(
                "SELECT {} AS tenant, {} AS stream, {} AS version",
                p[0], p[1], p[2]
            )
        },
    ));
    sql.push_str(
        ") AS v WHERE cairn_inbox_streams.consumer = $1
         AND cairn_inbox_streams.tenant = v.tenant AND cairn_inbox_streams.stream = v.stream",
    );
    let mut query = sqlx::query(&sql).bind(group);
    for (tenant, stream, version) in moved {
        query = query.bind(*tenant).bind(*stream).bind(*version);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// Inserts (or, for an event dead-lettered again, replaces) a dead letter.
async fn insert_dead_letter(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    id: EventId,
    event: Option<&IntegrationEvent>,
    body: &str,
    attempts: u64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cairn_dead_letters
            (consumer, event_id, tenant, stream, event_type, body, attempts, error, dead_at, replay)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)
         ON CONFLICT (consumer, event_id) DO UPDATE SET
            attempts = cairn_dead_letters.attempts + excluded.attempts,
            error = excluded.error, dead_at = excluded.dead_at, replay = 0",
    )
    .bind(group)
    .bind(id.to_string())
    .bind(event.map(|e| e.tenantid.as_str().to_owned()))
    .bind(event.map(|e| e.subject.as_str().to_owned()))
    .bind(event.map(|e| e.event_type.clone()))
    .bind(body)
    .bind(i64::try_from(attempts).unwrap_or(i64::MAX))
    .bind(error)
    .bind(schema::now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Events of one stream always land in the same lane.
fn lane_of(delivery: &Delivery, lanes: usize) -> usize {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        tenantid: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        subject: Option<std::borrow::Cow<'a, str>>,
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Ok(key) = serde_json::from_slice::<Key<'_>>(&delivery.body) {
        key.tenantid.hash(&mut hasher);
        key.subject.hash(&mut hasher);
    }
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}
