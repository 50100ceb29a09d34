//! Row-level security on read models (PostgreSQL): a projection's tables
//! get the tenant policy when it sets them up (and again when it rebuilds
//! them), so a query scoped to one tenant sees only that tenant's rows even
//! when its SQL forgets the tenant; system access (the projections
//! themselves, `ServiceDb::pool`) sees every tenant. On SQLite `scoped` is a
//! plain transaction.

mod common;

use std::sync::Arc;

use cairn_service_db::{ServiceDb, protect_tenant_tables};
use cairn_store::{row_security, testkit::tenant};
use common::*;
use sqlx::{Connection, Executor, PgConnection};

/// Rows of `table` a transaction scoped to `t` sees, asking for all.
async fn scoped_count(db: &ServiceDb, t: &str, table: &str) -> i64 {
    let mut tx = db.scoped(&tenant(t)).await.unwrap();
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    n
}

async fn system_count(db: &ServiceDb, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap()
}

fn schema_of(t: &TestDb) -> String {
    t.url.rsplit_once("schema=").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_query_sees_only_its_rows_even_without_a_tenant_filter() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let store = memory_store();
    append_n(&*store, "acme", "flight-1", 3).await;
    append_n(&*store, "acme", "flight-2", 1).await;
    let last = append_n(&*store, "globex", "flight-9", 2).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);

    assert_eq!(system_count(&t.db, &counter.table).await, 3);
    assert_eq!(scoped_count(&t.db, "acme", &counter.table).await, 2);
    assert_eq!(scoped_count(&t.db, "globex", &counter.table).await, 1);
    assert_eq!(scoped_count(&t.db, "initech", &counter.table).await, 0);

    // Looking a row up by its key without the tenant (the bug the policy is
    // for) finds nothing of another tenant.
    let mut tx = t.db.scoped(&tenant("acme")).await.unwrap();
    let found: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT events FROM {} WHERE stream = 'flight-9'",
        counter.table
    ))
    .fetch_optional(&mut *tx)
    .await
    .unwrap();
    assert_eq!(found, None, "acme saw globex's flight-9");
    // Tables without a tenant (checkpoints) are not for tenant queries.
    let err = sqlx::query("SELECT * FROM cairn_projection_checkpoints")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);

    // After a rebuild the recreated table is protected again.
    projections.rebuild("counts").await.unwrap();
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    assert_eq!(system_count(&t.db, &counter.table).await, 3);
    assert_eq!(scoped_count(&t.db, "globex", &counter.table).await, 1);
    projections.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_names_no_tenant_sees_no_rows() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let store = memory_store();
    let last = append_n(&*store, "acme", "flight-1", 2).await;
    let counter = Arc::new(Counter::new("counts"));
    let projections = start(&t.db, &store, [&counter]).await;
    assert!(projections.wait_for("counts", last, PATIENCE).await);
    projections.shutdown().await;

    // A session like those of the scoped pool, outside any scoped
    // transaction: the role bound by the policy, no tenant, then an empty one.
    let mut conn = PgConnection::connect(&pg_url()).await.unwrap();
    conn.execute(format!("SET search_path TO \"{}\"", schema_of(&t)).as_str())
        .await
        .unwrap();
    conn.execute(format!("SET ROLE {}", row_security::ROLE).as_str())
        .await
        .unwrap();
    let sql = format!("SELECT COUNT(*) FROM {}", counter.table);
    let n: i64 = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 0);
    conn.execute("SET cairn.tenant TO ''").await.unwrap();
    let n: i64 = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 0);
    // Nor can it write a row, of any tenant: tenant queries only read.
    conn.execute("SET cairn.tenant TO 'acme'").await.unwrap();
    let err = sqlx::query(&format!(
        "INSERT INTO {} (tenant_id, stream, events, last_position) VALUES ('acme', 'x', 1, 1)",
        counter.table
    ))
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_made_outside_projections_are_protected_on_request_and_at_open() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let mut conn = t.db.pool().acquire().await.unwrap();
    conn.execute("CREATE TABLE notes (tenant_id TEXT NOT NULL, body TEXT NOT NULL)")
        .await
        .unwrap();
    conn.execute("CREATE TABLE settings (name TEXT NOT NULL)")
        .await
        .unwrap();
    conn.execute("INSERT INTO notes VALUES ('acme', 'a'), ('globex', 'g')")
        .await
        .unwrap();
    // Not protected yet: the scoped role may not even read it.
    let mut tx = t.db.scoped(&tenant("acme")).await.unwrap();
    let err = sqlx::query("SELECT COUNT(*) FROM notes")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);

    protect_tenant_tables(&mut conn).await.unwrap();
    protect_tenant_tables(&mut conn).await.unwrap(); // idempotent
    drop(conn);
    assert_eq!(scoped_count(&t.db, "acme", "notes").await, 1);
    assert_eq!(system_count(&t.db, "notes").await, 2);

    // A table without a tenant stays system-only.
    let mut tx = t.db.scoped(&tenant("acme")).await.unwrap();
    assert!(
        sqlx::query("SELECT * FROM settings")
            .fetch_all(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);

    // Opening the database protects what is there.
    t.db.pool()
        .execute("CREATE TABLE later (tenant_id TEXT NOT NULL)")
        .await
        .unwrap();
    t.db.pool()
        .execute("INSERT INTO later VALUES ('acme'), ('globex')")
        .await
        .unwrap();
    let again = t.reopen().await;
    assert_eq!(scoped_count(&again, "globex", "later").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_databases_opening_together_on_one_schema_all_start() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    t.db.pool()
        .execute("CREATE TABLE shared (tenant_id TEXT NOT NULL)")
        .await
        .unwrap();
    let opened = futures_util::future::join_all((0..6).map(|_| ServiceDb::open(&t.url))).await;
    for db in opened {
        let db = db.unwrap();
        assert_eq!(scoped_count(&db, "acme", "shared").await, 0);
        db.close().await;
    }
}

#[tokio::test]
async fn on_sqlite_scoped_is_a_plain_transaction() {
    let t = TestDb::sqlite().await;
    t.db.pool()
        .execute("CREATE TABLE notes (tenant_id TEXT NOT NULL)")
        .await
        .unwrap();
    t.db.pool()
        .execute("INSERT INTO notes VALUES ('acme'), ('globex')")
        .await
        .unwrap();
    let mut conn = t.db.pool().acquire().await.unwrap();
    protect_tenant_tables(&mut conn).await.unwrap(); // nothing to do
    drop(conn);
    // No row-level security here: the queries' own filters are the wall.
    assert_eq!(scoped_count(&t.db, "acme", "notes").await, 2);
    let ephemeral = ServiceDb::ephemeral().await.unwrap();
    let tx = ephemeral.scoped(&tenant("acme")).await.unwrap();
    tx.commit().await.unwrap();
}
