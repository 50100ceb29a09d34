//! The flights read model on PostgreSQL behind row-level security: the
//! view's queries run scoped to the caller's tenant, and a query scoped to
//! one tenant sees none of another tenant's flights even when its SQL
//! leaves the tenant out.

use std::{sync::Arc, time::Duration};

use cairn_core::{StreamId, TenantId, encode_event};
use cairn_flights::{
    domain::{FlightEvent, Schedule},
    view::{self, FlightFilter, FlightsProjection},
};
use cairn_projection::{Projection, ProjectionOptions, Projections};
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, ExpectedVersion, MemoryStore, testkit::service_absent};
use chrono::{TimeDelta, Utc};
use sqlx::Executor;

fn pg_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A read database in a fresh schema (named like the other crates' test
/// schemas, which their test runs sweep), or `None` (skip) when PostgreSQL
/// is absent and not required.
async fn fresh_read_db() -> Option<(ServiceDb, String)> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("cairn_test_{secs}_{}", &id[20..]);
    let url = format!("{}?schema={schema}", pg_url());
    match tokio::time::timeout(Duration::from_secs(20), ServiceDb::open(&url)).await {
        Ok(Ok(db)) => Some((db, schema)),
        Ok(Err(e)) => service_absent("PostgreSQL", e),
        Err(_) => service_absent("PostgreSQL", "connect timed out"),
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

async fn schedule(store: &dyn EventStore, t: &str, flight_id: &str, number: &str) -> u64 {
    let departure = Utc::now() + TimeDelta::days(1);
    let event = FlightEvent::FlightScheduled {
        flight_id: flight_id.into(),
        schedule: Schedule {
            number: number.into(),
            origin: "AMS".into(),
            destination: "LIS".into(),
            departure,
            arrival: departure + TimeDelta::hours(3),
            capacity: 100,
        },
    };
    store
        .append(
            &tenant(t),
            &StreamId::new(format!("flight-{flight_id}")).unwrap(),
            ExpectedVersion::NoStream,
            vec![encode_event(&event).unwrap()],
        )
        .await
        .unwrap()
        .last_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_flights_are_invisible_to_another() {
    let Some((db, schema)) = fresh_read_db().await else {
        return;
    };
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    schedule(&*store, "acme", "f1", "AC100").await;
    schedule(&*store, "acme", "f2", "AC200").await;
    let last = schedule(&*store, "globex", "f9", "GX900").await;
    let projections = Projections::start(
        db.clone(),
        store,
        [Arc::new(FlightsProjection) as Arc<dyn Projection>],
        ProjectionOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        projections
            .wait_for(view::PROJECTION, last, Duration::from_secs(30))
            .await
    );

    // Through the view's own queries.
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    assert!(view::get(&db, &acme, "f1").await.unwrap().is_some());
    assert_eq!(view::get(&db, &globex, "f1").await.unwrap(), None);
    let filter = FlightFilter {
        limit: 10,
        ..FlightFilter::default()
    };
    let page = view::list(&db, &globex, &filter).await.unwrap();
    let ids: Vec<&str> = page.items.iter().map(|f| f.id.as_str()).collect();
    assert_eq!((ids, page.total), (vec!["f9"], 1));

    // SQL that forgets the tenant, scoped to globex.
    let mut tx = db.scoped(&globex).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flights_view")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let number: Option<String> =
        sqlx::query_scalar("SELECT number FROM flights_view WHERE id = 'f1'")
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
    assert_eq!(number, None, "globex saw acme's flight f1");
    tx.commit().await.unwrap();

    // The system pool (what the projection writes with) sees every tenant.
    let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM flights_view")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(all, 3);

    projections.shutdown().await;
    let _ = db
        .pool()
        .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
        .await;
    db.close().await;
}
