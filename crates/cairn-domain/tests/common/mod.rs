//! Test support: a small example aggregate (a concert selling a fixed number
//! of tickets) and an event store wrapper that can play a rival writer or
//! fail snapshot saves, over a real `MemoryStore`, `SqliteStore` or
//! `PostgresStore` (a fresh schema of the test server).

#![allow(dead_code, unreachable_pub)]

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use async_trait::async_trait;
use cairn_core::{
    DomainEvent, ErrorCode, NewEvent, RecordedEvent, RequestContext, StreamId, TenantId,
};
use cairn_domain::{Aggregate, DomainError};
use cairn_store::{
    AllFilter, AppendOutcome, EventStore, EventSubscription, ExpectedVersion, MemoryStore,
    ReadStream, Snapshot, StoreError, StreamInfo,
};
use cairn_store_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

// ---------------------------------------------------------------------------
// The example aggregate

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[default]
    Unplanned,
    OnSale,
    Cancelled,
}

/// A concert: planned with a capacity, tickets booked one holder at a time,
/// never more than the capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concert {
    pub status: Status,
    pub capacity: u32,
    pub holders: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum ConcertCommand {
    Plan { capacity: u32 },
    Book { holder: String },
    BookPair { first: String, second: String },
    Cancel,
    Reopen,
}

