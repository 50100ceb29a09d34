//! The aggregate store against real event stores: every case runs on
//! `MemoryStore`, on `SqliteStore` in a fresh temporary directory and on
//! `PostgresStore` in a fresh schema (skipped when PostgreSQL is absent and
//! `CAIRN_TEST_SERVICES=required` is not set).
//!
//! The cases named `..._kept_...` are about the aggregate cache: two
//! `AggregateStore`s over one event store are two processes, each with a
//! cache of its own, writing the same streams.

mod common;

use std::sync::Arc;

use cairn_core::{ErrorCode, NewEvent, RequestContext, Upcasters};
use cairn_domain::{AggregateOptions, AggregateStore, CommandError, Loaded};
use cairn_store::{EventStore, ReadStream, Snapshot};
use common::{Concert, ConcertCommand, ConcertError, ConcertEvent, Status, TestStore, book, ctx};
use serde_json::json;

type Concerts = AggregateStore<Concert>;

fn concerts(store: &Arc<TestStore>) -> Concerts {
    AggregateStore::new(store.handle())
}

fn plan(capacity: u32) -> ConcertCommand {
    ConcertCommand::Plan { capacity }
}

async fn planned(concerts: &Concerts, ctx: &RequestContext, id: &str, capacity: u32) {
    concerts
        .execute(ctx, id, None, &plan(capacity))
        .await
        .expect("plan");
}

fn holders(state: &Concert) -> Vec<&str> {
    state.holders.iter().map(String::as_str).collect()
}

async fn execute_creates_the_stream_and_stamps_metadata(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx()
        .with_actor("ada")
        .with_causation_id("cmd-42")
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

    let first = concerts.execute(&ctx, "c1", None, &plan(3)).await.unwrap();
    assert_eq!(first.stream.as_str(), "concert-c1");
    assert_eq!(first.version, Some(0));
    assert!(first.position.is_some());
    assert!(first.written());
    assert_eq!(first.state.status, Status::OnSale);

    let second = concerts
        .execute(&ctx, "c1", None, &book("bo"))
        .await
        .unwrap();
    assert_eq!(second.version, Some(1));
    assert!(second.position > first.position);
    assert_eq!(holders(&second.state), ["bo"]);
    assert!(
        matches!(&second.events[..], [ConcertEvent::TicketBooked { holder }] if holder == "bo")
    );

    let recorded = store
        .read_stream(&ctx.tenant, &first.stream, ReadStream::all())
        .await
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert_ne!(recorded[0].id, recorded[1].id);
    assert_eq!(
        (recorded[0].event_type.as_str(), recorded[0].schema_version),
        ("ConcertPlanned", 2)
    );
    assert_eq!(recorded[1].position, second.position.unwrap());
    for event in &recorded {
        assert_eq!(event.metadata, ctx.metadata());
    }
}

async fn load_folds_the_stream_and_absent_is_none(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    assert!(concerts.load(&ctx, "nope").await.unwrap().is_none());
    planned(&concerts, &ctx, "c1", 5).await;
    for h in ["a", "b"] {
        concerts.execute(&ctx, "c1", None, &book(h)).await.unwrap();
    }
    let Loaded { state, version } = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!(version, 2);
    assert_eq!(holders(&state), ["a", "b"]);
    assert_eq!(state.capacity, 5);
}

async fn domain_errors_write_nothing(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    let err = concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Domain(ConcertError::NotFound)),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::NotFound);
    let stream = Concerts::stream_id("c1").unwrap();
    assert!(
        store
            .stream_info(&ctx.tenant, &stream)
            .await
            .unwrap()
            .is_none()
    );

    planned(&concerts, &ctx, "c1", 1).await;
    let err = concerts
        .execute(&ctx, "c1", None, &plan(9))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Domain(ConcertError::AlreadyPlanned)
    ));
    assert_eq!(err.code(), ErrorCode::RuleViolation);
    concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    let err = concerts
        .execute(&ctx, "c1", None, &book("b"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Domain(ConcertError::SoldOut { capacity: 1 })
    ));
    assert_eq!(err.details(), Some(json!({"capacity": 1})));
    let info = store
        .stream_info(&ctx.tenant, &stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version, 1);
}

