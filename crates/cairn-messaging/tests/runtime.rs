//! The relay and the consumer runtime over the in-process broker, with the
//! service database on SQLite and on PostgreSQL.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use async_trait::async_trait;
use cairn_core::EventId;
use cairn_messaging::{
    Acks, Broker, BrokerError, Consumer, ConsumerHandle, ConsumerOptions, ConsumerSpec,
    ConsumerStatus, DeadLetterFilter, DeadLetters, Deliveries, EventHandler, HandlerError,
    IntegrationEvent, MemoryBroker, PublicEvents, RelayOptions, start_relay,
};
use cairn_store::MemoryStore;
use common::*;
use sqlx::{Any, Transaction};

fn quick() -> ConsumerOptions {
    ConsumerOptions {
        max_attempts: 3,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        replay_poll: Duration::from_millis(50),
        ..ConsumerOptions::default()
    }
}

/// Every delivery in the one lane: what waits is one batch.
fn one_lane() -> ConsumerOptions {
    ConsumerOptions {
        lanes: 1,
        ..quick()
    }
}

fn things() -> PublicEvents {
    PublicEvents::new("things", ["thing"], ["Created", "Renamed", "Deleted"]).unwrap()
}

/// Takes everything a group gets for a while, acking each.
async fn drain(
    broker: &MemoryBroker,
    group: &str,
    source: &str,
    want: usize,
) -> Vec<IntegrationEvent> {
    let mut deliveries = broker
        .consume(&ConsumerSpec::new(group, source))
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < want {
        let d = tokio::time::timeout(PATIENCE, deliveries.next())
            .await
            .expect("a delivery in time")
            .unwrap()
            .unwrap();
        out.push(IntegrationEvent::from_json(&d.body).unwrap());
        d.acker.ack().await.unwrap();
    }
    out
}

