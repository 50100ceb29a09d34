//! Test support: a fresh database per test (a SQLite file in its own
//! temporary directory, or a fresh PostgreSQL schema), an example "transfer"
//! saga with a step that can fail and a compensation, a bank that carries
//! its commands out as told, and an event store that can fail or be raced.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use cairn_core::{
    DomainEvent, EventId, NewEvent, RecordedEvent, RequestContext, StreamId, TenantId,
};
use cairn_saga::{Decision, Dispatcher, Saga, SagaOptions};
use cairn_service_db::ServiceDb;
use cairn_store::{
    AllFilter, AppendOutcome, EventStore, EventSubscription, ExpectedVersion, MemoryStore,
    ReadStream, Snapshot, StoreError, StreamInfo, testkit::service_absent,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

/// Long enough never to run out on a healthy run; a wait that needs it failed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often the pollers of the tests look for due timeouts.
pub const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Databases

/// Which engine a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database that can be opened again (as a restarted process would),
/// removed when dropped (SQLite) or swept later (PostgreSQL).
#[derive(Debug)]
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub db: ServiceDb,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-saga-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("service.db").display());
        let db = ServiceDb::open(&url).await.expect("open sqlite db");
        Self {
            backend: Backend::Sqlite,
            url,
            db,
            _dir: Some(dir),
        }
    }

    /// A fresh schema, or `None` (skip) when PostgreSQL is absent and not
    /// required.
    pub async fn postgres() -> Option<Self> {
        sweep().await;
        let url = format!("{}?schema={}", pg_url(), fresh_schema());
        match tokio::time::timeout(Duration::from_secs(20), ServiceDb::open(&url)).await {
            Ok(Ok(db)) => Some(Self {
                backend: Backend::Postgres,
                url,
                db,
                _dir: None,
            }),
            Ok(Err(e)) => service_absent("PostgreSQL", e),
            Err(_) => service_absent("PostgreSQL", "connect timed out"),
        }
    }

    /// Another handle on the same database, as a new process would open it.
    pub async fn reopen(&self) -> ServiceDb {
        ServiceDb::open(&self.url).await.expect("reopen db")
    }

    /// Rows of the timeouts table, all sagas and tenants.
    pub async fn timeout_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM cairn_saga_timeouts")
            .fetch_one(self.db.pool())
            .await
            .expect("count timeouts")
    }
}

pub fn pg_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name no other test uses; old ones are swept by `sweep` (here
/// and in the other crates' tests, which share the prefix).
fn fresh_schema() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The tail of a UUIDv7 is random.
    let id = EventId::new().as_uuid().simple().to_string();
    format!("cairn_test_{secs}_{}", &id[20..])
}

/// Drops test schemas left behind more than an hour ago.
async fn sweep() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let connect = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_url());
            let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(5), connect).await
            else {
                return;
            };
            let cutoff = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().saturating_sub(3600))
                .unwrap_or(0);
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cairn\\_test\\_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            for name in names {
                let born = name
                    .split('_')
                    .nth(2)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                if born < cutoff {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            }
        })
        .await;
}

/// Expands each scenario `async fn name(db: TestDb)` into a test on SQLite
/// (`sqlite::name`) and one on PostgreSQL (`postgres::name`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::TestDb::postgres().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------
// The example saga: move money from one account to another. Debit the
// source, then credit the target; if the credit fails or its deadline
// passes, refund the source (the compensation).

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    New,
    Debiting,
    Crediting,
    Compensating,
    Completed,
    Failed,
    Compensated,
}