async fn a_decision_without_events_writes_nothing(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 5).await;
    let first = concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    let again = concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    assert!(!again.written());
    assert_eq!(again.version, first.version);
    assert_eq!(again.position, None);
    assert_eq!(holders(&again.state), ["a"]);
    // (the stream, not the store's head: PostgreSQL moves its head when the
    // commit's notification arrives, which may be after the command returns)
    let stream = Concerts::stream_id("c1").unwrap();
    let events = store
        .read_stream(&ctx.tenant, &stream, ReadStream::all())
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
}

async fn if_match_is_checked_against_the_loaded_version(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    let err = concerts
        .execute(&ctx, "c1", Some(0), &book("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::NotFound { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::NotFound);

    planned(&concerts, &ctx, "c1", 5).await;
    let ok = concerts
        .execute(&ctx, "c1", Some(0), &book("a"))
        .await
        .unwrap();
    assert_eq!(ok.version, Some(1));
    let err = concerts
        .execute(&ctx, "c1", Some(0), &book("b"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::PreconditionFailed {
                expected: 0,
                actual: Some(1),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::PreconditionFailed);
    let Loaded { state, version } = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!((version, holders(&state)), (1, vec!["a"]));
}

async fn a_lost_race_is_decided_again_on_fresh_state(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 5).await;
    store.lose_next_races(2);
    let outcome = concerts
        .execute(&ctx, "c1", None, &book("me"))
        .await
        .unwrap();
    assert_eq!(store.rivals_written(), 2);
    assert_eq!(outcome.version, Some(3));
    assert_eq!(holders(&outcome.state), ["rival-0", "rival-1", "me"]);
}

async fn a_lost_race_respects_the_rules_on_retry(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 1).await;
    // the rival takes the last ticket between our decision and our append
    store.lose_next_races(1);
    let err = concerts
        .execute(&ctx, "c1", None, &book("me"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Domain(ConcertError::SoldOut { .. })),
        "{err}"
    );
    let Loaded { state, .. } = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!(holders(&state), ["rival-0"]);
}

async fn an_exhausted_retry_budget_is_a_concurrency_conflict(store: Arc<TestStore>) {
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_max_retries(2),
    );
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 100).await;
    store.lose_next_races(50);
    let err = concerts
        .execute(&ctx, "c1", None, &book("me"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::ConcurrencyConflict { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::ConcurrencyConflict);
    // 4 rivals: the first append, on the state kept from planning, found it
    // stale (another writer, not a lost race: no retry spent), then three
    // attempts on fresh state lost.
    assert_eq!(store.rivals_written(), 4);
    store.lose_next_races(0);
    let Loaded { state, .. } = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert!(!state.holders.iter().any(|h| h == "me"));

    // no retries at all: the first lost race is final
    let once = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_max_retries(0),
    );
    store.lose_next_races(1);
    let err = once
        .execute(&ctx, "c1", None, &book("me"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::ConcurrencyConflict { attempts: 1, .. }
    ));
}

async fn if_match_is_not_retried_past(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 5).await;
    store.lose_next_races(1);
    let err = concerts
        .execute(&ctx, "c1", Some(0), &book("me"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::PreconditionFailed {
                expected: 0,
                actual: Some(1),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.rivals_written(), 1);
}

/// `contenders` tasks book one ticket each on one concert at the same time,
/// each through the aggregate store `make` gives it. Returns how many
/// succeeded, were sold out and gave up on a concurrency conflict, after
/// checking the concert holds exactly the successful bookings.
async fn book_concurrently(
    make: impl Fn() -> Concerts,
    capacity: u32,
    contenders: usize,
) -> (usize, usize, usize) {
    let ctx = ctx();
    planned(&make(), &ctx, "rush", capacity).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(contenders));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..contenders {
        let concerts = make();
        let barrier = Arc::clone(&barrier);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            concerts
                .execute(&ctx, "rush", None, &book(&format!("fan-{i}")))
                .await
        });
    }
    let (mut ok, mut sold_out, mut conflicts) = (0, 0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(outcome) => {
                assert!(outcome.written());
                ok += 1;
            }
            Err(CommandError::Domain(ConcertError::SoldOut { .. })) => sold_out += 1,
            Err(CommandError::ConcurrencyConflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    let Loaded { state, version } = make().load(&ctx, "rush").await.unwrap().unwrap();
    assert_eq!(
        state.holders.len(),
        ok,
        "every success is booked, nothing else"
    );
    assert!(
        state.holders.len() <= capacity as usize,
        "oversold: {state:?}"
    );
    assert_eq!(version, ok as u64);
    let mut unique = state.holders.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ok);
    (ok, sold_out, conflicts)
}

