//! Opening service databases from URLs: PostgreSQL schemas are created and
//! used by every connection; bad and unreachable URLs fail with the right
//! codes.

use std::time::Duration;

use cairn_core::ErrorCode;
use cairn_service_db::{DbKind, ServiceDb, ServiceDbError, ServiceDbOptions};
use cairn_store::testkit::service_absent;

fn pg_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL schema (named like the other crates' test schemas,
/// which their test runs sweep) and its URL, or `None` (skip) when
/// PostgreSQL is absent and not required.
async fn fresh_postgres() -> Option<(ServiceDb, String, String)> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("cairn_test_{secs}_{}", &id[20..]);
    let url = format!("{}?schema={schema}", pg_url());
    match tokio::time::timeout(Duration::from_secs(20), ServiceDb::open(&url)).await {
        Ok(Ok(db)) => Some((db, url, schema)),
        Ok(Err(e)) => service_absent("PostgreSQL", e),
        Err(_) => service_absent("PostgreSQL", "connect timed out"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_is_created_and_every_connection_uses_it() {
    let Some((db, url, schema)) = fresh_postgres().await else {
        return;
    };
    assert_eq!(db.kind(), DbKind::Postgres);
    // More connections than one, each must land in the schema.
    let mut handles = Vec::new();
    for i in 0..6 {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let mut tx = db.begin().await.unwrap();
            sqlx::query(&format!("CREATE TABLE IF NOT EXISTS t{i} (x BIGINT)"))
                .execute(&mut *tx)
                .await
                .unwrap();
            let here: String = sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            here
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), schema);
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(schema.as_str())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(tables, 6);
    // Opening it again (the schema exists) works and sees the same tables.
    let again = ServiceDb::open(&url).await.expect("reopen");
    let x: Option<i64> = sqlx::query_scalar("SELECT x FROM t0")
        .fetch_optional(again.pool())
        .await
        .unwrap();
    assert_eq!(x, None);
    assert!(!format!("{again:?}").contains("password"));
    again.close().await;
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
}

#[tokio::test]
async fn bad_urls_are_invalid_input() {
    for url in [
        "",
        "mysql://localhost/db",
        "sqlite://",
        "postgres://localhost/db?schema=Bad-Name",
    ] {
        let err = ServiceDb::open(url).await.unwrap_err();
        assert!(
            matches!(err, ServiceDbError::Invalid { .. }),
            "{url}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidInput, "{url}");
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_and_the_password_stays_secret() {
    let options = ServiceDbOptions {
        acquire_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let err = ServiceDb::open_with("postgres://u:hunter2@127.0.0.1:1/db", options)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
