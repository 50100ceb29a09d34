//! Cairn's side of the messaging benchmark: appenders writing to the event
//! store, the [`Relay`] publishing the `bench` service's public events, and
//! a [`Consumer`] group handling them with an inbox and a small SQL write,
//! each event timed from the commit of its append to its handler.
//!
//! - **Appenders**: `writers` tasks, each appending batches of up to
//!   `batch` events in turn to [`STREAMS_PER_WRITER`] streams of its own
//!   (`order-<run>-<writer>-<n>`), each append expecting the exact version
//!   the previous one left. At full speed each appends its next batch as
//!   soon as the last one committed; paced, the k-th event of a writer is
//!   due `k / (rate / writers)` seconds after the start, and a writer
//!   appends what is due (at most `batch` at once) or sleeps until the next
//!   one is. An event's commit time is when its `append` returned.
//! - **Consumer handler**: inserts one row per event into `bench_orders` in
//!   the consumer's transaction (beside the inbox entry and the stream
//!   cursor), the events of a batch in one statement
//!   ([`EventHandler::handle_batch`]), then notes the time. That note is the
//!   event's handled time: the transaction's commit and the broker ack
//!   follow it.
//! - **Relay side**: the publishing service's broker handle is wrapped
//!   ([`Timed`]) to note when the relay first hands each event to it, which
//!   splits an event's latency in two: commit to handed to the broker (the
//!   relay noticing the commit, reading and building the batch), and handed
//!   to the broker to handled (the publish, the broker's delivery, the
//!   consumer's lane and transaction).
//! - **A run** ends once the relay's checkpoint passed the last event
//!   appended and the consumer counted every event handled (its status
//!   moves after commit and ack). Throughput is over that whole span, from
//!   just before the first append.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use cairn_core::{EventId, NewEvent, StreamId, TenantId};
use cairn_messaging::{
    Acks, Broker, BrokerError, ConsumerHandle, ConsumerSpec, Deliveries, EventHandler,
    HandlerError, IntegrationEvent, PublicEvents, Relay, placeholder_rows,
};
use cairn_store::{EventStore, ExpectedVersion};
use hdrhistogram::Histogram;
use serde_json::Value;
use sqlx::{Any, Transaction};
use tokio::task::JoinSet;

use crate::workload::{EVENT_TYPE, latency_histogram, order_event, rate, record};

/// The publishing service: the integration events' `source`.
pub(super) const SERVICE: &str = "bench";
/// The consumer group reading the service's events.
pub(super) const GROUP: &str = "bench-inbox";
/// Streams each appender writes to in turn.
pub(super) const STREAMS_PER_WRITER: usize = 8;
/// A relay or consumer that makes no progress for this long fails the run
/// instead of hanging it.
const STALL: Duration = Duration::from_secs(60);

/// The table the consumer's handler writes one row per event to.
pub(super) const HANDLER_TABLE: &str = "CREATE TABLE IF NOT EXISTS bench_orders (
    event_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    quantity BIGINT NOT NULL
)";

/// The benchmark service's public events: every `OrderPlaced` of the
/// `order` category.
pub(super) fn public_events() -> anyhow::Result<PublicEvents> {
    PublicEvents::new(SERVICE, ["order"], [EVENT_TYPE]).context("public events")
}

/// A time per event, by id: when the handler ran (the last time, should an
/// attempt roll back and run again), or when the relay first handed it to
/// the broker.
#[derive(Debug, Default)]
pub(super) struct Times(Mutex<HashMap<EventId, Instant>>);

impl Times {
    fn note(&self, id: EventId, at: Instant) {
        self.0.lock().expect("times lock").insert(id, at);
    }

    fn note_first(&self, events: &[IntegrationEvent]) {
        let at = Instant::now();
        let mut times = self.0.lock().expect("times lock");
        for event in events {
            times.entry(event.id).or_insert(at);
        }
    }
}

/// The publishing service's broker, noting when the relay first hands each
/// event to it.
pub(super) struct Timed {
    pub(super) inner: Arc<dyn Broker>,
    pub(super) sent: Arc<Times>,
}

#[async_trait]
impl Broker for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn publish(&self, events: &[IntegrationEvent]) -> Result<(), BrokerError> {
        self.sent.note_first(events);
        self.inner.publish(events).await
    }

    async fn send(&self, events: &[IntegrationEvent]) -> Result<Acks, BrokerError> {
        self.sent.note_first(events);
        self.inner.send(events).await
    }

    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError> {
        self.inner.consume(spec).await
    }

    async fn declare(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        self.inner.declare(spec).await
    }
}

/// A realistic inbox consumer: a row per event, in the consumer's
/// transaction; the events of a batch in one multi-row insert.
#[derive(Debug, Clone)]
pub(super) struct InboxHandler {
    pub(super) handled: Arc<Times>,
}