/// A store per task: the tasks race like separate processes would.
fn separate_processes(store: &Arc<TestStore>, max_retries: u32) -> impl Fn() -> Concerts {
    let store = Arc::clone(store);
    move || {
        AggregateStore::with_options(
            store.handle(),
            AggregateOptions::default().with_max_retries(max_retries),
        )
    }
}

async fn commands_in_one_process_take_turns_and_never_conflict(store: Arc<TestStore>) {
    // The product's scenario: 50 simultaneous bookings for 30 seats, default
    // options, one service instance.
    let shared = concerts(&store);
    let result = book_concurrently(|| shared.clone(), 30, 50).await;
    assert_eq!(result, (30, 20, 0));
    assert_eq!(store.lost_races(), 0, "a process never races itself");
}

async fn racing_processes_all_succeed_within_a_sufficient_budget(store: Arc<TestStore>) {
    // Each lost race means another contender's append landed after our load,
    // so with n contenders n - 1 retries always suffice.
    let result = book_concurrently(separate_processes(&store, 19), 20, 20).await;
    assert_eq!(result, (20, 0, 0));
}

async fn racing_processes_never_oversell(store: Arc<TestStore>) {
    let result = book_concurrently(separate_processes(&store, 19), 10, 20).await;
    assert_eq!(result, (10, 10, 0));
}

async fn racing_processes_on_a_small_budget_stay_consistent(store: Arc<TestStore>) {
    let (ok, sold_out, conflicts) = book_concurrently(separate_processes(&store, 1), 10, 20).await;
    assert_eq!(ok + sold_out + conflicts, 20);
    assert!(ok >= 1, "someone always wins a race");
    if sold_out > 0 {
        assert_eq!(ok, 10, "sold out is only decided on a full concert");
    }
}

