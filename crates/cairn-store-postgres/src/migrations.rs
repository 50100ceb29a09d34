//! Versioned schema migrations, embedded in the binary and applied on
//! connect. They run in one transaction under an advisory lock keyed by the
//! schema name, so several processes starting at once apply each migration
//! exactly once, and a failed migration leaves the schema as it was.
//!
//! A migration, once released, is never edited: changes come as a new version.
//!
//! In the same transaction, after the migrations, row-level security is
//! brought up to date: every tenant table of the schema carries the policy,
//! and when the connecting user would ignore it (a superuser, `BYPASSRLS`),
//! the role tenant connections switch to exists and may read those tables.

use cairn_store::row_security;
use sqlx::{Connection, Executor, PgConnection};

/// `(version, name, sql)`, in version order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event log",
        include_str!("../migrations/0001_event_log.sql"),
    ),
    (
        2,
        "one-statement append",
        include_str!("../migrations/0002_one_statement_append.sql"),
    ),
    (
        3,
        "row-level security",
        include_str!("../migrations/0003_row_level_security.sql"),
    ),
    (
        4,
        "one-round-trip tenant reads",
        include_str!("../migrations/0004_one_round_trip_reads.sql"),
    ),
];

/// Migrates `schema` and prepares row-level security for it. Returns whether
/// tenant connections must switch to `role` (the connecting user ignores
/// row-level security).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    role: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cairn-migrate:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    let quoted = quote_ident(schema);
    tx.execute(format!("CREATE SCHEMA IF NOT EXISTS {quoted}").as_str())
        .await?;
    tx.execute(format!("SET LOCAL search_path TO {quoted}").as_str())
        .await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS cairn_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM cairn_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(schema, version, name, "applying migration");
        tx.execute(sqlx::raw_sql(sql)).await?;
        sqlx::query("INSERT INTO cairn_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    let bypasses: bool = sqlx::query_scalar(row_security::BYPASSES_QUERY)
        .fetch_one(&mut *tx)
        .await?;
    if bypasses {
        tx.execute(row_security::ensure_role(role).as_str()).await?;
    }
    tx.execute(row_security::protect_tenant_tables(bypasses.then_some(role)).as_str())
        .await?;
    tx.commit().await?;
    Ok(bypasses)
}

/// Quotes an identifier that [`crate::PostgresOptions`] already validated.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
