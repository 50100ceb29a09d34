//! Handling with an inbox: each delivery (or a lane's batch) in one
//! transaction with its event id in the inbox, so a redelivery has no
//! second effect; failures retried with backoff, then dead-lettered.

use super::{
    ordering::{set_cursor, set_cursors},
    *,
};

impl Core {
    /// Several deliveries of one lane in one transaction: order checked
    /// against each stream's cursor (locked once, in a fixed order), one
    /// inbox insert for all, the handlers, one cursor update per stream,
    /// one commit, then the acks. If a handler or a statement fails, the
    /// transaction rolls back and each delivery is handled on its own
    /// (retries, dead letters), so a batch never changes what happens, only
    /// how many transactions it takes.
    pub(super) async fn process_batch(&self, batch: Vec<Delivery>) {
        let mut decoded = Vec::with_capacity(batch.len());
        for delivery in batch {
            match IntegrationEvent::from_json(&delivery.body) {
                Ok(event) => decoded.push((delivery, event)),
                // Not an event: the single path dead-letters it.
                Err(_) => self.process(delivery).await,
            }
        }
        if decoded.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.try_batch(&decoded).await {
            Ok(outcomes) => {
                let elapsed = started.elapsed().as_secs_f64() / decoded.len() as f64;
                let histogram = metrics::histogram!(
                    "cairn_consumer_handle_duration_seconds",
                    "group" => self.group.clone()
                );
                for _ in 0..decoded.len() {
                    histogram.record(elapsed);
                }
                // The acks of a committed batch all go out at once rather
                // than one broker round trip after another.
                futures_util::future::join_all(decoded.into_iter().zip(outcomes.iter()).map(
                    |((delivery, event), outcome)| self.give_back(delivery, event.id, *outcome),
                ))
                .await;
                self.tally(&outcomes);
            }
            Err(_) => {
                for (delivery, _) in decoded {
                    self.process(delivery).await;
                }
            }
        }
    }