async fn snapshots_are_taken_every_n_events_and_used_on_load(store: Arc<TestStore>) {
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_snapshot_every(3),
    );
    let ctx = ctx();
    let stream = Concerts::stream_id("c1").unwrap();
    planned(&concerts, &ctx, "c1", 10).await; // v0
    concerts
        .execute(&ctx, "c1", None, &book("h1"))
        .await
        .unwrap(); // v1
    assert!(
        store
            .load_snapshot(&ctx.tenant, &stream)
            .await
            .unwrap()
            .is_none()
    );
    concerts
        .execute(&ctx, "c1", None, &book("h2"))
        .await
        .unwrap(); // v2: 3 events
    let snapshot = store
        .load_snapshot(&ctx.tenant, &stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((snapshot.version, snapshot.schema_version), (2, 1));
    for h in ["h3", "h4", "h5", "h6"] {
        concerts.execute(&ctx, "c1", None, &book(h)).await.unwrap(); // v3..v6
    }
    let snapshot = store
        .load_snapshot(&ctx.tenant, &stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.version, 5);

    // Hide everything the snapshot covers: only the snapshot can rebuild it.
    store
        .truncate_stream(&ctx.tenant, &stream, 6)
        .await
        .unwrap();
    let Loaded { state, version } = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!(version, 6);
    assert_eq!(holders(&state), ["h1", "h2", "h3", "h4", "h5", "h6"]);
    assert_eq!(state.capacity, 10);
    let next = concerts
        .execute(&ctx, "c1", None, &book("h7"))
        .await
        .unwrap();
    assert_eq!(next.version, Some(7));

    // Without snapshots the truncated history cannot be rebuilt, and that is
    // an error, not a silently wrong state.
    let plain = concerts_without_snapshots(&store);
    let err = plain.load(&ctx, "c1").await.unwrap_err();
    assert!(
        matches!(err, CommandError::HistoryUnavailable { .. }),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::Corrupt);
    let err = plain
        .execute(&ctx, "c1", None, &book("h8"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::HistoryUnavailable { .. }),
        "{err}"
    );
}

async fn a_stream_truncated_to_nothing_is_not_taken_for_a_new_one(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    let stream = Concerts::stream_id("c1").unwrap();
    planned(&concerts, &ctx, "c1", 5).await;
    concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    store
        .truncate_stream(&ctx.tenant, &stream, 2)
        .await
        .unwrap();
    // Planning again in a process that kept nothing would be decided on the
    // default state; the append on "no stream" fails, and the retry notices
    // the store is ahead of what can be read instead of retrying until the
    // budget is spent.
    let err = concerts_without_snapshots(&store)
        .execute(&ctx, "c1", None, &plan(9))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::HistoryUnavailable { .. }),
        "{err}"
    );
    let info = store
        .stream_info(&ctx.tenant, &stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version, 1);
}

fn concerts_without_snapshots(store: &Arc<TestStore>) -> Concerts {
    AggregateStore::new(store.handle())
}

async fn a_batch_crossing_a_multiple_takes_a_snapshot(store: Arc<TestStore>) {
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_snapshot_every(3),
    );
    let ctx = ctx();
    let stream = Concerts::stream_id("c1").unwrap();
    let pair = |a: &str, b: &str| ConcertCommand::BookPair {
        first: a.into(),
        second: b.into(),
    };
    planned(&concerts, &ctx, "c1", 10).await; // 1 event
    concerts
        .execute(&ctx, "c1", None, &pair("a", "b"))
        .await
        .unwrap(); // 3 events
    let snap = |s: Option<Snapshot>| s.map(|s| s.version);
    assert_eq!(
        snap(store.load_snapshot(&ctx.tenant, &stream).await.unwrap()),
        Some(2)
    );
    concerts
        .execute(&ctx, "c1", None, &pair("c", "d"))
        .await
        .unwrap(); // 5 events
    assert_eq!(
        snap(store.load_snapshot(&ctx.tenant, &stream).await.unwrap()),
        Some(2)
    );
    concerts
        .execute(&ctx, "c1", None, &pair("e", "f"))
        .await
        .unwrap(); // 7: crosses 6
    assert_eq!(
        snap(store.load_snapshot(&ctx.tenant, &stream).await.unwrap()),
        Some(6)
    );
}

