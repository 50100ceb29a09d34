//! The aggregate store: load an aggregate, decide a command, append the
//! events with optimistic concurrency, retry when another writer won.
//!
//! Guarantees:
//! - commands on one aggregate through one store (and its clones) take
//!   turns, so a process never races itself; other processes are still
//!   raced optimistically;
//! - an append only succeeds on the exact version the decision was made on
//!   (`NoStream` for a new stream), so a rule checked in
//!   [`Aggregate::decide`] holds under any number of concurrent writers;
//! - a lost race is retried on fresh state up to
//!   [`AggregateOptions::max_retries`] times (after a short random pause, so
//!   colliding processes spread out), then reported as
//!   [`CommandError::ConcurrencyConflict`]; a caller's `If-Match` version is
//!   never retried past ([`CommandError::PreconditionFailed`]);
//! - snapshots only shorten loading: a snapshot of another
//!   [`Aggregate::SNAPSHOT_VERSION`] or one that does not deserialize is
//!   ignored, and failing to save one never fails a command.
//!
//! Every [`AggregateStore::execute`] is counted with the `metrics` macros
//! (kept by the Prometheus recorder of `cairn-telemetry` once installed,
//! free before): `cairn_commands_total{category,outcome}` (outcome `ok`,
//! `noop` when nothing was decided, else the error's stable code such as
//! `rule_violation`, `concurrency_conflict`, `precondition_failed`,
//! `not_found`), `cairn_command_duration_seconds{category}` (the turn in the
//! queue and the retries included) and `cairn_command_retries_total{category}`
//! (lost races decided again). The category is the aggregate's
//! [`Aggregate::CATEGORY`]; never a tenant or an id.

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    marker::PhantomData,
    num::NonZeroU64,
    sync::Arc,
    time::{Duration, Instant},
};

use cairn_core::{
    DecodeError, ErrorCode, RequestContext, StreamId, TenantId, Upcasters, ValidationError,
    decode_event, encode_event,
};
use cairn_store::{EventStore, ExpectedVersion, ReadStream, Snapshot, StoreError};

use crate::{Aggregate, DomainError, Loaded, cache::AggregateCache, queue::StreamQueues};

/// How an [`AggregateStore`] behaves. The defaults suit a laptop and most
/// services: 5 retries, no snapshots, no upcasters, a cache of 32 MiB.
#[derive(Debug, Clone)]
pub struct AggregateOptions {
    /// How many times a command is decided again after losing a race to
    /// another writer before giving up with
    /// [`CommandError::ConcurrencyConflict`]. 0 means one attempt only.
    pub max_retries: u32,
    /// Save a snapshot whenever the stream's event count crosses a multiple
    /// of this; `None` (the default) never saves nor reads snapshots.
    pub snapshot_every: Option<NonZeroU64>,
    /// Lift old event schema versions on read.
    pub upcasters: Arc<Upcasters>,
    /// How many bytes of recently decided states to keep, so the next
    /// command on the same aggregate skips loading it (see
    /// [`AggregateStore`]); 0 keeps none and loads every time.
    pub cache_bytes: u64,
}

/// The cache's default budget: 32 MiB of states.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;

