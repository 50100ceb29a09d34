//! The relay: the event log is the outbox. It follows `$all` from a stored
//! checkpoint and publishes a service's public events, in order, at least
//! once. Nothing is written twice in two systems: a command appends to the
//! log only, and the relay's checkpoint (in the service's database) moves
//! only after the broker acknowledged the batch. A crash between the two
//! publishes the batch again; the broker drops re-sent ids where it can and
//! consumers' inboxes drop the rest.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use cairn_core::{RecordedEvent, StreamId, TenantId};
use cairn_runtime::{Running, Stage};
use cairn_service_db::ServiceDb;
use cairn_store::{AllFilter, AllFollower, EventStore, FollowOptions};
use serde::Serialize;
use tokio::sync::watch;

use crate::{Acks, Broker, BrokerError, IntegrationEvent, MessagingError, schema};

/// Which of a service's events leave it. Everything else is private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicEvents {
    /// The publishing service (`flights`): the events' `source`.
    pub service: String,
    /// The stream categories the service owns (`flight`).
    pub categories: Vec<String>,
    /// The event types it publishes (`FlightScheduled`, ...).
    pub types: Vec<String>,
    /// Categories whose events leave without their data (it carries
    /// secrets): `data` is `{"redacted":true}`, the rest as recorded, so
    /// subscribers still learn what happened, where, when and by whom.
    pub redacted: Vec<String>,
}

impl PublicEvents {
    pub fn new<S: Into<String>>(
        service: impl Into<String>,
        categories: impl IntoIterator<Item = S>,
        types: impl IntoIterator<Item = S>,
    ) -> Result<Self, MessagingError> {
        let public = Self {
            service: service.into(),
            categories: categories.into_iter().map(Into::into).collect(),
            types: types.into_iter().map(Into::into).collect(),
            redacted: Vec::new(),
        };
        crate::validate_service(&public.service)?;
        for t in &public.types {
            crate::validate_public_type(t)?;
        }
        if public.categories.is_empty() || public.types.is_empty() {
            return Err(MessagingError::Config(
                "public events need at least one category and one type".into(),
            ));
        }
        Ok(public)
    }

    /// Publishes the events of `categories` without their data.
    pub fn with_redacted<S: Into<String>>(
        mut self,
        categories: impl IntoIterator<Item = S>,
    ) -> Self {
        self.redacted = categories.into_iter().map(Into::into).collect();
        self
    }

    /// `event` as it leaves the service: redacted if its category says so.
    pub fn integration_event(&self, event: &RecordedEvent, prev: Option<u64>) -> IntegrationEvent {
        let mut out = IntegrationEvent::from_recorded(&self.service, event, prev);
        if self
            .redacted
            .iter()
            .any(|c| c.as_str() == event.stream.category().as_str())
        {
            out.data = serde_json::json!({"redacted": true});
        }
        out
    }

    pub(crate) fn filter(&self) -> AllFilter {
        AllFilter::all_tenants()
            .categories(self.categories.iter())
            .event_types(self.types.iter().cloned())
    }
}

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Events read and published per batch. Default 256.
    pub batch_size: usize,
    /// Batches handed to the broker before the oldest one's
    /// acknowledgement is waited for: the next batch is read and sent while
    /// the broker is still taking the last one. Default 2; 1 sends a batch
    /// only once the one before it was acknowledged and checkpointed.
    pub in_flight: usize,
    /// Longest pause between publish attempts while the broker is down.
    /// Default 5 s.
    pub max_backoff: Duration,
    /// How often the log is polled when the store cannot announce commits
    /// made elsewhere. Default 250 ms.
    pub poll_interval: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            in_flight: 2,
            max_backoff: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// What a relay is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    pub service: String,
    /// The checkpoint: every public event at or below it was published.
    pub position: u64,
    /// The store's head as the relay last saw it.
    pub head: u64,
    pub published: u64,
    /// Whether the last publish attempt succeeded.
    pub broker_up: bool,
    pub last_error: Option<String>,
}

/// A running relay: its [`RelayStatus`] as a watch, and a shutdown that
/// returns after the batches in flight are acknowledged and checkpointed
/// (or given up on: they go out again after the next start).
pub type Relay = Running<RelayStatus>;

/// Starts publishing `public` events of `store` to `broker`, keeping its
/// checkpoint in `db`.
pub async fn start_relay(
    public: PublicEvents,
    store: Arc<dyn EventStore>,
    db: ServiceDb,
    broker: Arc<dyn Broker>,
    options: RelayOptions,
) -> Result<Relay, MessagingError> {
    schema::ensure(&db).await?;
    let position = load_checkpoint(&db, &public.service).await?;
    let initial = RelayStatus {
        service: public.service.clone(),
        position,
        broker_up: true,
        ..RelayStatus::default()
    };
    let follower = AllFollower::new(
        store,
        position,
        public.filter(),
        FollowOptions {
            page_size: options.batch_size,
            poll_interval: options.poll_interval,
        },
    );
    let name = format!("relay {}", public.service);
    Ok(Running::start(name, Stage::Relay, initial, |controls| {
        let worker = Worker {
            public,
            follower,
            db,
            broker,
            options,
            status: controls.status,
            stop: controls.stop,
            last_versions: HashMap::new(),
        };
        vec![tokio::spawn(worker.run(position))]
    }))
}