    /// The batch's transaction; `Err` (rolled back) when anything failed.
    pub(super) async fn try_batch(
        &self,
        batch: &[(Delivery, IntegrationEvent)],
    ) -> Result<Vec<BatchOutcome>, BatchFailed> {
        let mut tx = self.db.begin().await?;
        // Lock every stream's cursor, in a fixed order so two instances
        // never wait on each other.
        let mut streams: Vec<(&str, &str)> = batch
            .iter()
            .map(|(_, e)| (e.tenantid.as_str(), e.subject.as_str()))
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let mut last = self.lock_streams(&mut tx, &streams).await?;
        let mut moved: HashMap<(&str, &str), i64> = HashMap::new();
        // Order: which events may be handled now.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut candidates = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        for (i, (_, event)) in batch.iter().enumerate() {
            // The same event twice in one batch (a re-send): once is enough.
            if !in_batch.insert(event.id) {
                outcomes.push(BatchOutcome::Duplicate);
                continue;
            }
            let key = (event.tenantid.as_str(), event.subject.as_str());
            let version = event
                .version()
                .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
            let prev = event
                .prev_version()
                .ok()
                .flatten()
                .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
            let cursor = *last.get(&key).unwrap_or(&-1);
            if version > cursor && prev > cursor && !self.waited_too_long(event.id) {
                self.waiting
                    .lock()
                    .expect("waiting lock")
                    .entry(event.id)
                    .or_insert_with(Instant::now);
                outcomes.push(BatchOutcome::OutOfOrder);
                continue;
            }
            if version > cursor {
                last.insert(key, version);
                moved.insert(key, version);
            }
            outcomes.push(BatchOutcome::Handled);
            candidates.push(i);
        }
        // Inbox: one insert; the ids it did not insert were handled before.
        let mut fresh: std::collections::HashSet<String> = std::collections::HashSet::new();
        if !candidates.is_empty() {
            let mut sql = String::from(
                "INSERT INTO cairn_inbox (consumer, event_id, tenant, stream, version, handled_at) VALUES ",
            );
            sql.push_str(&schema::placeholder_rows(
                candidates.len(),
                6,
                0,
                ", ",
                |p| format!("({})", p.join(", ")),
            ));
            sql.push_str(" ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id");
            let now = schema::now();
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for i in &candidates {
                let event = &batch[*i].1;
                query = query
                    .bind(&self.group)
                    .bind(event.id.to_string())
                    .bind(event.tenantid.as_str())
                    .bind(event.subject.as_str())
                    .bind(
                        event
                            .version()
                            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                    )
                    .bind(now.clone());
            }
            fresh = query.fetch_all(&mut *tx).await?.into_iter().collect();
        }
        // The handlers: each gets its consecutive run of the batch's events
        // at once, so the order of effects is the order of the batch.
        let mut run: Vec<&IntegrationEvent> = Vec::new();
        let mut run_handler: Option<&Arc<dyn EventHandler>> = None;
        for i in &candidates {
            let event = &batch[*i].1;
            if !fresh.contains(&event.id.to_string()) {
                outcomes[*i] = BatchOutcome::Duplicate;
                continue;
            }
            let Some(handler) = self.handler_of(event) else {
                outcomes[*i] = BatchOutcome::Skipped;
                continue;
            };
            if let Some(previous) = run_handler
                && !Arc::ptr_eq(previous, handler)
            {
                previous
                    .handle_batch(&mut tx, &run)
                    .await
                    .map_err(|_| BatchFailed)?;
                run.clear();
            }
            run_handler = Some(handler);
            run.push(event);
        }
        if let Some(handler) = run_handler {
            handler
                .handle_batch(&mut tx, &run)
                .await
                .map_err(|_| BatchFailed)?;
        }
        let moved: Vec<_> = moved
            .into_iter()
            .map(|((tenant, stream), version)| (tenant, stream, version))
            .collect();
        set_cursors(&mut tx, &self.group, &moved).await?;
        // Earlier failed attempts of what was handled are over.
        let retried: Vec<String> = candidates
            .iter()
            .filter(|i| batch[**i].0.delivery_count > 1)
            .map(|i| batch[*i].1.id.to_string())
            .collect();
        for id in retried {
            sqlx::query(
                "DELETE FROM cairn_consumer_failures WHERE consumer = $1 AND event_id = $2",
            )
            .bind(&self.group)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        for i in &candidates {
            let event = &batch[*i].1;
            if fresh.contains(&event.id.to_string())
                && let Some(handler) = self.handler_of(event)
            {
                handler.committed(&[event]).await;
            }
        }
        Ok(outcomes)
    }