async fn unusable_snapshots_are_ignored(store: Arc<TestStore>) {
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_snapshot_every(1000),
    );
    let ctx = ctx();
    let stream = Concerts::stream_id("c1").unwrap();
    planned(&concerts, &ctx, "c1", 10).await;
    concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    concerts
        .execute(&ctx, "c1", None, &book("b"))
        .await
        .unwrap();
    let ghost = serde_json::to_value(Concert {
        status: Status::OnSale,
        capacity: 10,
        holders: vec!["ghost".into()],
    })
    .unwrap();
    let save = |schema_version: u32, state: serde_json::Value| {
        let store = Arc::clone(&store);
        let (tenant, stream) = (ctx.tenant.clone(), stream.clone());
        async move {
            store
                .save_snapshot(
                    &tenant,
                    &stream,
                    Snapshot {
                        version: 2,
                        schema_version,
                        state,
                    },
                )
                .await
                .unwrap();
        }
    };

    // A snapshot that does not deserialize: replayed from the events.
    save(1, json!({"garbage": true})).await;
    let loaded = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!(
        (loaded.version, holders(&loaded.state)),
        (2, vec!["a", "b"])
    );

    // A snapshot of another schema version: ignored, even though it would
    // deserialize.
    save(99, ghost.clone()).await;
    let loaded = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!(holders(&loaded.state), ["a", "b"]);

    // The same state at the current schema version is used (so the two
    // checks above really were about the snapshot being refused).
    save(1, ghost).await;
    let loaded = concerts.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!(holders(&loaded.state), ["ghost"]);
}

async fn a_failed_snapshot_save_does_not_fail_the_command(store: Arc<TestStore>) {
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_snapshot_every(1),
    );
    let ctx = ctx();
    store.fail_snapshots(true);
    let outcome = concerts.execute(&ctx, "c1", None, &plan(2)).await.unwrap();
    assert_eq!(outcome.version, Some(0));
    let stream = Concerts::stream_id("c1").unwrap();
    assert!(
        store
            .load_snapshot(&ctx.tenant, &stream)
            .await
            .unwrap()
            .is_none()
    );
    store.fail_snapshots(false);
    concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    let snapshot = store
        .load_snapshot(&ctx.tenant, &stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.version, 1);
}

async fn a_corrupt_event_is_a_decode_error(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 5).await;
    let stream = Concerts::stream_id("c1").unwrap();
    store
        .append(
            &ctx.tenant,
            &stream,
            cairn_store::ExpectedVersion::Exact(0),
            vec![NewEvent::new("TicketBooked", json!({"holder": 5}))],
        )
        .await
        .unwrap();
    let err = concerts.load(&ctx, "c1").await.unwrap_err();
    assert!(
        matches!(err, CommandError::Decode { version: 1, .. }),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::Corrupt);
    let err = concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Corrupt);
}

async fn upcasters_lift_old_events(store: Arc<TestStore>) {
    let ctx = ctx();
    let stream = Concerts::stream_id("old").unwrap();
    // written by an older release: schema version 1 called capacity "seats"
    store
        .append(
            &ctx.tenant,
            &stream,
            cairn_store::ExpectedVersion::NoStream,
            vec![NewEvent::new("ConcertPlanned", json!({"seats": 2}))],
        )
        .await
        .unwrap();
    let err = concerts(&store).load(&ctx, "old").await.unwrap_err();
    assert!(
        matches!(err, CommandError::Decode { version: 0, .. }),
        "{err}"
    );

    let mut upcasters = Upcasters::new();
    upcasters.register("ConcertPlanned", 1, |v| Ok(json!({"capacity": v["seats"]})));
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_upcasters(Arc::new(upcasters)),
    );
    let Loaded { state, .. } = concerts.load(&ctx, "old").await.unwrap().unwrap();
    assert_eq!((state.status, state.capacity), (Status::OnSale, 2));
    concerts
        .execute(&ctx, "old", None, &book("a"))
        .await
        .unwrap();
    concerts
        .execute(&ctx, "old", None, &book("b"))
        .await
        .unwrap();
    let err = concerts
        .execute(&ctx, "old", None, &book("c"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Domain(ConcertError::SoldOut { capacity: 2 })
    ));
}

