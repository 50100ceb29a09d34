//! Test support: fresh service databases (a SQLite file, or a fresh
//! PostgreSQL schema), event helpers and a handler that records what it saw.

#![allow(dead_code, unreachable_pub)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use cairn_core::{EventId, NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_messaging::{EventHandler, HandlerError, IntegrationEvent};
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, ExpectedVersion, MemoryStore, testkit::service_absent};
use serde_json::json;
use sqlx::{Any, Transaction};

pub const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub db: ServiceDb,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-messaging-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("service.db").display());
        let db = ServiceDb::open(&url).await.expect("open sqlite");
        Self {
            url,
            db,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> Option<Self> {
        let base = std::env::var("CAIRN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let url = format!("{base}?schema=cairn_test_{secs}_{}", &id[..12]);
        match tokio::time::timeout(Duration::from_secs(20), ServiceDb::open(&url)).await {
            Ok(Ok(db)) => Some(Self {
                url,
                db,
                _dir: None,
            }),
            Ok(Err(e)) => service_absent("PostgreSQL", e),
            Err(_) => service_absent("PostgreSQL", "connect timed out"),
        }
    }

    pub async fn reopen(&self) -> ServiceDb {
        ServiceDb::open(&self.url).await.expect("reopen")
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

/// A stored-looking event of `stream` at `version` (position = `position`).
pub fn recorded(tenant: &str, stream: &str, version: u64, position: u64) -> RecordedEvent {
    RecordedEvent {
        id: EventId::new(),
        tenant: TenantId::new(tenant).unwrap(),
        stream: StreamId::new(stream).unwrap(),
        version,
        position,
        event_type: "Thing".into(),
        schema_version: 1,
        data: json!({ "n": version }),
        metadata: Default::default(),
        recorded_at: chrono::Utc::now(),
    }
}

/// An integration event of service `source` with a correct chain link.
pub fn event(tenant: &str, stream: &str, version: u64, prev: Option<u64>) -> IntegrationEvent {
    IntegrationEvent::from_recorded(
        "things",
        &recorded(tenant, stream, version, version + 1),
        prev,
    )
}

pub async fn append(store: &MemoryStore, tenant: &TenantId, stream: &str, types: &[&str]) {
    let events = types
        .iter()
        .map(|t| NewEvent::new(*t, json!({ "type": t })))
        .collect();
    store
        .append(
            tenant,
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
}

/// Creates the `seen` table handlers write to.
pub async fn seen_table(db: &ServiceDb) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS seen (
            seq BIGINT NOT NULL, tenant TEXT NOT NULL, stream TEXT NOT NULL,
            version BIGINT NOT NULL, event_id TEXT NOT NULL, consumer TEXT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
}

/// Every (stream, version) the handlers wrote, in the order they committed.
pub async fn seen(db: &ServiceDb) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT tenant, stream, version FROM seen ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

/// Writes a row per event into `seen` (in the handler's transaction);
/// optionally sleeps first, fails a number of times, or always rejects.
#[derive(Clone, Default)]
pub struct Recorder {
    pub label: &'static str,
    pub sleep_ms: u64,
    pub fail_first: Arc<AtomicU32>,
    pub broken: Arc<AtomicBool>,
    pub calls: Arc<AtomicU32>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.sleep_ms > 0 {
            let jitter = rand::random::<u64>() % (self.sleep_ms + 1);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM seen")
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?;
        sqlx::query(
            "INSERT INTO seen (seq, tenant, stream, version, event_id, consumer)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(seq)
        .bind(event.tenantid.as_str())
        .bind(event.subject.as_str())
        .bind(event.version().unwrap() as i64)
        .bind(event.id.to_string())
        .bind(self.label)
        .execute(&mut **tx)
        .await
        .map_err(|e| HandlerError::Retry(e.to_string()))?;
        // Fail after writing: the write must roll back with the inbox entry.
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::Retry("the handler is broken".into()));
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(HandlerError::Retry("a passing failure".into()));
        }
        Ok(())
    }
}
