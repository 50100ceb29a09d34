//! The in-process backend of `cairn up`: the event log itself is the
//! broker. There is no relay and nothing is copied: a consumer group of a
//! service's public events follows `$all` (filtered to that service's
//! public events) from a checkpoint kept in the service database, and the
//! checkpoint moves past an event only once the consumer has settled it
//! and everything before it. A crash replays at most the unsettled tail,
//! which the consumer's inbox drops. Unlike [`MemoryBroker`](crate::MemoryBroker),
//! nothing published is lost when the process stops.
//!
//! One instance per group: two consumers of the same group in one process
//! would each read the whole log (the inbox keeps the effect single, but
//! the work doubles). Request/reply in one process is the buses themselves,
//! so this backend has no transport.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::{StreamId, TenantId};
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, EventSubscription, ReadStream, StoreError};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{
    Acker, Broker, BrokerError, ConsumerSpec, Deliveries, Delivery, IntegrationEvent, PublicEvents,
    schema,
};

/// How often a group's checkpoint is written while it moves.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The event log as a broker, for services in one process.
#[derive(Clone)]
pub struct LogBroker {
    store: Arc<dyn EventStore>,
    db: ServiceDb,
    publishers: Arc<Vec<PublicEvents>>,
}

impl fmt::Debug for LogBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services: Vec<_> = self.publishers.iter().map(|p| &p.service).collect();
        f.debug_struct("LogBroker")
            .field("publishers", &services)
            .finish_non_exhaustive()
    }
}

impl LogBroker {
    /// A broker over `store` for the services whose public events are
    /// `publishers`, keeping group checkpoints in `db`.
    pub fn new(store: Arc<dyn EventStore>, db: ServiceDb, publishers: Vec<PublicEvents>) -> Self {
        Self {
            store,
            db,
            publishers: Arc::new(publishers),
        }
    }
}

#[async_trait]
impl Broker for LogBroker {
    fn kind(&self) -> &'static str {
        "log"
    }

    /// Nothing to do: the events are in the log already.
    async fn publish(&self, _events: &[IntegrationEvent]) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError> {
        let public = self
            .publishers
            .iter()
            .find(|p| p.service == spec.source)
            .cloned()
            .ok_or_else(|| {
                BrokerError::Refused(format!("no service {} publishes here", spec.source))
            })?;
        schema::ensure(&self.db)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let after: Option<i64> =
            sqlx::query_scalar("SELECT position FROM cairn_log_consumers WHERE consumer = $1")
                .bind(&spec.group)
                .fetch_optional(self.db.pool())
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let after = after.and_then(|p| u64::try_from(p).ok()).unwrap_or(0);
        let state = Arc::new(Mutex::new(Progress {
            in_flight: BTreeSet::new(),
            delivered: after,
            saved: after,
        }));
        let (tx, rx) = mpsc::channel(usize::from(spec.prefetch.max(1)));
        let feeder = Feeder {
            store: self.store.clone(),
            public,
            tx: tx.clone(),
            state: state.clone(),
            last_public: HashMap::new(),
        };
        let feed = tokio::spawn(feeder.run(after));
        let saver = tokio::spawn(save_checkpoints(
            self.db.clone(),
            spec.group.clone(),
            state.clone(),
        ));
        Ok(Box::new(LogDeliveries {
            rx,
            redeliver: tx,
            state,
            tasks: vec![feed, saver],
        }))
    }
}

/// What a group has handed out and settled.
struct Progress {
    /// Positions handed out and not yet acked.
    in_flight: BTreeSet<u64>,
    /// The highest position handed out.
    delivered: u64,
    /// The checkpoint last written.
    saved: u64,
}

impl Progress {
    /// Every event at or below this is settled.
    fn settled(&self) -> u64 {
        self.in_flight
            .first()
            .map_or(self.delivered, |p| p.saturating_sub(1))
    }
}

struct Item {
    position: u64,
    body: Bytes,
    deliveries: u32,
}

struct Feeder {
    store: Arc<dyn EventStore>,
    public: PublicEvents,
    tx: mpsc::Sender<Item>,
    state: Arc<Mutex<Progress>>,
    /// The last public version seen per stream (the `prevsequence`).
    last_public: HashMap<(TenantId, StreamId), u64>,
}

