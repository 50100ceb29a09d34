//! The projection runner's contract, each scenario on SQLite and on
//! PostgreSQL: events are projected exactly once, the checkpoint commits with
//! the model, restarts resume, rebuilds replay into an empty model, poison
//! events and panics stop only their projection (visibly, persistently) and
//! a retry continues, waits see positions the filter skips, status reports
//! lag.

mod common;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use cairn_core::RecordedEvent;
use cairn_projection::{
    CatchUp, DeadLetterReason, PoisonPolicy, Projection, ProjectionError, ProjectionOptions,
    ProjectionState, Projections, ReadModelError,
};
use cairn_service_db::ServiceDb;
use cairn_store::{AllFilter, EventStore, testkit::tenant};
use common::*;
use serde_json::json;
use sqlx::Any;

on_both_backends!(
    events_are_projected_and_checkpointed,
    a_failing_event_rolls_back_its_whole_batch,
    committed_batches_before_a_poison_event_keep_their_progress,
    restart_resumes_without_reapplying,
    rebuild_replays_from_zero_into_an_empty_model,
    a_new_version_rebuilds_the_model,
    poison_stops_only_its_projection_survives_a_restart_and_a_retry_continues,
    a_panic_in_apply_is_caught_and_reported,
    a_commit_the_database_rejects_is_pinned_on_its_event,
    wait_for_sees_positions_the_filter_skips,
    status_reports_lag_and_serializes_as_camel_case,
    shutdown_lets_the_transaction_in_flight_commit,
    two_runners_on_one_database_never_apply_an_event_twice,
    store_outages_are_retried_not_treated_as_poison,
    read_model_outages_are_retried_and_apply_once,
    a_missing_checkpoint_row_stops_the_projection_until_rebuilt,
    follows_a_sqlite_event_store_live,
    bad_definitions_and_unknown_names_are_rejected,
    the_park_policy_records_poison_and_goes_on_across_restarts,
    an_operator_skips_exactly_the_event_it_stopped_at,
);

async fn events_are_projected_and_checkpointed(t: TestDb) {
    let store = memory_store();
    append_n(&*store, "acme", "flight-1", 3).await;
    append_n(&*store, "acme", "flight-2", 2).await;
    let last = append_n(&*store, "globex", "flight-1", 4).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;

    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(
        counter.rows(&t.db).await,
        vec![
            ("acme".into(), "flight-1".into(), 3),
            ("acme".into(), "flight-2".into(), 2),
            ("globex".into(), "flight-1".into(), 4),
        ]
    );

    // Live events after catching up.
    let live = append(&*store, "acme", "flight-2", "Counted", json!({})).await;
    assert!(projections.wait_for("counts", live, PATIENCE).await);
    assert_eq!(counter.total(&t.db).await, 10);

    let status = projections.status_of("counts").await.unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!(
        (status.position, status.checkpoint, status.head),
        (live, live, live)
    );
    assert_eq!(status.lag_events, 0);
    assert_eq!(status.lag_seconds, 0.0);
    assert!(status.failure.is_none() && status.retrying.is_none());
    assert_eq!(
        stored_checkpoint(&t.db, "counts").await,
        (live as i64, None)
    );
    assert_eq!(counter.applied(), 10);

    projections.shutdown().await;
    let status = projections.status_of("counts").await.unwrap();
    assert_eq!(status.state, ProjectionState::Stopped);
}

async fn a_failing_event_rolls_back_its_whole_batch(t: TestDb) {
    let store = memory_store();
    let p1 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    append(&*store, "acme", "flight-2", "Counted", json!({})).await;
    let p3 = append(
        &*store,
        "acme",
        "flight-3",
        "Exploded",
        json!({ "poison": true }),
    )
    .await;
    append(&*store, "acme", "flight-4", "Counted", json!({})).await;
    let counter = Arc::new(Counter::new("counts"));
    // All four events are available at start: one batch.
    let projections = start(&t.db, &store, [&counter]).await;

    let status = until_failed(&projections, "counts").await;
    // Neither the two rows before the poison event nor a moved checkpoint.
    assert_eq!(counter.rows(&t.db).await, vec![]);
    assert_eq!(
        stored_checkpoint(&t.db, "counts").await,
        (0, Some(p3 as i64))
    );
    assert_eq!(
        counter.applied(),
        3,
        "the batch stopped at the poison event"
    );
    assert_eq!((status.position, status.checkpoint), (0, 0));
    let failure = status.failure.expect("failure reported");
    assert_eq!(failure.position, p3);
    assert_eq!(failure.event_type, "Exploded");
    assert_eq!(failure.stream, "flight-3");
    assert_eq!(failure.tenant, "acme");
    assert_eq!(failure.error, "poison event: cannot count Exploded");
    let stored = store
        .read_all(p3 - 1, &AllFilter::all_tenants(), 1)
        .await
        .unwrap();
    assert_eq!(failure.event_id, stored[0].id.to_string());
    // A failed projection answers waits at once instead of timing out.
    assert!(!projections.wait_for("counts", p1, PATIENCE).await);
}

