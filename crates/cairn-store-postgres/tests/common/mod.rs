//! Test support: a fresh schema per store on the shared PostgreSQL server,
//! so tests run in parallel without touching each other.

#![allow(dead_code, unreachable_pub)]

use std::{sync::Arc, time::Duration};

use cairn_store::{EventStore, testkit::service_absent};
use cairn_store_postgres::{PostgresOptions, PostgresStore};

pub fn url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name no other test uses; old ones are swept by `sweep`.
pub fn fresh_schema() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "cairn_test_{secs}_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    )
}

/// Drops test schemas left behind more than an hour ago by earlier runs.
async fn sweep() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let Ok(pool) = sqlx::PgPool::connect(&url()).await else {
                return;
            };
            let cutoff = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().saturating_sub(3600))
                .unwrap_or(0);
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cairn\\_test\\_%'",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for name in names {
                let born = name
                    .split('_')
                    .nth(2)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                if born < cutoff {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&pool)
                        .await;
                }
            }
        })
        .await;
}

/// Connects to a fresh schema, or `None` (skip) when PostgreSQL is absent
/// and not required.
pub async fn store_with(options: PostgresOptions) -> Option<PostgresStore> {
    sweep().await;
    match tokio::time::timeout(
        Duration::from_secs(20),
        PostgresStore::connect_with(&url(), options),
    )
    .await
    {
        Ok(Ok(store)) => Some(store),
        Ok(Err(e)) => service_absent("PostgreSQL", e),
        Err(_) => service_absent("PostgreSQL", "connect timed out"),
    }
}

pub fn options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        schema: schema.into(),
        max_connections: 4,
        ..PostgresOptions::default()
    }
}

pub async fn fresh() -> Option<Arc<dyn EventStore>> {
    let store = store_with(options(&fresh_schema())).await?;
    Some(Arc::new(store))
}
