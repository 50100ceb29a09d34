//! A store wrapper whose `$all` reads can be made to fail, for tests of
//! what follows the log (projections, consumers) when the event store's
//! database is unreachable.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use async_trait::async_trait;
use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use tokio::sync::watch;

use crate::{
    AllFilter, AppendOutcome, EventStore, EventSubscription, ExpectedVersion, MemoryStore,
    ReadStream, Snapshot, StoreError, StreamInfo,
};

/// A store whose `$all` reads fail while `down` is set, as when the event
/// store's database is unreachable.
#[derive(Clone)]
pub struct FlakyStore {
    pub inner: Arc<dyn EventStore>,
    pub down: Arc<AtomicBool>,
    pub failed_reads: Arc<AtomicU64>,
}

impl std::fmt::Debug for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyStore").finish_non_exhaustive()
    }
}

impl Default for FlakyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FlakyStore {
    /// Over a fresh in-memory store, up.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(MemoryStore::new()),
            down: Arc::new(AtomicBool::new(false)),
            failed_reads: Arc::new(AtomicU64::new(0)),
        }
    }
}

#[async_trait]
impl EventStore for FlakyStore {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append(tenant, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(tenant, stream, read).await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            self.failed_reads.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.read_all(after, filter, limit).await
    }

    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription {
        EventSubscription::follow(Arc::new(self.clone()), after, filter)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<StreamInfo>, StoreError> {
        self.inner.stream_info(tenant, stream).await
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(tenant, after, limit).await
    }

    async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError> {
        self.inner.delete_stream(tenant, stream, expected).await
    }

    async fn truncate_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError> {
        self.inner.truncate_stream(tenant, stream, before).await
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.save_snapshot(tenant, stream, snapshot).await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(tenant, stream).await
    }
}