impl Default for AggregateOptions {
    fn default() -> Self {
        Self {
            max_retries: 5,
            snapshot_every: None,
            upcasters: Arc::new(Upcasters::new()),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl AggregateOptions {
    /// Sets [`max_retries`](Self::max_retries).
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Snapshots every `every` events; 0 turns snapshots off.
    pub fn with_snapshot_every(mut self, every: u64) -> Self {
        self.snapshot_every = NonZeroU64::new(every);
        self
    }

    /// Sets [`cache_bytes`](Self::cache_bytes); 0 turns the cache off.
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Sets the upcasters used to read events.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }
}

/// Why a command did not go through. Each variant has a stable
/// [`code`](CommandError::code).
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate refused the command; the code is the error's own.
    #[error(transparent)]
    Domain(E),

    /// The aggregate does not exist (for operations that need it to).
    #[error("{stream} not found")]
    NotFound { stream: StreamId },

    /// The aggregate's stream was deleted (tombstoned). Code `not_found`.
    #[error("{stream} was deleted")]
    Deleted { stream: StreamId },

    /// The caller's expected version (`If-Match`) is stale; nothing was
    /// written and nothing was retried.
    #[error("{stream} is {}, the request expected version {expected}", actual.map_or("absent".to_owned(), |v| format!("at version {v}")))]
    PreconditionFailed {
        stream: StreamId,
        expected: u64,
        actual: Option<u64>,
    },

    /// Other writers kept winning; every attempt was decided on state that
    /// was stale by the time it was appended.
    #[error("{stream} kept changing concurrently; gave up after {attempts} attempts")]
    ConcurrencyConflict { stream: StreamId, attempts: u32 },

    /// A stored event could not be read as the aggregate's event type.
    #[error("event {version} of {stream} cannot be decoded: {source}")]
    Decode {
        stream: StreamId,
        version: u64,
        #[source]
        source: DecodeError,
    },

    /// The stream was truncated and no usable snapshot covers the hidden
    /// events, so the state cannot be rebuilt.
    #[error(
        "{stream} cannot be loaded: its early events are truncated and no usable snapshot covers them"
    )]
    HistoryUnavailable { stream: StreamId },

    /// A decided event could not be turned into its stored form (the event
    /// enum is not serde-adjacently tagged, or serializing failed).
    #[error("a decided event for {stream} cannot be encoded: {source}")]
    Encode {
        stream: StreamId,
        #[source]
        source: DecodeError,
    },

    /// The event store failed or refused the input.
    #[error(transparent)]
    Store(StoreError),
}

impl<E: DomainError> CommandError<E> {
    /// The stable code the edge maps to a status.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::Domain(e) => e.code(),
            CommandError::NotFound { .. } | CommandError::Deleted { .. } => ErrorCode::NotFound,
            CommandError::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
            CommandError::ConcurrencyConflict { .. } => ErrorCode::ConcurrencyConflict,
            CommandError::Decode { .. } | CommandError::HistoryUnavailable { .. } => {
                ErrorCode::Corrupt
            }
            CommandError::Encode { .. } => ErrorCode::Internal,
            CommandError::Store(e) => e.code(),
        }
    }

    /// Structured details for the client: the domain error's own, or the
    /// versions of a failed precondition.
    pub fn details(&self) -> Option<serde_json::Value> {
        match self {
            CommandError::Domain(e) => e.details(),
            CommandError::PreconditionFailed {
                expected, actual, ..
            } => Some(serde_json::json!({ "expected": expected, "actual": actual })),
            _ => None,
        }
    }

    fn from_store(stream: &StreamId, error: StoreError) -> Self {
        match error {
            StoreError::StreamDeleted { .. } => CommandError::Deleted {
                stream: stream.clone(),
            },
            StoreError::StreamNotFound { .. } => CommandError::NotFound {
                stream: stream.clone(),
            },
            other => CommandError::Store(other),
        }
    }
}

impl<E> From<ValidationError> for CommandError<E> {
    fn from(error: ValidationError) -> Self {
        CommandError::Store(StoreError::Invalid(error))
    }
}

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct CommandOutcome<A: Aggregate> {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The stream's version after the command; `None` if the stream still
    /// has no events (a command on a new aggregate that decided nothing).
    pub version: Option<u64>,
    /// The global position of the last event written, for read-your-writes
    /// (`X-Cairn-Position`); `None` when nothing was written.
    pub position: Option<u64>,
    /// The events decided and written, in order; empty when the command
    /// changed nothing.
    pub events: Vec<A::Event>,
    /// The state after the events.
    pub state: A,
}

impl<A: Aggregate> CommandOutcome<A> {
    /// Whether the command wrote any event.
    pub fn written(&self) -> bool {
        !self.events.is_empty()
    }
}