async fn committed_batches_before_a_poison_event_keep_their_progress(t: TestDb) {
    let store = memory_store();
    let p4 = append_n(&*store, "acme", "flight-1", 4).await;
    let p5 = append(
        &*store,
        "acme",
        "flight-1",
        "Bad",
        json!({ "poison": true }),
    )
    .await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = Projections::start(
        t.db.clone(),
        store.clone(),
        [counter.clone() as Arc<dyn Projection>],
        ProjectionOptions {
            batch_size: 2,
            ..options()
        },
    )
    .await
    .unwrap();

    let status = until_failed(&projections, "counts").await;
    assert_eq!(status.position, p4, "two batches of two committed");
    assert_eq!(status.failure.unwrap().position, p5);
    assert_eq!(counter.total(&t.db).await, 4);
    assert_eq!(
        stored_checkpoint(&t.db, "counts").await,
        (p4 as i64, Some(p5 as i64))
    );
    assert!(projections.wait_for("counts", p4, PATIENCE).await);
    assert!(!projections.wait_for("counts", p5, PATIENCE).await);
}

async fn restart_resumes_without_reapplying(t: TestDb) {
    let store = memory_store();
    let first = append_n(&*store, "acme", "flight-1", 5).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    assert!(projections.wait_for("counts", first, PATIENCE).await);
    projections.shutdown().await;
    t.db.close().await;

    let last = append_n(&*store, "acme", "flight-1", 3).await;
    // A new process: a new handle on the same database, a new runner.
    let db = t.reopen().await;
    let again = Arc::new(Counter::new("counts"));
    let projections = start(&db, &store, [&again]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);

    assert_eq!(
        again.rows(&db).await,
        vec![("acme".into(), "flight-1".into(), 8)]
    );
    assert_eq!(again.applied(), 3, "only the new events were applied");
    assert_eq!(stored_checkpoint(&db, "counts").await, (last as i64, None));
    projections.shutdown().await;
}

async fn rebuild_replays_from_zero_into_an_empty_model(t: TestDb) {
    let store = memory_store();
    append_n(&*store, "acme", "flight-1", 5).await;
    let last = append_n(&*store, "globex", "flight-2", 2).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);

    // The model drifts (a bug, a manual edit): a ghost row and a wrong count.
    sqlx::query("INSERT INTO counts_counts VALUES ('acme', 'ghost-1', 99, 0)")
        .execute(t.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE counts_counts SET events = 1000 WHERE stream = 'flight-1'")
        .execute(t.db.pool())
        .await
        .unwrap();

    projections.rebuild("counts").await.unwrap();
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(
        counter.rows(&t.db).await,
        vec![
            ("acme".into(), "flight-1".into(), 5),
            ("globex".into(), "flight-2".into(), 2),
        ]
    );
    assert_eq!(counter.applied(), 14, "every event applied once more");
    assert_eq!(
        stored_checkpoint(&t.db, "counts").await,
        (last as i64, None)
    );

    // It keeps following live events after the rebuild.
    let live = append_n(&*store, "acme", "flight-1", 1).await;
    assert!(projections.wait_for("counts", live, PATIENCE).await);
    assert_eq!(counter.total(&t.db).await, 8);
    projections.shutdown().await;
}

