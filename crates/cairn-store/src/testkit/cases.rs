//! The conformance cases. Each reads as a specification: given a store in some
//! state, when an operation runs, then this outcome and nothing else.

use std::{collections::HashSet, sync::Arc, time::Duration};

use cairn_core::{EventId, Metadata, NewEvent, RecordedEvent, StreamId};
use futures_util::StreamExt;
use serde_json::json;

use super::{StoreHandle, event, stream, tenant};
use crate::{AllFilter, ExpectedVersion, ReadStream, Snapshot, StoreError};

const WAIT: Duration = Duration::from_secs(30);

async fn all_events(store: &StoreHandle) -> Vec<RecordedEvent> {
    store
        .read_all(0, &AllFilter::all_tenants(), usize::MAX)
        .await
        .unwrap()
}

async fn head(store: &StoreHandle) -> u64 {
    all_events(store).await.last().map_or(0, |e| e.position)
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

pub async fn append_creates_stream_with_versions_from_zero(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("flight-1"));
    let out = store
        .append(
            &t,
            &s,
            ExpectedVersion::NoStream,
            vec![event("A", 0), event("B", 1)],
        )
        .await
        .unwrap();
    assert_eq!((out.first_version, out.last_version), (0, 1));
    assert!(out.first_position >= 1);
    assert_eq!(out.last_position, out.first_position + 1);
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert_eq!(versions(&read), vec![0, 1]);
    assert_eq!(read[0].event_type, "A");
    assert_eq!(read[1].data, json!({"n": 1}));
    assert_eq!(read[0].tenant, t);
    assert_eq!(read[0].stream, s);
    assert_eq!(read[0].position, out.first_position);
    let out2 = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![event("C", 2)])
        .await
        .unwrap();
    assert_eq!((out2.first_version, out2.last_version), (2, 2));
    assert!(out2.first_position > out.last_position);
}

pub async fn expected_no_stream(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![event("A", 0)])
        .await
        .unwrap();
    let err = store
        .append(&t, &s, ExpectedVersion::NoStream, vec![event("A", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: Some(0),
                expected: ExpectedVersion::NoStream,
                ..
            }
        ),
        "{err:?}"
    );
}

