//! A saga reacting to integration events through a consumer: each event
//! routed to its saga instance, a redelivered event changing nothing.

mod common;

use std::{sync::Arc, time::Duration};

use cairn_core::{EventId, RecordedEvent, StreamId};
use cairn_messaging::{Broker, Consumer, ConsumerOptions, IntegrationEvent, MemoryBroker};
use cairn_saga::{SagaEvents, SagaRunner};
use cairn_store::{EventStore, MemoryStore};
use common::*;

const LONG: Duration = Duration::from_secs(600);

fn requested(transfer: &str, version: u64) -> IntegrationEvent {
    let recorded = RecordedEvent {
        id: EventId::new(),
        tenant: tenant(),
        stream: StreamId::new(format!("order-{transfer}")).unwrap(),
        version,
        position: version + 1,
        event_type: if version == 0 {
            "PaymentRequested"
        } else {
            "Noted"
        }
        .into(),
        schema_version: 1,
        data: serde_json::json!({ "transfer": transfer }),
        metadata: Default::default(),
        recorded_at: chrono::Utc::now(),
    };
    IntegrationEvent::from_recorded("orders", &recorded, version.checked_sub(1))
}

async fn reacting_to_events_starts_each_saga_once(t: TestDb) {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let bank = Bank::new();
    // The runner's deadlines in a database of their own: on SQLite the
    // consumer's transaction holds the file's one write lock while the
    // handler runs (see SagaEvents).
    let saga_db = cairn_service_db::ServiceDb::ephemeral().await.unwrap();
    let runner = Arc::new(SagaRunner::new(
        store.clone(),
        saga_db,
        bank.clone(),
        options(),
    ));
    let events = SagaEvents::new(runner.clone(), |event| {
        let transfer = event.data["transfer"].as_str()?;
        Some((format!("t-{transfer}"), start(LONG, LONG)))
    });
    // No dedupe on the broker: a re-sent event is delivered again.
    let broker = MemoryBroker::without_dedupe();
    let consumer = Consumer::new("payments", "orders", t.db.clone(), Arc::new(broker.clone()))
        .on("PaymentRequested", events)
        .with_options(ConsumerOptions {
            backoff: Duration::from_millis(10),
            ..ConsumerOptions::default()
        })
        .start()
        .await
        .unwrap();
    let (a, b) = (requested("a", 0), requested("b", 0));
    broker
        .publish(&[a.clone(), b.clone(), requested("a", 1)])
        .await
        .unwrap();
    broker.publish(&[a]).await.unwrap();
    assert!(
        consumer
            .wait_until(Duration::from_secs(30), |s| s.handled == 2
                && s.skipped == 1
                && s.duplicates == 1)
            .await,
        "{:?}",
        consumer.status()
    );
    for id in ["t-a", "t-b"] {
        let state = runner.load(&tenant(), id).await.unwrap();
        assert_eq!(state.status, Status::Completed, "{id}");
        let types: Vec<_> = events_of(store.as_ref(), id)
            .await
            .iter()
            .map(|e| e.event_type.clone())
            .collect();
        assert_eq!(
            types,
            ["TransferStarted", "Debited", "TransferCompleted"],
            "{id}"
        );
    }
    assert_eq!(
        bank.sent().len(),
        4,
        "a debit and a credit per transfer, once"
    );
    consumer.shutdown().await;
}

on_both_backends!(reacting_to_events_starts_each_saga_once);