    pub(super) async fn process(&self, delivery: Delivery) {
        let event = match IntegrationEvent::from_json(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                let body = String::from_utf8_lossy(&delivery.body).into_owned();
                let id = EventId::new();
                tracing::warn!(group = %self.group, error = %e, "undecodable message dead-lettered");
                match self.dead_letter_raw(id, &body, &e.to_string()).await {
                    Ok(()) => {
                        let _ = delivery.acker.ack().await;
                        self.status.send_modify(|s| s.dead_lettered += 1);
                        self.count("dead_lettered", 1);
                    }
                    Err(db) => {
                        self.note_error(db.to_string());
                        let _ = delivery.acker.nack(self.options.backoff).await;
                    }
                }
                return;
            }
        };
        let force = self.waited_too_long(event.id);
        let started = Instant::now();
        let outcome = match self.try_handle(&event, force, false).await {
            Ok(outcome) => outcome,
            Err(db) => Outcome::Failed(HandlerError::Retry(format!("database: {db}"))),
        };
        metrics::histogram!("cairn_consumer_handle_duration_seconds", "group" => self.group.clone())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Handled => self.settle(delivery, event.id, BatchOutcome::Handled).await,
            Outcome::Skipped => self.settle(delivery, event.id, BatchOutcome::Skipped).await,
            Outcome::Duplicate => {
                self.settle(delivery, event.id, BatchOutcome::Duplicate)
                    .await
            }
            Outcome::OutOfOrder => {
                self.settle(delivery, event.id, BatchOutcome::OutOfOrder)
                    .await
            }
            Outcome::Failed(error) => {
                self.note_error(error.to_string());
                let attempts = match self.record_failure(&event, &error).await {
                    Ok(a) => a,
                    Err(db) => {
                        self.note_error(db.to_string());
                        let _ = delivery.acker.nack(self.options.backoff).await;
                        return;
                    }
                };
                let give_up = matches!(error, HandlerError::Reject(_))
                    || attempts >= u64::from(self.options.max_attempts);
                if give_up {
                    match self.dead_letter(&event, &error, attempts).await {
                        Ok(()) => {
                            self.forget_wait(event.id);
                            let _ = delivery.acker.ack().await;
                            tracing::warn!(group = %self.group, event = %event.id, attempts, error = %error, "event dead-lettered");
                            self.status.send_modify(|s| s.dead_lettered += 1);
                            self.count("dead_lettered", 1);
                        }
                        Err(db) => {
                            self.note_error(db.to_string());
                            let _ = delivery.acker.nack(self.options.backoff).await;
                        }
                    }
                } else {
                    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
                    let delay = self
                        .options
                        .backoff
                        .saturating_mul(2u32.saturating_pow(exp.min(16)))
                        .min(self.options.max_backoff);
                    let _ = delivery.acker.nack(delay).await;
                    self.status.send_modify(|s| s.retries += 1);
                    self.count("retried", 1);
                }
            }
        }
    }

    /// One attempt in one transaction: inbox, order, handler, cursor.
    /// `replay` handles a dead letter marked for replay: its row is deleted
    /// in the same transaction, and there is no order check or cursor move.
    pub(super) async fn try_handle(
        &self,
        event: &IntegrationEvent,
        force: bool,
        replay: bool,
    ) -> Result<Outcome, sqlx::Error> {
        let version = event
            .version()
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let prev = event
            .prev_version()
            .ok()
            .flatten()
            .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let mut tx = self.db.begin().await?;
        if replay {
            let claimed = sqlx::query(
                "DELETE FROM cairn_dead_letters
                 WHERE consumer = $1 AND event_id = $2 AND replay = 1",
            )
            .bind(&self.group)
            .bind(event.id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                // Another instance replayed it, or it was dropped.
                tx.rollback().await?;
                return Ok(Outcome::Duplicate);
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO cairn_inbox (consumer, event_id, tenant, stream, version, handled_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.group)
        .bind(event.id.to_string())
        .bind(event.tenantid.as_str())
        .bind(event.subject.as_str())
        .bind(version)
        .bind(schema::now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Handled before: a redelivery, or a replay of something handled.
            if replay {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            return Ok(Outcome::Duplicate);
        }
        let last = self.lock_cursor(&mut tx, event).await?;
        let advance = !replay && version > last;
        if advance && prev > last && !force {
            tx.rollback().await?;
            self.waiting
                .lock()
                .expect("waiting lock")
                .entry(event.id)
                .or_insert_with(Instant::now);
            return Ok(Outcome::OutOfOrder);
        }
        if advance && prev > last {
            tracing::warn!(group = %self.group, event = %event.id, stream = %event.subject, "predecessor never arrived; handling out of order");
        }
        let handler = self.handler_of(event);
        if let Some(handler) = handler
            && let Err(error) = handler.handle(&mut tx, event).await
        {
            tx.rollback().await?;
            return Ok(Outcome::Failed(error));
        }
        if advance {
            set_cursor(&mut tx, &self.group, event, version).await?;
        }
        sqlx::query("DELETE FROM cairn_consumer_failures WHERE consumer = $1 AND event_id = $2")
            .bind(&self.group)
            .bind(event.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let Some(handler) = handler {
            handler.committed(&[event]).await;
        }
        Ok(if handler.is_some() {
            Outcome::Handled
        } else {
            Outcome::Skipped
        })
    }
}