/// Loads aggregates of type `A` from an event store, runs commands against
/// them and appends the result. A cheap-to-clone handle; clones share the
/// per-aggregate command queue and the cache, so build one per service and
/// clone it.
///
/// The states commands were decided on are kept in a cache bounded by
/// [`AggregateOptions::cache_bytes`] (per tenant and stream; see
/// the cache module for its policy), so a command on an aggregate used
/// recently skips the load: it decides on the kept state and appends on
/// the kept version. When another process wrote the stream meanwhile, that
/// append fails, and the state is brought up to date from the events after
/// its version and decided again. So the cache changes how much is read,
/// never what is decided: with any number of processes on one store, no
/// update is lost. A command that would write nothing on a kept state (a
/// refusal, a no-op, a failed `If-Match`) reads the newer events first, if
/// any, and decides again on them before answering.
///
/// Cache use is counted in `cairn_aggregate_cache_total{category,outcome}`:
/// `hit` (a command found its aggregate's state kept), `miss` (nothing
/// kept: loaded) and `stale` (a kept state's append found that another
/// writer had moved the stream on).
pub struct AggregateStore<A> {
    store: Arc<dyn EventStore>,
    options: AggregateOptions,
    queues: Arc<StreamQueues>,
    cache: Option<Arc<AggregateCache<A>>>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for AggregateStore<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            options: self.options.clone(),
            queues: Arc::clone(&self.queues),
            cache: self.cache.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A> fmt::Debug for AggregateStore<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateStore")
            .field("aggregate", &std::any::type_name::<A>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Whether `category` is a usable stream category: non-empty, no `-`.
const fn valid_category(category: &str) -> bool {
    let bytes = category.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether appending took the stream's event count across a multiple of
/// `every`: from `before` (last version before, `None` for a new stream) to
/// `after` (last version after).
fn crosses_snapshot_point(every: NonZeroU64, before: Option<u64>, after: u64) -> bool {
    let count_before = before.map_or(0, |v| v + 1);
    let count_after = after + 1;
    count_after / every.get() > count_before / every.get()
}

/// The pause before deciding again after the `lost`-th lost race: a random
/// time up to 1 ms, doubling per lost race up to 32 ms ("full jitter"), so
/// writers in other processes that collided with this one spread out.
fn backoff(lost: u32) -> Duration {
    let cap_micros = 1000u64 << lost.clamp(1, 6).saturating_sub(1);
    // std's hasher is randomly keyed per instance: randomness without a
    // random-number dependency.
    let random = RandomState::new().hash_one(lost);
    Duration::from_micros(random % (cap_micros + 1))
}

impl<A: Aggregate> AggregateStore<A> {
    /// An aggregate store over `store` with default options.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self::with_options(store, AggregateOptions::default())
    }

    /// An aggregate store over `store` with `options`.
    pub fn with_options(store: Arc<dyn EventStore>, options: AggregateOptions) -> Self {
        const {
            assert!(
                valid_category(A::CATEGORY),
                "Aggregate::CATEGORY must be non-empty and must not contain '-'"
            );
        }
        let cache = AggregateCache::new(options.cache_bytes).map(Arc::new);
        Self {
            store,
            options,
            queues: Arc::default(),
            cache,
            aggregate: PhantomData,
        }
    }

    /// The options this store runs with.
    pub fn options(&self) -> &AggregateOptions {
        &self.options
    }

    /// The event store underneath.
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The stream of aggregate `id`: `CATEGORY-id`.
    pub fn stream_id(id: impl fmt::Display) -> Result<StreamId, ValidationError> {
        StreamId::for_aggregate(A::CATEGORY, id)
    }

    /// Loads aggregate `id` of the caller's tenant: the latest usable
    /// snapshot (when snapshots are on) plus the events after it. `None` if
    /// the stream has no events; [`CommandError::Deleted`] if it was
    /// tombstoned.
    pub async fn load(
        &self,
        ctx: &RequestContext,
        id: impl fmt::Display,
    ) -> Result<Option<Loaded<A>>, CommandError<A::Error>> {
        let stream = Self::stream_id(id)?;
        self.load_stream(ctx, &stream).await
    }

    /// Runs `command` against aggregate `id`: load, decide, append on the
    /// loaded version, and on a lost race load and decide again (up to
    /// [`AggregateOptions::max_retries`] times). Commands on the same
    /// aggregate through this store and its clones run one at a time.
    ///
    /// `expected` is the caller's `If-Match`: when it is `Some(v)` and the
    /// aggregate is not at version `v`, the command fails with
    /// [`CommandError::PreconditionFailed`] and is not retried (or
    /// [`CommandError::NotFound`] if the aggregate does not exist).
    ///
    /// Events get fresh ids and the context's metadata (correlation,
    /// causation, traceparent, actor). A decision with no events writes
    /// nothing and succeeds.
    pub async fn execute(
        &self,
        ctx: &RequestContext,
        id: impl fmt::Display,
        expected: Option<u64>,
        command: &A::Command,
    ) -> Result<CommandOutcome<A>, CommandError<A::Error>> {
        let started = Instant::now();
        let result = self.run(ctx, id, expected, command).await;
        let outcome = match &result {
            Ok(done) if done.written() => "ok",
            Ok(_) => "noop",
            Err(error) => error.code().as_str(),
        };
        metrics::counter!(
            "cairn_commands_total",
            "category" => A::CATEGORY,
            "outcome" => outcome,
        )
        .increment(1);
        metrics::histogram!("cairn_command_duration_seconds", "category" => A::CATEGORY)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// [`execute`](Self::execute) without the metrics.
    async fn run(
        &self,
        ctx: &RequestContext,
        id: impl fmt::Display,
        expected: Option<u64>,
        command: &A::Command,
    ) -> Result<CommandOutcome<A>, CommandError<A::Error>> {
        let stream = Self::stream_id(id)?;
        let tenant = &ctx.tenant;
        let _turn = self.queues.turn(tenant, &stream).await;
        // A kept state (a guess: another process may have written since),
        // taken out of the cache for the length of the command.
        let mut kept = self.cache.as_ref().and_then(|c| c.take(tenant, &stream));
        self.count_cache(if kept.is_some() { "hit" } else { "miss" });
        // A state known to be behind: the next attempt reads only the events
        // after its version.
        let mut behind: Option<Loaded<A>> = None;
        let mut attempts = 0u32;
        // The version the store reported in the last lost race; the next load
        // must see at least that far, or the history is not readable.
        let mut seen: Option<u64> = None;
        loop {
            attempts += 1;
            // Whether the state is known current (read from the store in this
            // command) or only kept from an earlier one.
            let (loaded, fresh) = match kept.take() {
                Some(loaded) => (Some(loaded), false),
                None => (
                    self.bring_up_to_date(ctx, &stream, behind.take()).await?,
                    true,
                ),
            };
            let (mut state, current) = match loaded {
                Some(loaded) => (loaded.state, Some(loaded.version)),
                None => (A::default(), None),
            };
            if fresh && seen > current {
                return Err(CommandError::HistoryUnavailable { stream });
            }
            // Decides on the state; `Err` is what the command answers
            // without writing.
            let decided = match expected {
                Some(_) if current.is_none() => Err(CommandError::NotFound {
                    stream: stream.clone(),
                }),
                Some(expected) if current != Some(expected) => {
                    Err(CommandError::PreconditionFailed {
                        stream: stream.clone(),
                        expected,
                        actual: current,
                    })
                }
                _ => state.decide(command).map_err(CommandError::Domain),
            };
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                // Nothing to write: an answer to confirm on the stream's
                // latest events if the state was only kept.
                _ if !fresh => {
                    attempts -= 1;
                    behind = current.map(|version| Loaded { state, version });
                    continue;
                }
                Ok(events) => {
                    self.keep(tenant, &stream, &state, current);
                    return Ok(CommandOutcome {
                        stream,
                        version: current,
                        position: None,
                        events,
                        state,
                    });
                }
                Err(error) => {
                    self.keep(tenant, &stream, &state, current);
                    return Err(error);
                }
            };
            let metadata = ctx.metadata();
            let new_events = events
                .iter()
                .map(|e| encode_event(e).map(|n| n.with_metadata(metadata.clone())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| CommandError::Encode {
                    stream: stream.clone(),
                    source,
                })?;
            let expected_version =
                current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);

            match self
                .store
                .append(tenant, &stream, expected_version, new_events)
                .await
            {
                Ok(outcome) => {
                    for event in &events {
                        state.apply(event);
                    }
                    if let Some(every) = self.options.snapshot_every
                        && crosses_snapshot_point(every, current, outcome.last_version)
                    {
                        self.save_snapshot(ctx, &stream, &state, outcome.last_version)
                            .await;
                    }
                    self.keep(tenant, &stream, &state, Some(outcome.last_version));
                    return Ok(CommandOutcome {
                        stream,
                        version: Some(outcome.last_version),
                        position: Some(outcome.last_position),
                        events,
                        state,
                    });
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) if !fresh => {
                    // The kept state was stale: another writer moved the
                    // stream on. Read what it wrote and decide again; this is
                    // not a lost race of this command.
                    tracing::debug!(
                        stream = %stream,
                        tenant = %tenant,
                        kept = ?current,
                        actual = ?actual,
                        "the kept state was stale; reading the newer events"
                    );
                    self.count_cache("stale");
                    attempts -= 1;
                    seen = actual;
                    behind = current.map(|version| Loaded { state, version });
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    if let Some(expected) = expected {
                        return Err(CommandError::PreconditionFailed {
                            stream,
                            expected,
                            actual,
                        });
                    }
                    if attempts > self.options.max_retries {
                        return Err(CommandError::ConcurrencyConflict { stream, attempts });
                    }
                    tracing::debug!(
                        stream = %stream,
                        tenant = %tenant,
                        attempt = attempts,
                        "lost a concurrent append; deciding again on fresh state"
                    );
                    metrics::counter!("cairn_command_retries_total", "category" => A::CATEGORY)
                        .increment(1);
                    seen = actual;
                    behind = current.map(|version| Loaded { state, version });
                    tokio::time::sleep(backoff(attempts)).await;
                }
                Err(other) => return Err(CommandError::from_store(&stream, other)),
            }
        }
    }

    /// Keeps `state` at `version` for the next command on `stream`.
    fn keep(&self, tenant: &TenantId, stream: &StreamId, state: &A, version: Option<u64>) {
        if let (Some(cache), Some(version)) = (&self.cache, version) {
            cache.put(tenant, stream, state.clone(), version);
        }
    }

    fn count_cache(&self, result: &'static str) {
        if self.cache.is_some() {
            metrics::counter!(
                "cairn_aggregate_cache_total",
                "category" => A::CATEGORY,
                "outcome" => result,
            )
            .increment(1);
        }
    }

    /// The state of `stream` as the store has it now: `behind` brought up to
    /// date with the events after its version when given, else loaded
    /// (snapshot and events). A state behind a truncation is loaded anew.
    async fn bring_up_to_date(
        &self,
        ctx: &RequestContext,
        stream: &StreamId,
        behind: Option<Loaded<A>>,
    ) -> Result<Option<Loaded<A>>, CommandError<A::Error>> {
        let Some(Loaded { mut state, version }) = behind else {
            return self.load_stream(ctx, stream).await;
        };
        let from = version + 1;
        let newer = self
            .store
            .read_stream(&ctx.tenant, stream, ReadStream::forward_from(from))
            .await
            .map_err(|e| CommandError::from_store(stream, e))?;
        if newer.first().is_some_and(|e| e.version != from) {
            return self.load_stream(ctx, stream).await;
        }
        let version = self.fold(stream, &mut state, &newer)?.unwrap_or(version);
        Ok(Some(Loaded { state, version }))
    }

    /// Applies `recorded` to `state`; the version of the last one.
    fn fold(
        &self,
        stream: &StreamId,
        state: &mut A,
        recorded: &[cairn_core::RecordedEvent],
    ) -> Result<Option<u64>, CommandError<A::Error>> {
        let mut version = None;
        for record in recorded {
            let event: A::Event =
                decode_event(&self.options.upcasters, record).map_err(|source| {
                    CommandError::Decode {
                        stream: stream.clone(),
                        version: record.version,
                        source,
                    }
                })?;
            state.apply(&event);
            version = Some(record.version);
        }
        Ok(version)
    }

    /// Tombstones aggregate `id`: its stream refuses reads and appends from
    /// now on (its events stay in `$all`). `expected` is the caller's
    /// `If-Match`. Deleting an absent aggregate is
    /// [`CommandError::NotFound`], a deleted one [`CommandError::Deleted`].
    ///
    /// A service that wants the deletion in the audit log records a
    /// "deleted" event with [`execute`](Self::execute) first.
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        id: impl fmt::Display,
        expected: Option<u64>,
    ) -> Result<(), CommandError<A::Error>> {
        let stream = Self::stream_id(id)?;
        if let Some(cache) = &self.cache {
            cache.forget(&ctx.tenant, &stream);
        }
        let expected_version =
            expected.map_or(ExpectedVersion::StreamExists, ExpectedVersion::Exact);
        match self
            .store
            .delete_stream(&ctx.tenant, &stream, expected_version)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::WrongExpectedVersion { actual, .. }) => Err(match (expected, actual) {
                (Some(expected), actual) => CommandError::PreconditionFailed {
                    stream,
                    expected,
                    actual,
                },
                (None, _) => CommandError::NotFound { stream },
            }),
            Err(other) => Err(CommandError::from_store(&stream, other)),
        }
    }

    async fn load_stream(
        &self,
        ctx: &RequestContext,
        stream: &StreamId,
    ) -> Result<Option<Loaded<A>>, CommandError<A::Error>> {
        let tenant = &ctx.tenant;
        let mut state = A::default();
        let mut version = None;
        if self.options.snapshot_every.is_some() {
            let snapshot = self
                .store
                .load_snapshot(tenant, stream)
                .await
                .map_err(|e| CommandError::from_store(stream, e))?;
            if let Some(snapshot) = snapshot {
                if snapshot.schema_version != A::SNAPSHOT_VERSION {
                    tracing::debug!(
                        stream = %stream,
                        found = snapshot.schema_version,
                        expected = A::SNAPSHOT_VERSION,
                        "ignoring a snapshot of another schema version"
                    );
                } else {
                    match serde_json::from_value::<A>(snapshot.state) {
                        Ok(restored) => {
                            state = restored;
                            version = Some(snapshot.version);
                        }
                        Err(error) => tracing::warn!(
                            stream = %stream,
                            version = snapshot.version,
                            %error,
                            "ignoring a snapshot that does not deserialize; replaying the stream"
                        ),
                    }
                }
            }
        }

        let from = version.map_or(0, |v| v + 1);
        let recorded = self
            .store
            .read_stream(tenant, stream, ReadStream::forward_from(from))
            .await
            .map_err(|e| CommandError::from_store(stream, e))?;
        if recorded.first().is_some_and(|e| e.version != from) {
            return Err(CommandError::HistoryUnavailable {
                stream: stream.clone(),
            });
        }
        if let Some(last) = self.fold(stream, &mut state, &recorded)? {
            version = Some(last);
        }
        Ok(version.map(|version| Loaded { state, version }))
    }

    async fn save_snapshot(
        &self,
        ctx: &RequestContext,
        stream: &StreamId,
        state: &A,
        version: u64,
    ) {
        let state = match serde_json::to_value(state) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(stream = %stream, %error, "cannot serialize a snapshot; skipped");
                return;
            }
        };
        let snapshot = Snapshot {
            version,
            schema_version: A::SNAPSHOT_VERSION,
            state,
        };
        if let Err(error) = self
            .store
            .save_snapshot(&ctx.tenant, stream, snapshot)
            .await
        {
            tracing::warn!(
                stream = %stream,
                tenant = %ctx.tenant,
                version,
                %error,
                "saving a snapshot failed; the command succeeded and loading replays events"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_points_are_crossings_of_multiples() {
        let every = NonZeroU64::new(3).unwrap();
        // one event at a time: counts 1..=7, snapshots at counts 3 and 6
        let taken: Vec<u64> = (0u64..7)
            .filter(|&v| crosses_snapshot_point(every, v.checked_sub(1), v))
            .collect();
        assert_eq!(taken, vec![2, 5]);
        // a batch that jumps over a multiple still takes one
        assert!(crosses_snapshot_point(every, Some(1), 4));
        // a batch that stays between multiples does not
        assert!(!crosses_snapshot_point(every, Some(2), 4));
        // a new stream reaching exactly the multiple
        assert!(crosses_snapshot_point(every, None, 2));
        let one = NonZeroU64::new(1).unwrap();
        assert!(crosses_snapshot_point(one, None, 0));
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        for lost in 0..20 {
            let cap = Duration::from_micros(1000 << (lost.clamp(1, 6) - 1));
            assert!(backoff(lost) <= cap, "{lost}");
        }
        assert!(backoff(50) <= Duration::from_millis(32));
    }

    #[test]
    fn categories_must_be_plain() {
        assert!(valid_category("flight"));
        assert!(!valid_category(""));
        assert!(!valid_category("flight-x"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("nope")]
    struct Nope;
    impl DomainError for Nope {
        fn code(&self) -> ErrorCode {
            ErrorCode::NotFound
        }
    }

    #[test]
    fn every_error_has_its_code() {
        let s = StreamId::new("x-1").unwrap();
        let cases: Vec<(CommandError<Nope>, ErrorCode)> = vec![
            (CommandError::Domain(Nope), ErrorCode::NotFound),
            (
                CommandError::NotFound { stream: s.clone() },
                ErrorCode::NotFound,
            ),
            (
                CommandError::Deleted { stream: s.clone() },
                ErrorCode::NotFound,
            ),
            (
                CommandError::PreconditionFailed {
                    stream: s.clone(),
                    expected: 1,
                    actual: Some(2),
                },
                ErrorCode::PreconditionFailed,
            ),
            (
                CommandError::ConcurrencyConflict {
                    stream: s.clone(),
                    attempts: 6,
                },
                ErrorCode::ConcurrencyConflict,
            ),
            (
                CommandError::HistoryUnavailable { stream: s.clone() },
                ErrorCode::Corrupt,
            ),
            (
                CommandError::Decode {
                    stream: s.clone(),
                    version: 0,
                    source: DecodeError::Representation,
                },
                ErrorCode::Corrupt,
            ),
            (
                CommandError::Encode {
                    stream: s.clone(),
                    source: DecodeError::Representation,
                },
                ErrorCode::Internal,
            ),
            (
                CommandError::Store(StoreError::Unavailable("down".into())),
                ErrorCode::Unavailable,
            ),
            (
                ValidationError::new("stream", "bad").into(),
                ErrorCode::InvalidInput,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
        let e: CommandError<Nope> = CommandError::PreconditionFailed {
            stream: s,
            expected: 1,
            actual: None,
        };
        assert_eq!(
            e.to_string(),
            "x-1 is absent, the request expected version 1"
        );
        assert_eq!(
            e.details(),
            Some(serde_json::json!({"expected": 1, "actual": null}))
        );
    }
}