#[tokio::test]
async fn relay_publishes_only_public_events_in_order_with_the_stream_chain() {
    let t = TestDb::sqlite().await;
    let store = MemoryStore::new();
    let acme = tenant("acme");
    append(&store, &acme, "thing-1", &["Created", "Secret", "Renamed"]).await;
    append(&store, &acme, "thing-2", &["Created"]).await;
    append(&store, &acme, "other-1", &["Created"]).await; // another service's category
    append(&store, &acme, "thing-1", &["Deleted"]).await;
    let broker = MemoryBroker::new();
    let relay = start_relay(
        things(),
        Arc::new(store.clone()),
        t.db.clone(),
        Arc::new(broker.clone()),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    assert!(relay.wait_until(PATIENCE, |s| s.position >= 6).await);
    let got = drain(&broker, "watcher", "things", 4).await;
    let summary: Vec<_> = got
        .iter()
        .map(|e| {
            (
                e.subject.as_str().to_owned(),
                e.event_type.clone(),
                e.sequence.clone(),
                e.prevsequence.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("thing-1".into(), "Created".into(), "0".into(), None),
            (
                "thing-1".into(),
                "Renamed".into(),
                "2".into(),
                Some("0".into())
            ),
            ("thing-2".into(), "Created".into(), "0".into(), None),
            (
                "thing-1".into(),
                "Deleted".into(),
                "3".into(),
                Some("2".into())
            ),
        ]
    );
    for e in &got {
        assert_eq!(e.specversion, "1.0");
        assert_eq!(e.source, "things");
        assert_eq!(e.tenantid, acme);
        assert_eq!(
            e.topic("cairn"),
            format!("cairn.acme.things.{}", e.event_type)
        );
        e.validate().unwrap();
    }
    relay.shutdown().await;

    // A restarted relay resumes after its checkpoint and keeps the chain.
    append(&store, &acme, "thing-1", &["Renamed"]).await;
    let relay = start_relay(
        things(),
        Arc::new(store.clone()),
        t.reopen().await,
        Arc::new(broker.clone()),
        RelayOptions::default(),
    )
    .await
    .unwrap();
    assert!(relay.wait_until(PATIENCE, |s| s.position >= 7).await);
    assert_eq!(relay.status().published, 1, "only the new event goes out");
    let next = drain(&broker, "watcher", "things", 1).await;
    assert_eq!(next[0].sequence, "4");
    assert_eq!(next[0].prevsequence.as_deref(), Some("3"));
    relay.shutdown().await;
}

/// Takes every batch it is sent, but the acknowledgements of the
/// `fail_at`-th send (from 0) fail, as when a broker took the messages and
/// the connection dropped before it confirmed them.
struct LostAcks {
    inner: MemoryBroker,
    fail_at: u32,
    sends: std::sync::atomic::AtomicU32,
    messages: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Broker for LostAcks {
    fn kind(&self) -> &'static str {
        "lost-acks"
    }

    async fn publish(&self, events: &[IntegrationEvent]) -> Result<(), BrokerError> {
        self.send(events).await?.await
    }

    async fn send(&self, events: &[IntegrationEvent]) -> Result<Acks, BrokerError> {
        self.inner.publish(events).await?;
        self.messages.fetch_add(events.len(), Ordering::SeqCst);
        let failed = self.sends.fetch_add(1, Ordering::SeqCst) == self.fail_at;
        Ok(Box::pin(async move {
            if failed {
                Err(BrokerError::Unavailable("the connection dropped".into()))
            } else {
                Ok(())
            }
        }))
    }

    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError> {
        self.inner.consume(spec).await
    }
}

/// With several batches in flight, acks that fail send everything after
/// the checkpoint again: every event out, in order, each copy with the
/// same chain link, and the checkpoint counts each event once.
#[tokio::test]
async fn a_relay_with_batches_in_flight_resends_from_its_checkpoint_when_acks_fail() {
    let t = TestDb::sqlite().await;
    let store = MemoryStore::new();
    let acme = tenant("acme");
    for _ in 0..10 {
        append(&store, &acme, "thing-1", &["Renamed"]).await;
    }
    let broker = Arc::new(LostAcks {
        inner: MemoryBroker::without_dedupe(),
        fail_at: 1,
        sends: Default::default(),
        messages: Default::default(),
    });
    let relay = start_relay(
        things(),
        Arc::new(store.clone()),
        t.db.clone(),
        broker.clone(),
        RelayOptions {
            batch_size: 2,
            in_flight: 3,
            max_backoff: Duration::from_millis(20),
            ..RelayOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        relay.wait_until(PATIENCE, |s| s.position >= 10).await,
        "{:?}",
        relay.status()
    );
    let status = relay.status();
    assert_eq!(status.published, 10, "each event checkpointed once");
    assert!(status.broker_up, "{status:?}");
    relay.shutdown().await;
    let sent = broker.messages.load(Ordering::SeqCst);
    assert!(
        sent > 10,
        "the unacknowledged batches went out again: {sent}"
    );
    let got = drain(&broker.inner, "watcher", "things", sent).await;
    let versions: Vec<u64> = got.iter().map(|e| e.version().unwrap()).collect();
    // The first pass, cut off somewhere after the failed batch, then again
    // from the checkpoint (after the first batch) to the end.
    let resent_from = versions
        .windows(2)
        .position(|w| w[1] <= w[0])
        .expect("a re-send")
        + 1;
    assert_eq!(
        versions[resent_from], 2,
        "re-sent from the checkpoint: {versions:?}"
    );
    assert!(
        resent_from >= 6,
        "three batches went out before the failed one's acks were awaited: {versions:?}"
    );
    assert_eq!(
        versions[..resent_from].to_vec(),
        (0..resent_from as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        versions[resent_from..].to_vec(),
        (2..10).collect::<Vec<_>>()
    );
    let mut links: HashMap<EventId, Option<String>> = HashMap::new();
    for e in &got {
        let link = links.entry(e.id).or_insert_with(|| e.prevsequence.clone());
        assert_eq!(*link, e.prevsequence, "a copy keeps the chain link");
        assert_eq!(
            e.prevsequence,
            e.version().unwrap().checked_sub(1).map(|v| v.to_string())
        );
    }
}

#[tokio::test]
async fn public_event_declarations_are_checked() {
    assert!(PublicEvents::new("Things", ["thing"], ["Created"]).is_err());
    assert!(PublicEvents::new("things", ["thing"], ["has.dot"]).is_err());
    assert!(PublicEvents::new("things", ["thing"], ["with space"]).is_err());
    assert!(PublicEvents::new("things", Vec::<String>::new(), vec!["Created".to_owned()]).is_err());
}

async fn exactly_once_under_redelivery(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::without_dedupe();
    let recorder = Recorder {
        label: "a",
        ..Recorder::default()
    };
    recorder.fail_first.store(2, Ordering::SeqCst);
    let consumer = Consumer::new("watchers", "things", t.db.clone(), Arc::new(broker.clone()))
        .on("Thing", recorder.clone())
        .with_options(quick())
        .start()
        .await
        .unwrap();
    let events: Vec<_> = (0..5)
        .map(|v| event("acme", "thing-1", v, v.checked_sub(1)))
        .collect();
    broker.publish(&events).await.unwrap();
    // The same events again, as a relay that lost its checkpoint would send.
    broker.publish(&events).await.unwrap();
    settles(&consumer, |s| s.handled == 5 && s.duplicates == 5).await;
    let rows = seen(&t.db).await;
    let versions: Vec<i64> = rows.iter().map(|r| r.2).collect();
    assert_eq!(versions, vec![0, 1, 2, 3, 4], "each effect once, in order");
    let status = consumer.status();
    // A failure inside a batch rolls the batch back and its messages are
    // handled one by one: the second passing failure may be spent there.
    assert!(
        (1..=2).contains(&status.retries),
        "passing failures were retried: {status:?}"
    );
    assert_eq!(status.dead_lettered, 0);
    consumer.shutdown().await;
}

/// Re-sent events waiting together are handled in one batch: each once.
async fn a_batch_with_the_same_event_twice_handles_it_once(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::without_dedupe();
    let (e0, e1) = (
        event("acme", "thing-7", 0, None),
        event("acme", "thing-7", 1, Some(0)),
    );
    // Published before the consumer starts: they wait, and arrive together.
    broker
        .publish(&[e0.clone(), e0.clone(), e1.clone(), e1, e0])
        .await
        .unwrap();
    let consumer = Consumer::new("watchers", "things", t.db.clone(), Arc::new(broker.clone()))
        .on(
            "Thing",
            Recorder {
                label: "a",
                ..Recorder::default()
            },
        )
        .with_options(quick())
        .start()
        .await
        .unwrap();
    settles(&consumer, |s| s.handled == 2 && s.duplicates == 3).await;
    let versions: Vec<i64> = seen(&t.db).await.iter().map(|r| r.2).collect();
    assert_eq!(versions, vec![0, 1]);
    consumer.shutdown().await;
}

async fn order_is_kept_per_stream_across_competing_instances(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::new();
    let mut instances = Vec::new();
    for label in ["a", "b", "c"] {
        let recorder = Recorder {
            label,
            sleep_ms: 5,
            ..Recorder::default()
        };
        instances.push(
            Consumer::new(
                "watchers",
                "things",
                t.reopen().await,
                Arc::new(broker.clone()),
            )
            .on("Thing", recorder)
            .with_options(quick())
            .start()
            .await
            .unwrap(),
        );
    }
    // Three tenants x four streams x ten versions, interleaved.
    let mut events = Vec::new();
    for v in 0..10u64 {
        for tenant in ["t1", "t2", "t3"] {
            for s in 0..4 {
                // Every other version is private: the chain skips it.
                let version = v * 2;
                let prev = version.checked_sub(2);
                events.push(event(tenant, &format!("thing-{s}"), version, prev));
            }
        }
    }
    for chunk in events.chunks(7) {
        broker.publish(chunk).await.unwrap();
    }
    let total = events.len() as u64;
    for _ in 0..600 {
        let handled: u64 = instances.iter().map(|c| c.status().handled).sum();
        if handled == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled: u64 = instances.iter().map(|c| c.status().handled).sum();
    assert_eq!(handled, total, "every event handled once");
    let rows = seen(&t.db).await;
    assert_eq!(rows.len() as u64, total);
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for (tenant, stream, version) in rows {
        let prev = last.insert((tenant.clone(), stream.clone()), version);
        assert_eq!(
            prev.map_or(0, |p| p + 2),
            version,
            "{tenant}/{stream} out of order"
        );
    }
    let shares: Vec<u64> = instances.iter().map(|c| c.status().handled).collect();
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 2,
        "instances compete for events: {shares:?}"
    );
    for c in instances {
        c.shutdown().await;
    }
}

async fn poison_goes_to_dead_letters_and_replays(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::new();
    let recorder = Recorder {
        label: "a",
        ..Recorder::default()
    };
    recorder.broken.store(true, Ordering::SeqCst);
    let consumer = Consumer::new("watchers", "things", t.db.clone(), Arc::new(broker.clone()))
        .on("Thing", recorder.clone())
        .with_options(quick())
        .start()
        .await
        .unwrap();
    broker
        .publish(&[event("acme", "thing-1", 0, None)])
        .await
        .unwrap();
    assert!(
        consumer
            .wait_until(PATIENCE, |s| s.dead_lettered == 1)
            .await
    );
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        3,
        "max_attempts tries"
    );
    assert!(
        seen(&t.db).await.is_empty(),
        "failed attempts left nothing behind"
    );

    // The consumer carries on: the stream's next event is handled.
    recorder.broken.store(false, Ordering::SeqCst);
    broker
        .publish(&[event("acme", "thing-1", 1, Some(0))])
        .await
        .unwrap();
    assert!(consumer.wait_until(PATIENCE, |s| s.handled == 1).await);
    assert_eq!(
        seen(&t.db).await.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![1]
    );

    // An undecodable message goes straight to the dead letters.
    broker.publish_raw(
        "things",
        bytes::Bytes::from_static(b"{\"not\": \"an event\"}"),
    );
    assert!(
        consumer
            .wait_until(PATIENCE, |s| s.dead_lettered == 2)
            .await
    );

    let dlq = DeadLetters::open(t.reopen().await).await.unwrap();
    let letters = dlq.list(&DeadLetterFilter::default(), 10).await.unwrap();
    assert_eq!(letters.len(), 2);
    let garbage = letters.iter().find(|l| l.stream.is_none()).unwrap();
    assert_eq!(garbage.body, r#"{"not": "an event"}"#);
    assert!(
        garbage.error.contains("not a Cairn CloudEvent"),
        "{}",
        garbage.error
    );
    assert_eq!(
        dlq.drop(&DeadLetterFilter {
            consumer: None,
            event_id: Some(garbage.event_id.clone()),
        })
        .await
        .unwrap(),
        1
    );
    let letters = dlq.list(&DeadLetterFilter::default(), 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.consumer, "watchers");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.stream.as_deref(), Some("thing-1"));
    assert!(letter.error.contains("broken"), "{}", letter.error);
    IntegrationEvent::from_json(letter.body.as_bytes()).expect("kept as it came");

    // Replay: the running consumer handles it once and the letter is gone.
    let filter = DeadLetterFilter {
        consumer: Some("watchers".into()),
        event_id: Some(letter.event_id.clone()),
    };
    assert_eq!(dlq.replay(&filter).await.unwrap(), 1);
    assert!(consumer.wait_until(PATIENCE, |s| s.replayed == 1).await);
    assert!(
        dlq.list(&DeadLetterFilter::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let versions: Vec<i64> = seen(&t.db).await.iter().map(|r| r.2).collect();
    assert_eq!(
        versions,
        vec![1, 0],
        "the replayed event handled once, late"
    );
    assert_eq!(
        dlq.replay(&filter).await.unwrap(),
        0,
        "nothing left to replay"
    );
    consumer.shutdown().await;
}

async fn a_failed_replay_stays_a_dead_letter_and_drop_removes_it(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::new();
    let recorder = Recorder {
        label: "a",
        ..Recorder::default()
    };
    recorder.broken.store(true, Ordering::SeqCst);
    let consumer = Consumer::new("watchers", "things", t.db.clone(), Arc::new(broker.clone()))
        .on("Thing", recorder.clone())
        .with_options(quick())
        .start()
        .await
        .unwrap();
    broker
        .publish(&[event("acme", "thing-9", 0, None)])
        .await
        .unwrap();
    assert!(
        consumer
            .wait_until(PATIENCE, |s| s.dead_lettered == 1)
            .await
    );
    let dlq = DeadLetters::open(t.db.clone()).await.unwrap();
    assert_eq!(dlq.replay(&DeadLetterFilter::default()).await.unwrap(), 1);
    // Still broken: the replay fails, the letter stays, unmarked.
    for _ in 0..200 {
        let l = dlq.list(&DeadLetterFilter::default(), 10).await.unwrap();
        if l.len() == 1 && !l[0].replay {
            assert_eq!(l[0].attempts, 4);
            assert!(l[0].error.starts_with("replay failed"), "{}", l[0].error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let l = dlq.list(&DeadLetterFilter::default(), 10).await.unwrap();
    assert!(!l[0].replay, "a failed replay is unmarked: {l:?}");
    assert_eq!(dlq.drop(&DeadLetterFilter::default()).await.unwrap(), 1);
    assert!(
        dlq.list(&DeadLetterFilter::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(seen(&t.db).await.is_empty());
    consumer.shutdown().await;
}

/// Takes runs of events at once: notes each run's length, writes them
/// through a [`Recorder`], and fails a run holding a poisoned event after
/// writing it all (the writes must roll back).
#[derive(Clone, Default)]
struct RunRecorder {
    inner: Recorder,
    runs: Arc<Mutex<Vec<usize>>>,
    poison: Arc<Mutex<HashSet<EventId>>>,
}

impl RunRecorder {
    fn labelled(label: &'static str) -> Self {
        Self {
            inner: Recorder {
                label,
                ..Recorder::default()
            },
            ..Self::default()
        }
    }

    fn poisoned(&self, event: &IntegrationEvent) -> bool {
        self.poison.lock().unwrap().contains(&event.id)
    }

    fn runs(&self) -> Vec<usize> {
        self.runs.lock().unwrap().clone()
    }
}

#[async_trait]
impl EventHandler for RunRecorder {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        if self.poisoned(event) {
            return Err(HandlerError::Reject("poisoned".into()));
        }
        self.inner.handle(tx, event).await
    }

    async fn handle_batch(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[&IntegrationEvent],
    ) -> Result<(), HandlerError> {
        self.runs.lock().unwrap().push(events.len());
        for event in events {
            self.inner.handle(tx, event).await?;
        }
        if events.iter().any(|e| self.poisoned(e)) {
            return Err(HandlerError::Reject("poisoned".into()));
        }
        Ok(())
    }
}

/// A one-lane consumer of `things` whose `Thing` events go to `handler`.
async fn watcher(t: &TestDb, broker: &MemoryBroker, handler: &RunRecorder) -> ConsumerHandle {
    Consumer::new("watchers", "things", t.db.clone(), Arc::new(broker.clone()))
        .on("Thing", handler.clone())
        .with_options(one_lane())
        .start()
        .await
        .unwrap()
}

/// Waits until the consumer's status passes `done`; fails showing it if
/// it never does.
async fn settles(consumer: &ConsumerHandle, done: impl FnMut(&ConsumerStatus) -> bool) {
    assert!(
        consumer.wait_until(PATIENCE, done).await,
        "{:?}",
        consumer.status()
    );
}

fn typed(mut event: IntegrationEvent, event_type: &str) -> IntegrationEvent {
    event.event_type = event_type.to_owned();
    event
}

/// Events delivered together reach each handler as runs: a handler's
/// consecutive events in one call, the order of effects the stream's.
async fn a_batch_handler_takes_each_run_of_its_events_at_once(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::new();
    let events = vec![
        event("acme", "thing-1", 0, None),
        event("acme", "thing-1", 1, Some(0)),
        typed(event("acme", "thing-1", 2, Some(1)), "Other"),
        event("acme", "thing-1", 3, Some(2)),
        event("acme", "thing-1", 4, Some(3)),
    ];
    // Published before the consumer starts: they wait, and arrive as one
    // batch of the only lane.
    broker.publish(&events).await.unwrap();
    let (things, others) = (RunRecorder::labelled("a"), RunRecorder::labelled("b"));
    let consumer = Consumer::new("watchers", "things", t.db.clone(), Arc::new(broker.clone()))
        .on("Thing", things.clone())
        .on("Other", others.clone())
        .with_options(one_lane())
        .start()
        .await
        .unwrap();
    settles(&consumer, |s| s.handled == 5).await;
    let order: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, consumer FROM seen ORDER BY seq")
            .fetch_all(t.db.pool())
            .await
            .unwrap();
    assert_eq!(
        order,
        vec![
            (0, "a".into()),
            (1, "a".into()),
            (2, "b".into()),
            (3, "a".into()),
            (4, "a".into())
        ]
    );
    assert_eq!(things.runs(), vec![2, 2]);
    assert_eq!(others.runs(), vec![1]);
    assert_eq!(things.inner.calls.load(Ordering::SeqCst), 4, "each once");
    consumer.shutdown().await;
}

/// A run that fails rolls its whole batch back; each event is then handled
/// on its own, so only the poisoned one is dead-lettered.
async fn a_failed_batch_is_handled_event_by_event(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::new();
    let poison = event("acme", "thing-2", 0, None);
    let events = vec![
        event("acme", "thing-1", 0, None),
        event("acme", "thing-1", 1, Some(0)),
        poison.clone(),
        event("acme", "thing-1", 2, Some(1)),
        event("acme", "thing-1", 3, Some(2)),
    ];
    broker.publish(&events).await.unwrap();
    let handler = RunRecorder::labelled("a");
    handler.poison.lock().unwrap().insert(poison.id);
    let consumer = watcher(&t, &broker, &handler).await;
    settles(&consumer, |s| s.handled == 4 && s.dead_lettered == 1).await;
    assert_eq!(handler.runs(), vec![5], "one batch, which failed");
    let rows = seen(&t.db).await;
    assert_eq!(
        rows.iter().map(|r| (r.1.as_str(), r.2)).collect::<Vec<_>>(),
        vec![
            ("thing-1", 0),
            ("thing-1", 1),
            ("thing-1", 2),
            ("thing-1", 3)
        ],
        "the failed batch's writes rolled back; each good event written once"
    );
    let dead = DeadLetters::open(t.db.clone())
        .await
        .unwrap()
        .list(&DeadLetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, poison.id.to_string());
    consumer.shutdown().await;
}

/// Events of a type no handler takes are counted as skipped, not handled,
/// and still move their stream's cursor: the next event of the stream does
/// not wait for them. Both paths: a batch, then a delivery on its own.
async fn events_no_handler_takes_are_skipped_in_order(t: TestDb) {
    seen_table(&t.db).await;
    let broker = MemoryBroker::new();
    broker
        .publish(&[
            event("acme", "thing-1", 0, None),
            typed(event("acme", "thing-1", 1, Some(0)), "Other"),
            event("acme", "thing-1", 2, Some(1)),
            typed(event("acme", "thing-1", 3, Some(2)), "Other"),
        ])
        .await
        .unwrap();
    let handler = RunRecorder::labelled("a");
    let consumer = watcher(&t, &broker, &handler).await;
    settles(&consumer, |s| s.handled == 2 && s.skipped == 2).await;
    assert_eq!(handler.runs(), vec![2], "one batch, its two Things at once");
    broker
        .publish(&[typed(event("acme", "thing-1", 4, Some(3)), "Other")])
        .await
        .unwrap();
    settles(&consumer, |s| s.skipped == 3).await;
    broker
        .publish(&[event("acme", "thing-1", 5, Some(4))])
        .await
        .unwrap();
    settles(&consumer, |s| s.handled == 3).await;
    let status = consumer.status();
    assert_eq!(
        (status.skipped, status.waited_for_order, status.duplicates),
        (3, 0, 0),
        "{status:?}"
    );
    let versions: Vec<i64> = seen(&t.db).await.iter().map(|r| r.2).collect();
    assert_eq!(versions, vec![0, 2, 5]);
    consumer.shutdown().await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(t) = TestDb::postgres().await {
                        super::$name(t).await;
                    }
                }
            )*
        }
    };
}

on_both!(
    exactly_once_under_redelivery,
    a_batch_with_the_same_event_twice_handles_it_once,
    order_is_kept_per_stream_across_competing_instances,
    poison_goes_to_dead_letters_and_replays,
    a_failed_replay_stays_a_dead_letter_and_drop_removes_it,
    a_batch_handler_takes_each_run_of_its_events_at_once,
    a_failed_batch_is_handled_event_by_event,
    events_no_handler_takes_are_skipped_in_order,
);