async fn a_new_version_rebuilds_the_model(t: TestDb) {
    let store = memory_store();
    let last = append_n(&*store, "acme", "flight-1", 4).await;
    let v1 = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&v1]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    projections.shutdown().await;
    sqlx::query("INSERT INTO counts_counts VALUES ('acme', 'ghost-1', 99, 0)")
        .execute(t.db.pool())
        .await
        .unwrap();

    let v2 = Arc::new(Counter::new("counts").with_version(2));
    let projections = start(&t.db, &store, [&v2]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(
        v2.rows(&t.db).await,
        vec![("acme".into(), "flight-1".into(), 4)]
    );
    assert_eq!(v2.applied(), 4);
    projections.shutdown().await;

    // The same version again: no rebuild.
    let v2_again = Arc::new(Counter::new("counts").with_version(2));
    let projections = start(&t.db, &store, [&v2_again]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(v2_again.applied(), 0);
    assert_eq!(v2_again.total(&t.db).await, 4);
    projections.shutdown().await;
}

async fn poison_stops_only_its_projection_survives_a_restart_and_a_retry_continues(t: TestDb) {
    let store = memory_store();
    append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let poison = append(
        &*store,
        "acme",
        "flight-2",
        "Bad",
        json!({ "poison": true }),
    )
    .await;
    let p3 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let fragile = Arc::new(Counter::new("fragile"));
    let sturdy = Arc::new(Counter::new("sturdy"));
    sturdy.fix();
    let projections = start(&t.db, &store, [&fragile, &sturdy]).await;

    let status = until_failed(&projections, "fragile").await;
    assert_eq!(status.failure.as_ref().unwrap().position, poison);
    assert!(projections.wait_for("sturdy", p3, PATIENCE).await);
    // The other projection keeps going with live events.
    let p4 = append(&*store, "acme", "flight-3", "Counted", json!({})).await;
    assert!(projections.wait_for("sturdy", p4, PATIENCE).await);
    assert_eq!(sturdy.total(&t.db).await, 4);
    assert_eq!(
        projections.status_of("fragile").await.unwrap().state,
        ProjectionState::Failed
    );
    let all = projections.status().await;
    assert_eq!(
        all.iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect::<Vec<_>>(),
        vec![
            ("fragile", ProjectionState::Failed),
            ("sturdy", ProjectionState::Running)
        ]
    );
    projections.shutdown().await;

    // A restarted process still shows the failure and does not skip it.
    let db = t.reopen().await;
    let fragile = Arc::new(Counter::new("fragile"));
    let sturdy = Arc::new(Counter::new("sturdy"));
    sturdy.fix();
    let projections = start(&db, &store, [&fragile, &sturdy]).await;
    let status = projections.status_of("fragile").await.unwrap();
    assert_eq!(status.state, ProjectionState::Failed);
    assert_eq!(status.failure.as_ref().unwrap().position, poison);
    assert_eq!(status.position, 0);
    assert_eq!(fragile.applied(), 0, "a failed projection does not run");

    // Fixed code, then a retry: it continues from its checkpoint.
    fragile.fix();
    projections.restart("fragile").await.unwrap();
    assert!(projections.wait_for("fragile", p4, PATIENCE).await);
    assert_eq!(fragile.total(&db).await, 4);
    let status = projections.status_of("fragile").await.unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert!(status.failure.is_none());
    assert_eq!(stored_checkpoint(&db, "fragile").await, (p4 as i64, None));
    projections.shutdown().await;
}

async fn a_panic_in_apply_is_caught_and_reported(t: TestDb) {
    let store = memory_store();
    append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let boom = append(&*store, "acme", "flight-2", "Odd", json!({ "panic": true })).await;
    let p3 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let explosive = Arc::new(Counter::new("explosive"));
    let calm = Arc::new(Counter::new("calm"));
    calm.fix();
    let projections = start(&t.db, &store, [&explosive, &calm]).await;

    let status = until_failed(&projections, "explosive").await;
    let failure = status.failure.unwrap();
    assert_eq!(failure.position, boom);
    assert!(
        failure
            .error
            .starts_with("apply panicked: counter exploded on "),
        "{}",
        failure.error
    );
    assert_eq!(
        stored_checkpoint(&t.db, "explosive").await,
        (0, Some(boom as i64))
    );
    assert_eq!(explosive.rows(&t.db).await, vec![]);
    assert!(projections.wait_for("calm", p3, PATIENCE).await);
    assert_eq!(calm.total(&t.db).await, 3);

    explosive.fix();
    projections.restart("explosive").await.unwrap();
    assert!(projections.wait_for("explosive", p3, PATIENCE).await);
    assert_eq!(explosive.total(&t.db).await, 3);
    projections.shutdown().await;
}

/// Parents and children with a foreign key checked at commit: a child whose
/// parent never comes makes the commit itself fail, with no statement to
/// blame.
#[derive(Debug)]
struct Links;

#[async_trait]
impl Projection for Links {
    fn name(&self) -> &'static str {
        "links"
    }

    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants()
    }

    fn schema(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS link_parents (
                id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL)"
                .into(),
            "CREATE TABLE IF NOT EXISTS link_children (
                id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL,
                parent TEXT NOT NULL REFERENCES link_parents (id) DEFERRABLE INITIALLY DEFERRED)"
                .into(),
        ]
    }

    fn reset(&self) -> Vec<String> {
        vec![
            "DROP TABLE IF EXISTS link_children".into(),
            "DROP TABLE IF EXISTS link_parents".into(),
        ]
    }

    async fn apply(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let id = event.data["id"]
            .as_str()
            .ok_or_else(|| ProjectionError::poison("no id"))?;
        match event.event_type.as_str() {
            "ParentAdded" => {
                sqlx::query("INSERT INTO link_parents (id, tenant_id) VALUES ($1, $2)")
                    .bind(id)
                    .bind(event.tenant.as_str())
                    .execute(&mut **tx)
                    .await?;
            }
            "ChildAdded" => {
                sqlx::query(
                    "INSERT INTO link_children (id, tenant_id, parent) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(event.tenant.as_str())
                .bind(event.data["parent"].as_str().unwrap_or_default())
                .execute(&mut **tx)
                .await?;
            }
            other => return Err(ProjectionError::poison(format!("unknown type {other}"))),
        }
        Ok(())
    }
}