/// The order row of an event: its order id and quantity.
fn order_row(event: &IntegrationEvent) -> Result<(&str, i64), HandlerError> {
    let order = event
        .data
        .get("orderId")
        .and_then(Value::as_str)
        .ok_or_else(|| HandlerError::Reject("no orderId".to_owned()))?;
    let quantity = event
        .data
        .get("quantity")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    Ok((order, quantity))
}

#[async_trait]
impl EventHandler for InboxHandler {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        self.handle_batch(tx, &[event]).await
    }

    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[&IntegrationEvent],
    ) -> Result<(), HandlerError> {
        let rows = events
            .iter()
            .map(|e| order_row(e))
            .collect::<Result<Vec<_>, _>>()?;
        let sql = format!(
            "INSERT INTO bench_orders (event_id, order_id, quantity) VALUES {}",
            placeholder_rows(rows.len(), 3, 0, ", ", |p| format!("({})", p.join(", ")))
        );
        let mut query = sqlx::query(&sql);
        for (event, (order, quantity)) in events.iter().zip(rows) {
            query = query.bind(event.id.to_string()).bind(order).bind(quantity);
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?;
        let now = Instant::now();
        for event in events {
            self.handled.note(event.id, now);
        }
        Ok(())
    }
}

/// What the appenders do in one run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub(super) events: u64,
    pub(super) writers: usize,
    pub(super) batch: usize,
    /// Events per second offered, all writers together; `None`: as fast as
    /// the store takes them.
    pub(super) rate: Option<f64>,
}

/// One run's raw figures.
#[derive(Debug)]
pub(super) struct RunResult {
    /// Events appended in the run that the consumer handled.
    pub(super) handled: u64,
    pub(super) appended: u64,
    /// From just before the first append until the last append returned.
    pub(super) append_elapsed: Duration,
    /// ... until the relay's checkpoint passed the last event.
    pub(super) relay_elapsed: Duration,
    /// ... until the consumer counted the last event handled.
    pub(super) e2e_elapsed: Duration,
    /// Handled time minus commit time, per event, in microseconds.
    pub(super) latency: Histogram<u64>,
    /// Of that, commit to handed to the broker by the relay...
    pub(super) to_broker: Histogram<u64>,
    /// ... and handed to the broker to handled.
    pub(super) from_broker: Histogram<u64>,
}

impl RunResult {
    pub(super) fn append_rate(&self) -> f64 {
        rate(self.appended, self.append_elapsed)
    }

    pub(super) fn relay_rate(&self) -> f64 {
        rate(self.appended, self.relay_elapsed)
    }

    pub(super) fn e2e_rate(&self) -> f64 {
        rate(self.appended, self.e2e_elapsed)
    }
}

/// The running pipeline a run goes through.
#[derive(Clone, Copy)]
pub(super) struct Pipeline<'a> {
    pub(super) store: &'a Arc<dyn EventStore>,
    pub(super) relay: &'a Relay,
    pub(super) consumer: &'a ConsumerHandle,
    pub(super) handled: &'a Times,
    pub(super) sent: &'a Times,
    pub(super) tenant: &'a TenantId,
}

impl Pipeline<'_> {
    /// Appends `load` on fresh streams tagged `tag`, waits until the relay
    /// published and the consumer handled every event, and measures.
    pub(super) async fn run(&self, tag: &str, load: Load) -> anyhow::Result<RunResult> {
        let before = self.consumer.status().handled;
        let appended = append(self.store, self.tenant, tag, load).await?;
        let count = appended.commits.len() as u64;
        let (relay_at, consumer_at) = tokio::join!(
            relay_reached(self.relay, appended.last_position),
            handled_reached(self.consumer, before + count)
        );
        let (relay_at, consumer_at) = (relay_at?, consumer_at?);
        let (mut latency, mut to_broker, mut from_broker) = (
            latency_histogram(),
            latency_histogram(),
            latency_histogram(),
        );
        let mut handled = 0;
        {
            let times = self.handled.0.lock().expect("times lock");
            let sent = self.sent.0.lock().expect("times lock");
            for (id, committed) in &appended.commits {
                if let Some(at) = times.get(id) {
                    handled += 1;
                    record(&mut latency, at.saturating_duration_since(*committed));
                    if let Some(sent) = sent.get(id) {
                        record(&mut to_broker, sent.saturating_duration_since(*committed));
                        record(&mut from_broker, at.saturating_duration_since(*sent));
                    }
                }
            }
        }
        Ok(RunResult {
            handled,
            appended: count,
            append_elapsed: appended.elapsed,
            relay_elapsed: relay_at.saturating_duration_since(appended.start),
            e2e_elapsed: consumer_at.saturating_duration_since(appended.start),
            latency,
            to_broker,
            from_broker,
        })
    }
}

/// Waits until the relay's checkpoint reaches `position`; fails if it stops
/// moving for [`STALL`].
async fn relay_reached(relay: &Relay, position: u64) -> anyhow::Result<Instant> {
    let mut seen = relay.status().position;
    loop {
        if relay.wait_until(STALL, |s| s.position >= position).await {
            return Ok(Instant::now());
        }
        let status = relay.status();
        if status.position == seen {
            bail!(
                "the relay stalled at position {} of {position} for {STALL:?} (broker up: {}, last error: {})",
                status.position,
                status.broker_up,
                status.last_error.as_deref().unwrap_or("none")
            );
        }
        seen = status.position;
    }
}