async fn a_tombstoned_aggregate_reads_as_deleted(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    let err = concerts.delete(&ctx, "c1", None).await.unwrap_err();
    assert!(matches!(err, CommandError::NotFound { .. }), "{err}");

    planned(&concerts, &ctx, "c1", 5).await;
    let err = concerts.delete(&ctx, "c1", Some(3)).await.unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::PreconditionFailed {
                expected: 3,
                actual: Some(0),
                ..
            }
        ),
        "{err}"
    );
    concerts.delete(&ctx, "c1", Some(0)).await.unwrap();

    let err = concerts.load(&ctx, "c1").await.unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::NotFound);
    let err = concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");
    let err = concerts
        .execute(&ctx, "c1", None, &plan(3))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");
    let err = concerts.delete(&ctx, "c1", None).await.unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");

    // with snapshots on, a snapshot left behind does not resurrect it
    let snapshotting = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_snapshot_every(1),
    );
    planned(&snapshotting, &ctx, "c2", 5).await;
    snapshotting.delete(&ctx, "c2", None).await.unwrap();
    let err = snapshotting.load(&ctx, "c2").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
}

async fn tenants_do_not_share_aggregates(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let acme = ctx();
    let globex = RequestContext::new(common::tenant("globex"));
    planned(&concerts, &acme, "c1", 1).await;
    concerts
        .execute(&acme, "c1", None, &book("a"))
        .await
        .unwrap();
    assert!(concerts.load(&globex, "c1").await.unwrap().is_none());
    planned(&concerts, &globex, "c1", 1).await;
    concerts
        .execute(&globex, "c1", None, &book("b"))
        .await
        .unwrap();
    let a = concerts.load(&acme, "c1").await.unwrap().unwrap();
    let b = concerts.load(&globex, "c1").await.unwrap().unwrap();
    assert_eq!(
        (holders(&a.state), holders(&b.state)),
        (vec!["a"], vec!["b"])
    );
}

/// Another process: an aggregate store with a cache of its own.
fn other_process(store: &Arc<TestStore>) -> Concerts {
    AggregateStore::new(store.handle())
}

async fn a_kept_state_skips_the_load(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    planned(&concerts, &ctx, "c1", 5).await;
    let before = store.reads().len();
    for holder in ["a", "b", "c"] {
        concerts
            .execute(&ctx, "c1", None, &book(holder))
            .await
            .unwrap();
    }
    assert_eq!(store.reads().len(), before, "no command read the stream");
    // a clone shares the cache
    let outcome = concerts
        .clone()
        .execute(&ctx, "c1", None, &book("d"))
        .await
        .unwrap();
    assert_eq!(outcome.version, Some(4));
    assert_eq!(store.reads().len(), before);
    assert_eq!(holders(&outcome.state), ["a", "b", "c", "d"]);

    // without a cache every command loads
    let uncached = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_cache_bytes(0),
    );
    uncached
        .execute(&ctx, "c1", None, &book("e"))
        .await
        .unwrap();
    assert_eq!(store.reads().len(), before + 1);
}

async fn a_stale_kept_state_reads_only_the_newer_events(store: Arc<TestStore>) {
    let ctx = ctx();
    // No retries: finding its kept state stale is not a lost race.
    let p1 = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_max_retries(0),
    );
    let p2 = other_process(&store);
    planned(&p1, &ctx, "c1", 10).await; // v0
    p1.execute(&ctx, "c1", None, &book("a")).await.unwrap(); // v1, kept by p1
    p2.execute(&ctx, "c1", None, &book("b")).await.unwrap(); // v2
    p2.execute(&ctx, "c1", None, &book("c")).await.unwrap(); // v3
    let before = store.reads().len();
    let outcome = p1.execute(&ctx, "c1", None, &book("d")).await.unwrap();
    assert_eq!(outcome.version, Some(4));
    assert_eq!(holders(&outcome.state), ["a", "b", "c", "d"]);
    let reads = store.reads();
    let reads: Vec<_> = reads[before..].iter().map(|(_, read)| read.from).collect();
    assert_eq!(reads, [Some(2)], "only the events after the kept version");
    assert_eq!(store.lost_races(), 1, "the stale append, nothing else");
    let Loaded { state, version } = p2.load(&ctx, "c1").await.unwrap().unwrap();
    assert_eq!((version, holders(&state)), (4, vec!["a", "b", "c", "d"]));
}

