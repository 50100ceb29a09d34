//! The timeout scheduler: a poller that fires the due deadlines of one saga
//! type, in every tenant.
//!
//! Each round it claims due rows of `cairn_saga_timeouts` for the saga's
//! name (up to [`SagaOptions::timeout_concurrency`] in flight), and feeds
//! each [`Saga::timeout`]`(key)` to its instance with a context of the row's
//! tenant, actor `saga:<NAME>` and the correlation of the request that
//! scheduled it. A timeout that was fed is deleted; one whose feed failed is
//! tried again later, its attempts counted and its last error kept, with a
//! pause that doubles per attempt up to [`SagaOptions::max_retry_backoff`].
//!
//! This is how a saga survives a crash: every step schedules a deadline,
//! the deadline lives in the database, and whichever process polls next
//! fires it. Several processes may poll the same table: a claim moves the
//! row's deadline a lease into the future, so nobody else fires it while
//! it is being fired, and it fires again if its poller dies.

use std::{sync::Arc, time::Duration};

use cairn_core::{RequestContext, TenantId};
use cairn_runtime::{Running, Stage};
use futures_util::FutureExt;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    Saga, SagaError, SagaRunner,
    table::{self, Claimed},
};

/// What a timeout poller has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeoutsStatus {
    /// Timeouts fed to their saga (and removed).
    pub fired: u64,
    /// Attempts that failed (the timeout stays and is tried again).
    pub failed: u64,
    /// The last failure: of a feed, or of the poll itself.
    pub last_error: Option<String>,
}

/// A running timeout poller: its [`TimeoutsStatus`] as a watch, and a
/// shutdown that stops claiming timeouts and waits for those being fired
/// (at most [`SagaOptions::shutdown_grace`](crate::SagaOptions::shutdown_grace);
/// the rest fire again after their lease). Dropping it stops the poller
/// without waiting.
pub type TimeoutsHandle = Running<TimeoutsStatus>;

impl<S: Saga> SagaRunner<S> {
    /// Starts polling every `poll` for due timeouts of this saga type and
    /// firing them. The first poll runs at once, so deadlines that fell due
    /// while no process was running fire on start-up.
    pub fn start_timeouts(self: Arc<Self>, poll: Duration) -> TimeoutsHandle {
        let name = format!("saga timeouts {}", S::NAME);
        Running::start(name, Stage::Sagas, TimeoutsStatus::default(), |c| {
            vec![tokio::spawn(self.poll_loop(poll, c.stop, c.status))]
        })
    }

    async fn poll_loop(
        self: Arc<Self>,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
        status: watch::Sender<TimeoutsStatus>,
    ) {
        let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight: JoinSet<Result<(), String>> = JoinSet::new();
        let limit = self.options.timeout_concurrency.max(1);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    record(&status, done);
                    continue;
                }
                _ = stop.changed() => break,
            }
            let free = limit.saturating_sub(in_flight.len());
            if free == 0 {
                continue;
            }
            let claimed = match self.claim(free).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(saga = S::NAME, %error, "polling saga timeouts failed");
                    status.send_modify(|s| s.last_error = Some(error.to_string()));
                    continue;
                }
            };
            for (row, token) in claimed {
                in_flight.spawn(Arc::clone(&self).fire(row, token));
            }
        }
        let drain = async {
            while let Some(done) = in_flight.join_next().await {
                record(&status, done);
            }
        };
        if tokio::time::timeout(self.options.shutdown_grace, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                saga = S::NAME,
                abandoned = in_flight.len(),
                "timeouts still firing at shutdown are abandoned; they fire again after their lease"
            );
            in_flight.shutdown().await;
        }
    }

    async fn claim(&self, limit: usize) -> Result<Vec<(Claimed, Arc<str>)>, SagaError> {
        self.prepare().await?;
        let token: Arc<str> = cairn_core::EventId::new().to_string().into();
        let lease_until = table::due_in(self.options.timeout_lease);
        let rows = table::claim(&self.db, S::NAME, limit, &lease_until, &token).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row, Arc::clone(&token)))
            .collect())
    }

    /// Fires one claimed timeout; the error, if any, is already recorded in
    /// the row.
    async fn fire(self: Arc<Self>, row: Claimed, token: Arc<str>) -> Result<(), String> {
        let outcome = std::panic::AssertUnwindSafe(self.feed_timeout(&row))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                Err(format!("the saga panicked: {what}"))
            });
        let bookkeeping = match &outcome {
            Ok(()) => table::fired(&self.db, S::NAME, &row, &token).await,
            Err(error) => {
                tracing::warn!(
                    saga = S::NAME,
                    tenant = %row.tenant,
                    saga_id = %row.saga_id,
                    key = %row.key,
                    attempts = row.attempts + 1,
                    %error,
                    "firing a saga timeout failed; it is tried again later"
                );
                let pause = retry_backoff(
                    self.options.retry_backoff,
                    self.options.max_retry_backoff,
                    row.attempts,
                );
                table::failed(
                    &self.db,
                    S::NAME,
                    &row,
                    &token,
                    error,
                    &table::due_in(pause),
                )
                .await
            }
        };
        let result = match bookkeeping {
            // The row stays claimed: it fires again after its lease.
            Err(db) => Err(format!("recording a fired timeout: {db}")),
            Ok(()) => outcome,
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("cairn_saga_timeouts_fired_total", "saga" => S::NAME, "outcome" => label)
            .increment(1);
        result
    }

    async fn feed_timeout(&self, row: &Claimed) -> Result<(), String> {
        let tenant = TenantId::new(&row.tenant).map_err(|e| e.to_string())?;
        let mut ctx = RequestContext::new(tenant).with_actor(format!("saga:{}", S::NAME));
        if let Some(correlation) = &row.correlation_id {
            ctx = ctx.with_correlation_id(correlation.clone());
        }
        tracing::debug!(saga = S::NAME, tenant = %row.tenant, saga_id = %row.saga_id, key = %row.key, "saga timeout fired");
        self.feed(&ctx, &row.saga_id, S::timeout(&row.key))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn record(
    status: &watch::Sender<TimeoutsStatus>,
    done: Result<Result<(), String>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(())) => status.send_modify(|s| s.fired += 1),
        Ok(Err(error)) => status.send_modify(|s| {
            s.failed += 1;
            s.last_error = Some(error);
        }),
        Err(join) => status.send_modify(|s| {
            s.failed += 1;
            s.last_error = Some(join.to_string());
        }),
    }
}

/// The pause after the `(attempts + 1)`-th failed attempt: `first`, doubling
/// per earlier failure, at most `max`.
fn retry_backoff(first: Duration, max: Duration, attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    first.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(300);
        let pauses: Vec<u64> = (0..12)
            .map(|a| retry_backoff(first, max, a).as_secs())
            .collect();
        assert_eq!(
            pauses,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
        assert_eq!(retry_backoff(first, max, i64::MAX), max);
        assert_eq!(retry_backoff(first, max, -3), first);
    }
}
