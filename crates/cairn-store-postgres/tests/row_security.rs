//! Row-level security on the store's tables: a tenant's transaction sees
//! only its tenant's rows even when a query forgets the tenant filter, a
//! connection that names no tenant sees nothing, and a row of another
//! tenant cannot be written through a tenant's transaction. Both ways of
//! deploying are covered: connected as a superuser (tenant connections
//! switch to a role bound by the policies) and as the schema's plain owner
//! (the forced policies bind the owner itself).

mod common;

use std::time::Duration;

use cairn_core::{NewEvent, StreamId, TenantId};
use cairn_store::{
    AllFilter, EventStore, ExpectedVersion, ReadStream, Snapshot, row_security,
    testkit::service_absent,
};
use cairn_store_postgres::{PostgresOptions, PostgresStore};
use futures_util::future::join_all;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use common::{fresh_schema, options, store_with, url};

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

/// Stores, for tenants `acme` and `globex`, the same stream id `order-1`
/// (three events for acme, two for globex), a stream only acme has, and a
/// snapshot of acme's `order-1`.
async fn two_tenants(store: &PostgresStore) {
    let events = |n: usize| {
        (0..n)
            .map(|i| NewEvent::new("E", json!({"i": i})))
            .collect()
    };
    for (t, s, n) in [
        ("acme", "order-1", 3),
        ("globex", "order-1", 2),
        ("acme", "invoice-9", 1),
    ] {
        store
            .append(&tenant(t), &stream(s), ExpectedVersion::NoStream, events(n))
            .await
            .unwrap();
    }
    store
        .save_snapshot(
            &tenant("acme"),
            &stream("order-1"),
            Snapshot {
                version: 2,
                schema_version: 1,
                state: json!({"secret": "acme"}),
            },
        )
        .await
        .unwrap();
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

/// What a tenant's transaction sees of each store table with no tenant in
/// the query: (events, streams, snapshots).
async fn visible_to(store: &PostgresStore, t: &str) -> (i64, i64, i64) {
    let mut tx = store.scoped(&tenant(t)).await.unwrap();
    let seen = (
        count(&mut tx, "SELECT count(*) FROM events").await,
        count(&mut tx, "SELECT count(*) FROM streams").await,
        count(&mut tx, "SELECT count(*) FROM snapshots").await,
    );
    tx.commit().await.unwrap();
    seen
}

/// A connection of its own on `schema`, as `url` connects.
async fn raw(url: &str, schema: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
        .await
        .unwrap();
    conn
}

fn is_policy_violation(e: &sqlx::Error) -> bool {
    e.to_string().contains("violates row-level security policy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_transaction_sees_only_its_tenants_rows_without_a_filter() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    two_tenants(&store).await;
    assert_eq!(visible_to(&store, "acme").await, (4, 2, 1));
    assert_eq!(visible_to(&store, "globex").await, (2, 1, 0));
    assert_eq!(visible_to(&store, "initech").await, (0, 0, 0));

    // A query by stream id alone (the bug the policy is for) finds only the
    // transaction's tenant's stream of that name.
    let mut tx = store.scoped(&tenant("globex")).await.unwrap();
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM events WHERE stream_id = 'order-1'")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(tenants, ["globex"]);
    let state: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT state FROM snapshots WHERE stream_id = 'order-1'")
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
    assert_eq!(state, None, "globex read acme's snapshot");
    drop(tx);

    // The system pool sees every tenant.
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(all, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_is_set_for_one_transaction_only() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    two_tenants(&store).await;
    // Transactions of several tenants, committed or dropped (rolled back),
    // one after another on a pool that reuses its connections: each sees
    // its own tenant, never the one before.
    for round in 0..3 {
        for t in ["acme", "globex"] {
            let mut tx = store.scoped(&tenant(t)).await.unwrap();
            let setting: String = sqlx::query_scalar("SELECT current_setting('cairn.tenant')")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(setting, t);
            if round % 2 == 0 {
                tx.commit().await.unwrap();
            } else {
                drop(tx);
            }
        }
    }
    assert_eq!(visible_to(&store, "globex").await, (2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_names_no_tenant_sees_nothing() {
    let schema = fresh_schema();
    let Some(store) = store_with(options(&schema)).await else {
        return;
    };
    two_tenants(&store).await;
    // A session like the tenant pool's: the role bound by the policies, the
    // tenant unset, then empty.
    let mut conn = raw(&url(), &schema).await;
    conn.execute(format!("SET ROLE {}", row_security::ROLE).as_str())
        .await
        .unwrap();
    assert_eq!(count(&mut conn, "SELECT count(*) FROM events").await, 0);
    conn.execute("SET cairn.tenant TO ''").await.unwrap();
    for table in ["events", "streams", "snapshots"] {
        let n = count(&mut conn, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "{table}");
    }
    // The tables without a tenant are for the system alone.
    for table in ["log_head", "cairn_migrations"] {
        let err = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&mut conn)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{table}: {err}"
        );
    }
    conn.close().await.unwrap();
}

/// The one-round-trip reads (`cairn_read_stream`, `cairn_stream_info`,
/// `cairn_load_snapshot`) on a session like the tenant pool's: each sees
/// its tenant's rows only, and the tenant it sets ends with its statement,
/// so the session denies everything again right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_round_trip_reads_see_one_tenant_and_leave_nothing_set() {
    let schema = fresh_schema();
    let Some(store) = store_with(options(&schema)).await else {
        return;
    };
    two_tenants(&store).await;
    let mut conn = raw(&url(), &schema).await;
    conn.execute(format!("SET ROLE {}; SET cairn.tenant TO ''", row_security::ROLE).as_str())
        .await
        .unwrap();
    let tenants_read = |t: &'static str, s: &'static str| {
        format!("SELECT o_tenant_id FROM cairn_read_stream('{t}', '{s}', NULL, 100, false)")
    };
    for (t, s, expected) in [
        ("acme", "order-1", vec!["acme"; 3]),
        ("globex", "order-1", vec!["globex"; 2]),
        ("globex", "invoice-9", vec![]),
        ("initech", "order-1", vec![]),
    ] {
        let read: Vec<String> = sqlx::query_scalar(&tenants_read(t, s))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(read, expected, "{t} {s}");
        // the setting ended with the statement: nothing is visible now
        let setting: String = sqlx::query_scalar("SELECT current_setting('cairn.tenant')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(setting, "", "after {t} {s}");
        assert_eq!(count(&mut conn, "SELECT count(*) FROM events").await, 0);
    }
    let infos = |t: &str, s: &str| format!("SELECT count(*) FROM cairn_stream_info('{t}', '{s}')");
    assert_eq!(count(&mut conn, &infos("acme", "invoice-9")).await, 1);
    assert_eq!(count(&mut conn, &infos("globex", "invoice-9")).await, 0);
    let snapshots =
        |t: &str, s: &str| format!("SELECT count(*) FROM cairn_load_snapshot('{t}', '{s}')");
    assert_eq!(count(&mut conn, &snapshots("acme", "order-1")).await, 1);
    assert_eq!(count(&mut conn, &snapshots("globex", "order-1")).await, 0);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM snapshots").await, 0);
    // They run as their caller, so the policies bind them: never as their
    // owner (SECURITY DEFINER), who may be a superuser.
    let definers = count(
        &mut conn,
        "SELECT count(*) FROM pg_proc WHERE prosecdef AND proname LIKE 'cairn\\_%'",
    )
    .await;
    assert_eq!(definers, 0);
    conn.close().await.unwrap();
}

/// A read meets a dead connection (here killed by the server) and runs
/// again on another: the connections the store keeps for reads, and those
/// of the tenant pool, which are not pinged before use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_dead_pooled_connection_runs_again() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    two_tenants(&store).await;
    let acme = tenant("acme");
    for round in 0..3 {
        let events = store
            .read_stream(&acme, &stream("order-1"), ReadStream::all())
            .await
            .unwrap();
        assert_eq!(events.len(), 3, "round {round}");
        // Every idle connection of this database whose last statement was a
        // stream read: this store's kept ones among them (other tests'
        // reads take the same way back).
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle'
               AND query LIKE '%cairn_read_stream(%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(killed >= 1, "round {round}: a reading connection was found");
        // reads take the kept connections in turn: enough of them to meet
        // the dead one
        for _ in 0..10 {
            let info = store.stream_info(&acme, &stream("order-1")).await.unwrap();
            assert_eq!(info.map(|i| i.version), Some(2), "round {round}");
        }
    }
    // and so does the begin of a tenant transaction
    let mut tx = store.scoped(&acme).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .unwrap();
    let listed = store.list_streams(&acme, None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_transaction_cannot_write_the_store() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    two_tenants(&store).await;
    // Connected as a superuser, tenant transactions run as a role that may
    // only read: appends go through the writer.
    for (t, row_tenant) in [("acme", "globex"), ("acme", "acme")] {
        let mut tx = store.scoped(&tenant(t)).await.unwrap();
        let err = sqlx::query(
            "INSERT INTO streams (tenant_id, stream_id, version) VALUES ($1, 'forged-1', 0)",
        )
        .bind(row_tenant)
        .execute(&mut *tx)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
    }
    assert_eq!(visible_to(&store, "globex").await, (2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_api_reads_one_tenant_only() {
    let Some(store) = store_with(options(&fresh_schema())).await else {
        return;
    };
    two_tenants(&store).await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    // acme's stream that globex does not have.
    let invoice = stream("invoice-9");
    assert!(
        store
            .read_stream(&globex, &invoice, ReadStream::all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stream_info(&globex, &invoice).await.unwrap(), None);
    assert_eq!(
        store
            .load_snapshot(&globex, &stream("order-1"))
            .await
            .unwrap(),
        None
    );
    let listed: Vec<String> = store
        .list_streams(&globex, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.stream.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["order-1"]);
    // The same stream id is each tenant's own stream.
    let read = |t: TenantId| {
        let store = store.clone();
        async move {
            store
                .read_stream(&t, &stream("order-1"), ReadStream::all())
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.tenant.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(acme.clone()).await, ["acme"; 3]);
    assert_eq!(read(globex).await, ["globex"; 2]);
    let snapshot = store
        .load_snapshot(&acme, &stream("order-1"))
        .await
        .unwrap();
    assert_eq!(snapshot.unwrap().state, json!({"secret": "acme"}));
    // `$all` across tenants is system access and sees both.
    let all = store
        .read_all(0, &AllFilter::all_tenants(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_starting_together_create_their_role_once() {
    // A role of its own, so the race on CREATE ROLE really happens here.
    let role = format!(
        "cairn_rls_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let schemas: Vec<String> = (0..6).map(|_| fresh_schema()).collect();
    let stores = join_all(schemas.iter().map(|schema| {
        store_with(PostgresOptions {
            row_security_role: role.clone(),
            max_connections: 2,
            ..options(schema)
        })
    }))
    .await;
    let mut reads_ok = true;
    let mut opened = Vec::new();
    for store in stores {
        let Some(store) = store else {
            return;
        };
        let (t, s) = (tenant("acme"), stream("order-1"));
        store
            .append(
                &t,
                &s,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("E", json!({}))],
            )
            .await
            .unwrap();
        // Tenant reads run as the new role.
        let mut tx = store.scoped(&t).await.unwrap();
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        reads_ok &= user == role;
        drop(tx);
        reads_ok &= store
            .read_stream(&t, &s, ReadStream::all())
            .await
            .unwrap()
            .len()
            == 1;
        opened.push(store);
    }
    drop(opened);
    drop_schemas_and_role(&schemas, &role).await;
    assert!(reads_ok, "tenant reads did not run as {role}");
}

/// Best effort: the test's schemas, then its role.
async fn drop_schemas_and_role(schemas: &[String], role: &str) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Ok(mut conn) = PgConnection::connect(&url()).await else {
        return;
    };
    for schema in schemas {
        let _ = conn
            .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
            .await;
    }
    let _ = conn
        .execute(format!("DROP OWNED BY \"{role}\"").as_str())
        .await;
    let _ = conn
        .execute(format!("DROP ROLE IF EXISTS \"{role}\"").as_str())
        .await;
}

/// `url` with another user name.
fn url_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_as_the_plain_owner_the_forced_policies_bind_it() {
    // A login role that owns what it creates, neither superuser nor
    // BYPASSRLS: the deployment where no role switch happens.
    let owner = format!(
        "cairn_owner_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let schema = fresh_schema();
    let mut admin = match PgConnection::connect(&url()).await {
        Ok(conn) => conn,
        Err(e) => return service_absent("PostgreSQL", e).unwrap_or(()),
    };
    admin
        .execute(format!("CREATE ROLE \"{owner}\" LOGIN").as_str())
        .await
        .unwrap();
    let database = db_name(&mut admin).await;
    admin
        .execute(format!("GRANT CREATE ON DATABASE \"{database}\" TO \"{owner}\"").as_str())
        .await
        .unwrap();
    let owner_url = url_as(&url(), &owner);
    let outcome = tokio::spawn(owner_scenario(owner_url.clone(), schema.clone())).await;
    let _ = admin
        .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
        .await;
    drop_schemas_and_role(&[], &owner).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn db_name(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn owner_scenario(owner_url: String, schema: String) {
    let store = PostgresStore::connect_with(&owner_url, options(&schema))
        .await
        .unwrap();
    two_tenants(&store).await;
    // The system pool sees every tenant ('*'); the store API works.
    let all = store
        .read_all(0, &AllFilter::all_tenants(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(
        store
            .read_stream(&tenant("globex"), &stream("order-1"), ReadStream::all())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(visible_to(&store, "acme").await, (4, 2, 1));
    assert_eq!(visible_to(&store, "globex").await, (2, 1, 0));

    // The owner's own session, naming no tenant, sees nothing.
    let mut conn = raw(&owner_url, &schema).await;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM events").await, 0);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM streams").await, 0);

    // The owner may write, so the policy's WITH CHECK is the wall: a row of
    // another tenant is refused inside a tenant's transaction, its own is not.
    let insert = "INSERT INTO snapshots (tenant_id, stream_id, version, schema_version, state)
                  VALUES ($1, 'order-1', 0, 1, '{}')";
    let mut tx = store.scoped(&tenant("globex")).await.unwrap();
    let err = sqlx::query(insert)
        .bind("acme")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_policy_violation(&err), "{err}");
    drop(tx);
    let mut tx = store.scoped(&tenant("globex")).await.unwrap();
    sqlx::query(insert)
        .bind("globex")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx); // rolled back
    // Nor can an update move a row to another tenant.
    let mut tx = store.scoped(&tenant("acme")).await.unwrap();
    let err = sqlx::query("UPDATE streams SET tenant_id = 'globex' WHERE stream_id = 'invoice-9'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_policy_violation(&err), "{err}");
    drop(tx);

    // The writer's lookups still use the indexes under the forced policies
    // (with sequential scans priced out, any that remains could not use one).
    let mut conn = store.pool().acquire().await.unwrap();
    conn.execute("SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE cairn_load_batch(
             '[{\"t\": \"acme\", \"s\": \"order-1\"}]',
             '[{\"t\": \"acme\", \"id\": \"0190a4b0-0000-7000-8000-000000000000\"}]')",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    conn.execute("RESET enable_seqscan").await.unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan on streams"), "{plan}");
    assert!(!plan.contains("Seq Scan on events"), "{plan}");
    drop(conn);
    drop(store);
}