impl Feeder {
    async fn run(mut self, after: u64) {
        let filter = self.public.filter();
        let mut events = EventSubscription::follow(self.store.clone(), after, filter.clone());
        while let Some(next) = events.next().await {
            let event = match next {
                Ok(event) => event,
                Err(e) => {
                    // Follow again from the last event handed out, after a
                    // pause: a log that cannot be read now may be readable
                    // in a moment, and stopping would stop the group for good.
                    tracing::warn!(service = %self.public.service, error = %e, "log consumer cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let from = self.state.lock().expect("progress lock").delivered;
                    events = EventSubscription::follow(self.store.clone(), from, filter.clone());
                    continue;
                }
            };
            let prev = self.prev(&event.tenant, &event.stream, event.version).await;
            let body = Bytes::from(self.public.integration_event(&event, prev).to_json());
            {
                let mut state = self.state.lock().expect("progress lock");
                state.in_flight.insert(event.position);
                state.delivered = state.delivered.max(event.position);
            }
            let item = Item {
                position: event.position,
                body,
                deliveries: 0,
            };
            if self.tx.send(item).await.is_err() {
                return;
            }
        }
    }

    /// The version of the stream's public event before `version`.
    async fn prev(&mut self, tenant: &TenantId, stream: &StreamId, version: u64) -> Option<u64> {
        let key = (tenant.clone(), stream.clone());
        let prev = match self.last_public.get(&key) {
            Some(v) => Some(*v),
            None if version == 0 => None,
            None => self.look_back(tenant, stream, version).await,
        };
        self.last_public.insert(key, version);
        if self.last_public.len() > 100_000 {
            self.last_public.clear();
        }
        prev
    }

    /// Reads the stream backwards from `version - 1` for its last public
    /// event. A deleted stream cannot be read; its chain starts afresh
    /// (the consumer then does not wait for a predecessor).
    async fn look_back(&self, tenant: &TenantId, stream: &StreamId, version: u64) -> Option<u64> {
        let read = ReadStream {
            limit: 256,
            ..ReadStream::backward_from(version - 1)
        };
        match self.store.read_stream(tenant, stream, read).await {
            Ok(events) => events
                .iter()
                .find(|e| self.public.types.contains(&e.event_type))
                .map(|e| e.version),
            Err(StoreError::StreamDeleted { .. }) | Err(_) => None,
        }
    }
}

async fn save_checkpoints(db: ServiceDb, group: String, state: Arc<Mutex<Progress>>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let (settled, saved) = {
            let state = state.lock().expect("progress lock");
            (state.settled(), state.saved)
        };
        if settled <= saved {
            continue;
        }
        let written = sqlx::query(
            "INSERT INTO cairn_log_consumers (consumer, position, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (consumer) DO UPDATE SET position = excluded.position,
                 updated_at = excluded.updated_at",
        )
        .bind(&group)
        .bind(i64::try_from(settled).unwrap_or(i64::MAX))
        .bind(schema::now())
        .execute(db.pool())
        .await;
        match written {
            Ok(_) => state.lock().expect("progress lock").saved = settled,
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "cannot store the log consumer's checkpoint")
            }
        }
    }
}

struct LogDeliveries {
    rx: mpsc::Receiver<Item>,
    redeliver: mpsc::Sender<Item>,
    state: Arc<Mutex<Progress>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LogDeliveries {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Deliveries for LogDeliveries {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let mut item = self.rx.recv().await?;
        item.deliveries += 1;
        Some(Ok(Delivery {
            body: item.body.clone(),
            delivery_count: item.deliveries,
            acker: Box::new(LogAck {
                item: Some(item),
                state: self.state.clone(),
                redeliver: self.redeliver.clone(),
            }),
        }))
    }
}

struct LogAck {
    item: Option<Item>,
    state: Arc<Mutex<Progress>>,
    redeliver: mpsc::Sender<Item>,
}

#[async_trait]
impl Acker for LogAck {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(item) = self.item.take() {
            self.state
                .lock()
                .expect("progress lock")
                .in_flight
                .remove(&item.position);
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        if let Some(item) = self.item.take() {
            let redeliver = self.redeliver.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = redeliver.send(item).await;
            });
        }
        Ok(())
    }
}

impl Drop for LogAck {
    fn drop(&mut self) {
        // Dropped unsettled: hand it out again (if anything still runs).
        if let Some(item) = self.item.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let redeliver = self.redeliver.clone();
            runtime.spawn(async move {
                let _ = redeliver.send(item).await;
            });
        }
    }
}
