//! One projection's runner: a task that reads `$all` from the projection's
//! checkpoint and applies events in transactions that also move the
//! checkpoint.
//!
//! Guarantees:
//! - an event's effect and the checkpoint past it commit together, so after
//!   any crash or restart each event has taken effect exactly once;
//! - events already available are applied in batches (up to the batch size)
//!   per transaction; when caught up the runner waits for the store's head
//!   to move, or the poll interval to pass;
//! - a poison event (an `apply` error that is not transient, or a panic in
//!   `apply`) rolls its batch back, stops this projection only, and is
//!   recorded in the checkpoint row so a restart does not skip it; under
//!   the `park` policy it is instead recorded in the projection's dead
//!   letters (committed first) and the batch is applied again without it;
//! - the events in the projection's dead letters beyond its checkpoint
//!   (parked, or skipped by an operator) are passed over;
//! - store and database outages are retried with backoff and shown in the
//!   status as `retrying`, never mistaken for poison;
//! - a stop request waits for the transaction in flight to commit.
//!
//! The runner reads through the store's [`AllFollower`] rather than
//! `subscribe_all`'s stream because it needs what that stream hides: where a
//! page ends (the batch boundary) and, when a read comes back short, the head
//! it was read against. Every position up to that head has then been looked
//! at, including the ones the filter skips, which is what lets callers wait
//! for a position the projection does not care about.

use std::{collections::BTreeSet, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use cairn_core::RecordedEvent;
use cairn_runtime::{Running, Stage};
use cairn_store::{AllFilter, AllFollower, EventStore, FollowOptions};
use chrono::Utc;
use futures_util::FutureExt;
use tokio::sync::{Mutex, watch};

use crate::{
    PoisonPolicy, Projection, ProjectionFailure, ProjectionOptions, ProjectionState, checkpoint,
    dead_letters::{self, DeadLetterReason},
};
use cairn_service_db::ServiceDb;

/// What callers see of a runner, through a watch.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) state: ProjectionState,
    /// Every position up to here is handled (applied or not wanted).
    pub(crate) position: u64,
    /// The persisted checkpoint.
    pub(crate) checkpoint: u64,
    pub(crate) failure: Option<ProjectionFailure>,
    pub(crate) retrying: Option<String>,
}