/// A batch handed to the broker, its acknowledgements still to come.
struct Sent {
    /// The position of its last event: the checkpoint once acknowledged.
    last: u64,
    events: Vec<IntegrationEvent>,
    acks: Acks,
}

struct Worker {
    public: PublicEvents,
    /// Reads the public events from the end of the last batch sent, or from
    /// the checkpoint after a rewind.
    follower: AllFollower,
    db: ServiceDb,
    broker: Arc<dyn Broker>,
    options: RelayOptions,
    status: watch::Sender<RelayStatus>,
    stop: watch::Receiver<bool>,
    /// Last published public version per stream (a cache of
    /// `cairn_relay_streams`).
    last_versions: HashMap<(TenantId, StreamId), u64>,
}

impl Worker {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn update(&self, change: impl FnOnce(&mut RelayStatus)) {
        self.status.send_modify(change);
        metrics_status(&self.status.borrow());
    }

    async fn run(mut self, mut position: u64) {
        let mut backoff = Duration::ZERO;
        // Batches sent whose acknowledgements are still to come, oldest
        // first. The follower reads on from the end of the last one sent, or
        // from the checkpoint.
        let mut sent: VecDeque<Sent> = VecDeque::new();
        let window = self.options.in_flight.max(1);
        while !self.stopping() {
            if !backoff.is_zero() {
                self.pause(backoff).await;
            }
            if sent.len() >= window {
                backoff = self.settle_oldest(&mut sent, &mut position, backoff).await;
                continue;
            }
            let read_from = self.follower.position();
            let page = match self.follower.read().await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(service = %self.public.service, error = %e, "relay cannot read the log");
                    self.status
                        .send_modify(|s| s.last_error = Some(e.to_string()));
                    backoff = next_backoff(backoff, self.options.max_backoff);
                    continue;
                }
            };
            self.update(|s| s.head = s.head.max(page.head));
            let batch = page.events;
            let Some(last) = batch.last().map(|e| e.position) else {
                if !sent.is_empty() {
                    // Caught up: settle what is in flight before waiting.
                    backoff = self.settle_oldest(&mut sent, &mut position, backoff).await;
                    continue;
                }
                backoff = Duration::ZERO;
                tokio::select! {
                    _ = self.follower.wait() => {}
                    _ = self.stop.changed() => {}
                }
                continue;
            };
            let events = match self.integration_events(&batch).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(service = %self.public.service, error = %e, "relay cannot read its stream table");
                    self.follower.seek(read_from);
                    backoff = next_backoff(backoff, self.options.max_backoff);
                    continue;
                }
            };
            match self.broker.send(&events).await {
                Ok(acks) => {
                    self.update(|s| {
                        s.broker_up = true;
                        s.last_error = None;
                    });
                    sent.push_back(Sent { last, events, acks });
                }
                Err(e) => {
                    self.broker_failed(&e);
                    self.rewind(&mut sent, position);
                    backoff = next_backoff(backoff, self.options.max_backoff);
                }
            }
        }
        // Stopping: what was sent is checkpointed as far as the broker
        // acknowledged it; the rest goes out after the next start.
        for batch in sent {
            if !self.settle(batch, &mut position).await {
                break;
            }
        }
    }

    /// Settles the oldest batch in flight; if that fails, rewinds to the
    /// checkpoint. Returns the next backoff.
    async fn settle_oldest(
        &mut self,
        sent: &mut VecDeque<Sent>,
        position: &mut u64,
        backoff: Duration,
    ) -> Duration {
        let Some(oldest) = sent.pop_front() else {
            return backoff;
        };
        if self.settle(oldest, position).await {
            Duration::ZERO
        } else {
            self.rewind(sent, *position);
            next_backoff(backoff, self.options.max_backoff)
        }
    }

    /// Forgets what is in flight: everything after the checkpoint goes out
    /// again, its chain links read back from what was checkpointed.
    fn rewind(&mut self, sent: &mut VecDeque<Sent>, position: u64) {
        sent.clear();
        self.follower.seek(position);
        self.last_versions.clear();
    }

    /// Waits for a sent batch's acknowledgements, then moves the checkpoint
    /// past it. False, with nothing moved, if either failed.
    async fn settle(&mut self, batch: Sent, position: &mut u64) -> bool {
        if let Err(e) = batch.acks.await {
            self.broker_failed(&e);
            return false;
        }
        match self.commit(batch.last, &batch.events).await {
            Ok(()) => {
                *position = batch.last;
                let n = batch.events.len() as u64;
                metrics_published(&self.public.service, n);
                self.update(|s| {
                    s.position = batch.last;
                    s.head = s.head.max(batch.last);
                    s.published += n;
                });
                true
            }
            Err(e) => {
                // Published but not recorded: the batch goes out again.
                tracing::warn!(service = %self.public.service, error = %e, "relay cannot store its checkpoint");
                false
            }
        }
    }

    fn broker_failed(&self, error: &BrokerError) {
        tracing::warn!(
            service = %self.public.service,
            error = %error,
            checkpoint = self.status.borrow().position,
            "relay cannot publish; re-sending from the checkpoint"
        );
        self.update(|s| {
            s.broker_up = false;
            s.last_error = Some(error.to_string());
        });
    }

    async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// The batch as integration events, each naming the previous public
    /// version of its stream.
    async fn integration_events(
        &mut self,
        batch: &[RecordedEvent],
    ) -> Result<Vec<IntegrationEvent>, sqlx::Error> {
        for event in batch {
            let key = (event.tenant.clone(), event.stream.clone());
            if !self.last_versions.contains_key(&key) {
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT last_version FROM cairn_relay_streams
                     WHERE relay = $1 AND tenant = $2 AND stream = $3",
                )
                .bind(&self.public.service)
                .bind(event.tenant.as_str())
                .bind(event.stream.as_str())
                .fetch_optional(self.db.pool())
                .await?;
                if let Some(v) = stored.and_then(|v| u64::try_from(v).ok()) {
                    self.last_versions.insert(key, v);
                }
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for event in batch {
            let key = (event.tenant.clone(), event.stream.clone());
            // An event at or below the stored version was published before
            // (a re-read after a lost checkpoint): keep its original chain
            // link by not moving backwards.
            let prev = self
                .last_versions
                .get(&key)
                .copied()
                .filter(|v| *v < event.version);
            out.push(self.public.integration_event(event, prev));
            let entry = self.last_versions.entry(key).or_insert(event.version);
            *entry = (*entry).max(event.version);
        }
        if self.last_versions.len() > 100_000 {
            self.last_versions.clear();
        }
        Ok(out)
    }

    async fn commit(&self, position: u64, events: &[IntegrationEvent]) -> Result<(), sqlx::Error> {
        let mut latest: HashMap<(&TenantId, &StreamId), u64> = HashMap::new();
        for e in events {
            let v = e.version().unwrap_or(0);
            let slot = latest.entry((&e.tenantid, &e.subject)).or_insert(v);
            *slot = (*slot).max(v);
        }
        let mut tx = self.db.begin().await?;
        // One upsert for every stream of the batch.
        let latest: Vec<_> = latest.into_iter().collect();
        for chunk in latest.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO cairn_relay_streams (relay, tenant, stream, last_version) VALUES ",
            );
            sql.push_str(&schema::placeholder_rows(chunk.len(), 4, 0, ", ", |p| {
                format!("({})", p.join(", "))
            }));
            sql.push_str(
                " ON CONFLICT (relay, tenant, stream) DO UPDATE SET last_version = excluded.last_version",
            );
            let mut query = sqlx::query(&sql);
            for ((tenant, stream), version) in chunk {
                query = query
                    .bind(&self.public.service)
                    .bind(tenant.as_str())
                    .bind(stream.as_str())
                    .bind(i64::try_from(*version).unwrap_or(i64::MAX));
            }
            query.execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO cairn_relay_checkpoints (relay, position, updated_at)
             VALUES ($1, $2, $3)
             ON CONFLICT (relay) DO UPDATE SET position = excluded.position,
                 updated_at = excluded.updated_at",
        )
        .bind(&self.public.service)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(schema::now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

fn metrics_published(service: &str, n: u64) {
    metrics::counter!("cairn_relay_published_total", "service" => service.to_owned()).increment(n);
}

fn metrics_status(status: &RelayStatus) {
    let service = status.service.clone();
    metrics::gauge!("cairn_relay_position", "service" => service.clone())
        .set(status.position as f64);
    metrics::gauge!("cairn_relay_lag_events", "service" => service.clone())
        .set(status.head.saturating_sub(status.position) as f64);
    metrics::gauge!("cairn_relay_broker_up", "service" => service).set(if status.broker_up {
        1.0
    } else {
        0.0
    });
}

async fn load_checkpoint(db: &ServiceDb, service: &str) -> Result<u64, sqlx::Error> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM cairn_relay_checkpoints WHERE relay = $1")
            .bind(service)
            .fetch_optional(db.pool())
            .await?;
    Ok(position.and_then(|p| u64::try_from(p).ok()).unwrap_or(0))
}

pub(crate) fn next_backoff(current: Duration, max: Duration) -> Duration {
    let next = if current.is_zero() {
        Duration::from_millis(100)
    } else {
        current * 2
    };
    let jitter = Duration::from_millis(rand::random::<u64>() % 50);
    next.min(max) + jitter
}
