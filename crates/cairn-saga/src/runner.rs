//! The saga runner: load an instance, decide an input, persist the decision
//! (deadlines, events, cancellations) and carry out its commands, feeding
//! each outcome back in until nothing is left to do.

use std::{
    collections::VecDeque,
    fmt,
    hash::{BuildHasher, RandomState},
    marker::PhantomData,
    sync::Arc,
    time::Duration,
};

use cairn_core::{
    RequestContext, StreamId, TenantId, Upcasters, ValidationError, decode_event, encode_event,
};
use cairn_domain::StreamQueues;
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, ExpectedVersion, ReadStream, StoreError};
use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use crate::{
    Action, Decision, Dispatcher, Saga, SagaError,
    table::{self, Instance},
};

/// Longest accepted timeout key, in bytes.
pub const MAX_TIMEOUT_KEY_BYTES: usize = 128;

/// How a [`SagaRunner`] behaves. The defaults suit a laptop and most
/// services.
#[derive(Debug, Clone)]
pub struct SagaOptions {
    /// How many times an input is decided again after another writer
    /// appended to the saga first, before giving up with
    /// [`SagaError::ConcurrencyConflict`]. 0 means one attempt only.
    /// Default 5.
    pub max_retries: u32,
    /// Most decisions one [`SagaRunner::feed`] makes (the input, then one per
    /// command outcome) before it stops with [`SagaError::TooManySteps`]:
    /// a guard against a saga that never stops sending. Default 1000.
    pub max_steps: u32,
    /// Lift old event schema versions on read.
    pub upcasters: Arc<Upcasters>,
    /// Most timeouts one runner fires at the same time. Default 16.
    pub timeout_concurrency: usize,
    /// How long a claimed timeout is kept from other pollers while it
    /// fires; if the poller dies, the timeout fires again after this.
    /// Default 60 s.
    pub timeout_lease: Duration,
    /// The pause before a timeout whose firing failed is tried again; it
    /// doubles per failed attempt up to
    /// [`max_retry_backoff`](Self::max_retry_backoff). Default 1 s.
    pub retry_backoff: Duration,
    /// The longest pause between attempts of a failing timeout. Default 5 min.
    pub max_retry_backoff: Duration,
    /// How long [`TimeoutsHandle::shutdown`](crate::TimeoutsHandle::shutdown)
    /// waits for timeouts being fired before it abandons them (they fire
    /// again after their lease). Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for SagaOptions {
    fn default() -> Self {
        Self {
            max_retries: 5,
            max_steps: 1000,
            upcasters: Arc::new(Upcasters::new()),
            timeout_concurrency: 16,
            timeout_lease: Duration::from_secs(60),
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl SagaOptions {
    /// Sets [`max_retries`](Self::max_retries).
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets [`max_steps`](Self::max_steps).
    pub fn with_max_steps(mut self, max_steps: u32) -> Self {
        self.max_steps = max_steps;
        self
    }

    /// Sets the upcasters used to read the saga's events.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Sets [`timeout_concurrency`](Self::timeout_concurrency) (at least 1).
    pub fn with_timeout_concurrency(mut self, n: usize) -> Self {
        self.timeout_concurrency = n.max(1);
        self
    }

    /// Sets [`timeout_lease`](Self::timeout_lease).
    pub fn with_timeout_lease(mut self, lease: Duration) -> Self {
        self.timeout_lease = lease;
        self
    }

    /// Sets [`retry_backoff`](Self::retry_backoff) and
    /// [`max_retry_backoff`](Self::max_retry_backoff).
    pub fn with_retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry_backoff = first;
        self.max_retry_backoff = max;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// A deadline waiting to fire, as kept in `cairn_saga_timeouts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTimeout {
    /// The key the saga scheduled it under.
    pub key: String,
    /// When it fires (or, after a failed attempt, is tried again).
    pub due_at: DateTime<Utc>,
    /// Failed attempts to fire it so far.
    pub attempts: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Runs sagas of type `S`: feeds them inputs, records their decisions,
/// carries out their commands through a [`Dispatcher`] and fires their
/// timeouts ([`start_timeouts`](SagaRunner::start_timeouts)).
///
/// Decisions on one saga instance through one runner take turns. The turn
/// is held while a decision is made and persisted, not while its commands
/// are out: a step that hangs must not keep its own deadline from firing.
pub struct SagaRunner<S: Saga> {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) db: ServiceDb,
    dispatcher: Arc<dyn Dispatcher<S>>,
    pub(crate) options: SagaOptions,
    turns: StreamQueues,
    schema: OnceCell<()>,
    saga: PhantomData<fn() -> S>,
}

impl<S: Saga> fmt::Debug for SagaRunner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRunner")
            .field("saga", &S::NAME)
            .field("db", &self.db)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Whether `name` is a usable saga name: non-empty, `a-z`, `0-9`, `_`.
const fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// The stream of saga instance `saga_id`: `<NAME>_saga-<saga_id>`. The id
/// must not be empty; the stream id rules (at most 256 bytes in all, no
/// control characters) apply to the rest.
pub fn saga_stream<S: Saga>(saga_id: &str) -> Result<StreamId, ValidationError> {
    if saga_id.is_empty() {
        return Err(ValidationError::new("saga_id", "must not be empty"));
    }
    StreamId::new(format!("{}_saga-{saga_id}", S::NAME))
        .map_err(|e| ValidationError::new("saga_id", e.reason))
}

/// A decision ready to persist: events encoded, timeout actions reduced to
/// their net effect per key, commands in order.
struct Plan<S: Saga> {
    events: Vec<S::Event>,
    encoded: Vec<cairn_core::NewEvent>,
    schedule: Vec<(String, String)>,
    cancel: Vec<String>,
    send: Vec<S::Command>,
}

/// A decision's actions by kind, timeout actions reduced to their net
/// effect per key (in first-seen order: the last action on a key wins).
#[derive(Debug, PartialEq, Eq)]
struct NetActions<C> {
    schedule: Vec<(String, Duration)>,
    cancel: Vec<String>,
    send: Vec<C>,
}

fn net_actions<C>(actions: Vec<Action<C>>) -> Result<NetActions<C>, String> {
    let mut last: Vec<(String, Option<Duration>)> = Vec::new();
    let mut send = Vec::new();
    for action in actions {
        let (key, after) = match action {
            Action::Send(command) => {
                send.push(command);
                continue;
            }
            Action::Schedule { key, after } => (key, Some(after)),
            Action::Cancel { key } => (key, None),
        };
        check_key(&key)?;
        match last.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = after,
            None => last.push((key, after)),
        }
    }
    let mut net = NetActions {
        schedule: Vec::new(),
        cancel: Vec::new(),
        send,
    };
    for (key, after) in last {
        match after {
            Some(after) => net.schedule.push((key, after)),
            None => net.cancel.push(key),
        }
    }
    Ok(net)
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a timeout key must not be empty".into());
    }
    if key.len() > MAX_TIMEOUT_KEY_BYTES {
        return Err(format!(
            "timeout key {key:?} is longer than {MAX_TIMEOUT_KEY_BYTES} bytes"
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("timeout key {key:?} contains control characters"));
    }
    Ok(())
}

/// The pause before deciding again after the `lost`-th lost race: a random
/// time up to 1 ms, doubling per lost race up to 32 ms ("full jitter"), so
/// writers in other processes that collided with this one spread out.
fn conflict_backoff(lost: u32) -> Duration {
    let cap_micros = 1000u64 << lost.clamp(1, 6).saturating_sub(1);
    // std's hasher is randomly keyed per instance: randomness without a
    // random-number dependency.
    let random = RandomState::new().hash_one(lost);
    Duration::from_micros(random % (cap_micros + 1))
}

impl<S: Saga> SagaRunner<S> {
    /// A runner over `store` (the saga streams) and `db` (the timeouts
    /// table, created on first use) that sends commands through
    /// `dispatcher`.
    pub fn new(
        store: Arc<dyn EventStore>,
        db: ServiceDb,
        dispatcher: impl Dispatcher<S>,
        options: SagaOptions,
    ) -> Self {
        const {
            assert!(
                valid_name(S::NAME),
                "Saga::NAME must be non-empty and use only a-z, 0-9 and '_'"
            );
        }
        Self {
            store,
            db,
            dispatcher: Arc::new(dispatcher),
            options,
            turns: StreamQueues::default(),
            schema: OnceCell::new(),
            saga: PhantomData,
        }
    }

    /// The options this runner runs with.
    pub fn options(&self) -> &SagaOptions {
        &self.options
    }

    /// Creates the timeouts table if it is missing. Feeding and the timeout
    /// poller do it on first use; calling it at start-up fails fast on a
    /// database that cannot be used.
    pub async fn prepare(&self) -> Result<(), SagaError> {
        self.schema
            .get_or_try_init(|| table::ensure(&self.db))
            .await?;
        Ok(())
    }

    /// Feeds `input` to saga instance `saga_id` of the caller's tenant, and
    /// then the outcome of every command it decides to send, until no input
    /// is left. Returns the state after the last decision.
    ///
    /// Each decision is persisted in this order: its deadlines are written,
    /// its events are appended on the version it was decided on (on a lost
    /// race the input is decided again on fresh state, up to
    /// [`SagaOptions::max_retries`] times), its cancelled deadlines are
    /// removed, and then its commands are sent in order; each outcome is
    /// decided as soon as it comes back, and commands that decision sends
    /// go after those already waiting. Events carry the context's metadata
    /// (correlation, causation, trace, actor).
    ///
    /// An invalid saga id or invalid context metadata is
    /// [`SagaError::Invalid`], and nothing is written. A finished saga
    /// ignores its input.
    pub async fn feed(
        &self,
        ctx: &RequestContext,
        saga_id: &str,
        input: S::Input,
    ) -> Result<S, SagaError> {
        let stream = saga_stream::<S>(saga_id)?;
        ctx.metadata().validate()?;
        self.prepare().await?;
        metrics::counter!("cairn_saga_inputs_total", "saga" => S::NAME).increment(1);

        let mut loaded: Option<(S, Option<u64>)> = None;
        let mut next = Some(input);
        let mut commands: VecDeque<S::Command> = VecDeque::new();
        let mut steps = 0u32;
        loop {
            let input = match next.take() {
                Some(input) => input,
                None => match commands.pop_front() {
                    Some(command) => {
                        metrics::counter!("cairn_saga_commands_total", "saga" => S::NAME)
                            .increment(1);
                        self.dispatcher.dispatch(ctx, saga_id, command).await
                    }
                    None => break,
                },
            };
            steps += 1;
            if steps > self.options.max_steps {
                return Err(SagaError::TooManySteps {
                    stream,
                    steps: self.options.max_steps,
                });
            }
            let (state, version, send) = self
                .decide(ctx, saga_id, &stream, loaded.take(), input)
                .await?;
            commands.extend(send);
            loaded = Some((state, version));
        }
        Ok(loaded.map(|(state, _)| state).unwrap_or_default())
    }

    /// The current state of saga instance `saga_id` of `tenant` (the
    /// default state if it has no events).
    pub async fn load(&self, tenant: &TenantId, saga_id: &str) -> Result<S, SagaError> {
        let stream = saga_stream::<S>(saga_id)?;
        let (state, _) = self.catch_up(tenant, &stream, S::default(), None).await?;
        Ok(state)
    }

    /// The pending deadlines of saga instance `saga_id` of `tenant`, soonest
    /// first.
    pub async fn pending_timeouts(
        &self,
        tenant: &TenantId,
        saga_id: &str,
    ) -> Result<Vec<PendingTimeout>, SagaError> {
        saga_stream::<S>(saga_id)?;
        self.prepare().await?;
        let rows = table::pending(&self.db, instance::<S>(tenant, saga_id)).await?;
        rows.into_iter()
            .map(|(key, due_at, attempts, last_error)| {
                let due_at = DateTime::parse_from_rfc3339(&due_at)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
                    .with_timezone(&Utc);
                Ok(PendingTimeout {
                    key,
                    due_at,
                    attempts: u64::try_from(attempts).unwrap_or(0),
                    last_error,
                })
            })
            .collect()
    }

    /// One decision, in the instance's turn: catch up, decide, persist.
    /// Returns the state after it, its version and the commands to send.
    async fn decide(
        &self,
        ctx: &RequestContext,
        saga_id: &str,
        stream: &StreamId,
        loaded: Option<(S, Option<u64>)>,
        input: S::Input,
    ) -> Result<(S, Option<u64>, Vec<S::Command>), SagaError> {
        let tenant = &ctx.tenant;
        let at = instance::<S>(tenant, saga_id);
        let _turn = self.turns.turn(tenant, stream).await;
        let (mut state, mut version) = loaded.unwrap_or_default();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            (state, version) = self.catch_up(tenant, stream, state, version).await?;
            if state.is_finished() {
                tracing::debug!(saga = S::NAME, %stream, %tenant, "input for a finished saga ignored");
                return Ok((state, version, Vec::new()));
            }
            let plan = self.plan(ctx, stream, state.handle(&input))?;

            // 1. Deadlines first. If the process dies before the events are
            //    appended, a deadline exists without its decision (harmless:
            //    the saga ignores a timeout it does not expect) rather than a
            //    decision without its deadline (a step nobody would ever
            //    wake up). Each is marked with the version its decision will
            //    have once recorded.
            let seen = table::version_column(version);
            let recorded =
                seen.saturating_add(i64::try_from(plan.events.len()).unwrap_or(i64::MAX));
            table::schedule(&self.db, at, &plan.schedule, recorded, &ctx.correlation_id).await?;

            // 2. The events, on the version the decision was made on.
            if !plan.encoded.is_empty() {
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                match self
                    .store
                    .append(tenant, stream, expected, plan.encoded)
                    .await
                {
                    Ok(outcome) => {
                        for event in &plan.events {
                            state.apply(event);
                        }
                        version = Some(outcome.last_version);
                    }
                    Err(StoreError::WrongExpectedVersion { .. }) => {
                        if attempts > self.options.max_retries {
                            return Err(SagaError::ConcurrencyConflict {
                                stream: stream.clone(),
                                attempts,
                            });
                        }
                        tracing::debug!(
                            saga = S::NAME,
                            %stream,
                            %tenant,
                            attempt = attempts,
                            "lost a concurrent append; deciding again on fresh state"
                        );
                        metrics::counter!("cairn_saga_retries_total", "saga" => S::NAME)
                            .increment(1);
                        tokio::time::sleep(conflict_backoff(attempts)).await;
                        continue;
                    }
                    Err(other) => return Err(other.into()),
                }
            }

            // 3. Cancelled deadlines, now that the decision is recorded; a
            //    finished saga waits for nothing any more.
            table::cancel(&self.db, at, &plan.cancel, seen).await?;
            if state.is_finished() {
                table::clear(&self.db, at, table::version_column(version)).await?;
            }

            // 4. The commands, sent by the caller outside the turn.
            return Ok((state, version, plan.send));
        }
    }

    /// Checks and encodes a decision before anything is written.
    fn plan(
        &self,
        ctx: &RequestContext,
        stream: &StreamId,
        decision: Decision<S>,
    ) -> Result<Plan<S>, SagaError> {
        let invalid = |reason: String| SagaError::InvalidDecision {
            stream: stream.clone(),
            reason,
        };
        let NetActions {
            schedule,
            cancel,
            send,
        } = net_actions(decision.actions).map_err(invalid)?;
        let metadata = ctx.metadata();
        let mut encoded = Vec::with_capacity(decision.events.len());
        for event in &decision.events {
            let new = encode_event(event)
                .map_err(|source| SagaError::Encode {
                    stream: stream.clone(),
                    source,
                })?
                .with_metadata(metadata.clone());
            new.validate().map_err(|e| invalid(e.to_string()))?;
            encoded.push(new);
        }
        Ok(Plan {
            events: decision.events,
            encoded,
            schedule: schedule
                .into_iter()
                .map(|(key, after)| (key, table::due_in(after)))
                .collect(),
            cancel,
            send,
        })
    }

    /// Brings `state` (at `version`) up to the stream's last event.
    async fn catch_up(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        mut state: S,
        mut version: Option<u64>,
    ) -> Result<(S, Option<u64>), SagaError> {
        let from = version.map_or(0, |v| v + 1);
        let recorded = self
            .store
            .read_stream(tenant, stream, ReadStream::forward_from(from))
            .await?;
        if recorded.first().is_some_and(|e| e.version != from) {
            return Err(SagaError::HistoryUnavailable {
                stream: stream.clone(),
            });
        }
        for record in &recorded {
            let event: S::Event =
                decode_event(&self.options.upcasters, record).map_err(|source| {
                    SagaError::Decode {
                        stream: stream.clone(),
                        version: record.version,
                        source,
                    }
                })?;
            state.apply(&event);
            version = Some(record.version);
        }
        Ok((state, version))
    }
}

pub(crate) fn instance<'a, S: Saga>(tenant: &'a TenantId, saga_id: &'a str) -> Instance<'a> {
    Instance {
        saga: S::NAME,
        tenant: tenant.as_str(),
        saga_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain() {
        assert!(valid_name("departure"));
        assert!(valid_name("seat_hold2"));
        for bad in ["", "Departure", "a-b", "a b", "ä"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_last_timeout_action_on_a_key_wins() {
        let actions = vec![
            Action::Schedule {
                key: "a".into(),
                after: Duration::from_secs(1),
            },
            Action::Send(1),
            Action::Cancel { key: "b".into() },
            Action::Cancel { key: "a".into() },
            Action::Send(2),
            Action::Schedule {
                key: "b".into(),
                after: Duration::from_secs(2),
            },
            Action::Schedule {
                key: "c".into(),
                after: Duration::from_secs(3),
            },
        ];
        let net = net_actions(actions).unwrap();
        assert_eq!(
            net.schedule,
            vec![
                ("b".to_owned(), Duration::from_secs(2)),
                ("c".to_owned(), Duration::from_secs(3))
            ]
        );
        assert_eq!(net.cancel, vec!["a".to_owned()]);
        assert_eq!(net.send, vec![1, 2]);
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in [String::new(), "a\nb".into(), "k".repeat(129)] {
            let actions: Vec<Action<()>> = vec![Action::Cancel { key: bad }];
            assert!(net_actions(actions).is_err());
        }
    }

    #[test]
    fn conflict_backoff_stays_under_its_cap() {
        for lost in 0..20 {
            let cap = Duration::from_micros(1000 << (lost.clamp(1, 6) - 1));
            assert!(conflict_backoff(lost) <= cap, "{lost}");
        }
    }
}