/// A registered projection: its definition, its progress, and its task.
pub(crate) struct Slot {
    pub(crate) projection: Arc<dyn Projection>,
    pub(crate) name: &'static str,
    pub(crate) policy: PoisonPolicy,
    pub(crate) filter: AllFilter,
    pub(crate) progress: watch::Sender<Progress>,
    /// Serializes stop / restart / rebuild of this projection.
    pub(crate) control: Mutex<Option<Running<()>>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

/// Starts the runner of `slot` (the caller holds `slot.control`): a
/// component whose progress is the slot's, which outlives it (a runner is
/// stopped and started again by retry, skip and rebuild).
pub(crate) fn spawn(
    slot: Arc<Slot>,
    db: ServiceDb,
    store: Arc<dyn EventStore>,
    options: ProjectionOptions,
) -> Running<()> {
    slot.progress.send_modify(|p| {
        p.state = ProjectionState::Running;
        p.failure = None;
        p.retrying = None;
    });
    let name = format!("projection {}", slot.name);
    Running::start(name, Stage::Projections, (), |controls| {
        let runner = Runner {
            backoff: Backoff::new(options.retry_min, options.retry_max),
            slot,
            db,
            store,
            options,
            stop: controls.stop,
            checkpoint: 0,
            after: 0,
            passed_over: BTreeSet::new(),
        };
        vec![tokio::spawn(runner.run())]
    })
}

struct Runner {
    slot: Arc<Slot>,
    db: ServiceDb,
    store: Arc<dyn EventStore>,
    options: ProjectionOptions,
    stop: watch::Receiver<bool>,
    backoff: Backoff,
    /// The persisted checkpoint, as of the last commit.
    checkpoint: u64,
    /// Everything up to here has been looked at.
    after: u64,
    /// Positions beyond the checkpoint in the projection's dead letters.
    passed_over: BTreeSet<u64>,
}

/// How a batch ended.
enum Batch {
    Applied,
    /// The stored checkpoint was not where this runner left it.
    Moved,
    Poisoned(ProjectionFailure),
    Stopped,
}

/// Why one attempt at a batch did not commit.
enum Attempt {
    Transient(String),
    Poison {
        index: usize,
        error: String,
    },
    /// The database refused the commit itself (a deferred constraint, say):
    /// no statement of the batch is to blame yet.
    CommitRejected(String),
}

impl Runner {
    async fn run(mut self) {
        let name = self.slot.name;
        match AssertUnwindSafe(self.follow()).catch_unwind().await {
            Ok(()) => {}
            Err(panic) => {
                // A bug in the runner itself, not in a projection: report it
                // as a failure of this projection rather than dying silently.
                let error = format!("projection runner panicked: {}", panic_message(&*panic));
                tracing::error!(projection = name, %error, "projection runner crashed");
                let position = self.slot.progress.borrow().position;
                self.fail(failure_without_event(position + 1, error));
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps for `delay` unless asked to stop first; false when stopping.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.stop.wait_for(|s| *s) => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn set_retrying(&self, what: &str, error: String) {
        tracing::warn!(projection = self.slot.name, %error, "{what}; retrying");
        self.slot
            .progress
            .send_modify(|p| p.retrying = Some(format!("{what}: {error}")));
    }

    fn clear_retrying(&mut self) {
        self.backoff.reset();
        if self.slot.progress.borrow().retrying.is_some() {
            self.slot.progress.send_modify(|p| p.retrying = None);
        }
    }

    fn publish(&self) {
        let (position, checkpoint) = (self.after, self.checkpoint);
        self.slot.progress.send_modify(|p| {
            p.position = position;
            p.checkpoint = checkpoint;
        });
    }

    fn fail(&self, failure: ProjectionFailure) {
        self.slot.progress.send_modify(|p| {
            p.state = ProjectionState::Failed;
            p.failure = Some(failure);
            p.retrying = None;
        });
    }

    /// Loads the stored checkpoint, retrying while the database is away.
    /// `None` when asked to stop first.
    async fn load_checkpoint(&mut self) -> Option<checkpoint::Stored> {
        loop {
            let loaded = async {
                let mut conn = self.db.pool().acquire().await?;
                checkpoint::load(&mut conn, self.slot.name).await
            }
            .await;
            match loaded {
                Ok(Some(stored)) => {
                    self.clear_retrying();
                    return Some(stored);
                }
                Ok(None) => {
                    // The row is created before a runner starts, so someone
                    // deleted it: what the model holds is unknown. Stop and
                    // ask for a rebuild rather than guess.
                    return Some(checkpoint::Stored {
                        position: self.after,
                        version: self.slot.projection.version(),
                        failure: Some(failure_without_event(
                            self.after + 1,
                            "the checkpoint row is missing; rebuild the projection".into(),
                        )),
                    });
                }
                Err(e) => {
                    self.set_retrying("reading the checkpoint failed", e.to_string());
                    let delay = self.backoff.next();
                    if !self.pause(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Loads the dead letters beyond the checkpoint, retrying while the
    /// database is away; false when asked to stop first.
    async fn load_passed_over(&mut self) -> bool {
        loop {
            let loaded = async {
                let mut conn = self.db.pool().acquire().await?;
                dead_letters::positions_after(&mut conn, self.slot.name, self.checkpoint).await
            }
            .await;
            match loaded {
                Ok(positions) => {
                    self.clear_retrying();
                    self.passed_over = positions.into_iter().collect();
                    return true;
                }
                Err(e) => {
                    self.set_retrying("reading the dead letters failed", e.to_string());
                    let delay = self.backoff.next();
                    if !self.pause(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Records the event of `failure` in the dead letters as parked and
    /// passes over it from now on; retries while the database is away.
    /// False when asked to stop first.
    async fn park(&mut self, failure: &ProjectionFailure) -> bool {
        loop {
            let recorded = async {
                let mut conn = self.db.pool().acquire().await?;
                dead_letters::record(
                    &mut conn,
                    self.slot.name,
                    failure,
                    DeadLetterReason::Parked,
                    None,
                )
                .await
            }
            .await;
            match recorded {
                Ok(()) => {
                    tracing::warn!(
                        projection = self.slot.name,
                        position = failure.position,
                        event_id = %failure.event_id,
                        event_type = %failure.event_type,
                        stream = %failure.stream,
                        tenant = %failure.tenant,
                        error = %failure.error,
                        "poison event parked in the projection's dead letters"
                    );
                    self.clear_retrying();
                    self.passed_over.insert(failure.position);
                    return true;
                }
                Err(e) => {
                    self.set_retrying("parking a poison event failed", e.to_string());
                    let delay = self.backoff.next();
                    if !self.pause(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Takes the stored checkpoint as the starting point; false when the
    /// projection is recorded as failed (and is now marked so).
    fn adopt(&mut self, stored: checkpoint::Stored) -> bool {
        self.checkpoint = stored.position;
        self.after = stored.position;
        self.publish();
        match stored.failure {
            Some(failure) => {
                self.fail(failure);
                false
            }
            None => true,
        }
    }

    async fn follow(&mut self) {
        let name = self.slot.name;
        let Some(stored) = self.load_checkpoint().await else {
            self.stopped();
            return;
        };
        if !self.adopt(stored) {
            return;
        }
        if !self.load_passed_over().await {
            self.stopped();
            return;
        }
        let head_now = *self.store.head().borrow();
        if self.checkpoint > head_now {
            tracing::warn!(
                projection = name,
                checkpoint = self.checkpoint,
                head = head_now,
                "the checkpoint is ahead of the store's head: is this read model from another store?"
            );
        }
        tracing::info!(
            projection = name,
            checkpoint = self.checkpoint,
            "projection running"
        );

        let mut follower = AllFollower::new(
            self.store.clone(),
            self.after,
            self.slot.filter.clone(),
            FollowOptions {
                page_size: self.options.batch_size,
                poll_interval: self.options.poll_interval,
            },
        );
        loop {
            if self.stopping() {
                break;
            }
            let read = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => break,
                read = follower.read() => read,
            };
            let page = match read {
                Ok(page) => page,
                Err(e) => {
                    self.set_retrying("reading the event store failed", e.to_string());
                    let delay = self.backoff.next();
                    if !self.pause(delay).await {
                        break;
                    }
                    continue;
                }
            };
            self.clear_retrying();
            let mut events = page.events;
            if !self.passed_over.is_empty() {
                events.retain(|e| !self.passed_over.contains(&e.position));
            }
            if !events.is_empty() {
                match self.apply_batch(&events, page.reached).await {
                    Batch::Applied => {}
                    Batch::Moved => {
                        tracing::warn!(
                            projection = name,
                            "the stored checkpoint moved under this runner (another process, or a rebuild); reloading it"
                        );
                        let Some(stored) = self.load_checkpoint().await else {
                            break;
                        };
                        if !self.adopt(stored) {
                            return;
                        }
                        follower.seek(self.after);
                        if !self.load_passed_over().await {
                            break;
                        }
                        continue;
                    }
                    Batch::Poisoned(failure)
                        if self.slot.policy == PoisonPolicy::Park
                            && !failure.event_id.is_empty() =>
                    {
                        // Read the same page again; it now passes over
                        // the parked event.
                        follower.seek(self.after);
                        if !self.park(&failure).await {
                            break;
                        }
                        continue;
                    }
                    Batch::Poisoned(failure) => {
                        self.publish();
                        self.record_failure(failure).await;
                        return;
                    }
                    Batch::Stopped => break,
                }
            }
            self.after = page.reached;
            self.publish();
            if page.caught_up {
                tokio::select! {
                    _ = self.stop.wait_for(|s| *s) => break,
                    _ = follower.wait() => {}
                }
            }
        }
        self.flush().await;
        self.stopped();
    }

    fn stopped(&self) {
        tracing::info!(
            projection = self.slot.name,
            position = self.after,
            "projection stopped"
        );
        self.slot.progress.send_modify(|p| {
            if p.state == ProjectionState::Running {
                p.state = ProjectionState::Stopped;
            }
            p.retrying = None;
        });
    }

    /// Persists progress past events the filter skipped, so a restart does
    /// not read them again. Best effort: losing it costs a re-read only.
    async fn flush(&mut self) {
        if self.after <= self.checkpoint {
            return;
        }
        let (name, from, to) = (self.slot.name, self.checkpoint, self.after);
        let flushed = async {
            let mut tx = self.db.begin().await?;
            let moved = checkpoint::advance(&mut tx, name, from, to).await?;
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(moved)
        }
        .await;
        match flushed {
            Ok(true) => {
                self.checkpoint = to;
                self.publish();
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(projection = name, error = %e, "checkpoint flush failed"),
        }
    }

    /// Applies `page` and moves the checkpoint to `to`, retrying transient
    /// failures until it commits, fails for good, or is asked to stop.
    async fn apply_batch(&mut self, page: &[RecordedEvent], to: u64) -> Batch {
        loop {
            match self.attempt(page, to).await {
                Ok(true) => {
                    self.checkpoint = to;
                    if self.passed_over.first().is_some_and(|p| *p <= to) {
                        self.passed_over = self.passed_over.split_off(&(to + 1));
                    }
                    self.clear_retrying();
                    return Batch::Applied;
                }
                Ok(false) => return Batch::Moved,
                Err(Attempt::Poison { index, error }) => {
                    return Batch::Poisoned(failure_at(&page[index], error));
                }
                Err(Attempt::CommitRejected(error)) => {
                    if let [event] = page {
                        return Batch::Poisoned(failure_at(event, error));
                    }
                    // Find the event the database objects to: one
                    // transaction per event.
                    for (i, event) in page.iter().enumerate() {
                        let next = if i + 1 == page.len() {
                            to
                        } else {
                            event.position
                        };
                        match Box::pin(self.apply_batch(std::slice::from_ref(event), next)).await {
                            Batch::Applied => {
                                self.after = self.after.max(next);
                                self.publish();
                            }
                            other => return other,
                        }
                    }
                    return Batch::Applied;
                }
                Err(Attempt::Transient(error)) => {
                    self.set_retrying("applying a batch failed", error);
                    let delay = self.backoff.next();
                    if !self.pause(delay).await {
                        return Batch::Stopped;
                    }
                }
            }
        }
    }

    /// One transaction: move the checkpoint from where this runner left it
    /// to `to`, apply every event of `page`, commit. `Ok(false)`: the stored
    /// checkpoint was elsewhere and nothing was done.
    async fn attempt(&self, page: &[RecordedEvent], to: u64) -> Result<bool, Attempt> {
        let transient = |e: sqlx::Error| Attempt::Transient(e.to_string());
        let mut tx = self.db.begin().await.map_err(transient)?;
        if !checkpoint::advance(&mut tx, self.slot.name, self.checkpoint, to)
            .await
            .map_err(transient)?
        {
            let _ = tx.rollback().await;
            return Ok(false);
        }
        for (index, event) in page.iter().enumerate() {
            let applied = AssertUnwindSafe(self.slot.projection.apply(&mut tx, event))
                .catch_unwind()
                .await;
            let error = match applied {
                Ok(Ok(())) => continue,
                Ok(Err(e)) if e.is_transient() => Attempt::Transient(e.to_string()),
                Ok(Err(e)) => Attempt::Poison {
                    index,
                    error: e.to_string(),
                },
                Err(panic) => Attempt::Poison {
                    index,
                    error: format!("apply panicked: {}", panic_message(&*panic)),
                },
            };
            let _ = tx.rollback().await;
            return Err(error);
        }
        match tx.commit().await {
            Ok(()) => Ok(true),
            Err(e) if cairn_service_db::is_transient(&e) => Err(Attempt::Transient(e.to_string())),
            Err(e) => Err(Attempt::CommitRejected(format!("commit rejected: {e}"))),
        }
    }

    /// Persists the failure and marks the projection failed. If the database
    /// is away, the projection shows failed at once and the write is retried
    /// until it lands or the runner is asked to stop (the event then fails
    /// again after a restart, which is just as visible).
    async fn record_failure(&mut self, failure: ProjectionFailure) {
        tracing::error!(
            projection = self.slot.name,
            position = failure.position,
            event_id = %failure.event_id,
            event_type = %failure.event_type,
            stream = %failure.stream,
            tenant = %failure.tenant,
            error = %failure.error,
            "projection stopped at a poison event"
        );
        let mut published = false;
        loop {
            let recorded = async {
                let mut conn = self.db.pool().acquire().await?;
                checkpoint::record_failure(&mut conn, self.slot.name, &failure).await
            }
            .await;
            if !published {
                self.fail(failure.clone());
                published = true;
            }
            match recorded {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(projection = self.slot.name, error = %e, "recording the failure failed; retrying");
                    let delay = self.backoff.next();
                    if !self.pause(delay).await {
                        return;
                    }
                }
            }
        }
    }
}

fn failure_at(event: &RecordedEvent, error: String) -> ProjectionFailure {
    ProjectionFailure {
        position: event.position,
        event_id: event.id.to_string(),
        event_type: event.event_type.clone(),
        tenant: event.tenant.to_string(),
        stream: event.stream.to_string(),
        error,
        failed_at: Utc::now(),
    }
}

/// A failure that is not an event's fault (the runner crashed, the
/// checkpoint row vanished): the event fields stay empty.
fn failure_without_event(position: u64, error: String) -> ProjectionFailure {
    ProjectionFailure {
        position,
        event_id: String::new(),
        event_type: String::new(),
        tenant: String::new(),
        stream: String::new(),
        error,
        failed_at: Utc::now(),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Option<Duration>,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: None,
        }
    }

    fn next(&mut self) -> Duration {
        let delay = self.next.unwrap_or(self.min);
        self.next = Some((delay * 2).min(self.max));
        delay
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let delays: Vec<_> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next().as_millis(), 50);
    }

    #[test]
    fn panic_messages_are_extracted() {
        let p: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*p), "boom");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(&*p), "bang");
        let p: Box<dyn std::any::Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(&*p), "(no message)");
    }
}
