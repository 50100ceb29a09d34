//! Opening read databases from URLs: PostgreSQL schemas are created and used
//! by every connection; bad and unreachable URLs fail with the right codes.

mod common;

use cairn_core::ErrorCode;
use cairn_projection::{DbKind, ReadDb, ReadModelError};
use common::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_is_created_and_every_connection_uses_it() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    assert_eq!(t.db.kind(), DbKind::Postgres);
    let schema = t.url.rsplit_once("schema=").unwrap().1.to_owned();
    // More connections than one, each must land in the schema.
    let mut handles = Vec::new();
    for i in 0..6 {
        let db = t.db.clone();
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
    .fetch_one(t.db.pool())
    .await
    .unwrap();
    assert_eq!(tables, 6);
    // Opening it again (the schema exists) works and sees the same tables.
    let again = t.reopen().await;
    let x: Option<i64> = sqlx::query_scalar("SELECT x FROM t0")
        .fetch_optional(again.pool())
        .await
        .unwrap();
    assert_eq!(x, None);
    assert!(!format!("{again:?}").contains("password"));
}

#[tokio::test]
async fn bad_urls_are_invalid_input() {
    for url in [
        "",
        "mysql://localhost/db",
        "sqlite://",
        "postgres://localhost/db?schema=Bad-Name",
    ] {
        let err = ReadDb::open(url).await.unwrap_err();
        assert!(
            matches!(err, ReadModelError::Invalid { .. }),
            "{url}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidInput, "{url}");
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_and_the_password_stays_secret() {
    let options = cairn_projection::ReadDbOptions {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let err = ReadDb::open_with("postgres://u:hunter2@127.0.0.1:1/db", options)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