/// Waits until the consumer has handled `target` events since it started;
/// fails if it stops moving for [`STALL`].
async fn handled_reached(consumer: &ConsumerHandle, target: u64) -> anyhow::Result<Instant> {
    let mut seen = consumer.status().handled;
    loop {
        if consumer.wait_until(STALL, |s| s.handled >= target).await {
            return Ok(Instant::now());
        }
        let status = consumer.status();
        if status.handled == seen {
            bail!(
                "the consumer stalled at {} of {target} events for {STALL:?} \
                 (dead-lettered: {}, retries: {}, last error: {})",
                status.handled,
                status.dead_lettered,
                status.retries,
                status.last_error.as_deref().unwrap_or("none")
            );
        }
        seen = status.handled;
    }
}

/// What the appenders of one run did.
#[derive(Debug)]
struct Appended {
    /// Every event appended, with the time its append returned.
    commits: Vec<(EventId, Instant)>,
    /// Just before the first append.
    start: Instant,
    /// From `start` until the last append returned.
    elapsed: Duration,
    last_position: u64,
}

/// Runs `load.writers` appenders until `load.events` are appended.
async fn append(
    store: &Arc<dyn EventStore>,
    tenant: &TenantId,
    tag: &str,
    load: Load,
) -> anyhow::Result<Appended> {
    let writers = load.writers.max(1);
    let per_writer_rate = load.rate.map(|r| r / writers as f64);
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for w in 0..writers {
        let quota =
            load.events / writers as u64 + u64::from((w as u64) < load.events % writers as u64);
        if quota == 0 {
            continue;
        }
        let streams = (0..STREAMS_PER_WRITER)
            .map(|s| {
                let id = format!("order-{tag}-{w}-{s}");
                StreamId::new(&id).with_context(|| format!("stream id {id}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let writer = Writer {
            store: Arc::clone(store),
            tenant: tenant.clone(),
            streams,
            quota,
            batch: load.batch.max(1) as u64,
            rate: per_writer_rate,
            seq: (w as u64) << 32,
        };
        tasks.spawn(writer.run(start));
    }
    let mut commits = Vec::with_capacity(usize::try_from(load.events).unwrap_or(0));
    let mut last_position = 0;
    while let Some(joined) = tasks.join_next().await {
        let (mut done, position) = joined.context("appender task failed")??;
        commits.append(&mut done);
        last_position = last_position.max(position);
    }
    let elapsed = commits
        .iter()
        .map(|(_, at)| at.saturating_duration_since(start))
        .max()
        .unwrap_or_default();
    if commits.is_empty() {
        return Err(anyhow!("nothing was appended"));
    }
    Ok(Appended {
        commits,
        start,
        elapsed,
        last_position,
    })
}

/// One appender.
struct Writer {
    store: Arc<dyn EventStore>,
    tenant: TenantId,
    streams: Vec<StreamId>,
    quota: u64,
    batch: u64,
    /// This writer's share of the offered rate, events per second.
    rate: Option<f64>,
    /// Where this writer's payload sequence numbers start.
    seq: u64,
}

impl Writer {
    async fn run(self, start: Instant) -> anyhow::Result<(Vec<(EventId, Instant)>, u64)> {
        let mut expected = vec![ExpectedVersion::NoStream; self.streams.len()];
        let mut commits = Vec::with_capacity(usize::try_from(self.quota).unwrap_or(0));
        let mut last_position = 0;
        let mut sent = 0u64;
        let mut turn = 0usize;
        while sent < self.quota {
            let n = match self.rate {
                None => (self.quota - sent).min(self.batch),
                Some(rate) => {
                    // The k-th event (from 0) is due k / rate after the start.
                    let due =
                        ((start.elapsed().as_secs_f64() * rate).floor() as u64 + 1).min(self.quota);
                    if due <= sent {
                        let next = start + Duration::from_secs_f64(sent as f64 / rate);
                        tokio::time::sleep_until(next.into()).await;
                        continue;
                    }
                    (due - sent).min(self.batch)
                }
            };
            let events: Vec<NewEvent> = (0..n)
                .map(|i| order_event(self.seq + sent + i + 1))
                .collect();
            let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
            let slot = turn % self.streams.len();
            turn += 1;
            let stream = &self.streams[slot];
            let outcome = self
                .store
                .append(&self.tenant, stream, expected[slot], events)
                .await
                .with_context(|| format!("appending to {}", stream.as_str()))?;
            let at = Instant::now();
            expected[slot] = ExpectedVersion::Exact(outcome.last_version);
            last_position = last_position.max(outcome.last_position);
            commits.extend(ids.into_iter().map(|id| (id, at)));
            sent += n;
        }
        Ok((commits, last_position))
    }
}
