//! Group commit on PostgreSQL: appends that arrive together share one
//! transaction, and each is still judged on its own.

mod common;

use cairn_core::{NewEvent, StreamId, TenantId};
use cairn_store::{EventStore, ExpectedVersion, StoreError};
use futures_util::future::join_all;
use serde_json::json;

use common::{fresh_schema, options, store_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let before = store.commits();
    let appends = (0..64).map(|i| {
        let (store, t) = (store.clone(), t.clone());
        async move {
            store
                .append(
                    &t,
                    &StreamId::new(format!("s-{i}")).unwrap(),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("E", json!({"i": i}))],
                )
                .await
        }
    });
    let results = join_all(appends).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let commits = store.commits() - before;
    assert!(
        commits < 64,
        "64 concurrent appends took {commits} transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_in_a_group_does_not_fail_the_others() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let taken = NewEvent::new("E", json!({"n": 1}));
    store
        .append(
            &t,
            &StreamId::new("base-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![taken.clone()],
        )
        .await
        .unwrap();
    let reused = NewEvent::new("E", json!({"n": 2})).with_id(taken.id);
    let base = StreamId::new("base-1").unwrap();
    for round in 0..20 {
        let before = store.commits();
        let store_ref = &store;
        let t_ref = &t;
        let good = (0..10).map(|i| async move {
            store_ref
                .append(
                    t_ref,
                    &StreamId::new(format!("good-{round}-{i}")).unwrap(),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("E", json!({}))],
                )
                .await
        });
        let stale = store_ref.append(
            t_ref,
            &base,
            ExpectedVersion::Exact(7),
            vec![NewEvent::new("E", json!({}))],
        );
        let conflict = store_ref.append(t_ref, &base, ExpectedVersion::Any, vec![reused.clone()]);
        let (good, stale, conflict) = tokio::join!(join_all(good), stale, conflict);
        assert!(good.iter().all(Result::is_ok), "round {round}: {good:?}");
        assert!(
            matches!(stale, Err(StoreError::WrongExpectedVersion { .. })),
            "{stale:?}"
        );
        assert!(
            matches!(conflict, Err(StoreError::IdempotencyConflict { .. })),
            "{conflict:?}"
        );
        assert!(
            store.commits() - before < 12,
            "round {round}: requests did not share transactions"
        );
    }
    let info = store
        .stream_info(&t, &StreamId::new("base-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnecting_keeps_data_and_migrations_are_idempotent() {
    let schema = fresh_schema();
    let Some(first) = store_with(options(&schema)).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let s = StreamId::new("s-1").unwrap();
    first
        .append(
            &t,
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("E", json!({}))],
        )
        .await
        .unwrap();
    // Several handles connecting at once apply migrations exactly once.
    let handles = join_all((0..4).map(|_| store_with(options(&schema)))).await;
    for h in handles {
        let h = h.unwrap();
        assert_eq!(*h.head().borrow(), 1);
        assert_eq!(h.stream_info(&t, &s).await.unwrap().unwrap().version, 0);
    }
    let applied: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM cairn_migrations ORDER BY version")
            .fetch_all(first.pool())
            .await
            .unwrap();
    assert_eq!(applied, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn bad_options_are_rejected() {
    for schema in ["", "Bad", "1abc", "a-b", &"a".repeat(49)] {
        let o = cairn_store_postgres::PostgresOptions {
            schema: schema.into(),
            ..Default::default()
        };
        let err = cairn_store_postgres::PostgresStore::connect_with("postgres://127.0.0.1:1/x", o)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{schema}: {err:?}");
    }
    let err = cairn_store_postgres::PostgresStore::connect("mysql://x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

/// Stream ids travel to the server inside a dollar-quoted JSON literal on
/// the write path; ids built to break out of it must be stored and found
/// like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_stream_ids_are_plain_data() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    let t = TenantId::new("acme").unwrap();
    let hostile = [
        "x-$k$; DROP TABLE events; --",
        "x-$kk$'\"\\",
        "x-'); DELETE FROM streams; --",
        "x-\\\"]]}",
        "x-$$ $k $",
    ];
    for (i, name) in hostile.iter().enumerate() {
        let s = StreamId::new(name).unwrap();
        let e = NewEvent::new("E", json!({"i": i, "name": name}));
        let first = store
            .append(&t, &s, ExpectedVersion::NoStream, vec![e.clone()])
            .await
            .unwrap();
        let again = store
            .append(&t, &s, ExpectedVersion::NoStream, vec![e])
            .await
            .unwrap();
        assert_eq!(first, again, "{name}: resend must be recognised");
        let err = store
            .append(
                &t,
                &s,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("E", json!({}))],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::WrongExpectedVersion { .. }),
            "{name}: {err:?}"
        );
        let info = store.stream_info(&t, &s).await.unwrap().unwrap();
        assert_eq!(info.stream.as_str(), *name);
    }
    let streams = store.list_streams(&t, None, 100).await.unwrap();
    assert_eq!(streams.len(), hostile.len());
}