async fn a_refusal_on_a_kept_state_is_checked_against_the_newer_events(store: Arc<TestStore>) {
    let ctx = ctx();
    let p1 = concerts(&store);
    let p2 = other_process(&store);
    planned(&p1, &ctx, "c1", 10).await;
    p1.execute(&ctx, "c1", None, &ConcertCommand::Cancel)
        .await
        .unwrap(); // p1 keeps "cancelled"
    p2.execute(&ctx, "c1", None, &ConcertCommand::Reopen)
        .await
        .unwrap();
    // p1's kept state would refuse: the concert is on sale again
    let outcome = p1.execute(&ctx, "c1", None, &book("me")).await.unwrap();
    assert_eq!(outcome.version, Some(3));
    assert_eq!(holders(&outcome.state), ["me"]);

    // a no-op on a kept state is checked too
    p2.execute(&ctx, "c1", None, &ConcertCommand::Cancel)
        .await
        .unwrap(); // v4; p1 keeps "on sale" at v3
    let outcome = p1
        .execute(&ctx, "c1", None, &ConcertCommand::Reopen)
        .await
        .unwrap();
    assert!(outcome.written(), "reopened, not a no-op");
    assert_eq!(outcome.version, Some(5));

    // and a refusal that holds on the newer events is the answer
    p2.execute(&ctx, "c1", None, &ConcertCommand::Cancel)
        .await
        .unwrap(); // v6; p1 keeps "on sale" at v5
    let err = p1
        .execute(&ctx, "c1", None, &book("you"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Domain(ConcertError::Cancelled)),
        "{err}"
    );
    // p2's first cancel (kept at v2, the stream at v3) and p1's last
    // booking; p2's second cancel was refused on its kept state and checked
    // by reading, not by a failed append.
    assert_eq!(store.lost_races(), 2);
}