async fn a_commit_the_database_rejects_is_pinned_on_its_event(t: TestDb) {
    let store = memory_store();
    append(
        &*store,
        "acme",
        "family-1",
        "ParentAdded",
        json!({ "id": "a" }),
    )
    .await;
    let p2 = append(
        &*store,
        "acme",
        "family-1",
        "ChildAdded",
        json!({ "id": "x", "parent": "a" }),
    )
    .await;
    let orphan = append(
        &*store,
        "acme",
        "family-2",
        "ChildAdded",
        json!({ "id": "y", "parent": "missing" }),
    )
    .await;
    append(
        &*store,
        "acme",
        "family-3",
        "ParentAdded",
        json!({ "id": "b" }),
    )
    .await;

    let projections = Projections::start(
        t.db.clone(),
        store.clone(),
        [Arc::new(Links) as Arc<dyn Projection>],
        options(),
    )
    .await
    .unwrap();
    let status = until_failed(&projections, "links").await;
    let failure = status.failure.unwrap();
    assert_eq!(failure.position, orphan);
    assert!(
        failure.error.starts_with("commit rejected"),
        "{}",
        failure.error
    );
    // The events before the orphan were applied one transaction each.
    assert_eq!(status.position, p2);
    assert_eq!(
        stored_checkpoint(&t.db, "links").await,
        (p2 as i64, Some(orphan as i64))
    );
    let parents: Vec<String> = sqlx::query_scalar("SELECT id FROM link_parents ORDER BY id")
        .fetch_all(t.db.pool())
        .await
        .unwrap();
    let children: Vec<String> = sqlx::query_scalar("SELECT id FROM link_children ORDER BY id")
        .fetch_all(t.db.pool())
        .await
        .unwrap();
    assert_eq!(
        (parents, children),
        (vec!["a".to_owned()], vec!["x".to_owned()])
    );
    projections.shutdown().await;
}

async fn wait_for_sees_positions_the_filter_skips(t: TestDb) {
    let store = memory_store();
    let flights = Arc::new(
        Counter::new("flights")
            .with_filter(AllFilter::tenant(tenant("acme")).categories(["flight"])),
    );
    let projections = start(&t.db, &store, [&flights]).await;
    let p1 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    assert!(projections.wait_for("flights", p1, PATIENCE).await);

    // Events the filter does not want: another category, another tenant.
    append(&*store, "acme", "passenger-1", "Counted", json!({})).await;
    let p3 = append(&*store, "globex", "flight-1", "Counted", json!({})).await;
    assert!(projections.wait_for("flights", p3, PATIENCE).await);
    assert!(projections.wait_for_all(p3, PATIENCE).await);
    let status = projections.status_of("flights").await.unwrap();
    assert!(status.position >= p3);
    assert_eq!(status.lag_events, 0);
    assert_eq!(
        flights.rows(&t.db).await,
        vec![("acme".into(), "flight-1".into(), 1)]
    );
    assert_eq!(flights.applied(), 1);

    // A position nobody has written yet times out; an unknown name answers
    // at once.
    assert!(
        !projections
            .wait_for("flights", p3 + 100, Duration::from_millis(50))
            .await
    );
    assert!(!projections.wait_for("nobody", 1, PATIENCE).await);

    // Progress past skipped events is flushed at shutdown, so a restart does
    // not read them again.
    projections.shutdown().await;
    assert_eq!(stored_checkpoint(&t.db, "flights").await, (p3 as i64, None));
}

