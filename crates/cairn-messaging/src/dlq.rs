//! The dead-letter queue, as operators see it (`cairn dlq`): list, show,
//! replay and drop. Dead letters live in the consuming service's database,
//! beside its inbox; a replay marks the row, and a running instance of the
//! consumer handles it within its replay poll (in one transaction with the
//! row's removal, so a replay is never lost and never doubled).

use cairn_service_db::ServiceDb;
use serde::Serialize;

use crate::{MessagingError, schema};

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub consumer: String,
    pub event_id: String,
    pub tenant: Option<String>,
    pub stream: Option<String>,
    pub event_type: Option<String>,
    pub attempts: u64,
    pub error: String,
    pub dead_at: String,
    /// Marked for replay and not yet picked up.
    pub replay: bool,
    /// The message as it came (CloudEvents JSON, or whatever could not be
    /// decoded).
    pub body: String,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub consumer: Option<String>,
    pub event_id: Option<String>,
}

/// The dead letters in one service database.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    db: ServiceDb,
}

type Row = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
    i64,
    String,
);

impl DeadLetters {
    pub async fn open(db: ServiceDb) -> Result<Self, MessagingError> {
        schema::ensure(&db).await?;
        Ok(Self { db })
    }

    /// Dead letters, oldest first, at most `limit`.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, MessagingError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT consumer, event_id, tenant, stream, event_type, attempts, error, dead_at,
                    replay, body
             FROM cairn_dead_letters
             WHERE ($1 IS NULL OR consumer = $1) AND ($2 IS NULL OR event_id = $2)
             ORDER BY dead_at, consumer, event_id LIMIT $3",
        )
        .bind(filter.consumer.clone())
        .bind(filter.event_id.clone())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    consumer,
                    event_id,
                    tenant,
                    stream,
                    event_type,
                    attempts,
                    error,
                    dead_at,
                    replay,
                    body,
                )| {
                    DeadLetter {
                        consumer,
                        event_id,
                        tenant,
                        stream,
                        event_type,
                        attempts: u64::try_from(attempts).unwrap_or(0),
                        error,
                        dead_at,
                        replay: replay != 0,
                        body,
                    }
                },
            )
            .collect())
    }

    /// Marks matching dead letters for replay; returns how many.
    pub async fn replay(&self, filter: &DeadLetterFilter) -> Result<u64, MessagingError> {
        Ok(sqlx::query(
            "UPDATE cairn_dead_letters SET replay = 1
             WHERE ($1 IS NULL OR consumer = $1) AND ($2 IS NULL OR event_id = $2)",
        )
        .bind(filter.consumer.clone())
        .bind(filter.event_id.clone())
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }

    /// Deletes matching dead letters for good; returns how many.
    pub async fn drop(&self, filter: &DeadLetterFilter) -> Result<u64, MessagingError> {
        Ok(sqlx::query(
            "DELETE FROM cairn_dead_letters
             WHERE ($1 IS NULL OR consumer = $1) AND ($2 IS NULL OR event_id = $2)",
        )
        .bind(filter.consumer.clone())
        .bind(filter.event_id.clone())
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }
}
