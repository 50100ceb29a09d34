//! A projection's dead letters: the events it passes over instead of
//! stopping at them. An event gets here in one of two ways:
//! - **parked**: the projection's [`PoisonPolicy`] is `Park`, `apply` failed
//!   on the event for good, and the runner recorded it here and went on;
//! - **skipped**: the projection had stopped at the event and an operator
//!   skipped it ([`Projections::skip`](crate::Projections::skip)), recorded
//!   with who did it and when.
//!
//! Guarantees: the row is committed before the runner moves past the
//! event, and a runner passes over every event recorded here beyond its
//! checkpoint (loaded when it starts), so an event is never both applied
//! and recorded, and never silently lost. Rows are history: a rebuild
//! passes over the same events again.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::ProjectionFailure;

/// The table's DDL, portable between SQLite and PostgreSQL. The event's
/// tenant is `event_tenant`, not `tenant_id`: this is an operator's table,
/// read across tenants, and must not get the per-tenant row policy.
pub(crate) const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS cairn_projection_dead_letters (
    projection TEXT NOT NULL,
    position BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_tenant TEXT NOT NULL,
    stream TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    actor TEXT,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (projection, position)
)";

/// What a projection does when `apply` fails on an event for good.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PoisonPolicy {
    /// Stop at the event until an operator retries, skips or rebuilds
    /// (the default: nothing is passed over without a person deciding).
    #[default]
    Stop,
    /// Record the event in the projection's dead letters and go on.
    Park,
}

impl std::str::FromStr for PoisonPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(Self::Stop),
            "park" => Ok(Self::Park),
            other => Err(format!("unknown policy {other:?}: expected stop or park")),
        }
    }
}

/// Why an event is in a projection's dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterReason {
    /// Passed over by the `park` policy.
    Parked,
    /// Passed over by an operator.
    Skipped,
}

impl DeadLetterReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Parked => "parked",
            Self::Skipped => "skipped",
        }
    }
}

/// One event a projection passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionDeadLetter {
    /// The projection.
    pub projection: String,
    /// The event's global position.
    pub position: u64,
    /// Its id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Its tenant.
    pub tenant: String,
    /// Its stream.
    pub stream: String,
    /// Parked by the policy or skipped by an operator.
    pub reason: DeadLetterReason,
    /// What `apply` said.
    pub error: String,
    /// Who skipped it (the token's subject); absent when parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// How many of a projection's dead letters are parked and skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) parked: u64,
    pub(crate) skipped: u64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Records `failure` (an event's) as a dead letter of `projection`. A second
/// record of the same position changes nothing.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    projection: &str,
    failure: &ProjectionFailure,
    reason: DeadLetterReason,
    actor: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cairn_projection_dead_letters
             (projection, position, event_id, event_type, event_tenant, stream, reason, error,
              actor, recorded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (projection, position) DO NOTHING",
    )
    .bind(projection)
    .bind(to_i64(failure.position))
    .bind(failure.event_id.as_str())
    .bind(failure.event_type.as_str())
    .bind(failure.tenant.as_str())
    .bind(failure.stream.as_str())
    .bind(reason.as_str())
    .bind(failure.error.as_str())
    .bind(actor)
    .bind(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true))
    .execute(conn)
    .await?;
    Ok(())
}

/// The positions recorded for `projection` beyond `after`: the events its
/// runner passes over.
pub(crate) async fn positions_after(
    conn: &mut AnyConnection,
    projection: &str,
    after: u64,
) -> Result<Vec<u64>, sqlx::Error> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT position FROM cairn_projection_dead_letters
         WHERE projection = $1 AND position > $2 ORDER BY position",
    )
    .bind(projection)
    .bind(to_i64(after))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p,)| u64::try_from(p).unwrap_or(0))
        .collect())
}

/// How many dead letters `projection` has, by reason.
pub(crate) async fn counts(
    conn: &mut AnyConnection,
    projection: &str,
) -> Result<Counts, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, COUNT(*) FROM cairn_projection_dead_letters
         WHERE projection = $1 GROUP BY reason",
    )
    .bind(projection)
    .fetch_all(conn)
    .await?;
    let mut counts = Counts::default();
    for (reason, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        match reason.as_str() {
            "parked" => counts.parked = n,
            _ => counts.skipped += n,
        }
    }
    Ok(counts)
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
);

/// The dead letters of `projection` from position `after` on, oldest first,
/// at most `limit`.
pub(crate) async fn list(
    conn: &mut AnyConnection,
    projection: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<ProjectionDeadLetter>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT position, event_id, event_type, event_tenant, stream, reason, error, actor,
                recorded_at
         FROM cairn_projection_dead_letters
         WHERE projection = $1 AND position > $2 ORDER BY position LIMIT $3",
    )
    .bind(projection)
    .bind(to_i64(after))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(position, event_id, event_type, tenant, stream, reason, error, actor, at)| {
                ProjectionDeadLetter {
                    projection: projection.to_owned(),
                    position: u64::try_from(position).unwrap_or(0),
                    event_id,
                    event_type,
                    tenant,
                    stream,
                    reason: if reason == "parked" {
                        DeadLetterReason::Parked
                    } else {
                        DeadLetterReason::Skipped
                    },
                    error,
                    actor,
                    recorded_at: DateTime::parse_from_rfc3339(&at)
                        .map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc)),
                }
            },
        )
        .collect())
}
