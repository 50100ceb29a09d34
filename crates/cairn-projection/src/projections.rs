//! [`Projections`]: the set of projections a process runs, one runner task
//! each, and the handle callers use to wait for a position, read the status,
//! stop, retry, rebuild and shut down.
//!
//! Starting installs the checkpoint table, then for each projection, in one
//! transaction: creates its checkpoint row if missing, runs its schema, and
//! when the row is new or the projection's version changed, resets the model
//! first and starts from zero. A projection whose stored row records a
//! failure starts failed: it waits for [`Projections::restart`],
//! [`Projections::skip`] or [`Projections::rebuild`] instead of passing
//! over the event on its own.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use cairn_store::EventStore;
use chrono::Utc;
use sqlx::Executor;
use tokio::sync::{Mutex, watch};

use crate::{
    PoisonPolicy, Projection, ProjectionDeadLetter, ProjectionFailure, ProjectionState,
    ProjectionStatus, ReadModelError, checkpoint,
    dead_letters::{self, DeadLetterReason},
    runner::{self, Progress, Slot},
};
use cairn_service_db::ServiceDb;

/// How runners read and retry. The defaults suit a laptop.
#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    /// Most events applied in one transaction. Default 256.
    pub batch_size: usize,
    /// Longest wait for the store's head to move before reading again anyway
    /// (commits by other processes may not wake this one). Default 500 ms.
    pub poll_interval: Duration,
    /// First delay before retrying after a transient failure. Default 50 ms.
    pub retry_min: Duration,
    /// Longest delay between retries. Default 5 s.
    pub retry_max: Duration,
    /// What each projection does at a poison event, by name; a projection
    /// not named here stops ([`PoisonPolicy::Stop`]).
    pub policies: BTreeMap<String, PoisonPolicy>,
}

impl ProjectionOptions {
    /// Sets projection `name`'s policy at a poison event.
    pub fn with_policy(mut self, name: impl Into<String>, policy: PoisonPolicy) -> Self {
        self.policies.insert(name.into(), policy);
        self
    }

    fn policy_of(&self, name: &str) -> PoisonPolicy {
        self.policies.get(name).copied().unwrap_or_default()
    }
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            policies: BTreeMap::new(),
        }
    }
}

/// Where a projection stands after [`Projections::catch_up`] waited for a
/// position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// It has handled the position.
    Reached,
    /// Not yet: still on its way (or stopped by an operator or a shutdown).
    Behind,
    /// It stopped at a poison event before the position and will not get
    /// there without an operator.
    Failed,
}

/// The projections of a process. Clones are cheap and share the runners;
/// when the last clone is dropped the runners are told to stop (use
/// [`shutdown`](Projections::shutdown) to wait for them).
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    db: ServiceDb,
    store: Arc<dyn EventStore>,
    options: ProjectionOptions,
    slots: Vec<Arc<Slot>>,
    shut_down: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Ok(control) = slot.control.try_lock()
                && let Some(running) = control.as_ref()
            {
                running.stop_soon();
            }
        }
    }
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projections")
            .field("db", &self.inner.db)
            .field("projections", &self.names())
            .finish()
    }
}

