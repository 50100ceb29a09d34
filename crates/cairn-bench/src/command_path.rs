//! The command path of `cairn bench store` (`command_*`): what every
//! command does, load → decide → append, through
//! [`AggregateStore::execute`], with a small decider whose streams grow to
//! about 100 events. Its baseline (`raw_command_1_conn`, in
//! [`crate::baseline`]) does the same work in plain SQL on one connection:
//! select the stream's events, then insert the next one, the table's
//! unique (stream, version) index checking it.

use std::{
    convert::Infallible,
    num::NonZeroU64,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use cairn_core::{DomainEvent, RequestContext, TenantId};
use cairn_domain::{Aggregate, AggregateOptions, AggregateStore};
use cairn_store::EventStore;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::workload::{latency_histogram, order_event, record};

/// Events a stream of the command workloads grows to, about.
pub(crate) const STREAM_EVENTS: u64 = 100;

/// A running tally: each command adds one order to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Tally {
    count: u64,
    quantity: u64,
}

/// What a tally records: the order (the same ~150-byte payload the append
/// workloads write) and the count after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum TallyEvent {
    OrderCounted { count: u64, order: Value },
}

impl DomainEvent for TallyEvent {}

impl Aggregate for Tally {
    const CATEGORY: &'static str = "tally";
    /// The order's sequence number.
    type Command = u64;
    type Event = TallyEvent;
    type Error = Infallible;

    fn decide(&self, seq: &u64) -> Result<Vec<TallyEvent>, Infallible> {
        Ok(vec![TallyEvent::OrderCounted {
            count: self.count + 1,
            order: order_event(*seq).data,
        }])
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::OrderCounted { count, order } = event;
        self.count = *count;
        self.quantity += order["quantity"].as_u64().unwrap_or(0);
    }
}

/// The aggregate store of the workloads; snapshots every `snapshot_every`
/// events when given, and retries lost races up to 50 times (the hot
/// workload loses many).
pub(crate) fn tallies(
    store: &Arc<dyn EventStore>,
    snapshot_every: Option<NonZeroU64>,
) -> AggregateStore<Tally> {
    let mut options = AggregateOptions::default().with_max_retries(50);
    options.snapshot_every = snapshot_every;
    AggregateStore::with_options(Arc::clone(store), options)
}

/// One command workload's figures.
pub(crate) struct CommandRun {
    pub(crate) commands: u64,
    pub(crate) elapsed: Duration,
    /// Per-command latency, microseconds.
    pub(crate) latency: Histogram<u64>,
}

/// `commands` commands from one task, in turn on the aggregates
/// `<prefix>-0` … `<prefix>-<aggregates - 1>`.
pub(crate) async fn one_writer(
    store: &AggregateStore<Tally>,
    tenant: &TenantId,
    prefix: &str,
    aggregates: u64,
    commands: u64,
) -> anyhow::Result<CommandRun> {
    let ctx = RequestContext::new(tenant.clone()).with_actor("bench");
    let aggregates = aggregates.max(1);
    let mut latency = latency_histogram();
    let start = Instant::now();
    for seq in 0..commands {
        let id = format!("{prefix}{}", seq % aggregates);
        let t = Instant::now();
        let outcome = store
            .execute(&ctx, &id, None, &seq)
            .await
            .map_err(|e| anyhow!("command on tally-{id}: {e}"))?;
        record(&mut latency, t.elapsed());
        if !outcome.written() {
            return Err(anyhow!("command on tally-{id} wrote nothing"));
        }
    }
    Ok(CommandRun {
        commands,
        elapsed: start.elapsed(),
        latency,
    })
}

/// `writers` tasks running [`one_writer`] at once, each with `commands`
/// commands. With `shared` aggregates, every task works on the same ones
/// (`<prefix>-0` …), each through an aggregate store of its own (as
/// separate processes would: no queue in common), so writers lose races and
/// retry; otherwise each task has `aggregates` of its own.
pub(crate) async fn writers(
    store: &Arc<dyn EventStore>,
    tenant: &TenantId,
    prefix: &str,
    writers: usize,
    aggregates: u64,
    shared: bool,
    commands: u64,
) -> anyhow::Result<CommandRun> {
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for writer in 0..writers {
        let tallies = tallies(store, None);
        let tenant = tenant.clone();
        let prefix = if shared {
            format!("{prefix}-")
        } else {
            format!("{prefix}{writer}-")
        };
        tasks.spawn(
            async move { one_writer(&tallies, &tenant, &prefix, aggregates, commands).await },
        );
    }
    let mut latency = latency_histogram();
    while let Some(joined) = tasks.join_next().await {
        let run = joined.context("command task failed")??;
        latency
            .add(&run.latency)
            .map_err(|e| anyhow!("merging latency histograms: {e:?}"))?;
    }
    Ok(CommandRun {
        commands: commands * writers as u64,
        elapsed: start.elapsed(),
        latency,
    })
}

/// Lost races retried so far in this process (Cairn's
/// `cairn_command_retries_total` for tallies), read from the process's
/// metrics recorder.
pub(crate) fn retries(metrics: &cairn_telemetry::Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("cairn_command_retries_total{") && l.contains("\"tally\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use cairn_store::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn every_command_appends_one_event_and_racing_writers_lose_none() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let tenant = TenantId::new("t").unwrap();
        let run = one_writer(&tallies(&store, None), &tenant, "a-", 3, 30)
            .await
            .unwrap();
        assert_eq!(run.commands, 30);
        // 8 writers, 10 commands each, on 2 shared aggregates: 80 counted.
        let run = writers(&store, &tenant, "hot", 8, 2, true, 10)
            .await
            .unwrap();
        assert_eq!(run.commands, 80);
        let tallies = tallies(&store, None);
        let ctx = RequestContext::new(tenant.clone());
        let mut counted = 0;
        for id in ["hot-0", "hot-1"] {
            let loaded = tallies.load(&ctx, id).await.unwrap().unwrap();
            assert_eq!(loaded.state.count, loaded.version + 1);
            counted += loaded.state.count;
        }
        assert_eq!(counted, 80, "no command lost");
    }
}