async fn status_reports_lag_and_serializes_as_camel_case(t: TestDb) {
    let store = memory_store();
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    projections.stop("counts").await.unwrap();
    let last = append_n(&*store, "acme", "flight-1", 5).await;
    // The oldest unapplied event must be measurably old.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let status = projections.status_of("counts").await.unwrap();
    assert_eq!(status.state, ProjectionState::Stopped);
    assert_eq!(
        (status.position, status.head, status.lag_events),
        (0, last, 5)
    );
    assert!(status.lag_seconds > 0.0, "{status:?}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["name"], "counts");
    assert_eq!(json["state"], "stopped");
    assert_eq!(json["lagEvents"], 5);
    assert!(json["lagSeconds"].as_f64().unwrap() > 0.0);
    for key in ["position", "checkpoint", "head", "failure", "retrying"] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert!(!projections.wait_for("counts", last, PATIENCE).await);

    projections.restart("counts").await.unwrap();
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    let status = projections.status_of("counts").await.unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!((status.lag_events, status.lag_seconds), (0, 0.0));

    // A failed projection's lag is the age of the event it is stuck on.
    let poison = append(
        &*store,
        "acme",
        "flight-2",
        "Bad",
        json!({ "poison": true }),
    )
    .await;
    let status = until_failed(&projections, "counts").await;
    assert_eq!(status.lag_events, poison - status.position);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["failure"]["position"], poison);
    assert_eq!(json["failure"]["eventType"], "Bad");
    assert!(json["failure"]["eventId"].is_string());
    assert!(json["failure"]["failedAt"].is_string());
    projections.shutdown().await;
}

async fn shutdown_lets_the_transaction_in_flight_commit(t: TestDb) {
    let store = memory_store();
    let last = append_n(&*store, "acme", "flight-1", 10).await;
    let counter = Arc::new(Counter::new("slow").slow(Duration::from_millis(20)));
    let mut started = counter.started.subscribe();
    let projections = start(&t.db, &store, [&counter]).await;
    started.wait_for(|s| *s).await.unwrap();

    projections.shutdown().await;
    // The batch being applied when shutdown began committed whole.
    assert_eq!(counter.total(&t.db).await, 10);
    assert_eq!(stored_checkpoint(&t.db, "slow").await, (last as i64, None));
    assert_eq!(
        projections.status_of("slow").await.unwrap().state,
        ProjectionState::Stopped
    );
    assert!(matches!(
        projections.restart("slow").await,
        Err(ReadModelError::ShutDown)
    ));
    assert!(matches!(
        projections.rebuild("slow").await,
        Err(ReadModelError::ShutDown)
    ));
}

async fn two_runners_on_one_database_never_apply_an_event_twice(t: TestDb) {
    let store = memory_store();
    let a = Arc::new(Counter::new("shared"));
    let b = Arc::new(Counter::new("shared"));
    let other_db = t.reopen().await;
    let pa = start(&t.db, &store, [&a]).await;
    let pb = start(&other_db, &store, [&b]).await;

    let mut last = 0;
    for i in 0..20 {
        last = append_n(&*store, "acme", &format!("flight-{}", i % 5), 10).await;
    }
    assert!(pa.wait_for("shared", last, PATIENCE).await);
    assert!(pb.wait_for("shared", last, PATIENCE).await);
    assert_eq!(a.total(&t.db).await, 200);
    assert!(a.applied() + b.applied() >= 200);
    assert_eq!(
        stored_checkpoint(&t.db, "shared").await,
        (last as i64, None)
    );
    pa.shutdown().await;
    pb.shutdown().await;
}