pub fn book(holder: &str) -> ConcertCommand {
    ConcertCommand::Book {
        holder: holder.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ConcertEvent {
    /// Schema version 2: version 1 called the capacity `seats`.
    ConcertPlanned {
        capacity: u32,
    },
    TicketBooked {
        holder: String,
    },
    ConcertCancelled,
    ConcertReopened,
}

impl DomainEvent for ConcertEvent {
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "ConcertPlanned" { 2 } else { 1 }
    }
}

pub fn booked(holder: &str) -> ConcertEvent {
    ConcertEvent::TicketBooked {
        holder: holder.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConcertError {
    #[error("no such concert")]
    NotFound,
    #[error("the concert is already planned")]
    AlreadyPlanned,
    #[error("a concert needs at least one seat")]
    NoSeats,
    #[error("sold out: all {capacity} tickets are booked")]
    SoldOut { capacity: u32 },
    #[error("the concert is cancelled")]
    Cancelled,
}

impl DomainError for ConcertError {
    fn code(&self) -> ErrorCode {
        match self {
            ConcertError::NotFound => ErrorCode::NotFound,
            ConcertError::NoSeats => ErrorCode::ValidationFailed,
            _ => ErrorCode::RuleViolation,
        }
    }

    fn details(&self) -> Option<serde_json::Value> {
        match self {
            ConcertError::SoldOut { capacity } => Some(serde_json::json!({ "capacity": capacity })),
            _ => None,
        }
    }
}

impl Concert {
    fn book_one(&self, holder: &str, already: usize) -> Result<Option<ConcertEvent>, ConcertError> {
        if self.holders.iter().any(|h| h == holder) {
            return Ok(None); // booking again changes nothing
        }
        if self.holders.len() + already >= self.capacity as usize {
            return Err(ConcertError::SoldOut {
                capacity: self.capacity,
            });
        }
        Ok(Some(booked(holder)))
    }
}

impl Aggregate for Concert {
    const CATEGORY: &'static str = "concert";
    type Command = ConcertCommand;
    type Event = ConcertEvent;
    type Error = ConcertError;

    fn decide(&self, command: &ConcertCommand) -> Result<Vec<ConcertEvent>, ConcertError> {
        match (self.status, command) {
            (Status::Unplanned, ConcertCommand::Plan { capacity: 0 }) => Err(ConcertError::NoSeats),
            (Status::Unplanned, ConcertCommand::Plan { capacity }) => {
                Ok(vec![ConcertEvent::ConcertPlanned {
                    capacity: *capacity,
                }])
            }
            (Status::Unplanned, _) => Err(ConcertError::NotFound),
            (_, ConcertCommand::Plan { .. }) => Err(ConcertError::AlreadyPlanned),
            (Status::Cancelled, ConcertCommand::Reopen) => Ok(vec![ConcertEvent::ConcertReopened]),
            (Status::Cancelled, _) => Err(ConcertError::Cancelled),
            (Status::OnSale, ConcertCommand::Reopen) => Ok(Vec::new()),
            (Status::OnSale, ConcertCommand::Book { holder }) => {
                Ok(self.book_one(holder, 0)?.into_iter().collect())
            }
            (Status::OnSale, ConcertCommand::BookPair { first, second }) => {
                let a = self.book_one(first, 0)?;
                let b = self.book_one(second, usize::from(a.is_some()))?;
                Ok(a.into_iter().chain(b).collect())
            }
            (Status::OnSale, ConcertCommand::Cancel) => Ok(vec![ConcertEvent::ConcertCancelled]),
        }
    }

    fn apply(&mut self, event: &ConcertEvent) {
        match event {
            ConcertEvent::ConcertPlanned { capacity } => {
                self.status = Status::OnSale;
                self.capacity = *capacity;
            }
            ConcertEvent::TicketBooked { holder } => self.holders.push(holder.clone()),
            ConcertEvent::ConcertCancelled => self.status = Status::Cancelled,
            ConcertEvent::ConcertReopened => self.status = Status::OnSale,
        }
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("test tenant")
}

pub fn ctx() -> RequestContext {
    RequestContext::new(tenant("acme"))
}

// ---------------------------------------------------------------------------
// The store wrapper

/// A real store (memory or SQLite in a temporary directory) with two fault
/// switches: `rivals` makes the next appends lose a race (a rival booking is
/// written to the same stream just before each), and `fail_snapshots` makes
/// snapshot saves fail.
pub struct TestStore {
    inner: Arc<dyn EventStore>,
    rivals: AtomicU32,
    rivals_written: AtomicU32,
    lost_races: AtomicU32,
    fail_snapshots: AtomicBool,
    reads: Mutex<Vec<(StreamId, ReadStream)>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// Wraps `inner`; `dir` is kept (not deleted) as long as the store.
    pub fn wrap(inner: Arc<dyn EventStore>, dir: Option<tempfile::TempDir>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rivals: AtomicU32::new(0),
            rivals_written: AtomicU32::new(0),
            lost_races: AtomicU32::new(0),
            fail_snapshots: AtomicBool::new(false),
            reads: Mutex::default(),
            _dir: dir,
        })
    }

    pub async fn memory() -> Option<Arc<Self>> {
        Some(Self::wrap(Arc::new(MemoryStore::new()), None))
    }

    pub async fn sqlite() -> Option<Arc<Self>> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-domain-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let store = SqliteStore::open(dir.path().join("events.db"))
            .await
            .expect("open sqlite store");
        Some(Self::wrap(Arc::new(store), Some(dir)))
    }

    /// A fresh schema on the test PostgreSQL server (`CAIRN_TEST_POSTGRES_URL`),
    /// or `None` (skip) when it is absent and not required.
    pub async fn postgres() -> Option<Arc<Self>> {
        let store = postgres_store(&fresh_schema()).await?;
        Some(Self::wrap(Arc::new(store), None))
    }

    /// The stream reads made so far, in order.
    pub fn reads(&self) -> Vec<(StreamId, ReadStream)> {
        self.reads.lock().unwrap().clone()
    }

    /// The next `n` appends each lose a race to a rival writer.
    pub fn lose_next_races(&self, n: u32) {
        self.rivals.store(n, Ordering::SeqCst);
    }

    pub fn rivals_written(&self) -> u32 {
        self.rivals_written.load(Ordering::SeqCst)
    }

    /// Appends refused with `WrongExpectedVersion` so far.
    pub fn lost_races(&self) -> u32 {
        self.lost_races.load(Ordering::SeqCst)
    }

    pub fn fail_snapshots(&self, fail: bool) {
        self.fail_snapshots.store(fail, Ordering::SeqCst);
    }

    pub fn handle(self: &Arc<Self>) -> Arc<dyn EventStore> {
        Arc::clone(self) as Arc<dyn EventStore>
    }
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore")
            .field("rivals", &self.rivals)
            .field("fail_snapshots", &self.fail_snapshots)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventStore for TestStore {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        // Real stores yield here (I/O); so does this one, even over memory, so
        // concurrent commands interleave between their load and their append.
        tokio::task::yield_now().await;
        let rival = self
            .rivals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if rival {
            let n = self.rivals_written.fetch_add(1, Ordering::SeqCst);
            let event = cairn_core::encode_event(&booked(&format!("rival-{n}"))).unwrap();
            self.inner
                .append(tenant, stream, ExpectedVersion::Any, vec![event])
                .await
                .expect("rival append");
        }
        let result = self.inner.append(tenant, stream, expected, events).await;
        if matches!(result, Err(StoreError::WrongExpectedVersion { .. })) {
            self.lost_races.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.reads.lock().unwrap().push((stream.clone(), read));
        self.inner.read_stream(tenant, stream, read).await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, filter, limit).await
    }

    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription {
        self.inner.subscribe_all(after, filter)
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
        if self.fail_snapshots.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("snapshot table is on fire".into()));
        }
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

/// The test PostgreSQL server's URL.
pub fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name no other test uses, in the `cairn_test_<secs>_` form the
/// store's own tests sweep an hour later.
pub fn fresh_schema() -> String {
    use std::hash::{BuildHasher, RandomState};
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let random = RandomState::new().hash_one(std::process::id());
    format!("cairn_test_{secs}_{:012x}", random & 0xffff_ffff_ffff)
}

/// A `PostgresStore` on `schema` of the test server, or `None` (skip) when
/// the server is absent and not required.
pub async fn postgres_store(schema: &str) -> Option<cairn_store_postgres::PostgresStore> {
    let options = cairn_store_postgres::PostgresOptions {
        schema: schema.to_owned(),
        ..Default::default()
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(20),
        cairn_store_postgres::PostgresStore::connect_with(&postgres_url(), options),
    )
    .await
    {
        Ok(Ok(store)) => Some(store),
        Ok(Err(e)) => cairn_store::testkit::service_absent("PostgreSQL", e),
        Err(_) => cairn_store::testkit::service_absent("PostgreSQL", "connect timed out"),
    }
}
