//! The checkpoint table: one row per projection with its position, the
//! version of its model and, when it failed, the failing event. Checkpoint
//! moves happen inside the transaction that changes the model, and only
//! from the position the runner believes is stored (`WHERE position = $from`),
//! so a second runner on the same database (another process) or a rebuild
//! elsewhere is noticed instead of applying events twice.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::AnyConnection;

use crate::ProjectionFailure;

/// The table's DDL, portable between SQLite and PostgreSQL.
pub(crate) const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS cairn_projection_checkpoints (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    version BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    failed_position BIGINT,
    failed_event_id TEXT,
    failed_event_type TEXT,
    failed_tenant TEXT,
    failed_stream TEXT,
    failed_error TEXT,
    failed_at TEXT
)";

/// A projection's stored row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) position: u64,
    pub(crate) version: u32,
    pub(crate) failure: Option<ProjectionFailure>,
}

pub(crate) fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

type Row = (
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The stored row of `name`, if any.
pub(crate) async fn load(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT position, version, failed_position, failed_event_id, failed_event_type,
                failed_tenant, failed_stream, failed_error, failed_at
         FROM cairn_projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(
        |(position, version, failed_position, id, event_type, tenant, stream, error, at)| {
            let failure = failed_position.map(|p| ProjectionFailure {
                position: u64::try_from(p).unwrap_or(0),
                event_id: id.unwrap_or_default(),
                event_type: event_type.unwrap_or_default(),
                tenant: tenant.unwrap_or_default(),
                stream: stream.unwrap_or_default(),
                error: error.unwrap_or_default(),
                failed_at: at
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc)),
            });
            Stored {
                position: u64::try_from(position).unwrap_or(0),
                version: u32::try_from(version).unwrap_or(0),
                failure,
            }
        },
    ))
}

/// Creates the row of a projection seen for the first time, at position 0.
/// Returns whether it was created (false: it existed).
pub(crate) async fn create(
    conn: &mut AnyConnection,
    name: &str,
    version: u32,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO cairn_projection_checkpoints (name, position, version, updated_at)
         VALUES ($1, 0, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(i64::from(version))
    .bind(now_text())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves the checkpoint from `from` to `to`; false when the stored position
/// was not `from` (someone else moved it), and then nothing changed.
pub(crate) async fn advance(
    conn: &mut AnyConnection,
    name: &str,
    from: u64,
    to: u64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE cairn_projection_checkpoints SET position = $2, updated_at = $3
         WHERE name = $1 AND position = $4",
    )
    .bind(name)
    .bind(to_i64(to))
    .bind(now_text())
    .bind(to_i64(from))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts the projection back at position 0 with `version`, without a failure.
pub(crate) async fn restart_from_zero(
    conn: &mut AnyConnection,
    name: &str,
    version: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cairn_projection_checkpoints (name, position, version, updated_at)
         VALUES ($1, 0, $2, $3)
         ON CONFLICT (name) DO UPDATE SET position = 0, version = excluded.version,
             updated_at = excluded.updated_at, failed_position = NULL, failed_event_id = NULL,
             failed_event_type = NULL, failed_tenant = NULL, failed_stream = NULL,
             failed_error = NULL, failed_at = NULL",
    )
    .bind(name)
    .bind(i64::from(version))
    .bind(now_text())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that the projection stopped at `failure`.
pub(crate) async fn record_failure(
    conn: &mut AnyConnection,
    name: &str,
    failure: &ProjectionFailure,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cairn_projection_checkpoints SET failed_position = $2, failed_event_id = $3,
             failed_event_type = $4, failed_tenant = $5, failed_stream = $6, failed_error = $7,
             failed_at = $8, updated_at = $9
         WHERE name = $1",
    )
    .bind(name)
    .bind(to_i64(failure.position))
    .bind(failure.event_id.as_str())
    .bind(failure.event_type.as_str())
    .bind(failure.tenant.as_str())
    .bind(failure.stream.as_str())
    .bind(failure.error.as_str())
    .bind(
        failure
            .failed_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    )
    .bind(now_text())
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a recorded failure, so the projection tries the event again.
pub(crate) async fn clear_failure(conn: &mut AnyConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cairn_projection_checkpoints SET failed_position = NULL, failed_event_id = NULL,
             failed_event_type = NULL, failed_tenant = NULL, failed_stream = NULL,
             failed_error = NULL, failed_at = NULL, updated_at = $2
         WHERE name = $1",
    )
    .bind(name)
    .bind(now_text())
    .execute(conn)
    .await?;
    Ok(())
}