async fn store_outages_are_retried_not_treated_as_poison(t: TestDb) {
    let flaky = FlakyStore::new();
    let store: Arc<dyn EventStore> = Arc::new(flaky.clone());
    let last = append_n(&*store, "acme", "flight-1", 3).await;
    flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;

    let status = status_until(&projections, "counts", |s| s.retrying.is_some()).await;
    assert_eq!(status.state, ProjectionState::Running);
    assert!(status.failure.is_none());
    assert!(
        status
            .retrying
            .as_deref()
            .unwrap()
            .contains("connection refused"),
        "{status:?}"
    );
    // Still retrying after several failed reads, never failed.
    status_until(&projections, "counts", |_| {
        flaky.failed_reads.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(
        projections.status_of("counts").await.unwrap().state,
        ProjectionState::Running
    );

    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    let status = projections.status_of("counts").await.unwrap();
    assert!(status.retrying.is_none());
    assert_eq!(counter.total(&t.db).await, 3);
    projections.shutdown().await;
}

async fn read_model_outages_are_retried_and_apply_once(t: TestDb) {
    let store = memory_store();
    let last = append_n(&*store, "acme", "flight-1", 3).await;
    let counter = Arc::new(Counter::new("counts"));
    counter
        .outages
        .store(4, std::sync::atomic::Ordering::SeqCst);
    let projections = start(&t.db, &store, [&counter]).await;

    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(counter.total(&t.db).await, 3, "failed attempts rolled back");
    assert_eq!(counter.applied(), 4 + 3);
    let status = projections.status_of("counts").await.unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert!(status.failure.is_none() && status.retrying.is_none());
    projections.shutdown().await;
}

async fn a_missing_checkpoint_row_stops_the_projection_until_rebuilt(t: TestDb) {
    let store = memory_store();
    let first = append_n(&*store, "acme", "flight-1", 2).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    assert!(projections.wait_for("counts", first, PATIENCE).await);

    // Someone deletes the checkpoint: what the model holds is now unknown.
    sqlx::query("DELETE FROM cairn_projection_checkpoints WHERE name = 'counts'")
        .execute(t.db.pool())
        .await
        .unwrap();
    let last = append_n(&*store, "acme", "flight-1", 1).await;
    let status = until_failed(&projections, "counts").await;
    assert!(
        status
            .failure
            .unwrap()
            .error
            .contains("checkpoint row is missing"),
        "the runner refuses to guess"
    );
    assert_eq!(counter.total(&t.db).await, 2);

    projections.rebuild("counts").await.unwrap();
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(counter.total(&t.db).await, 3);
    assert_eq!(
        stored_checkpoint(&t.db, "counts").await,
        (last as i64, None)
    );
    projections.shutdown().await;
}

async fn follows_a_sqlite_event_store_live(t: TestDb) {
    let dir = tempfile::Builder::new()
        .prefix("cairn-projection-store-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        cairn_store_sqlite::SqliteStore::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    append_n(&*store, "acme", "flight-1", 3).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    let mut last = 0;
    for i in 0..10 {
        last = append_n(&*store, "acme", &format!("flight-{}", i % 3), 2).await;
    }
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(counter.total(&t.db).await, 23);
    projections.shutdown().await;
}

/// A projection whose DDL does not parse.
#[derive(Debug)]
struct Broken;

#[async_trait]
impl Projection for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants()
    }
    fn schema(&self) -> Vec<String> {
        vec!["CREATE TABLE broken (".into()]
    }
    fn reset(&self) -> Vec<String> {
        vec!["DROP TABLE IF EXISTS broken".into()]
    }
    async fn apply(
        &self,
        _tx: &mut sqlx::Transaction<'_, Any>,
        _event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }
}

async fn bad_definitions_and_unknown_names_are_rejected(t: TestDb) {
    let store = memory_store();
    let start_with = |ps: Vec<Arc<dyn Projection>>, options: ProjectionOptions| {
        Projections::start(t.db.clone(), store.clone(), ps, options)
    };

    let twice = start_with(
        vec![
            Arc::new(Counter::new("same")),
            Arc::new(Counter::new("same")),
        ],
        options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(twice, ReadModelError::Invalid { .. }), "{twice}");
    assert_eq!(twice.code(), cairn_core::ErrorCode::InvalidInput);

    let zero = start_with(
        vec![Arc::new(Counter::new("counts"))],
        ProjectionOptions {
            batch_size: 0,
            ..options()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(zero, ReadModelError::Invalid { .. }), "{zero}");

    let broken = start_with(vec![Arc::new(Broken)], options())
        .await
        .unwrap_err();
    assert!(
        matches!(&broken, ReadModelError::Schema { projection, .. } if projection == "broken"),
        "{broken}"
    );
    // Its transaction rolled back: no checkpoint row was left behind.
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cairn_projection_checkpoints WHERE name = 'broken'",
    )
    .fetch_one(t.db.pool())
    .await
    .unwrap();
    assert_eq!(rows, 0);

    let projections = start_with(vec![Arc::new(Counter::new("counts"))], options())
        .await
        .unwrap();
    for result in [
        projections.stop("nobody").await,
        projections.restart("nobody").await,
        projections.rebuild("nobody").await,
        projections.status_of("nobody").await.map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, ReadModelError::UnknownProjection(_)), "{err}");
        assert_eq!(err.code(), cairn_core::ErrorCode::NotFound);
    }
    assert_eq!(projections.names(), vec!["counts"]);
    let dead = projections.dead_letters("nobody", 0, 1).await.unwrap_err();
    assert!(
        matches!(dead, ReadModelError::UnknownProjection(_)),
        "{dead}"
    );
    projections.shutdown().await;

    let policy_of_nobody = start_with(
        vec![Arc::new(Counter::new("counts"))],
        options().with_policy("nobody", PoisonPolicy::Park),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(policy_of_nobody, ReadModelError::Invalid { .. }),
        "{policy_of_nobody}"
    );
}

