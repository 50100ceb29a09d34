//! The writer's one-statement append: plain appends commit in one
//! statement, and every case it cannot judge falls back to the full path
//! with exactly the outcome the full path gives, nothing half-written.

mod common;

use cairn_core::{NewEvent, StreamId, TenantId};
use cairn_store::{EventStore, ExpectedVersion, ReadStream, StoreError};
use serde_json::json;

use common::{fresh_schema, options, store_with};

fn ev(n: u32) -> NewEvent {
    NewEvent::new("E", json!({ "n": n }))
}

#[tokio::test]
async fn plain_appends_take_one_statement() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let s = StreamId::new("s-1").unwrap();
    let first = store
        .append(&t, &s, ExpectedVersion::NoStream, vec![ev(1), ev(2)])
        .await
        .unwrap();
    assert_eq!((first.first_version, first.last_version), (0, 1));
    assert_eq!((first.first_position, first.last_position), (1, 2));
    let second = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![ev(3)])
        .await
        .unwrap();
    assert_eq!((second.first_version, second.first_position), (2, 3));
    assert_eq!(store.one_statement_commits(), 2);
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    let positions: Vec<u64> = read.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert_eq!(store.stream_info(&t, &s).await.unwrap().unwrap().version, 2);
    assert_eq!(*store.head().borrow(), 3);
}

#[tokio::test]
async fn what_it_cannot_judge_gets_the_full_paths_answer() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let s = StreamId::new("s-1").unwrap();
    let events = vec![ev(1), ev(2)];
    let stored = store
        .append(&t, &s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();

    // A resend of the same ids: the unique index stops the statement, the
    // full path replays the stored outcome.
    let replay = store
        .append(&t, &s, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(replay, stored);

    // A reused id with other content.
    let reused = NewEvent::new("E", json!({"other": true})).with_id(events[0].id);
    let err = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![reused])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::IdempotencyConflict { .. }),
        "{err:?}"
    );

    // A stale exact version and a stream that already exists.
    let err = store
        .append(&t, &s, ExpectedVersion::Exact(0), vec![ev(3)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(&t, &s, ExpectedVersion::NoStream, vec![ev(4)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "{err:?}"
    );

    // An exact version on a stream that does not exist.
    let err = store
        .append(
            &t,
            &StreamId::new("s-none").unwrap(),
            ExpectedVersion::Exact(0),
            vec![ev(5)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );

    // A deleted stream, even with the right version.
    store
        .delete_stream(&t, &s, ExpectedVersion::Exact(1))
        .await
        .unwrap();
    let err = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![ev(6)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamDeleted { .. }), "{err:?}");

    // Nothing of the refused appends was written, and the log has no hole.
    let all = store
        .read_all(0, &cairn_store::AllFilter::tenant(t.clone()), 100)
        .await
        .unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2]);
    assert_eq!(*store.head().borrow(), 2);
}

#[tokio::test]
async fn another_handles_write_is_never_overwritten() {
    let schema = fresh_schema();
    let Some(a) = store_with(options(&schema)).await else {
        return;
    };
    let b = store_with(options(&schema)).await.unwrap();
    let t = TenantId::new("acme").unwrap();
    let s = StreamId::new("s-1").unwrap();
    a.append(&t, &s, ExpectedVersion::NoStream, vec![ev(1)])
        .await
        .unwrap();
    b.append(&t, &s, ExpectedVersion::Exact(0), vec![ev(2)])
        .await
        .unwrap();
    // `a` still believes version 0 is current: the statement must refuse.
    let err = a
        .append(&t, &s, ExpectedVersion::Exact(0), vec![ev(3)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    // Positions continue from the other handle's commit.
    let next = a
        .append(&t, &s, ExpectedVersion::Exact(1), vec![ev(4)])
        .await
        .unwrap();
    assert_eq!((next.first_version, next.first_position), (2, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_handles_on_one_stream_have_one_winner_per_version() {
    let schema = fresh_schema();
    let Some(first) = store_with(options(&schema)).await else {
        return;
    };
    let mut handles = vec![first];
    for _ in 0..3 {
        handles.push(store_with(options(&schema)).await.unwrap());
    }
    let t = TenantId::new("acme").unwrap();
    let s = StreamId::new("race-1").unwrap();
    // Each round, every handle tries to append at the same expected version.
    for round in 0..10u64 {
        let expected = if round == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(round - 1)
        };
        let tries = handles.iter().map(|h| {
            let (h, t, s) = (h.clone(), t.clone(), s.clone());
            tokio::spawn(async move { h.append(&t, &s, expected, vec![ev(0)]).await })
        });
        let results: Vec<_> = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, StoreError::WrongExpectedVersion { .. }),
                "{r:?}"
            );
        }
    }
    let events = handles[0]
        .read_stream(&t, &s, ReadStream::all())
        .await
        .unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..10).collect::<Vec<_>>());
}

/// The writer keeps its connection for the one-statement append from one
/// batch to the next; when the server ends that connection, the next append
/// still succeeds (the statement fails, the full path takes the batch on a
/// fresh connection) and the one after is one statement again.
#[tokio::test]
async fn the_writer_outlives_its_connection() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let s = StreamId::new("s-1").unwrap();
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![ev(1)])
        .await
        .unwrap();
    // Every idle writer connection of this database, this store's among
    // them (other tests' writers take the same way back).
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'idle' AND pid <> pg_backend_pid()
           AND query LIKE '%UPDATE log_head SET position = position + $1%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(killed >= 1, "the writer's connection was found");
    let before = store.one_statement_commits();
    let second = store
        .append(&t, &s, ExpectedVersion::Exact(0), vec![ev(2)])
        .await
        .unwrap();
    assert_eq!((second.first_version, second.first_position), (1, 2));
    let third = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![ev(3)])
        .await
        .unwrap();
    assert_eq!((third.first_version, third.first_position), (2, 3));
    assert_eq!(store.one_statement_commits(), before + 1, "the third");
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    let positions: Vec<u64> = read.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
}