#[derive(Debug, Clone, Default)]
pub struct Transfer {
    pub status: Status,
    pub from: String,
    pub to: String,
    pub amount: u64,
    pub step_timeout: Duration,
    pub credit_timeout: Duration,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum TransferEvent {
    TransferStarted {
        from: String,
        to: String,
        amount: u64,
        debit_timeout_ms: u64,
        credit_timeout_ms: u64,
    },
    Debited,
    DebitRejected {
        reason: String,
    },
    DebitTimedOut,
    CreditRejected {
        reason: String,
    },
    CreditTimedOut,
    TransferCompleted,
    TransferCompensated,
    Noted {
        text: String,
    },
}

impl DomainEvent for TransferEvent {}

impl TransferEvent {
    pub fn name(&self) -> &'static str {
        match self {
            TransferEvent::TransferStarted { .. } => "TransferStarted",
            TransferEvent::Debited => "Debited",
            TransferEvent::DebitRejected { .. } => "DebitRejected",
            TransferEvent::DebitTimedOut => "DebitTimedOut",
            TransferEvent::CreditRejected { .. } => "CreditRejected",
            TransferEvent::CreditTimedOut => "CreditTimedOut",
            TransferEvent::TransferCompleted => "TransferCompleted",
            TransferEvent::TransferCompensated => "TransferCompensated",
            TransferEvent::Noted { .. } => "Noted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferInput {
    Start {
        from: String,
        to: String,
        amount: u64,
        debit_timeout: Duration,
        credit_timeout: Duration,
    },
    Debited,
    DebitFailed(String),
    Credited,
    CreditFailed(String),
    Refunded,
    RefundFailed(String),
    Timeout(String),
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferCommand {
    Debit { account: String, amount: u64 },
    Credit { account: String, amount: u64 },
    Refund { account: String, amount: u64 },
}

impl TransferCommand {
    pub fn kind(&self) -> Kind {
        match self {
            TransferCommand::Debit { .. } => Kind::Debit,
            TransferCommand::Credit { .. } => Kind::Credit,
            TransferCommand::Refund { .. } => Kind::Refund,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Transfer {
    fn refund(&self) -> TransferCommand {
        TransferCommand::Refund {
            account: self.from.clone(),
            amount: self.amount,
        }
    }

    /// Compensation: give the money back, with a deadline of its own.
    fn compensate(&self, event: TransferEvent) -> Decision<Self> {
        Decision::none()
            .record(event)
            .send(self.refund())
            .schedule("refund", self.credit_timeout)
    }
}

impl Saga for Transfer {
    const NAME: &'static str = "transfer";
    type Event = TransferEvent;
    type Input = TransferInput;
    type Command = TransferCommand;

    fn apply(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::TransferStarted {
                from,
                to,
                amount,
                debit_timeout_ms,
                credit_timeout_ms,
            } => {
                self.status = Status::Debiting;
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.amount = *amount;
                self.step_timeout = Duration::from_millis(*debit_timeout_ms);
                self.credit_timeout = Duration::from_millis(*credit_timeout_ms);
            }
            TransferEvent::Debited => self.status = Status::Crediting,
            TransferEvent::DebitRejected { .. } => self.status = Status::Failed,
            TransferEvent::DebitTimedOut
            | TransferEvent::CreditRejected { .. }
            | TransferEvent::CreditTimedOut => self.status = Status::Compensating,
            TransferEvent::TransferCompleted => self.status = Status::Completed,
            TransferEvent::TransferCompensated => self.status = Status::Compensated,
            TransferEvent::Noted { text } => self.notes.push(text.clone()),
        }
    }

    fn handle(&self, input: &TransferInput) -> Decision<Self> {
        use TransferInput as I;
        match (self.status, input) {
            (
                Status::New,
                I::Start {
                    from,
                    to,
                    amount,
                    debit_timeout,
                    credit_timeout,
                },
            ) => Decision::none()
                .record(TransferEvent::TransferStarted {
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                    debit_timeout_ms: millis(*debit_timeout),
                    credit_timeout_ms: millis(*credit_timeout),
                })
                .send(TransferCommand::Debit {
                    account: from.clone(),
                    amount: *amount,
                })
                .schedule("debit", *debit_timeout),
            (Status::Debiting, I::Debited) => Decision::none()
                .record(TransferEvent::Debited)
                .cancel("debit")
                .send(TransferCommand::Credit {
                    account: self.to.clone(),
                    amount: self.amount,
                })
                .schedule("credit", self.credit_timeout),
            (Status::Debiting, I::DebitFailed(reason)) => Decision::none()
                .record(TransferEvent::DebitRejected {
                    reason: reason.clone(),
                })
                .cancel("debit"),
            // The debit may or may not have happened: give it back to be sure.
            (Status::Debiting, I::Timeout(key)) if key == "debit" => {
                self.compensate(TransferEvent::DebitTimedOut)
            }
            (Status::Crediting, I::Credited) => Decision::none()
                .record(TransferEvent::TransferCompleted)
                .cancel("credit"),
            (Status::Crediting, I::CreditFailed(reason)) => self
                .compensate(TransferEvent::CreditRejected {
                    reason: reason.clone(),
                })
                .cancel("credit"),
            (Status::Crediting, I::Timeout(key)) if key == "credit" => {
                self.compensate(TransferEvent::CreditTimedOut)
            }
            (Status::Compensating, I::Refunded) => Decision::none()
                .record(TransferEvent::TransferCompensated)
                .cancel("refund"),
            // A refund is idempotent at the bank: ask again.
            (Status::Compensating, I::RefundFailed(_)) => Decision::none().send(self.refund()),
            (Status::Compensating, I::Timeout(key)) if key == "refund" => Decision::none()
                .send(self.refund())
                .schedule("refund", self.credit_timeout),
            (_, I::Note(text)) => {
                Decision::none().record(TransferEvent::Noted { text: text.clone() })
            }
            // Spurious timeouts, late outcomes, a second start: ignored.
            _ => Decision::none(),
        }
    }

    fn timeout(key: &str) -> TransferInput {
        TransferInput::Timeout(key.to_owned())
    }

    fn is_finished(&self) -> bool {
        matches!(
            self.status,
            Status::Completed | Status::Failed | Status::Compensated
        )
    }
}

pub fn start(debit_timeout: Duration, credit_timeout: Duration) -> TransferInput {
    TransferInput::Start {
        from: "alice".into(),
        to: "bob".into(),
        amount: 100,
        debit_timeout,
        credit_timeout,
    }
}

// ---------------------------------------------------------------------------
// The bank: carries the saga's commands out as told.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Debit,
    Credit,
    Refund,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Succeed,
    Reject,
    /// Never answers (the process will die waiting).
    Hang,
}

#[derive(Debug, Clone, Default)]
pub struct Bank(Arc<BankInner>);

#[derive(Debug, Default)]
pub struct BankInner {
    behaviors: Mutex<HashMap<Kind, Behavior>>,
    sent: Mutex<Vec<(String, TransferCommand, RequestContext)>>,
    count: watch::Sender<usize>,
}

impl Bank {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(self, kind: Kind, behavior: Behavior) -> Self {
        self.0.behaviors.lock().unwrap().insert(kind, behavior);
        self
    }

    /// The commands sent so far, in order.
    pub fn sent(&self) -> Vec<TransferCommand> {
        self.0
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c, _)| c.clone())
            .collect()
    }

    pub fn kinds(&self) -> Vec<Kind> {
        self.sent().iter().map(TransferCommand::kind).collect()
    }

    /// The saga ids and contexts the commands came with.
    pub fn calls(&self) -> Vec<(String, RequestContext)> {
        self.0
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _, ctx)| (id.clone(), ctx.clone()))
            .collect()
    }