/// The in-memory database (`--ephemeral`) shares one connection: several
/// projections and concurrent readers must queue on it, never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_database_runs_several_projections_beside_readers() {
    let db = ServiceDb::ephemeral().await.unwrap();
    let store = memory_store();
    let counters: Vec<Arc<Counter>> = ["one", "two", "three", "four"]
        .into_iter()
        .map(|n| Arc::new(Counter::new(n)))
        .collect();
    let projections = start(&db, &store, &counters).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM counts_one")
                        .fetch_one(db.pool())
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut last = 0;
    for i in 0..50 {
        last = append_n(&*store, "acme", &format!("flight-{}", i % 7), 10).await;
    }
    assert!(projections.wait_for_all(last, PATIENCE).await);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    for c in &counters {
        assert_eq!(c.total(&db).await, 500, "{}", c.name);
    }
    projections.shutdown().await;
}

/// The gauges `record_metrics` sets, as a Prometheus scrape shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_metrics_sets_the_projection_gauges() {
    let metrics = cairn_telemetry::Metrics::install();
    let gauge = |text: &str, metric: &str| -> f64 {
        let start = format!(r#"{metric}{{projection="metered"}} "#);
        text.lines()
            .find_map(|line| line.strip_prefix(start.as_str()))
            .unwrap_or_else(|| panic!("{metric} missing: {text}"))
            .parse()
            .unwrap()
    };
    let db = ServiceDb::ephemeral().await.unwrap();
    let store = memory_store();
    let counter = Arc::new(Counter::new("metered"));
    let projections = start(&db, &store, [&counter]).await;
    projections.stop("metered").await.unwrap();
    let last = append_n(&*store, "acme", "flight-1", 5).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    projections.record_metrics().await;
    let text = metrics.render();
    assert_eq!(gauge(&text, "cairn_projection_position"), 0.0);
    assert_eq!(gauge(&text, "cairn_projection_lag_events"), 5.0);
    assert!(gauge(&text, "cairn_projection_lag_seconds") > 0.0);
    assert_eq!(gauge(&text, "cairn_projection_running"), 0.0);
    assert_eq!(gauge(&text, "cairn_projection_failed"), 0.0);

    projections.restart("metered").await.unwrap();
    assert!(projections.wait_for("metered", last, PATIENCE).await);
    projections.record_metrics().await;
    let text = metrics.render();
    assert_eq!(gauge(&text, "cairn_projection_position"), last as f64);
    assert_eq!(gauge(&text, "cairn_projection_lag_events"), 0.0);
    assert_eq!(gauge(&text, "cairn_projection_lag_seconds"), 0.0);
    assert_eq!(gauge(&text, "cairn_projection_running"), 1.0);

    append(
        &*store,
        "acme",
        "flight-2",
        "Bad",
        json!({ "poison": true }),
    )
    .await;
    until_failed(&projections, "metered").await;
    projections.record_metrics().await;
    let text = metrics.render();
    assert_eq!(gauge(&text, "cairn_projection_running"), 0.0);
    assert_eq!(gauge(&text, "cairn_projection_failed"), 1.0);
    assert_eq!(gauge(&text, "cairn_projection_lag_events"), 1.0);
    assert!(!text.contains("acme"), "a tenant in a label: {text}");
    projections.shutdown().await;
}