async fn if_match_on_a_kept_state_is_checked_against_the_newer_events(store: Arc<TestStore>) {
    let ctx = ctx();
    let p1 = concerts(&store);
    let p2 = other_process(&store);
    planned(&p1, &ctx, "c1", 10).await; // p1 keeps v0
    p2.execute(&ctx, "c1", None, &book("a")).await.unwrap(); // v1
    // the caller saw v1 (from p2); p1's kept v0 must not refuse it
    let outcome = p1.execute(&ctx, "c1", Some(1), &book("b")).await.unwrap();
    assert_eq!(outcome.version, Some(2));
    // a caller's stale version is still refused, with the current one
    let err = p1
        .execute(&ctx, "c1", Some(1), &book("c"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::PreconditionFailed {
                expected: 1,
                actual: Some(2),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.lost_races(), 0, "checked before appending");
}

async fn a_deleted_aggregate_is_not_served_from_a_kept_state(store: Arc<TestStore>) {
    let ctx = ctx();
    let p1 = concerts(&store);
    let p2 = other_process(&store);
    planned(&p1, &ctx, "c1", 10).await;
    p1.execute(&ctx, "c1", None, &book("a")).await.unwrap();
    p2.delete(&ctx, "c1", None).await.unwrap();
    let err = p1.execute(&ctx, "c1", None, &book("b")).await.unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");
    // a refusal on a kept state of a deleted aggregate says deleted too
    planned(&p1, &ctx, "c2", 1).await;
    p1.execute(&ctx, "c2", None, &book("a")).await.unwrap(); // p1 keeps "sold out"
    p2.delete(&ctx, "c2", None).await.unwrap();
    let err = p1.execute(&ctx, "c2", None, &book("b")).await.unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");
    // deleting through the same store forgets what it kept
    planned(&p1, &ctx, "c3", 1).await;
    p1.delete(&ctx, "c3", None).await.unwrap();
    let err = p1.execute(&ctx, "c3", None, &book("b")).await.unwrap_err();
    assert!(matches!(err, CommandError::Deleted { .. }), "{err}");
}

async fn kept_states_are_per_tenant(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let acme = ctx();
    let globex = RequestContext::new(common::tenant("globex"));
    planned(&concerts, &acme, "c1", 3).await; // acme's c1 kept
    let err = concerts
        .execute(&globex, "c1", None, &book("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Domain(ConcertError::NotFound)),
        "{err}"
    );
    planned(&concerts, &globex, "c1", 1).await;
    let before = store.reads().len();
    let a = concerts
        .execute(&acme, "c1", None, &book("a"))
        .await
        .unwrap();
    let b = concerts
        .execute(&globex, "c1", None, &book("b"))
        .await
        .unwrap();
    assert_eq!(store.reads().len(), before, "both kept, apart");
    assert_eq!(
        (holders(&a.state), holders(&b.state)),
        (vec!["a"], vec!["b"])
    );
    assert_eq!((a.state.capacity, b.state.capacity), (3, 1));
}

async fn bad_ids_are_invalid_input(store: Arc<TestStore>) {
    let concerts = concerts(&store);
    let ctx = ctx();
    let err = concerts
        .execute(&ctx, "a\u{7}b", None, &plan(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidInput);
    let err = concerts.load(&ctx, "x".repeat(300)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidInput);
    let err = concerts.delete(&ctx, "\n", None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidInput);
}

/// Command handling must be usable from HTTP handlers and spawned tasks.
#[test]
fn execute_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let concerts: Concerts = AggregateStore::new(Arc::new(cairn_store::MemoryStore::new()));
    let ctx = ctx();
    let command = plan(1);
    assert_send(&concerts.execute(&ctx, "c1", None, &command));
    assert_send(&concerts.load(&ctx, "c1"));
    assert_send(&concerts.delete(&ctx, "c1", None));
}

macro_rules! suite {
    ($backend:ident; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(store) = super::TestStore::$backend().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        suite!(memory; $($case),*);
        suite!(sqlite; $($case),*);
        suite!(postgres; $($case),*);
    };
}

every_backend!(
    execute_creates_the_stream_and_stamps_metadata,
    load_folds_the_stream_and_absent_is_none,
    domain_errors_write_nothing,
    a_decision_without_events_writes_nothing,
    if_match_is_checked_against_the_loaded_version,
    a_lost_race_is_decided_again_on_fresh_state,
    a_lost_race_respects_the_rules_on_retry,
    an_exhausted_retry_budget_is_a_concurrency_conflict,
    if_match_is_not_retried_past,
    commands_in_one_process_take_turns_and_never_conflict,
    racing_processes_all_succeed_within_a_sufficient_budget,
    racing_processes_never_oversell,
    racing_processes_on_a_small_budget_stay_consistent,
    snapshots_are_taken_every_n_events_and_used_on_load,
    a_batch_crossing_a_multiple_takes_a_snapshot,
    a_stream_truncated_to_nothing_is_not_taken_for_a_new_one,
    unusable_snapshots_are_ignored,
    a_failed_snapshot_save_does_not_fail_the_command,
    a_corrupt_event_is_a_decode_error,
    upcasters_lift_old_events,
    a_tombstoned_aggregate_reads_as_deleted,
    tenants_do_not_share_aggregates,
    a_kept_state_skips_the_load,
    a_stale_kept_state_reads_only_the_newer_events,
    a_refusal_on_a_kept_state_is_checked_against_the_newer_events,
    if_match_on_a_kept_state_is_checked_against_the_newer_events,
    a_deleted_aggregate_is_not_served_from_a_kept_state,
    kept_states_are_per_tenant,
    bad_ids_are_invalid_input,
);
