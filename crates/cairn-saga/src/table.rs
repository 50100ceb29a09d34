//! The timeouts table, `cairn_saga_timeouts`, in the service's own database
//! (portable SQL for SQLite and PostgreSQL, through [`ServiceDb`]).
//!
//! One row per pending deadline of a saga instance. Besides the deadline
//! itself a row keeps:
//! - `decided_at`: the saga stream's version once the decision that
//!   scheduled it is recorded (-1 for a decision on a new saga that records
//!   nothing). A cancellation only removes deadlines decided at or before the
//!   version its own decision was made on, so a deadline scheduled by a
//!   decision the canceller never saw (another process, in between) stays.
//! - `correlation_id`: the correlation of the request that scheduled it,
//!   carried into the events the timeout causes.
//! - `claim`: the token of the poller that is firing it right now; only that
//!   poller may delete or reschedule the row, and scheduling the key again
//!   clears it, so a deadline set while its predecessor fires is kept.

use std::time::Duration;

use cairn_service_db::{DbKind, ServiceDb};
use chrono::{DateTime, SecondsFormat, Utc};

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS cairn_saga_timeouts (
        saga TEXT NOT NULL,
        tenant TEXT NOT NULL,
        saga_id TEXT NOT NULL,
        key TEXT NOT NULL,
        due_at TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        last_error TEXT,
        decided_at BIGINT NOT NULL,
        correlation_id TEXT,
        claim TEXT,
        PRIMARY KEY (saga, tenant, saga_id, key)
    )",
    "CREATE INDEX IF NOT EXISTS cairn_saga_timeouts_due
        ON cairn_saga_timeouts (saga, due_at)",
];

/// Creates the table if it is missing. Two processes creating it at the same
/// moment can make PostgreSQL report a duplicate in its catalog; the second
/// try then finds the table.
pub(crate) async fn ensure(db: &ServiceDb) -> Result<(), sqlx::Error> {
    for statement in TABLES {
        if sqlx::query(statement).execute(db.pool()).await.is_err() {
            sqlx::query(statement).execute(db.pool()).await?;
        }
    }
    Ok(())
}

/// A time as stored: RFC 3339, UTC, microseconds, so text order is time order.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The longest delay kept as is; longer ones are cut to it, so every
/// deadline stays a four-digit year and sorts as text.
const MAX_DELAY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// `now + after`, `after` cut to a hundred years.
pub(crate) fn due_in(after: Duration) -> String {
    let after = chrono::TimeDelta::from_std(after.min(MAX_DELAY)).unwrap_or(chrono::TimeDelta::MAX);
    timestamp(Utc::now() + after)
}

/// A stream version as stored; `None` (no stream) is -1.
pub(crate) fn version_column(version: Option<u64>) -> i64 {
    version.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The instance a row belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Instance<'a> {
    pub(crate) saga: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) saga_id: &'a str,
}

