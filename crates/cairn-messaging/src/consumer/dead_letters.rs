//! Dead letters: failures counted per event, events that keep failing (or
//! cannot be read) moved aside with their last error and the stream's
//! order moved past them, and replays of those an operator marked.

use super::{ordering::set_cursor, *};

impl Core {
    pub(super) async fn record_failure(
        &self,
        event: &IntegrationEvent,
        error: &HandlerError,
    ) -> Result<u64, sqlx::Error> {
        let attempts: i64 = sqlx::query_scalar(
            "INSERT INTO cairn_consumer_failures (consumer, event_id, attempts, last_error, updated_at)
             VALUES ($1, $2, 1, $3, $4)
             ON CONFLICT (consumer, event_id) DO UPDATE
                SET attempts = cairn_consumer_failures.attempts + 1,
                    last_error = excluded.last_error, updated_at = excluded.updated_at
             RETURNING attempts",
        )
        .bind(&self.group)
        .bind(event.id.to_string())
        .bind(error.to_string())
        .bind(schema::now())
        .fetch_one(self.db.pool())
        .await?;
        Ok(u64::try_from(attempts).unwrap_or(0))
    }

    /// Moves `event` to the dead letters and the stream's order past it.
    pub(super) async fn dead_letter(
        &self,
        event: &IntegrationEvent,
        error: &HandlerError,
        attempts: u64,
    ) -> Result<(), sqlx::Error> {
        let version = event
            .version()
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let mut tx = self.db.begin().await?;
        insert_dead_letter(
            &mut tx,
            &self.group,
            event.id,
            Some(event),
            &String::from_utf8_lossy(&event.to_json()),
            attempts,
            &error.to_string(),
        )
        .await?;
        let last = self.lock_cursor(&mut tx, event).await?;
        if version > last {
            set_cursor(&mut tx, &self.group, event, version).await?;
        }
        sqlx::query("DELETE FROM cairn_consumer_failures WHERE consumer = $1 AND event_id = $2")
            .bind(&self.group)
            .bind(event.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    pub(super) async fn dead_letter_raw(
        &self,
        id: EventId,
        body: &str,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        insert_dead_letter(&mut tx, &self.group, id, None, body, 1, error).await?;
        tx.commit().await
    }

    /// Handles dead letters marked for replay, one transaction each.
    pub(super) async fn replays(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.replay_poll) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.replay_marked().await {
                self.note_error(format!("replaying dead letters: {e}"));
            }
        }
    }

    pub(super) async fn replay_marked(&self) -> Result<(), sqlx::Error> {
        let marked: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, body FROM cairn_dead_letters
             WHERE consumer = $1 AND replay = 1 ORDER BY dead_at LIMIT 50",
        )
        .bind(&self.group)
        .fetch_all(self.db.pool())
        .await?;
        for (id, body) in marked {
            let event = match IntegrationEvent::from_json(body.as_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    self.replay_failed(&id, &format!("still undecodable: {e}"))
                        .await?;
                    continue;
                }
            };
            match self.try_handle(&event, true, true).await {
                Ok(Outcome::Handled | Outcome::Skipped) => {
                    tracing::info!(group = %self.group, event = %event.id, "dead letter replayed");
                    self.status.send_modify(|s| s.replayed += 1);
                    self.count("replayed", 1);
                }
                Ok(Outcome::Duplicate | Outcome::OutOfOrder) => {}
                Ok(Outcome::Failed(error)) => {
                    self.replay_failed(&id, &format!("replay failed: {error}"))
                        .await?;
                }
                Err(e) => {
                    self.replay_failed(&id, &format!("replay failed: {e}"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn replay_failed(&self, id: &str, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE cairn_dead_letters SET replay = 0, attempts = attempts + 1, error = $3
             WHERE consumer = $1 AND event_id = $2",
        )
        .bind(&self.group)
        .bind(id)
        .bind(error)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

/// Inserts (or, for an event dead-lettered again, replaces) a dead letter.
pub(super) async fn insert_dead_letter(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    id: EventId,
    event: Option<&IntegrationEvent>,
    body: &str,
    attempts: u64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cairn_dead_letters
            (consumer, event_id, tenant, stream, event_type, body, attempts, error, dead_at, replay)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)
         ON CONFLICT (consumer, event_id) DO UPDATE SET
            attempts = cairn_dead_letters.attempts + excluded.attempts,
            error = excluded.error, dead_at = excluded.dead_at, replay = 0",
    )
    .bind(group)
    .bind(id.to_string())
    .bind(event.map(|e| e.tenantid.as_str().to_owned()))
    .bind(event.map(|e| e.subject.as_str().to_owned()))
    .bind(event.map(|e| e.event_type.clone()))
    .bind(body)
    .bind(i64::try_from(attempts).unwrap_or(i64::MAX))
    .bind(error)
    .bind(schema::now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
