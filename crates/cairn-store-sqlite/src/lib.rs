//! The SQLite backend of Cairn's event store: the whole log in one file.
//!
//! [`SqliteStore`] keeps the full [`EventStore`] contract (the shared
//! conformance suite runs against it) and behaves like the in-memory
//! reference backend in every outcome. How:
//!
//! - **One writer, group commit.** A dedicated thread owns the only write
//!   connection. Appends, deletes, truncations and snapshot saves queue up
//!   for it; it runs whatever is queued in one transaction, each request in
//!   its own savepoint (a lone request in the transaction itself) and judged
//!   on its own expected version, then commits once for all of them (see
//!   `writer`).
//! - **Durable acknowledgements.** WAL journal; a request is answered only
//!   after its transaction committed. With [`SqliteOptions::synchronous_full`]
//!   (the default) the WAL is fsynced at each commit, so an acknowledged
//!   append survives power loss; without it, it still survives a crash of
//!   the process.
//! - **Gap-safe positions.** Positions are assigned by the writer under the
//!   database's write lock, so they commit in order, even with several
//!   processes on one file; the head only moves after a commit.
//! - **Concurrent reads.** A small pool of read connections serves reads on
//!   tokio's blocking pool; WAL readers never wait for the writer.
//! - **Schema.** Embedded, versioned migrations run on open (see `schema`).
//!
//! Validation runs on the caller's task before anything is queued, so
//! invalid input never reaches the writer.

mod codec;
mod reader;
mod schema;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use async_trait::async_trait;
use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AllFilter, AppendOutcome, EventStore, EventSubscription, ExpectedVersion, ReadStream, Snapshot,
    StoreError, StreamInfo, validate_append,
};
use tokio::sync::{oneshot, watch};

use crate::{
    reader::Readers,
    writer::{AppendRequest, Command, Reply, Writer},
};

/// How a [`SqliteStore`] runs.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `PRAGMA synchronous=FULL` (durable even on power loss) when true, the
    /// default; `NORMAL` (durable across process crashes, may lose the last
    /// commits on power loss) when false.
    pub synchronous_full: bool,
    /// Most requests sharing one transaction (at least 1).
    pub max_batch: usize,
    /// Read connections (at least 1).
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous_full: true,
            max_batch: 1024,
            readers: 4,
        }
    }
}

/// An event store in one SQLite file. Clones share the same writer and
/// read pool; the writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: WriterHandle,
    readers: Arc<Readers>,
    head: Arc<watch::Sender<u64>>,
    commits: Arc<AtomicU64>,
}

/// The sending side of the writer thread; dropping it stops the thread and
/// waits for it, so the file is closed when the last handle is gone.
struct WriterHandle {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // The thread is idle (no request can be in flight once every
            // handle is gone) or finishing a batch whose callers gave up,
            // so this wait is short.
            let _ = thread.join();
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the sqlite writer has stopped".into())
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("head", &*self.inner.head.borrow())
            .field("commits", &self.commits())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) the store at
    /// `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the store at `path`, applying pending migrations.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))?
    }

    fn open_blocking(path: PathBuf, options: SqliteOptions) -> Result<Self, StoreError> {
        let conn = schema::open_writer(&path, options.synchronous_full)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(|e| StoreError::Unavailable(format!("sqlite: {e}")))?;
        let head = Arc::new(watch::Sender::new(codec::from_sql("position", last)?));
        let readers = Arc::new(Readers::open(path.clone(), options.readers)?);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(conn, Arc::clone(&head), Arc::clone(&commits));
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch;
        let thread = thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            .spawn(move || writer.run(rx, max_batch))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: WriterHandle {
                    tx: Some(tx),
                    thread: Some(thread),
                },
                readers,
                head,
                commits,
            }),
        })
    }

    /// Transactions the writer has committed so far: with group commit,
    /// fewer than the requests it served.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Queues a command for the writer and waits for its result.
    async fn submit<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.inner.writer.tx.as_ref().ok_or_else(writer_gone)?;
        tx.send(command(reply)).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

fn to_json(field: &'static str, value: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::invalid(field, e.to_string()))
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(&events)?;
        let payloads = events
            .iter()
            .map(|e| to_json("data", &e.data))
            .collect::<Result<_, _>>()?;
        let request = AppendRequest {
            tenant: tenant.clone(),
            stream: stream.clone(),
            expected,
            events,
            payloads,
        };
        self.submit(|reply| Command::Append(request, reply)).await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (tenant, stream) = (tenant.clone(), stream.clone());
        self.inner
            .readers
            .run(move |rc| reader::read_stream(rc, &tenant, &stream, read))
            .await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let filter = filter.clone();
        self.inner
            .readers
            .run(move |rc| reader::read_all(rc, after, &filter, limit))
            .await
    }

    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription {
        EventSubscription::follow(Arc::new(self.clone()), after, filter)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<StreamInfo>, StoreError> {
        let (tenant, stream) = (tenant.clone(), stream.clone());
        self.inner
            .readers
            .run(move |rc| reader::stream_info(rc, &tenant, &stream))
            .await
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        let (tenant, after) = (tenant.clone(), after.cloned());
        self.inner
            .readers
            .run(move |rc| reader::list_streams(rc, &tenant, after.as_ref(), limit))
            .await
    }

    async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Command::Delete {
            tenant: tenant.clone(),
            stream: stream.clone(),
            expected,
            reply,
        })
        .await
    }

    async fn truncate_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Command::Truncate {
            tenant: tenant.clone(),
            stream: stream.clone(),
            before,
            reply,
        })
        .await
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let state = to_json("snapshot.state", &snapshot.state)?;
        self.submit(|reply| Command::SaveSnapshot {
            tenant: tenant.clone(),
            stream: stream.clone(),
            snapshot,
            state,
            reply,
        })
        .await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        let (tenant, stream) = (tenant.clone(), stream.clone());
        self.inner
            .readers
            .run(move |rc| reader::load_snapshot(rc, &tenant, &stream))
            .await
    }
}
