//! The event store contract and what every backend shares.
//!
//! [`EventStore`] is the one interface to an event log: append to a stream
//! with an expected version, read a stream, read and follow the global `$all`
//! log, snapshots and stream metadata. Every call names its tenant: one
//! tenant can never read or write another's streams, even under the same
//! stream id. Crossing tenants is only possible through an explicit
//! [`TenantScope::AllTenants`] filter on `$all`.
//!
//! Guarantees every backend gives (the [`testkit`] checks them):
//! - versions in a stream start at 0 and have no holes;
//! - global positions start at 1 and, once a reader has seen position `p`, no
//!   event below `p` can appear later (gap-safe order);
//! - an append is all-or-nothing, and one whose event ids are already stored
//!   with the same content returns the first result and writes nothing;
//! - invalid input is rejected with [`StoreError::Invalid`] before anything is
//!   written.
//!
//! This crate also holds the in-memory backend ([`MemoryStore`]), the one
//! `$all` follower ([`AllFollower`]: pages with the head they were read
//! against) that every reader of the live log is built on, the catch-up
//! subscription ([`EventSubscription`]) that all backends use, and the
//! row-level security contract ([`row_security`]) that the PostgreSQL
//! backend and read models on PostgreSQL share.

mod error;
mod follow;
pub mod memory;
pub mod row_security;
mod rules;
mod subscription;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod types;
mod url;

use async_trait::async_trait;
use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use tokio::sync::watch;

pub use error::StoreError;
pub use follow::{AllFollower, AllPage, FollowOptions};
pub use memory::MemoryStore;
pub use rules::{
    Idempotency, MAX_EVENTS_PER_APPEND, check_expected, judge_idempotency, validate_append,
};
pub use subscription::EventSubscription;
pub use types::{
    AllFilter, AppendOutcome, Direction, ExpectedVersion, ReadStream, Snapshot, StreamInfo,
    TenantScope,
};
pub use url::{InvalidStoreUrl, StoreUrl, redact_password};

/// The event log. Implementations are cheap-to-clone handles.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version matches `expected`.
    ///
    /// All events are written or none. If every event id is already stored in
    /// this stream with the same content, the stored outcome is returned and
    /// nothing is written; an id stored with other content, or elsewhere, is
    /// [`StoreError::IdempotencyConflict`].
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Reads a stream. A stream that does not exist reads as empty; a
    /// deleted one is [`StoreError::StreamDeleted`]. Versions below the
    /// stream's truncation point are not returned.
    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads `$all`: up to `limit` events with a position above `after` that
    /// match `filter`, in position order.
    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Follows `$all` from `after`: history first, then live events, each
    /// exactly once and in position order. A slow subscriber never blocks
    /// writers; it reads from the store at its own pace.
    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription;

    /// The highest committed position this handle knows of, updated as
    /// appends commit (here or, where the backend can tell, elsewhere).
    fn head(&self) -> watch::Receiver<u64>;

    /// A stream's version and metadata, or `None` if it has no events.
    async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<StreamInfo>, StoreError>;

    /// A tenant's streams in id order, starting after `after`.
    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError>;

    /// Soft-deletes a stream: its events stay in `$all`, reading the stream
    /// or appending to it fails with [`StoreError::StreamDeleted`].
    async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError>;

    /// Hides versions below `before` from stream reads (the log in `$all` is
    /// unchanged). The truncation point only moves forward.
    async fn truncate_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError>;

    /// Stores a snapshot of a stream's state, replacing an older one.
    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError>;

    /// The latest snapshot of a stream, if any.
    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError>;
}

#[cfg(test)]
mod memory_conformance {
    use std::sync::Arc;

    use crate::{EventStore, MemoryStore};

    async fn fresh() -> Option<Arc<dyn EventStore>> {
        Some(Arc::new(MemoryStore::new()))
    }

    crate::conformance_suite!(fresh);
}