/// Writes (or moves) deadlines, all in one transaction.
pub(crate) async fn schedule(
    db: &ServiceDb,
    at: Instance<'_>,
    deadlines: &[(String, String)],
    decided_at: i64,
    correlation_id: &str,
) -> Result<(), sqlx::Error> {
    if deadlines.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for (key, due_at) in deadlines {
        sqlx::query(
            "INSERT INTO cairn_saga_timeouts
                (saga, tenant, saga_id, key, due_at, attempts, last_error, decided_at,
                 correlation_id, claim)
             VALUES ($1, $2, $3, $4, $5, 0, NULL, $6, $7, NULL)
             ON CONFLICT (saga, tenant, saga_id, key) DO UPDATE SET
                due_at = excluded.due_at, attempts = 0, last_error = NULL,
                decided_at = excluded.decided_at, correlation_id = excluded.correlation_id,
                claim = NULL",
        )
        .bind(at.saga)
        .bind(at.tenant)
        .bind(at.saga_id)
        .bind(key)
        .bind(due_at)
        .bind(decided_at)
        .bind(correlation_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Removes the deadlines `keys` decided at or before `seen`.
pub(crate) async fn cancel(
    db: &ServiceDb,
    at: Instance<'_>,
    keys: &[String],
    seen: i64,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for key in keys {
        sqlx::query(
            "DELETE FROM cairn_saga_timeouts
             WHERE saga = $1 AND tenant = $2 AND saga_id = $3 AND key = $4 AND decided_at <= $5",
        )
        .bind(at.saga)
        .bind(at.tenant)
        .bind(at.saga_id)
        .bind(key)
        .bind(seen)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Removes every deadline of a finished instance decided at or before `seen`.
pub(crate) async fn clear(db: &ServiceDb, at: Instance<'_>, seen: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM cairn_saga_timeouts
         WHERE saga = $1 AND tenant = $2 AND saga_id = $3 AND decided_at <= $4",
    )
    .bind(at.saga)
    .bind(at.tenant)
    .bind(at.saga_id)
    .bind(seen)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A deadline a poller took to fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claimed {
    pub(crate) tenant: String,
    pub(crate) saga_id: String,
    pub(crate) key: String,
    pub(crate) attempts: i64,
    pub(crate) correlation_id: Option<String>,
}

/// Takes up to `limit` due deadlines of `saga`: their `due_at` moves to
/// `lease_until` (so a poller that dies with them lets them fire again
/// then) and `claim` to `token`. Competing pollers never take the same row:
/// PostgreSQL skips rows another claim has locked, SQLite has one writer.
pub(crate) async fn claim(
    db: &ServiceDb,
    saga: &str,
    limit: usize,
    lease_until: &str,
    token: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let sql = match db.kind() {
        DbKind::Postgres => {
            "WITH due AS (
                SELECT tenant, saga_id, key FROM cairn_saga_timeouts
                WHERE saga = $1 AND due_at <= $2
                ORDER BY due_at LIMIT $3
                FOR UPDATE SKIP LOCKED
            )
            UPDATE cairn_saga_timeouts AS t SET due_at = $4, claim = $5
            FROM due
            WHERE t.saga = $1 AND t.tenant = due.tenant AND t.saga_id = due.saga_id
              AND t.key = due.key
            RETURNING t.tenant, t.saga_id, t.key, t.attempts, t.correlation_id"
        }
        DbKind::Sqlite => {
            "UPDATE cairn_saga_timeouts SET due_at = $4, claim = $5
             WHERE saga = $1 AND (tenant, saga_id, key) IN (
                SELECT tenant, saga_id, key FROM cairn_saga_timeouts
                WHERE saga = $1 AND due_at <= $2
                ORDER BY due_at LIMIT $3
             )
             RETURNING tenant, saga_id, key, attempts, correlation_id"
        }
    };
    let rows: Vec<(String, String, String, i64, Option<String>)> = sqlx::query_as(sql)
        .bind(saga)
        .bind(timestamp(Utc::now()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease_until)
        .bind(token)
        .fetch_all(db.pool())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, saga_id, key, attempts, correlation_id)| Claimed {
            tenant,
            saga_id,
            key,
            attempts,
            correlation_id,
        })
        .collect())
}

/// The claimed deadline fired: it is gone, unless the key was scheduled
/// again meanwhile (which cleared the claim).
pub(crate) async fn fired(
    db: &ServiceDb,
    saga: &str,
    row: &Claimed,
    token: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM cairn_saga_timeouts
         WHERE saga = $1 AND tenant = $2 AND saga_id = $3 AND key = $4 AND claim = $5",
    )
    .bind(saga)
    .bind(&row.tenant)
    .bind(&row.saga_id)
    .bind(&row.key)
    .bind(token)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Firing the claimed deadline failed: count the attempt, keep the error and
/// try again at `retry_at`.
pub(crate) async fn failed(
    db: &ServiceDb,
    saga: &str,
    row: &Claimed,
    token: &str,
    error: &str,
    retry_at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cairn_saga_timeouts
         SET attempts = attempts + 1, last_error = $6, due_at = $7, claim = NULL
         WHERE saga = $1 AND tenant = $2 AND saga_id = $3 AND key = $4 AND claim = $5",
    )
    .bind(saga)
    .bind(&row.tenant)
    .bind(&row.saga_id)
    .bind(&row.key)
    .bind(token)
    .bind(error)
    .bind(retry_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A pending deadline as stored: key, due at, attempts, last error.
pub(crate) type PendingRow = (String, String, i64, Option<String>);

/// The pending deadlines of an instance, soonest first.
pub(crate) async fn pending(
    db: &ServiceDb,
    at: Instance<'_>,
) -> Result<Vec<PendingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key, due_at, attempts, last_error FROM cairn_saga_timeouts
         WHERE saga = $1 AND tenant = $2 AND saga_id = $3
         ORDER BY due_at, key",
    )
    .bind(at.saga)
    .bind(at.tenant)
    .bind(at.saga_id)
    .fetch_all(db.pool())
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_text_in_time_order() {
        let a = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000001Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = a + chrono::TimeDelta::microseconds(9);
        let c = a + chrono::TimeDelta::seconds(10);
        let (ta, tb, tc) = (timestamp(a), timestamp(b), timestamp(c));
        assert_eq!(ta, "2026-01-01T00:00:00.000001Z");
        assert!(ta < tb && tb < tc, "{ta} {tb} {tc}");
    }

    #[test]
    fn huge_delays_saturate() {
        let far = due_in(Duration::MAX);
        assert!(far.starts_with('2') && far.len() == 27, "{far}");
        assert!(far > due_in(Duration::from_secs(3600)));
        assert_eq!(version_column(None), -1);
        assert_eq!(version_column(Some(4)), 4);
    }
}
