//! Test support: a fresh read database per test (a SQLite file in its own
//! temporary directory, or a fresh PostgreSQL schema), an example projection
//! that counts events per stream, and an event store whose reads can be made
//! to fail.

#![allow(dead_code, unreachable_pub)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use cairn_core::{NewEvent, RecordedEvent};
use cairn_projection::{
    Projection, ProjectionError, ProjectionOptions, ProjectionState, ProjectionStatus, Projections,
};
use cairn_service_db::ServiceDb;
#[allow(unused_imports)]
pub use cairn_store::testkit::FlakyStore;
use cairn_store::{
    AllFilter, EventStore, ExpectedVersion, MemoryStore,
    testkit::{service_absent, stream, tenant},
};
use serde_json::{Value, json};
use sqlx::Any;
use tokio::sync::watch;

/// Long enough never to fire on a healthy run; a wait that needs it failed.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Read databases

/// Which engine a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh read database that can be opened again (as a restarted process
/// would), removed when dropped (SQLite) or swept later (PostgreSQL).
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
            .prefix("cairn-projection-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("read.db").display());
        let db = ServiceDb::open(&url).await.expect("open sqlite read db");
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
        ServiceDb::open(&self.url).await.expect("reopen read db")
    }
}

pub fn pg_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name no other test uses; old ones are swept by `sweep` (here
/// and in the store's tests, which share the prefix).
fn fresh_schema() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("cairn_test_{secs}_{}", &id[..12])
}

/// Drops test schemas left behind more than an hour ago.
async fn sweep() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            // One connection attempt (a pool would retry for its whole
            // acquire timeout when PostgreSQL is absent).
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
// The example projection

/// Counts events per (tenant, stream) into `counts_<name>`. An event whose
/// payload has `"poison": true` is refused and one with `"panic": true`
/// panics, until [`Counter::fix`] is called.
pub struct Counter {
    pub name: &'static str,
    pub table: String,
    pub version: u32,
    pub filter: AllFilter,
    pub fixed: AtomicBool,
    /// How many times `apply` was called (including rolled-back calls).
    pub applied: AtomicU64,
    /// When set, each apply sleeps this long (to catch a stop mid-batch).
    pub slow: Option<Duration>,
    /// Signalled when apply is first called.
    pub started: watch::Sender<bool>,
    /// This many applies fail as if the database were unreachable.
    pub outages: AtomicU64,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter").field("name", &self.name).finish()
    }
}

impl Counter {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            table: format!("counts_{name}"),
            version: 1,
            filter: AllFilter::all_tenants(),
            fixed: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            slow: None,
            started: watch::Sender::new(false),
            outages: AtomicU64::new(0),
        }
    }

    pub fn with_filter(mut self, filter: AllFilter) -> Self {
        self.filter = filter;
        self
    }

    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    pub fn slow(mut self, per_event: Duration) -> Self {
        self.slow = Some(per_event);
        self
    }

    pub fn fix(&self) {
        self.fixed.store(true, Ordering::SeqCst);
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// (tenant, stream, events) rows, ordered.
    pub async fn rows(&self, db: &ServiceDb) -> Vec<(String, String, i64)> {
        sqlx::query_as(&format!(
            "SELECT tenant_id, stream, events FROM {} ORDER BY tenant_id, stream",
            self.table
        ))
        .fetch_all(db.pool())
        .await
        .expect("read counts")
    }

    /// The sum of all counts.
    pub async fn total(&self, db: &ServiceDb) -> i64 {
        self.rows(db).await.iter().map(|r| r.2).sum()
    }
}

#[async_trait]
impl Projection for Counter {
    fn name(&self) -> &'static str {
        self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn filter(&self) -> AllFilter {
        self.filter.clone()
    }

    fn schema(&self) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    tenant_id TEXT NOT NULL,
                    stream TEXT NOT NULL,
                    events BIGINT NOT NULL,
                    last_position BIGINT NOT NULL,
                    PRIMARY KEY (tenant_id, stream)
                )",
                self.table
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {0}_by_position ON {0} (last_position)",
                self.table
            ),
        ]
    }

    fn reset(&self) -> Vec<String> {
        vec![format!("DROP TABLE IF EXISTS {}", self.table)]
    }

    async fn apply(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        self.started.send_replace(true);
        if let Some(delay) = self.slow {
            tokio::time::sleep(delay).await;
        }
        if self
            .outages
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        let fixed = self.fixed.load(Ordering::SeqCst);
        if !fixed && event.data.get("poison") == Some(&Value::Bool(true)) {
            return Err(ProjectionError::poison(format!(
                "cannot count {}",
                event.event_type
            )));
        }
        if !fixed && event.data.get("panic") == Some(&Value::Bool(true)) {
            panic!("counter exploded on {}", event.id);
        }
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, stream, events, last_position) VALUES ($1, $2, 1, $3)
             ON CONFLICT (tenant_id, stream) DO UPDATE
             SET events = {0}.events + 1, last_position = excluded.last_position",
            self.table
        ))
        .bind(event.tenant.as_str())
        .bind(event.stream.as_str())
        .bind(i64::try_from(event.position).expect("position fits"))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Event source

pub fn memory_store() -> Arc<dyn EventStore> {
    Arc::new(MemoryStore::new())
}

/// Appends one event of type `t` with payload `data`; returns its position.
pub async fn append(
    store: &dyn EventStore,
    tenant_name: &str,
    stream_name: &str,
    t: &str,
    data: Value,
) -> u64 {
    store
        .append(
            &tenant(tenant_name),
            &stream(stream_name),
            ExpectedVersion::Any,
            vec![NewEvent::new(t, data)],
        )
        .await
        .expect("append")
        .last_position
}

/// Appends `n` plain events to `stream_name`; returns the last position.
pub async fn append_n(store: &dyn EventStore, tenant_name: &str, stream_name: &str, n: u64) -> u64 {
    let events = (0..n)
        .map(|i| NewEvent::new("Counted", json!({ "n": i })))
        .collect();
    store
        .append(
            &tenant(tenant_name),
            &stream(stream_name),
            ExpectedVersion::Any,
            events,
        )
        .await
        .expect("append")
        .last_position
}

pub fn options() -> ProjectionOptions {
    ProjectionOptions {
        poll_interval: Duration::from_millis(100),
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(200),
        ..ProjectionOptions::default()
    }
}

pub async fn start<'a>(
    db: &ServiceDb,
    store: &Arc<dyn EventStore>,
    projections: impl IntoIterator<Item = &'a Arc<Counter>>,
) -> Projections {
    Projections::start(
        db.clone(),
        store.clone(),
        projections
            .into_iter()
            .map(|p| p.clone() as Arc<dyn Projection>),
        options(),
    )
    .await
    .expect("start projections")
}

/// Polls the status until `pred` holds (tests only: the product waits on a
/// watch).
pub async fn status_until(
    projections: &Projections,
    name: &str,
    pred: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = projections.status_of(name).await.expect("status");
        if pred(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status of {name} never matched; last: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn until_failed(projections: &Projections, name: &str) -> ProjectionStatus {
    status_until(projections, name, |s| s.state == ProjectionState::Failed).await
}

/// The stored checkpoint row: (position, failed_position).
pub async fn stored_checkpoint(db: &ServiceDb, name: &str) -> (i64, Option<i64>) {
    sqlx::query_as(
        "SELECT position, failed_position FROM cairn_projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_one(db.pool())
    .await
    .expect("checkpoint row")
}