impl Projections {
    /// Prepares every projection's tables and checkpoint and starts a runner
    /// for each one that is not recorded as failed.
    ///
    /// Fails on a duplicate or empty name, on DDL that does not run, and when
    /// the database is unreachable.
    pub async fn start(
        db: ServiceDb,
        store: Arc<dyn EventStore>,
        projections: impl IntoIterator<Item = Arc<dyn Projection>>,
        options: ProjectionOptions,
    ) -> Result<Self, ReadModelError> {
        if options.batch_size == 0 {
            return Err(ReadModelError::invalid("batch_size", "must be at least 1"));
        }
        let projections: Vec<Arc<dyn Projection>> = projections.into_iter().collect();
        if let Some(unknown) = options
            .policies
            .keys()
            .find(|name| !projections.iter().any(|p| p.name() == name.as_str()))
        {
            return Err(ReadModelError::invalid(
                "projection policy",
                format!("no projection named {unknown:?}"),
            ));
        }
        let mut names = HashSet::new();
        for p in &projections {
            let name = p.name();
            if name.is_empty() || name.len() > 200 {
                return Err(ReadModelError::invalid(
                    "projection name",
                    "must be 1-200 bytes",
                ));
            }
            if !names.insert(name) {
                return Err(ReadModelError::invalid(
                    "projection name",
                    format!("{name:?} is registered twice"),
                ));
            }
        }
        db.pool().execute(checkpoint::TABLE_DDL).await?;
        db.pool().execute(dead_letters::TABLE_DDL).await?;

        let mut slots = Vec::with_capacity(projections.len());
        for projection in projections {
            let stored = prepare(&db, &*projection, false).await?;
            let state = if stored.failure.is_some() {
                ProjectionState::Failed
            } else {
                ProjectionState::Stopped
            };
            slots.push(Arc::new(Slot {
                name: projection.name(),
                policy: options.policy_of(projection.name()),
                filter: projection.filter(),
                projection,
                progress: watch::Sender::new(Progress {
                    state,
                    position: stored.position,
                    checkpoint: stored.position,
                    failure: stored.failure,
                    retrying: None,
                }),
                control: Mutex::new(None),
            }));
        }
        let this = Self {
            inner: Arc::new(Inner {
                db,
                store,
                options,
                slots,
                shut_down: AtomicBool::new(false),
            }),
        };
        for slot in &this.inner.slots {
            if slot.progress.borrow().state == ProjectionState::Failed {
                let failure = slot.progress.borrow().failure.clone();
                tracing::warn!(
                    projection = slot.name,
                    failure = ?failure,
                    "projection is recorded as failed; it stays stopped until retried"
                );
                continue;
            }
            let mut control = slot.control.lock().await;
            *control = Some(this.spawn(slot));
        }
        Ok(this)
    }

    /// The read database the projections write to.
    pub fn db(&self) -> &ServiceDb {
        &self.inner.db
    }

