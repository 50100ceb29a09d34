//! The in-process backend: consumers read a service's public events
//! straight from the log, in order, resuming from a durable checkpoint.

mod common;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use cairn_messaging::{Consumer, ConsumerOptions, LogBroker, PublicEvents};
use cairn_store::{EventStore, MemoryStore};
use common::*;

fn things() -> PublicEvents {
    PublicEvents::new("things", ["thing"], ["Thing", "Renamed"]).unwrap()
}

fn quick() -> ConsumerOptions {
    ConsumerOptions {
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ConsumerOptions::default()
    }
}

#[tokio::test]
async fn consumers_read_public_events_from_the_log_in_order_and_resume() {
    let t = TestDb::sqlite().await;
    seen_table(&t.db).await;
    let store = MemoryStore::new();
    let acme = tenant("acme");
    // thing-1: Thing, Secret (private), Thing; other-1 is another service's.
    append(&store, &acme, "thing-1", &["Thing", "Secret", "Thing"]).await;
    append(&store, &acme, "other-1", &["Thing"]).await;
    append(&store, &acme, "thing-2", &["Thing"]).await;
    let recorder = Recorder {
        label: "a",
        ..Recorder::default()
    };
    // The first event fails twice: its successor in the stream must wait.
    recorder.fail_first.store(2, Ordering::SeqCst);
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    let broker = Arc::new(LogBroker::new(store.clone(), t.db.clone(), vec![things()]));
    let consumer = Consumer::new("watchers", "things", t.db.clone(), broker.clone())
        .on("Thing", recorder.clone())
        .with_options(quick())
        .start()
        .await
        .unwrap();
    assert!(consumer.wait_until(PATIENCE, |s| s.handled == 3).await);
    let rows = seen(&t.db).await;
    let thing1: Vec<i64> = rows
        .iter()
        .filter(|r| r.1 == "thing-1")
        .map(|r| r.2)
        .collect();
    assert_eq!(
        thing1,
        vec![0, 2],
        "in order despite the retries; private skipped"
    );
    assert!(
        rows.iter().all(|r| r.1 != "other-1"),
        "only the source's events"
    );
    // Let the checkpoint be written, then stop.
    tokio::time::sleep(Duration::from_millis(600)).await;
    consumer.shutdown().await;

    // More events while stopped; a new process resumes after the checkpoint.
    store
        .append(
            &acme,
            &cairn_core::StreamId::new("thing-1").unwrap(),
            cairn_store::ExpectedVersion::Any,
            vec![cairn_core::NewEvent::new("Thing", serde_json::json!({}))],
        )
        .await
        .unwrap();
    let broker = Arc::new(LogBroker::new(
        store.clone(),
        t.reopen().await,
        vec![things()],
    ));
    let consumer = Consumer::new("watchers", "things", t.reopen().await, broker)
        .on("Thing", recorder.clone())
        .with_options(quick())
        .start()
        .await
        .unwrap();
    assert!(consumer.wait_until(PATIENCE, |s| s.handled == 1).await);
    let status = consumer.status();
    assert_eq!(status.duplicates, 0, "settled events are not read again");
    let thing1: Vec<i64> = seen(&t.db)
        .await
        .iter()
        .filter(|r| r.1 == "thing-1")
        .map(|r| r.2)
        .collect();
    assert_eq!(thing1, vec![0, 2, 3]);
    consumer.shutdown().await;
}

#[tokio::test]
async fn a_group_of_an_unknown_source_is_refused() {
    let t = TestDb::sqlite().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let broker = Arc::new(LogBroker::new(store, t.db.clone(), vec![things()]));
    let err = Consumer::new("watchers", "nobody", t.db.clone(), broker)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
}

#[tokio::test]
async fn a_log_that_cannot_be_read_for_a_while_is_followed_again() {
    let t = TestDb::sqlite().await;
    seen_table(&t.db).await;
    let flaky = cairn_store::testkit::FlakyStore::new();
    let store: Arc<dyn EventStore> = Arc::new(flaky.clone());
    let acme = tenant("acme");
    let broker = Arc::new(LogBroker::new(store.clone(), t.db.clone(), vec![things()]));
    let consumer = Consumer::new("watchers", "things", t.db.clone(), broker)
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
    let append = |stream: &'static str| {
        let store = store.clone();
        let acme = acme.clone();
        async move {
            store
                .append(
                    &acme,
                    &cairn_core::StreamId::new(stream).unwrap(),
                    cairn_store::ExpectedVersion::Any,
                    vec![cairn_core::NewEvent::new("Thing", serde_json::json!({}))],
                )
                .await
                .unwrap();
        }
    };
    append("thing-1").await;
    assert!(consumer.wait_until(PATIENCE, |s| s.handled == 1).await);

    // The log cannot be read; an event written meanwhile arrives once it can.
    flaky.down.store(true, Ordering::SeqCst);
    append("thing-2").await;
    while flaky.failed_reads.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flaky.down.store(false, Ordering::SeqCst);
    assert!(
        consumer.wait_until(PATIENCE, |s| s.handled == 2).await,
        "{:?}",
        consumer.status()
    );
    let streams: Vec<String> = seen(&t.db).await.into_iter().map(|r| r.1).collect();
    assert_eq!(streams, ["thing-1", "thing-2"]);
    consumer.shutdown().await;
}