pub async fn expected_stream_exists(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let err = store
        .append(&t, &s, ExpectedVersion::StreamExists, vec![event("A", 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );
    assert!(store.stream_info(&t, &s).await.unwrap().is_none());
    store
        .append(&t, &s, ExpectedVersion::Any, vec![event("A", 0)])
        .await
        .unwrap();
    let out = store
        .append(&t, &s, ExpectedVersion::StreamExists, vec![event("A", 1)])
        .await
        .unwrap();
    assert_eq!(out.last_version, 1);
}

pub async fn expected_exact(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let err = store
        .append(&t, &s, ExpectedVersion::Exact(0), vec![event("A", 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );
    store
        .append(
            &t,
            &s,
            ExpectedVersion::NoStream,
            vec![event("A", 0), event("A", 1)],
        )
        .await
        .unwrap();
    for stale in [0, 2, 7] {
        let err = store
            .append(&t, &s, ExpectedVersion::Exact(stale), vec![event("A", 9)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::WrongExpectedVersion { actual: Some(1), expected: ExpectedVersion::Exact(v), .. } if v == stale),
            "{err:?}"
        );
        assert_eq!(err.code(), cairn_core::ErrorCode::WrongExpectedVersion);
    }
    let out = store
        .append(&t, &s, ExpectedVersion::Exact(1), vec![event("A", 2)])
        .await
        .unwrap();
    assert_eq!(out.last_version, 2);
}

pub async fn expected_any(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    for i in 0..3 {
        let out = store
            .append(&t, &s, ExpectedVersion::Any, vec![event("A", i)])
            .await
            .unwrap();
        assert_eq!(out.last_version, i);
    }
}

pub async fn wrong_expected_version_writes_nothing(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![event("A", 0)])
        .await
        .unwrap();
    let before = all_events(&store).await;
    let bad = vec![event("A", 1), event("A", 2)];
    let ids: Vec<_> = bad.iter().map(|e| e.id).collect();
    store
        .append(&t, &s, ExpectedVersion::Exact(5), bad)
        .await
        .unwrap_err();
    assert_eq!(all_events(&store).await, before);
    // The rejected ids were not consumed: they can be used now.
    let retry = vec![event("A", 1).with_id(ids[0]), event("A", 2).with_id(ids[1])];
    let out = store
        .append(&t, &s, ExpectedVersion::Exact(0), retry)
        .await
        .unwrap();
    assert_eq!(out.last_version, 2);
}

pub async fn idempotent_resend_returns_first_result(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("order-1"));
    let batch = vec![event("A", 0), event("B", 1), event("C", 2)];
    let first = store
        .append(&t, &s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let after_first = all_events(&store).await;
    // Same ids, same content: the stored result, whatever the expectation.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::Exact(0),
    ] {
        let again = store.append(&t, &s, expected, batch.clone()).await.unwrap();
        assert_eq!(again, first, "resend with {expected}");
    }
    // Even after the stream moved on.
    store
        .append(&t, &s, ExpectedVersion::Exact(2), vec![event("D", 3)])
        .await
        .unwrap();
    let again = store
        .append(&t, &s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    // A resend of a contiguous part returns that part's result.
    let tail = store
        .append(&t, &s, ExpectedVersion::Any, batch[1..].to_vec())
        .await
        .unwrap();
    assert_eq!((tail.first_version, tail.last_version), (1, 2));
    assert_eq!(all_events(&store).await.len(), after_first.len() + 1);
    assert_eq!(store.stream_info(&t, &s).await.unwrap().unwrap().version, 3);
}

pub async fn idempotency_conflicts_are_typed_and_write_nothing(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("order-1"));
    let e = event("A", 0);
    store
        .append(&t, &s, ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    let before = all_events(&store).await;

    let other_content = NewEvent::new("A", json!({"n": 99})).with_id(e.id);
    let other_type = NewEvent::new("Z", json!({"n": 0})).with_id(e.id);
    let other_stream = e.clone();
    let mixed = vec![e.clone(), event("A", 1)];
    for (case, target, events) in [
        ("other content", &s, vec![other_content]),
        ("other type", &s, vec![other_type]),
        ("other stream", &stream("order-2"), vec![other_stream]),
        ("mixed stored and new ids", &s, mixed),
    ] {
        let err = store
            .append(&t, target, ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::IdempotencyConflict { event_id, .. } if *event_id == e.id || case == "mixed stored and new ids"),
            "{case}: {err:?}"
        );
        assert_eq!(
            err.code(),
            cairn_core::ErrorCode::IdempotencyConflict,
            "{case}"
        );
    }
    assert_eq!(all_events(&store).await, before);
    assert!(
        store
            .stream_info(&t, &stream("order-2"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn event_ids_are_scoped_to_tenants(store: StoreHandle) {
    let s = stream("order-1");
    let e = event("A", 0);
    let a = store
        .append(&tenant("a"), &s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let b = store
        .append(&tenant("b"), &s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    assert_ne!(a.first_position, b.first_position);
    assert_eq!(all_events(&store).await.len(), 2);
}

pub async fn one_winner_race_on_exact_version(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("race-1"));
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![event("A", 0)])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (store, t, s) = (store.clone(), t.clone(), s.clone());
            tokio::spawn(async move {
                store
                    .append(&t, &s, ExpectedVersion::Exact(0), vec![event("R", i)])
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(out) => {
                winners += 1;
                assert_eq!(out.last_version, 1);
            }
            Err(StoreError::WrongExpectedVersion {
                actual: Some(1), ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(
        store
            .read_stream(&t, &s, ReadStream::all())
            .await
            .unwrap()
            .len(),
        2
    );
}

pub async fn one_winner_race_on_no_stream(store: StoreHandle) {
    let t = tenant("acme");
    let s = stream("race-new");
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (store, t, s) = (store.clone(), t.clone(), s.clone());
            tokio::spawn(async move {
                store
                    .append(&t, &s, ExpectedVersion::NoStream, vec![event("R", i)])
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StoreError::WrongExpectedVersion { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(
        store
            .read_stream(&t, &s, ReadStream::all())
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn concurrent_any_appends_keep_versions_dense(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("busy-1"));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (store, t, s) = (store.clone(), t.clone(), s.clone());
            tokio::spawn(async move {
                store
                    .append(
                        &t,
                        &s,
                        ExpectedVersion::Any,
                        vec![event("R", i), event("R", i)],
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outs = Vec::new();
    for task in tasks {
        outs.push(task.await.unwrap());
    }
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert_eq!(versions(&read), (0..64).collect::<Vec<_>>());
    // Each append's two events are adjacent in the stream.
    for out in outs {
        assert_eq!(out.last_version, out.first_version + 1);
        assert_eq!(
            read[out.first_version as usize].data,
            read[out.last_version as usize].data
        );
    }
}

pub async fn all_is_in_position_order(store: StoreHandle) {
    let t = tenant("acme");
    for i in 0..20u64 {
        let s = stream(&format!("s-{}", i % 3));
        store
            .append(&t, &s, ExpectedVersion::Any, vec![event("A", i)])
            .await
            .unwrap();
    }
    let all = all_events(&store).await;
    assert_eq!(all.len(), 20);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert!(all[0].position >= 1);
    // Paging by position sees the same sequence.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_all(after, &AllFilter::tenant(t.clone()), 7)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().position;
        paged.extend(page);
    }
    assert_eq!(paged, all);
}

pub async fn read_stream_directions_and_limits(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let batch: Vec<_> = (0..10).map(|i| event("A", i)).collect();
    store
        .append(&t, &s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    let read = |r: ReadStream| {
        let (store, t, s) = (store.clone(), t.clone(), s.clone());
        async move { versions(&store.read_stream(&t, &s, r).await.unwrap()) }
    };
    assert_eq!(read(ReadStream::all()).await, (0..10).collect::<Vec<_>>());
    assert_eq!(
        read(ReadStream::forward_from(3).limit(4)).await,
        vec![3, 4, 5, 6]
    );
    assert_eq!(read(ReadStream::forward_from(8).limit(4)).await, vec![8, 9]);
    assert_eq!(read(ReadStream::forward_from(10)).await, Vec::<u64>::new());
    assert_eq!(read(ReadStream::backward().limit(3)).await, vec![9, 8, 7]);
    assert_eq!(read(ReadStream::backward_from(2)).await, vec![2, 1, 0]);
    assert_eq!(
        read(ReadStream::backward_from(50).limit(2)).await,
        vec![9, 8]
    );
    assert_eq!(read(ReadStream::all().limit(0)).await, Vec::<u64>::new());
    let missing = store
        .read_stream(&t, &stream("nope"), ReadStream::all())
        .await
        .unwrap();
    assert!(missing.is_empty());
}

pub async fn catch_up_hands_over_to_live_without_gap_or_duplicate(store: StoreHandle) {
    let t = tenant("acme");
    for i in 0..300u64 {
        let s = stream(&format!("hist-{}", i % 5));
        store
            .append(&t, &s, ExpectedVersion::Any, vec![event("H", i)])
            .await
            .unwrap();
    }
    let mut sub = store.subscribe_all(0, AllFilter::tenant(t.clone()));
    let writers: Vec<_> = (0..6u64)
        .map(|w| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                for i in 0..50u64 {
                    let s = stream(&format!("live-{w}"));
                    store
                        .append(&t, &s, ExpectedVersion::Any, vec![event("L", i)])
                        .await
                        .unwrap();
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    while seen.len() < 600 {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("subscription error");
        seen.push(e);
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = all_events(&store).await;
    assert_eq!(seen, all, "subscription must see exactly the log, in order");
    // Nothing more arrives: no duplicates after the handover.
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra event: {extra:?}");
}

pub async fn subscription_resumes_from_a_position(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let batch: Vec<_> = (0..10).map(|i| event("A", i)).collect();
    store
        .append(&t, &s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    let all = all_events(&store).await;
    let from = all[4].position;
    let mut sub = store.subscribe_all(from, AllFilter::tenant(t.clone()));
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(
            tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got, all[5..].to_vec());
    // A live event arrives too.
    store
        .append(&t, &s, ExpectedVersion::Exact(9), vec![event("B", 10)])
        .await
        .unwrap();
    let live = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((live.version, live.event_type.as_str()), (10, "B"));
}

pub async fn filters_by_tenant_category_and_type(store: StoreHandle) {
    let (a, b) = (tenant("a"), tenant("b"));
    for (t, s, ty) in [
        (&a, "flight-1", "FlightScheduled"),
        (&a, "passenger-1", "PassengerAdded"),
        (&b, "flight-2", "FlightScheduled"),
        (&a, "flight-1", "FlightDeparted"),
        (&a, "flightplan-1", "PlanFiled"),
        (&b, "passenger-2", "PassengerAdded"),
    ] {
        store
            .append(t, &stream(s), ExpectedVersion::Any, vec![event(ty, 0)])
            .await
            .unwrap();
    }
    let names = |events: Vec<RecordedEvent>| -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{}/{}/{}", e.tenant, e.stream, e.event_type))
            .collect()
    };
    let read = |f: AllFilter| {
        let store = store.clone();
        async move { names(store.read_all(0, &f, 100).await.unwrap()) }
    };
    assert_eq!(
        read(AllFilter::tenant(a.clone()).categories(["flight-*"])).await,
        ["a/flight-1/FlightScheduled", "a/flight-1/FlightDeparted"]
    );
    assert_eq!(
        read(AllFilter::all_tenants().event_types(["PassengerAdded"])).await,
        [
            "a/passenger-1/PassengerAdded",
            "b/passenger-2/PassengerAdded"
        ]
    );
    assert_eq!(
        read(AllFilter::tenant(b.clone())).await,
        ["b/flight-2/FlightScheduled", "b/passenger-2/PassengerAdded"]
    );
    assert_eq!(
        read(
            AllFilter::tenants([a.clone(), b.clone()])
                .categories(["flight", "flightplan"])
                .event_types(["FlightScheduled", "PlanFiled"])
        )
        .await,
        [
            "a/flight-1/FlightScheduled",
            "b/flight-2/FlightScheduled",
            "a/flightplan-1/PlanFiled"
        ]
    );
    assert!(read(AllFilter::tenant(tenant("c"))).await.is_empty());
    // Subscriptions apply the same filter.
    let mut sub = store.subscribe_all(0, AllFilter::tenant(b.clone()).categories(["passenger"]));
    let e = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.stream.as_str(), "passenger-2");
    // A filter matching nothing yet waits, then sees a live match.
    let mut sub = store.subscribe_all(0, AllFilter::tenant(b.clone()).event_types(["Late"]));
    store
        .append(
            &a,
            &stream("x-1"),
            ExpectedVersion::Any,
            vec![event("Late", 0)],
        )
        .await
        .unwrap();
    store
        .append(
            &b,
            &stream("x-1"),
            ExpectedVersion::Any,
            vec![event("Late", 1)],
        )
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((e.tenant.as_str(), e.data.clone()), ("b", json!({"n": 1})));
}

pub async fn tenant_isolation(store: StoreHandle) {
    let (a, b) = (tenant("a"), tenant("b"));
    let s = stream("flight-1");
    store
        .append(
            &a,
            &s,
            ExpectedVersion::NoStream,
            vec![event("A", 0), event("A", 1)],
        )
        .await
        .unwrap();
    // The same stream id in another tenant is another stream.
    assert!(store.stream_info(&b, &s).await.unwrap().is_none());
    assert!(
        store
            .read_stream(&b, &s, ReadStream::all())
            .await
            .unwrap()
            .is_empty()
    );
    let out = store
        .append(&b, &s, ExpectedVersion::NoStream, vec![event("B", 0)])
        .await
        .unwrap();
    assert_eq!(out.last_version, 0);
    let read_a = store.read_stream(&a, &s, ReadStream::all()).await.unwrap();
    assert!(read_a.iter().all(|e| e.tenant == a && e.event_type == "A"));
    assert_eq!(read_a.len(), 2);
    let read_b = store.read_stream(&b, &s, ReadStream::all()).await.unwrap();
    assert_eq!(read_b.len(), 1);
    assert_eq!(read_b[0].tenant, b);
    // Listing, metadata, snapshots and deletion stay in their tenant.
    assert_eq!(store.list_streams(&b, None, 10).await.unwrap().len(), 1);
    assert!(
        store
            .list_streams(&tenant("c"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .delete_stream(&b, &s, ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(
        store
            .read_stream(&a, &s, ReadStream::all())
            .await
            .unwrap()
            .len(),
        2
    );
    let all_a = store
        .read_all(0, &AllFilter::tenant(a.clone()), 100)
        .await
        .unwrap();
    assert!(all_a.iter().all(|e| e.tenant == a));
    assert_eq!(all_a.len(), 2);
}

pub async fn tombstone(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("flight-9"));
    store
        .append(
            &t,
            &s,
            ExpectedVersion::NoStream,
            vec![event("A", 0), event("A", 1)],
        )
        .await
        .unwrap();
    let err = store
        .delete_stream(&t, &s, ExpectedVersion::Exact(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "{err:?}"
    );
    store
        .delete_stream(&t, &s, ExpectedVersion::Exact(1))
        .await
        .unwrap();
    let info = store.stream_info(&t, &s).await.unwrap().unwrap();
    assert!(info.deleted);
    assert_eq!(info.version, 1);
    let err = store
        .append(&t, &s, ExpectedVersion::Any, vec![event("A", 2)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamDeleted { .. }), "{err:?}");
    assert_eq!(err.code(), cairn_core::ErrorCode::StreamDeleted);
    // Every read of it says so, whichever way and however short.
    for read in [
        ReadStream::all(),
        ReadStream::backward(),
        ReadStream::all().limit(0),
        ReadStream::forward_from(50),
    ] {
        let err = store.read_stream(&t, &s, read).await.unwrap_err();
        assert!(matches!(err, StoreError::StreamDeleted { .. }), "{err:?}");
    }
    let err = store
        .delete_stream(&t, &s, ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamDeleted { .. }), "{err:?}");
    // The log keeps the events.
    assert_eq!(all_events(&store).await.len(), 2);
    let err = store
        .delete_stream(&t, &stream("never"), ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamNotFound { .. }), "{err:?}");
}

pub async fn truncate_before(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let batch: Vec<_> = (0..5).map(|i| event("A", i)).collect();
    store
        .append(&t, &s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    store.truncate_stream(&t, &s, 3).await.unwrap();
    let v = |r| {
        let (store, t, s) = (store.clone(), t.clone(), s.clone());
        async move { versions(&store.read_stream(&t, &s, r).await.unwrap()) }
    };
    assert_eq!(v(ReadStream::all()).await, vec![3, 4]);
    assert_eq!(v(ReadStream::forward_from(1).limit(1)).await, vec![3]);
    assert_eq!(v(ReadStream::backward()).await, vec![4, 3]);
    assert_eq!(v(ReadStream::backward_from(2)).await, Vec::<u64>::new());
    // The truncation point never moves back; versions continue.
    store.truncate_stream(&t, &s, 1).await.unwrap();
    assert_eq!(
        store
            .stream_info(&t, &s)
            .await
            .unwrap()
            .unwrap()
            .truncate_before,
        Some(3)
    );
    let out = store
        .append(&t, &s, ExpectedVersion::Exact(4), vec![event("A", 5)])
        .await
        .unwrap();
    assert_eq!(out.last_version, 5);
    assert_eq!(v(ReadStream::all()).await, vec![3, 4, 5]);
    // $all is unchanged.
    assert_eq!(all_events(&store).await.len(), 6);
    let err = store
        .truncate_stream(&t, &stream("never"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamNotFound { .. }), "{err:?}");
}

pub async fn snapshots(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("flight-1"));
    assert!(store.load_snapshot(&t, &s).await.unwrap().is_none());
    let err = store
        .save_snapshot(
            &t,
            &s,
            Snapshot {
                version: 0,
                schema_version: 1,
                state: json!({}),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StreamNotFound { .. }), "{err:?}");
    let batch: Vec<_> = (0..5).map(|i| event("A", i)).collect();
    store
        .append(&t, &s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    let snap = Snapshot {
        version: 3,
        schema_version: 1,
        state: json!({"total": 6}),
    };
    store.save_snapshot(&t, &s, snap.clone()).await.unwrap();
    assert_eq!(
        store.load_snapshot(&t, &s).await.unwrap(),
        Some(snap.clone())
    );
    // An older snapshot does not replace a newer one.
    let older = Snapshot {
        version: 1,
        schema_version: 1,
        state: json!({"total": 1}),
    };
    store.save_snapshot(&t, &s, older).await.unwrap();
    assert_eq!(store.load_snapshot(&t, &s).await.unwrap(), Some(snap));
    let newer = Snapshot {
        version: 4,
        schema_version: 2,
        state: json!({"total": 10}),
    };
    store.save_snapshot(&t, &s, newer.clone()).await.unwrap();
    assert_eq!(store.load_snapshot(&t, &s).await.unwrap(), Some(newer));
    // Beyond the stream's version is refused.
    let err = store
        .save_snapshot(
            &t,
            &s,
            Snapshot {
                version: 5,
                schema_version: 1,
                state: json!({}),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // Snapshots are per tenant.
    assert!(
        store
            .load_snapshot(&tenant("other"), &s)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn one_mib_event(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("blob-1"));
    let big = "x".repeat(1024 * 1024);
    let e = NewEvent::new("Blob", json!({ "body": big }));
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert_eq!(read[0].data, e.data);
    // And the resend is still recognised as the same content.
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![e])
        .await
        .unwrap();
}

pub async fn unicode_ids_and_payloads(store: StoreHandle) {
    let t = tenant("acme");
    let s = stream("vol-✈️-Åre-東京");
    assert_eq!(s.category().as_str(), "vol");
    let e = NewEvent::new("Noté", json!({"name": "Zoë 🚀", "city": "東京"}));
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert_eq!(
        (read[0].stream.as_str(), read[0].data.clone()),
        (s.as_str(), e.data)
    );
    assert_eq!(read[0].event_type, "Noté");
    let listed = store.list_streams(&t, None, 10).await.unwrap();
    assert_eq!(listed[0].stream, s);
    let cat = store
        .read_all(0, &AllFilter::tenant(t.clone()).categories(["vol"]), 10)
        .await
        .unwrap();
    assert_eq!(cat.len(), 1);
    let long = stream(&"é".repeat(128));
    store
        .append(&t, &long, ExpectedVersion::NoStream, vec![event("A", 0)])
        .await
        .unwrap();
}

pub async fn bad_input_is_rejected_and_nothing_written(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    assert!(StreamId::new("").is_err());
    assert!(StreamId::new("x".repeat(257)).is_err());
    assert!(cairn_core::TenantId::new("").is_err());
    let bad_metadata = Metadata {
        traceparent: Some("not-a-trace".into()),
        ..Default::default()
    };
    let dup = event("A", 0);
    let cases: Vec<(&str, Vec<NewEvent>)> = vec![
        ("empty batch", vec![]),
        ("empty event type", vec![event("", 0)]),
        ("event type with spaces", vec![event("A B", 0)]),
        ("over-long event type", vec![event(&"T".repeat(129), 0)]),
        (
            "schema version 0",
            vec![event("A", 0).with_schema_version(0)],
        ),
        (
            "invalid metadata",
            vec![event("A", 0), event("A", 1).with_metadata(bad_metadata)],
        ),
        (
            "empty actor",
            vec![event("A", 0).with_metadata(Metadata {
                actor: Some(String::new()),
                ..Default::default()
            })],
        ),
        ("duplicate ids in one batch", vec![dup.clone(), dup]),
    ];
    for (case, events) in cases {
        let err = store
            .append(&t, &s, ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{case}: {err:?}");
        assert_eq!(err.code(), cairn_core::ErrorCode::InvalidInput, "{case}");
    }
    assert!(
        all_events(&store).await.is_empty(),
        "nothing may be written"
    );
    assert!(store.stream_info(&t, &s).await.unwrap().is_none());
    assert!(store.list_streams(&t, None, 10).await.unwrap().is_empty());
}

pub async fn list_streams_pages_in_id_order(store: StoreHandle) {
    let t = tenant("acme");
    for name in ["c-1", "a-1", "b-2", "b-1", "d-1"] {
        store
            .append(&t, &stream(name), ExpectedVersion::Any, vec![event("A", 0)])
            .await
            .unwrap();
    }
    store
        .append(
            &tenant("other"),
            &stream("a-0"),
            ExpectedVersion::Any,
            vec![event("A", 0)],
        )
        .await
        .unwrap();
    let page1 = store.list_streams(&t, None, 2).await.unwrap();
    let ids = |p: &[crate::StreamInfo]| p.iter().map(|i| i.stream.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&page1), ["a-1", "b-1"]);
    let page2 = store
        .list_streams(&t, Some(&page1[1].stream), 10)
        .await
        .unwrap();
    assert_eq!(ids(&page2), ["b-2", "c-1", "d-1"]);
    assert!(
        page2
            .iter()
            .all(|i| i.version == 0 && !i.deleted && i.truncate_before.is_none())
    );
}

pub async fn metadata_round_trips(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let md = Metadata {
        correlation_id: Some("corr-1".into()),
        causation_id: Some(EventId::new().to_string()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        actor: Some("user:ada".into()),
    };
    let e = event("A", 0)
        .with_metadata(md.clone())
        .with_schema_version(3);
    let before = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    store
        .append(&t, &s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let read = store.read_stream(&t, &s, ReadStream::all()).await.unwrap();
    assert_eq!(read[0].metadata, md);
    assert_eq!(read[0].id, e.id);
    assert_eq!(read[0].schema_version, 3);
    assert!(read[0].recorded_at >= before);
    assert!(read[0].recorded_at <= chrono::Utc::now() + chrono::TimeDelta::seconds(1));
    let via_all = store
        .read_all(0, &AllFilter::tenant(t.clone()), 1)
        .await
        .unwrap();
    assert_eq!(via_all, read);
}

pub async fn head_moves_with_appends(store: StoreHandle) {
    let (t, s) = (tenant("acme"), stream("s-1"));
    let mut watch = store.head();
    let out = store
        .append(&t, &s, ExpectedVersion::Any, vec![event("A", 0)])
        .await
        .unwrap();
    tokio::time::timeout(WAIT, watch.wait_for(|h| *h >= out.last_position))
        .await
        .expect("head did not reach the appended position")
        .unwrap();
    assert_eq!(head(&store).await, out.last_position);
    let shared: Arc<dyn crate::EventStore> = store.clone();
    let seen: HashSet<u64> = shared
        .read_all(0, &AllFilter::tenant(t), 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert!(seen.contains(&out.last_position));
}