    /// The registered projections' names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.inner.slots.iter().map(|s| s.name).collect()
    }

    /// Waits until projection `name` has handled every event up to
    /// `position` (applied it, or found it not wanted by its filter), for at
    /// most `timeout`. True when it has; false on timeout, for an unknown
    /// name, and at once when the projection is stopped or failed short of
    /// `position`.
    pub async fn wait_for(&self, name: &str, position: u64, timeout: Duration) -> bool {
        let Some(slot) = self.slot(name) else {
            return false;
        };
        wait_slot(slot, position, timeout).await
    }

    /// Waits as [`wait_for`](Self::wait_for) does, and says why it stopped
    /// waiting: the projection reached `position`, is still behind it after
    /// `timeout` (or is stopped, or unknown), or has failed short of it.
    pub async fn catch_up(&self, name: &str, position: u64, timeout: Duration) -> CatchUp {
        let Some(slot) = self.slot(name) else {
            return CatchUp::Behind;
        };
        if wait_slot(slot, position, timeout).await {
            return CatchUp::Reached;
        }
        let progress = slot.progress.borrow();
        if progress.position >= position {
            CatchUp::Reached
        } else if progress.state == ProjectionState::Failed {
            CatchUp::Failed
        } else {
            CatchUp::Behind
        }
    }

    /// Whether an event has been written at `position`, in any tenant. A
    /// position past the store's head is one no write has reached, so a
    /// read waiting for it could only time out. Cheap when the head this
    /// handle knows is there already; otherwise the store is asked, since
    /// another process may have written it.
    pub async fn written(&self, position: u64) -> Result<bool, cairn_store::StoreError> {
        if position <= *self.inner.store.head().borrow() {
            return Ok(true);
        }
        // Positions are SQL BIGINTs in every backend: none lies past i64::MAX.
        if i64::try_from(position).is_err() {
            return Ok(false);
        }
        let next = self
            .inner
            .store
            .read_all(position - 1, &cairn_store::AllFilter::all_tenants(), 1)
            .await?;
        Ok(!next.is_empty())
    }

    /// Waits until every projection has reached `position`, for at most
    /// `timeout` in all; false as soon as one cannot get there.
    pub async fn wait_for_all(&self, position: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for slot in &self.inner.slots {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !wait_slot(slot, position, left).await {
                return false;
            }
        }
        true
    }

    /// The status of every projection, in registration order.
    pub async fn status(&self) -> Vec<ProjectionStatus> {
        let mut all = Vec::with_capacity(self.inner.slots.len());
        for slot in &self.inner.slots {
            all.push(self.status_of_slot(slot).await);
        }
        all
    }

    /// Sets the projection gauges from every projection's current status:
    /// `cairn_projection_position`, `cairn_projection_lag_events`,
    /// `cairn_projection_lag_seconds`, `cairn_projection_running` and
    /// `cairn_projection_failed` (1 or 0), each labelled with the projection's
    /// name. Recorded with the `metrics` macros, so they reach whatever
    /// recorder the process installed; meant to run when metrics are scraped
    /// (a `cairn-telemetry` collector), which makes the lag as fresh as the
    /// scrape and costs nothing between scrapes.
    pub async fn record_metrics(&self) {
        for slot in &self.inner.slots {
            let status = self.status_of_slot(slot).await;
            let projection = slot.name;
            let flag = |on: bool| if on { 1.0 } else { 0.0 };
            metrics::gauge!("cairn_projection_position", "projection" => projection)
                .set(status.position as f64);
            metrics::gauge!("cairn_projection_lag_events", "projection" => projection)
                .set(status.lag_events as f64);
            metrics::gauge!("cairn_projection_lag_seconds", "projection" => projection)
                .set(status.lag_seconds);
            metrics::gauge!("cairn_projection_running", "projection" => projection)
                .set(flag(status.state == ProjectionState::Running));
            metrics::gauge!("cairn_projection_failed", "projection" => projection)
                .set(flag(status.state == ProjectionState::Failed));
            metrics::gauge!("cairn_projection_parked", "projection" => projection)
                .set(status.parked as f64);
            metrics::gauge!("cairn_projection_skipped", "projection" => projection)
                .set(status.skipped as f64);
        }
    }

    /// The failure projection `name` is stopped at, if any, from memory: no
    /// store or database call, so readiness probes can ask it often.
    pub fn failure_of(&self, name: &str) -> Option<ProjectionFailure> {
        self.slot(name)?.progress.borrow().failure.clone()
    }

    /// The status of one projection.
    pub async fn status_of(&self, name: &str) -> Result<ProjectionStatus, ReadModelError> {
        let slot = self.slot_or_err(name)?;
        Ok(self.status_of_slot(slot).await)
    }

    /// Stops projection `name` after its current transaction and waits for
    /// it. A failed projection stays failed.
    pub async fn stop(&self, name: &str) -> Result<(), ReadModelError> {
        let slot = self.slot_or_err(name)?;
        let mut control = slot.control.lock().await;
        if let Some(running) = control.take() {
            running.shutdown().await;
        }
        Ok(())
    }

    /// Runs projection `name` again: stops it if it runs, forgets a recorded
    /// failure, and starts from its checkpoint (so a poison event is tried
    /// again, typically after the code was fixed).
    pub async fn restart(&self, name: &str) -> Result<(), ReadModelError> {
        let slot = self.slot_or_err(name)?;
        self.check_running()?;
        let mut control = slot.control.lock().await;
        if let Some(running) = control.take() {
            running.shutdown().await;
        }
        let mut conn = self.inner.db.pool().acquire().await?;
        checkpoint::clear_failure(&mut conn, name).await?;
        drop(conn);
        tracing::info!(projection = slot.name, "projection restarted");
        *control = Some(self.spawn(slot));
        Ok(())
    }

    /// Rebuilds projection `name` from zero: stops it, then in one
    /// transaction runs its reset and schema statements and puts its
    /// checkpoint at 0 (forgetting any failure), then runs it again. Readers
    /// see the model empty and filling up meanwhile.
    pub async fn rebuild(&self, name: &str) -> Result<(), ReadModelError> {
        let slot = self.slot_or_err(name)?;
        self.check_running()?;
        let mut control = slot.control.lock().await;
        if let Some(running) = control.take() {
            running.shutdown().await;
        }
        let stored = prepare(&self.inner.db, &*slot.projection, true).await?;
        slot.progress.send_modify(|p| {
            p.position = stored.position;
            p.checkpoint = stored.position;
            p.failure = None;
        });
        tracing::info!(projection = slot.name, "projection rebuilding from zero");
        *control = Some(self.spawn(slot));
        Ok(())
    }

    /// Passes over the event projection `name` stopped at, which must be
    /// at `position` (so an operator skips exactly the event they looked
    /// at), and runs the projection on from there. The event is recorded in
    /// the projection's dead letters as skipped by `actor`, in the same
    /// transaction that forgets the failure.
    ///
    /// Refused with [`ReadModelError::NotFailedAt`] when the projection is
    /// not failed at an event at `position`.
    pub async fn skip(&self, name: &str, position: u64, actor: &str) -> Result<(), ReadModelError> {
        let slot = self.slot_or_err(name)?;
        self.check_running()?;
        let mut control = slot.control.lock().await;
        let failure = {
            let progress = slot.progress.borrow();
            match (&progress.state, &progress.failure) {
                (ProjectionState::Failed, Some(f))
                    if f.position == position && !f.event_id.is_empty() =>
                {
                    f.clone()
                }
                _ => {
                    return Err(ReadModelError::NotFailedAt {
                        projection: name.to_owned(),
                        position,
                    });
                }
            }
        };
        if let Some(running) = control.take() {
            running.shutdown().await;
        }
        let mut tx = self.inner.db.begin().await?;
        dead_letters::record(
            &mut tx,
            name,
            &failure,
            DeadLetterReason::Skipped,
            Some(actor),
        )
        .await?;
        checkpoint::clear_failure(&mut tx, name).await?;
        tx.commit().await?;
        tracing::warn!(
            projection = slot.name,
            position,
            event_id = %failure.event_id,
            event_type = %failure.event_type,
            actor,
            "event skipped by an operator"
        );
        *control = Some(self.spawn(slot));
        Ok(())
    }

    /// The events projection `name` passed over (parked or skipped) beyond
    /// position `after`, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        name: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<ProjectionDeadLetter>, ReadModelError> {
        self.slot_or_err(name)?;
        let mut conn = self.inner.db.pool().acquire().await?;
        Ok(dead_letters::list(&mut conn, name, after, limit).await?)
    }

    /// Stops every runner after its current transaction commits (progress
    /// past skipped events is flushed too) and waits for them. Afterwards
    /// `restart` and `rebuild` refuse with [`ReadModelError::ShutDown`].
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        let mut stopping = Vec::new();
        for slot in &self.inner.slots {
            let mut control = slot.control.lock().await;
            if let Some(running) = control.take() {
                running.stop_soon();
                stopping.push(running);
            }
        }
        for running in stopping {
            running.shutdown().await;
        }
    }

    fn spawn(&self, slot: &Arc<Slot>) -> cairn_runtime::Running<()> {
        runner::spawn(
            slot.clone(),
            self.inner.db.clone(),
            self.inner.store.clone(),
            self.inner.options.clone(),
        )
    }

    fn check_running(&self) -> Result<(), ReadModelError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            Err(ReadModelError::ShutDown)
        } else {
            Ok(())
        }
    }

    fn slot(&self, name: &str) -> Option<&Arc<Slot>> {
        self.inner.slots.iter().find(|s| s.name == name)
    }

    fn slot_or_err(&self, name: &str) -> Result<&Arc<Slot>, ReadModelError> {
        self.slot(name)
            .ok_or_else(|| ReadModelError::UnknownProjection(name.to_owned()))
    }

    async fn status_of_slot(&self, slot: &Slot) -> ProjectionStatus {
        let progress = slot.progress.borrow().clone();
        let head = *self.inner.store.head().borrow();
        let lag_events = head.saturating_sub(progress.position);
        let lag_seconds = if lag_events == 0 {
            0.0
        } else {
            // The oldest event it wants and has not applied.
            match self
                .inner
                .store
                .read_all(progress.position, &slot.filter, 1)
                .await
            {
                Ok(page) => page.first().map_or(0.0, |e| {
                    let age = Utc::now() - e.recorded_at;
                    (age.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
                }),
                Err(e) => {
                    tracing::debug!(projection = slot.name, error = %e, "lag in seconds unknown");
                    0.0
                }
            }
        };
        let counts = match self.inner.db.pool().acquire().await {
            Ok(mut conn) => dead_letters::counts(&mut conn, slot.name).await,
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            tracing::debug!(projection = slot.name, error = %e, "dead-letter counts unknown");
            dead_letters::Counts::default()
        });
        ProjectionStatus {
            name: slot.name.to_owned(),
            state: progress.state,
            position: progress.position,
            checkpoint: progress.checkpoint,
            head,
            lag_events,
            lag_seconds,
            failure: progress.failure,
            retrying: progress.retrying,
            policy: slot.policy,
            parked: counts.parked,
            skipped: counts.skipped,
        }
    }
}