async fn the_park_policy_records_poison_and_goes_on_across_restarts(t: TestDb) {
    let store = memory_store();
    append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let poison = append(
        &*store,
        "acme",
        "flight-2",
        "Bad",
        json!({ "poison": true }),
    )
    .await;
    append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let p4 = append(&*store, "globex", "flight-3", "Counted", json!({})).await;
    let parking = Arc::new(Counter::new("parking"));
    let stopping = Arc::new(Counter::new("stopping"));
    let options = || options().with_policy("parking", PoisonPolicy::Park);
    let projections = Projections::start(
        t.db.clone(),
        store.clone(),
        [
            parking.clone() as Arc<dyn Projection>,
            stopping.clone() as Arc<dyn Projection>,
        ],
        options(),
    )
    .await
    .unwrap();

    // The parking projection goes past the poison event, the other stops.
    assert_eq!(
        projections.catch_up("parking", p4, PATIENCE).await,
        CatchUp::Reached
    );
    assert_eq!(
        parking.total(&t.db).await,
        3,
        "every event but the poison one"
    );
    until_failed(&projections, "stopping").await;
    assert_eq!(
        projections.catch_up("stopping", p4, PATIENCE).await,
        CatchUp::Failed
    );
    let status = projections.status_of("parking").await.unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!(
        (status.policy, status.parked, status.skipped),
        (PoisonPolicy::Park, 1, 0)
    );
    assert!(status.failure.is_none());
    let parked = projections.dead_letters("parking", 0, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    assert_eq!(
        (letter.position, letter.reason),
        (poison, DeadLetterReason::Parked)
    );
    assert_eq!(
        (letter.event_type.as_str(), letter.stream.as_str()),
        ("Bad", "flight-2")
    );
    assert_eq!(letter.tenant, "acme");
    assert!(letter.error.contains("poison"), "{}", letter.error);
    assert!(letter.actor.is_none());
    projections.shutdown().await;

    // After a restart, and after a rebuild from zero, the parked event is
    // still passed over and nothing is applied twice.
    let db = t.reopen().await;
    let parking = Arc::new(Counter::new("parking"));
    let stopping = Arc::new(Counter::new("stopping"));
    let projections = Projections::start(
        db.clone(),
        store.clone(),
        [
            parking.clone() as Arc<dyn Projection>,
            stopping as Arc<dyn Projection>,
        ],
        options(),
    )
    .await
    .unwrap();
    let p5 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    assert!(projections.wait_for("parking", p5, PATIENCE).await);
    assert_eq!(parking.total(&db).await, 4);
    projections.rebuild("parking").await.unwrap();
    assert!(projections.wait_for("parking", p5, PATIENCE).await);
    assert_eq!(parking.total(&db).await, 4);
    assert_eq!(projections.status_of("parking").await.unwrap().parked, 1);
    projections.shutdown().await;
}

async fn an_operator_skips_exactly_the_event_it_stopped_at(t: TestDb) {
    let store = memory_store();
    append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let poison = append(
        &*store,
        "acme",
        "flight-2",
        "Bad",
        json!({ "poison": true }),
    )
    .await;
    let p3 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    until_failed(&projections, "counts").await;

    // Skipping another position, an unknown projection, or a running one
    // is refused, and changes nothing.
    let wrong = projections
        .skip("counts", p3, "acme/eve")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, ReadModelError::NotFailedAt { .. }),
        "{wrong}"
    );
    assert_eq!(wrong.code(), cairn_core::ErrorCode::RuleViolation);
    let unknown = projections
        .skip("nope", poison, "acme/eve")
        .await
        .unwrap_err();
    assert!(matches!(unknown, ReadModelError::UnknownProjection(_)));
    assert_eq!(
        projections.status_of("counts").await.unwrap().state,
        ProjectionState::Failed
    );
    assert!(
        projections
            .dead_letters("counts", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    projections
        .skip("counts", poison, "acme/eve")
        .await
        .unwrap();
    assert!(projections.wait_for("counts", p3, PATIENCE).await);
    assert_eq!(counter.total(&t.db).await, 2);
    let status = projections.status_of("counts").await.unwrap();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!((status.parked, status.skipped), (0, 1));
    let skipped = projections.dead_letters("counts", 0, 10).await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        (skipped[0].position, skipped[0].reason),
        (poison, DeadLetterReason::Skipped)
    );
    assert_eq!(skipped[0].actor.as_deref(), Some("acme/eve"));
    assert!(
        projections
            .dead_letters("counts", poison, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A running projection has nothing to skip.
    let again = projections
        .skip("counts", poison, "acme/eve")
        .await
        .unwrap_err();
    assert!(matches!(again, ReadModelError::NotFailedAt { .. }));
    projections.shutdown().await;

    // The skip holds across a restart.
    let db = t.reopen().await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&db, &store, [&counter]).await;
    let p4 = append(&*store, "acme", "flight-1", "Counted", json!({})).await;
    assert!(projections.wait_for("counts", p4, PATIENCE).await);
    assert_eq!(counter.total(&db).await, 3);
    projections.shutdown().await;
}
