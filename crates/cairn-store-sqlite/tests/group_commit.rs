//! Group commit, reopening, and several handles on one file.

use std::{collections::HashSet, time::Duration};

use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{AllFilter, AppendOutcome, EventStore, ExpectedVersion, ReadStream, StoreError};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use futures_util::{StreamExt, future::join_all};
use serde_json::json;

mod common;

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn stream(name: impl AsRef<str>) -> StreamId {
    StreamId::new(name).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("E", json!({ "n": n }))
}

async fn all(store: &SqliteStore) -> Vec<RecordedEvent> {
    store
        .read_all(0, &AllFilter::all_tenants(), usize::MAX)
        .await
        .unwrap()
}

fn assert_dense(events: &[RecordedEvent]) {
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(positions, expected, "positions are dense from 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions() {
    let (_dir, path) = common::temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let t = tenant();
    let streams: Vec<_> = (0..64).map(|i| stream(format!("group-{i}"))).collect();
    let before = store.commits();
    let outcomes = join_all(
        streams
            .iter()
            .map(|s| store.append(&t, s, ExpectedVersion::NoStream, vec![event(0)])),
    )
    .await;
    let used = store.commits() - before;
    let positions: HashSet<u64> = outcomes
        .into_iter()
        .map(|o| o.expect("every append succeeds").first_position)
        .collect();
    assert_eq!(positions, (1..=64).collect());
    eprintln!("64 concurrent appends committed in {used} transactions");
    assert!(used <= 16, "64 concurrent appends took {used} transactions");
    assert_dense(&all(&store).await);
}

/// While another connection holds the write lock, requests pile up in the
/// writer's queue; once it is released they are committed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_mixes_successes_and_typed_failures() {
    let (_dir, path) = common::temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let t = tenant();
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.busy_timeout(Duration::from_secs(5)).unwrap();

    for round in 0..5 {
        let stored = event(1000 + round);
        let first = store
            .append(
                &t,
                &stream(format!("stored-{round}")),
                ExpectedVersion::NoStream,
                vec![stored.clone()],
            )
            .await
            .unwrap();

        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        // The plug is taken by the writer, which then waits for the lock
        // with it; everything sent afterwards queues behind it.
        let plug = {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                store
                    .append(
                        &t,
                        &stream(format!("plug-{round}")),
                        ExpectedVersion::Any,
                        vec![event(0)],
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = store.commits();

        let conflicting = NewEvent::new("E", json!({ "other": round })).with_id(stored.id);
        let seq = stream(format!("seq-{round}"));
        let requests: Vec<(StreamId, ExpectedVersion, Vec<NewEvent>)> = vec![
            (
                stream(format!("ok-a-{round}")),
                ExpectedVersion::NoStream,
                vec![event(1), event(2)],
            ),
            (
                stream(format!("missing-{round}")),
                ExpectedVersion::Exact(7),
                vec![event(3)],
            ),
            (
                stream(format!("stored-{round}")),
                ExpectedVersion::Any,
                vec![conflicting],
            ),
            (seq.clone(), ExpectedVersion::NoStream, vec![event(4)]),
            // Judged against the previous request's uncommitted write.
            (seq.clone(), ExpectedVersion::Exact(0), vec![event(5)]),
            (seq.clone(), ExpectedVersion::NoStream, vec![event(6)]),
            (
                stream(format!("stored-{round}")),
                ExpectedVersion::NoStream,
                vec![stored.clone()],
            ),
            (
                stream(format!("ok-b-{round}")),
                ExpectedVersion::NoStream,
                vec![event(7)],
            ),
        ];
        let mixed =
            {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move {
                    join_all(requests.iter().map(|(s, expected, events)| {
                        store.append(&t, s, *expected, events.clone())
                    }))
                    .await
                })
            };
        tokio::time::sleep(Duration::from_millis(100)).await;
        blocker.execute_batch("COMMIT").unwrap();

        plug.await.unwrap().unwrap();
        let results: Vec<Result<AppendOutcome, StoreError>> = mixed.await.unwrap();
        let used = store.commits() - before;
        assert_eq!(
            used, 2,
            "round {round}: the plug, then all eight requests together"
        );

        let mut it = results.into_iter();
        let mut next = || it.next().unwrap();
        let ok_a = next().unwrap();
        assert_eq!((ok_a.first_version, ok_a.last_version), (0, 1));
        assert!(matches!(
            next(),
            Err(StoreError::WrongExpectedVersion {
                actual: None,
                expected: ExpectedVersion::Exact(7),
                ..
            })
        ));
        assert!(matches!(
            next(),
            Err(StoreError::IdempotencyConflict { event_id, .. }) if event_id == stored.id
        ));
        assert_eq!(next().unwrap().last_version, 0);
        assert_eq!(next().unwrap().last_version, 1);
        assert!(matches!(
            next(),
            Err(StoreError::WrongExpectedVersion {
                actual: Some(1),
                ..
            })
        ));
        assert_eq!(
            next().unwrap(),
            first,
            "a resend replays the stored outcome"
        );
        let ok_b = next().unwrap();
        // Positions inside the group are dense: 2 + 1 + 1 events before it.
        assert_eq!(ok_b.first_position, ok_a.first_position + 4);
    }
    let log = all(&store).await;
    assert_dense(&log);
    assert_eq!(log.len(), 5 * (1 + 1 + 5));
    assert!(
        store
            .stream_info(&t, &stream("missing-0"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_data_and_migrates_once() {
    let (_dir, path) = common::temp_db();
    // Two openers racing on a new file: one migrates, the other finds it done.
    let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b) = (a.unwrap(), b.unwrap());
    let t = tenant();
    let s = stream("keep-1");
    a.append(&t, &s, ExpectedVersion::NoStream, vec![event(0), event(1)])
        .await
        .unwrap();
    drop((a, b));

    let options = SqliteOptions {
        synchronous_full: false,
        max_batch: 1,
        readers: 1,
    };
    let store = SqliteStore::open_with(&path, options).await.unwrap();
    assert_eq!(*store.head().borrow(), 2, "head starts at the log's end");
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert_eq!(read.len(), 2);
    let out = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .unwrap();
    assert_eq!((out.last_version, out.last_position), (2, 3));
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<(i64, String)> = conn
        .prepare("SELECT version, name FROM cairn_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![(1, "initial".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_see_each_other_in_order() {
    let (_dir, path) = common::temp_db();
    // As two processes would: each has its own writer thread and connections.
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let t = tenant();
    let s = stream("shared-1");
    let mut sub = b.subscribe_all(0, AllFilter::tenant(t.clone()));

    // Taking turns on one stream: each sees the other's last version.
    let mut expected = ExpectedVersion::NoStream;
    for i in 0..20u64 {
        let store = if i % 2 == 0 { &a } else { &b };
        let out = store
            .append(&t, &s, expected, vec![event(i)])
            .await
            .unwrap();
        assert_eq!((out.last_version, out.last_position), (i, i + 1));
        expected = ExpectedVersion::Exact(i);
    }
    // Both at once: versions and positions stay dense.
    let writes = (0..40u64).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (t, s) = (t.clone(), s.clone());
        async move {
            store
                .append(&t, &s, ExpectedVersion::Any, vec![event(100 + i)])
                .await
        }
    });
    for out in join_all(writes).await {
        out.unwrap();
    }
    let from_a = all(&a).await;
    let from_b = all(&b).await;
    assert_eq!(from_a, from_b);
    assert_dense(&from_a);
    let stream_a = a.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert!(stream_a.iter().zip(0u64..).all(|(e, v)| e.version == v));
    assert_eq!(stream_a.len(), 60);
    assert_eq!(
        stream_a,
        b.read_stream(&t, &s, ReadStream::all()).await.unwrap()
    );

    // b's subscription sees a's events too, in order, exactly once.
    let mut seen = Vec::new();
    while seen.len() < 60 {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("subscription stalled")
            .unwrap()
            .unwrap();
        seen.push(e);
    }
    assert_eq!(seen, from_a);
}