async fn wait_slot(slot: &Slot, position: u64, timeout: Duration) -> bool {
    let mut progress = slot.progress.subscribe();
    let reached =
        progress.wait_for(|p| p.position >= position || p.state != ProjectionState::Running);
    match tokio::time::timeout(timeout, reached).await {
        Ok(Ok(p)) => p.position >= position,
        _ => false,
    }
}

/// In one transaction: the checkpoint row (created at 0 if missing), then
/// the model's DDL, resetting first when `rebuild` is asked for, the row is
/// new (the tables' contents are unknown) or the projection's version
/// changed, then the tenant policy on its tables (PostgreSQL). Returns the
/// row as it now stands.
async fn prepare(
    db: &ServiceDb,
    projection: &dyn Projection,
    rebuild: bool,
) -> Result<checkpoint::Stored, ReadModelError> {
    let name = projection.name();
    let version = projection.version();
    let schema_err = |source| ReadModelError::Schema {
        projection: name.to_owned(),
        source,
    };
    let mut tx = db.begin().await?;
    let created = checkpoint::create(&mut tx, name, version).await?;
    let mut stored = checkpoint::load(&mut tx, name)
        .await?
        .ok_or_else(|| sqlx::Error::RowNotFound)?;
    let reset = rebuild || created || stored.version != version;
    if reset {
        if !created && stored.version != version {
            tracing::info!(
                projection = name,
                from = stored.version,
                to = version,
                "projection version changed; rebuilding its read model"
            );
        }
        for statement in projection.reset() {
            (&mut *tx)
                .execute(statement.as_str())
                .await
                .map_err(schema_err)?;
        }
    }
    for statement in projection.schema() {
        tx.execute(statement.as_str()).await.map_err(schema_err)?;
    }
    // A table created (or recreated) just now gets the tenant policy before
    // anyone can see it.
    cairn_service_db::protect_tenant_tables(&mut tx)
        .await
        .map_err(schema_err)?;
    if reset {
        checkpoint::restart_from_zero(&mut tx, name, version).await?;
        stored = checkpoint::Stored {
            position: 0,
            version,
            failure: None,
        };
    }
    tx.commit().await?;
    Ok(stored)
}

/// The runtime stops the projections last of a service's components, after
/// whatever feeds their store has stopped.
impl cairn_runtime::Background for Projections {
    fn name(&self) -> String {
        "projections".into()
    }
    fn stage(&self) -> cairn_runtime::Stage {
        cairn_runtime::Stage::Projections
    }
    fn shutdown(
        self: Box<Self>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        Box::pin(async move { Projections::shutdown(&self).await })
    }
}
