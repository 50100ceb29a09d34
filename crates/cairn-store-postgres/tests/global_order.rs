//! Proof that `$all` on PostgreSQL is gap-safe: a subscriber never skips an
//! event that committed late.
//!
//! The first test shows the hazard is real: with positions from a sequence,
//! a reader that checkpoints by position skips a transaction that took a
//! lower position but committed later. The others run the same situation,
//! and then many slow concurrent writers, through Cairn.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use cairn_core::{NewEvent, StreamId, TenantId};
use cairn_store::{AllFilter, EventStore, ExpectedVersion};
use futures_util::StreamExt;
use serde_json::json;
use sqlx::Executor;

use common::{fresh_schema, options, store_with, url};

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_sequence_positions_let_a_reader_skip_a_late_commit() {
    // Only to have the skip-when-absent behaviour of the other tests.
    if store_with(options(&fresh_schema())).await.is_none() {
        return;
    }
    let pool = sqlx::PgPool::connect(&url()).await.unwrap();
    let schema = fresh_schema();
    pool.execute(format!("CREATE SCHEMA {schema}; CREATE TABLE {schema}.naive (position bigserial PRIMARY KEY, body text)").as_str())
        .await
        .unwrap();
    let mut slow = pool.begin().await.unwrap();
    let slow_position: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {schema}.naive (body) VALUES ('slow') RETURNING position"
    ))
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    let fast_position: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {schema}.naive (body) VALUES ('fast') RETURNING position"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(slow_position < fast_position);
    let read = |after: i64| {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT position FROM {schema}.naive WHERE position > $1 ORDER BY position"
            ))
            .bind(after)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let first = read(0).await;
    assert_eq!(
        first,
        vec![fast_position],
        "the reader sees only the committed later position"
    );
    slow.commit().await.unwrap();
    let second = read(*first.last().unwrap()).await;
    assert!(
        second.is_empty(),
        "checkpointing past the gap skips the late commit for good"
    );
    let _ = pool
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_transaction_holds_back_later_positions_until_it_commits() {
    // `Any` goes through the writer's full path (lock, load, write, commit).
    slow_transaction_holds_back(ExpectedVersion::Any).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_one_statement_append_holds_back_later_positions_until_it_commits() {
    // `NoStream` on a fresh stream goes through the one-statement append.
    slow_transaction_holds_back(ExpectedVersion::NoStream).await;
}

async fn slow_transaction_holds_back(expected: ExpectedVersion) {
    let schema = fresh_schema();
    let Some(reader) = store_with(options(&schema)).await else {
        return;
    };
    let mut slow_options = options(&schema);
    slow_options.pause_in_transaction =
        Some(Duration::from_millis(600)..Duration::from_millis(601));
    let slow = store_with(slow_options).await.unwrap();
    let fast = store_with(options(&schema)).await.unwrap();

    let t = tenant();
    let slow_append = {
        let (t, slow) = (t.clone(), slow.clone());
        tokio::spawn(async move {
            slow.append(
                &t,
                &StreamId::new("slow-1").unwrap(),
                expected,
                vec![NewEvent::new("Slow", json!({}))],
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fast_append = {
        let (t, fast) = (t.clone(), fast.clone());
        tokio::spawn(async move {
            fast.append(
                &t,
                &StreamId::new("fast-1").unwrap(),
                expected,
                vec![NewEvent::new("Fast", json!({}))],
            )
            .await
            .unwrap()
        })
    };
    // While the slow transaction is open, a reader must never see the fast
    // event without the slow one before it.
    let mut polls = 0;
    loop {
        let seen = reader
            .read_all(0, &AllFilter::tenant(t.clone()), 10)
            .await
            .unwrap();
        let types: Vec<_> = seen.iter().map(|e| e.event_type.as_str()).collect();
        assert!(types.is_empty() || types[0] == "Slow", "saw {types:?}");
        polls += 1;
        if types.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        polls > 5,
        "the reader should have polled while the slow transaction was open"
    );
    let (slow_out, fast_out) = (slow_append.await.unwrap(), fast_append.await.unwrap());
    assert!(slow_out.last_position < fast_out.first_position);
    let one_statement = slow.one_statement_commits() + fast.one_statement_commits();
    match expected {
        ExpectedVersion::Any => assert_eq!(one_statement, 0),
        _ => assert_eq!(one_statement, 2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_slow_concurrent_writers_and_subscribers_see_every_event_once_in_order() {
    const HANDLES: usize = 8;
    const TASKS_PER_HANDLE: usize = 4;
    const APPENDS_PER_TASK: usize = 20;
    let schema = fresh_schema();
    let Some(reader) = store_with(options(&schema)).await else {
        return;
    };
    let t = tenant();

    // Subscribers first, on their own handles, from the start.
    let mut subscribers = Vec::new();
    for _ in 0..4 {
        let handle = store_with(options(&schema)).await.unwrap();
        subscribers.push(handle.subscribe_all(0, AllFilter::tenant(t.clone())));
    }

    // Writers: separate handles (as separate processes would be), each
    // pausing a random time inside every transaction.
    let mut writers = Vec::new();
    let mut stores = Vec::new();
    for h in 0..HANDLES {
        let mut o = options(&schema);
        o.pause_in_transaction = Some(Duration::ZERO..Duration::from_millis(15));
        let store = Arc::new(store_with(o).await.unwrap());
        stores.push(store.clone());
        for task in 0..TASKS_PER_HANDLE {
            let (store, t) = (store.clone(), t.clone());
            writers.push(tokio::spawn(async move {
                let mut written = 0;
                // The tasks of even handles share streams and append with
                // `Any` (the writer's full path); those of odd handles each
                // own a stream and append with exact versions (the
                // one-statement append). By handle, not by task: a batch
                // mixing both kinds takes the full path, so mixing them on
                // one handle could, under load, leave the fast path unused.
                let mut version: Option<u64> = None;
                for i in 0..APPENDS_PER_TASK {
                    let (stream, expected) = if h % 2 == 0 {
                        (format!("w{h}-{}", i % 3), ExpectedVersion::Any)
                    } else {
                        let expected =
                            version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                        (format!("x{h}-{task}"), expected)
                    };
                    let stream = StreamId::new(stream).unwrap();
                    let size = 1 + (i + task) % 3;
                    let events = (0..size)
                        .map(|k| NewEvent::new("W", json!({"h": h, "t": task, "i": i, "k": k})))
                        .collect();
                    let outcome = store.append(&t, &stream, expected, events).await.unwrap();
                    version = Some(outcome.last_version);
                    written += size;
                }
                written
            }));
        }
    }
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }

    let one_statement: u64 = stores.iter().map(|s| s.one_statement_commits()).sum();
    let all: u64 = stores.iter().map(|s| s.commits()).sum();
    assert!(
        one_statement > 0 && one_statement < all,
        "both write paths must run: {one_statement} of {all} commits took one statement"
    );

    let log = reader
        .read_all(0, &AllFilter::tenant(t.clone()), usize::MAX)
        .await
        .unwrap();
    assert_eq!(log.len(), total);
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect::<Vec<_>>(),
        "positions are dense"
    );

    for (n, mut sub) in subscribers.into_iter().enumerate() {
        let mut seen = Vec::with_capacity(total);
        let mut ids = HashSet::with_capacity(total);
        while seen.len() < total {
            let e = tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .unwrap_or_else(|_| panic!("subscriber {n} stalled after {} events", seen.len()))
                .unwrap()
                .unwrap();
            assert!(ids.insert(e.id), "subscriber {n} got {} twice", e.id);
            if let Some(prev) = seen.last() {
                let prev: &cairn_core::RecordedEvent = prev;
                assert!(e.position > prev.position, "subscriber {n} went backwards");
            }
            seen.push(e);
        }
        assert_eq!(seen, log, "subscriber {n} must see exactly the log");
    }
}