    /// Waits until at least `n` commands were sent.
    pub async fn wait_sent(&self, n: usize) {
        let mut rx = self.0.count.subscribe();
        tokio::time::timeout(PATIENCE, rx.wait_for(|c| *c >= n))
            .await
            .expect("commands sent in time")
            .expect("bank alive");
    }
}

#[async_trait]
impl Dispatcher<Transfer> for Bank {
    async fn dispatch(
        &self,
        ctx: &RequestContext,
        saga_id: &str,
        command: TransferCommand,
    ) -> TransferInput {
        let kind = command.kind();
        let behavior = self
            .0
            .behaviors
            .lock()
            .unwrap()
            .get(&kind)
            .copied()
            .unwrap_or(Behavior::Succeed);
        self.0
            .sent
            .lock()
            .unwrap()
            .push((saga_id.to_owned(), command, ctx.clone()));
        self.0.count.send_modify(|c| *c += 1);
        match (kind, behavior) {
            (_, Behavior::Hang) => std::future::pending().await,
            (Kind::Debit, Behavior::Succeed) => TransferInput::Debited,
            (Kind::Debit, Behavior::Reject) => TransferInput::DebitFailed("no funds".into()),
            (Kind::Credit, Behavior::Succeed) => TransferInput::Credited,
            (Kind::Credit, Behavior::Reject) => {
                TransferInput::CreditFailed("account closed".into())
            }
            (Kind::Refund, Behavior::Succeed) => TransferInput::Refunded,
            (Kind::Refund, Behavior::Reject) => TransferInput::RefundFailed("bank busy".into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers

pub fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

pub fn ctx() -> RequestContext {
    RequestContext::new(tenant())
        .with_actor("ada")
        .with_causation_id("cmd-1")
}

/// Options for tests: quick retries so failures show up fast.
pub fn options() -> SagaOptions {
    SagaOptions::default().with_retry_backoff(Duration::from_millis(50), Duration::from_secs(1))
}

pub fn stream_of(id: &str) -> StreamId {
    StreamId::new(format!("transfer_saga-{id}")).unwrap()
}

/// The saga's recorded events.
pub async fn events_of(store: &dyn EventStore, id: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&tenant(), &stream_of(id), ReadStream::all())
        .await
        .unwrap()
}

pub async fn event_types(store: &dyn EventStore, id: &str) -> Vec<String> {
    events_of(store, id)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// Waits until `done()` holds, checking every few milliseconds.
pub async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// An event store that can fail, or be raced by another writer.

#[derive(Debug, Clone, Default)]
pub struct FlakyStore {
    pub inner: MemoryStore,
    /// This many appends fail as if the store were unreachable.
    pub fail_appends: Arc<AtomicU32>,
    /// This many stream reads fail as if the store were unreachable.
    pub fail_reads: Arc<AtomicU32>,
    /// Before each of this many appends, another writer appends a note to
    /// the same stream first.
    pub race: Arc<AtomicU32>,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
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
        if take(&self.fail_appends) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        if take(&self.race) {
            let other = NewEvent::new("Noted", json!({"text": "from another process"}));
            self.inner
                .append(tenant, stream, ExpectedVersion::Any, vec![other])
                .await?;
        }
        self.inner.append(tenant, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if take(&self.fail_reads) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
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
