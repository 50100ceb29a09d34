//! Test support: a store on a fresh file in its own temporary directory,
//! removed when the last handle (including subscriptions) is dropped.

#![allow(dead_code, unreachable_pub)]

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AllFilter, AppendOutcome, EventStore, EventSubscription, ExpectedVersion, ReadStream, Snapshot,
    StoreError, StreamInfo,
};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::sync::watch;

/// A fresh temporary directory holding `store.db`.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cairn-sqlite-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let path = dir.path().join("store.db");
    (dir, path)
}

/// A [`SqliteStore`] that owns its temporary directory.
#[derive(Clone, Debug)]
pub struct TempStore {
    pub store: SqliteStore,
    pub path: PathBuf,
    // Declared last: dropped after the store has closed its file.
    _dir: Arc<tempfile::TempDir>,
}

impl TempStore {
    pub async fn new() -> Self {
        Self::with(SqliteOptions::default()).await
    }

    pub async fn with(options: SqliteOptions) -> Self {
        let (dir, path) = temp_db();
        let store = SqliteStore::open_with(&path, options).await.expect("open");
        Self {
            store,
            path,
            _dir: Arc::new(dir),
        }
    }
}

#[async_trait]
impl EventStore for TempStore {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.store.append(tenant, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(tenant, stream, read).await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(after, filter, limit).await
    }

    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription {
        // The backend's own method is what is under test. Should the
        // directory go first, the open connections keep working (Unix).
        self.store.subscribe_all(after, filter)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.store.head()
    }

    async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<StreamInfo>, StoreError> {
        self.store.stream_info(tenant, stream).await
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.store.list_streams(tenant, after, limit).await
    }

    async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError> {
        self.store.delete_stream(tenant, stream, expected).await
    }

    async fn truncate_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError> {
        self.store.truncate_stream(tenant, stream, before).await
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.store.save_snapshot(tenant, stream, snapshot).await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.store.load_snapshot(tenant, stream).await
    }
}
