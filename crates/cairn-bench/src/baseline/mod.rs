//! The ceilings the store benchmark compares Cairn against: plain SQL on the
//! same database, writing and reading rows of exactly the shape of Cairn's
//! `events` table (same columns, types and indexes) in a separate table,
//! `bench_baseline_events`, with none of the store's work around them (no
//! expected-version check, no idempotency lookup, no position lock).
//!
//! - `raw_insert_1_per_tx`: one single-row INSERT per transaction
//!   (autocommit) on one connection: the "raw SQL insert loop".
//! - `raw_insert_100_per_tx`: one 100-row INSERT per transaction.
//! - `raw_select_scan`: one `SELECT ... ORDER BY position` over the table,
//!   every row decoded into owned Rust values, JSON payload parsed.
//! - `raw_select_stream`: one `SELECT ... WHERE tenant_id = ? AND
//!   stream_id = ? ORDER BY version` per read (autocommit), decoded the
//!   same way.
//! - `raw_select_stream_rls` (PostgreSQL): the same selects under the
//!   store's row-level-security policy, as its bound role with the tenant
//!   set for the session: the policy's own cost.
//! - `raw_command_1_conn`: a command by hand: that select, then one
//!   INSERT of the next event at the version read (autocommit; the unique
//!   (stream, version) index checks it), on one connection.
//!
//! Rows are built from the same [`order_event`] as Cairn's appends, so the
//! cost of making the data is the same on both sides.

mod postgres;
mod sqlite;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use cairn_core::{NewEvent, TenantId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub(crate) use self::{
    postgres::{PgBaseline, drop_pg_schemas},
    sqlite::SqliteBaseline,
};
use crate::workload::order_event;

/// The baseline table's name on every backend.
pub(crate) const TABLE: &str = "bench_baseline_events";

/// Rows per transaction in `raw_insert_100_per_tx` and in top-ups.
pub(crate) const BATCH_ROWS: usize = 100;

/// The baseline table's columns, in insert and select order (the same as
/// the store's `events` table).
pub(crate) const COLUMNS: &str = "position, tenant_id, stream_id, category, version, event_id, \
                                  event_type, schema_version, data, correlation_id, causation_id, \
                                  traceparent, actor, recorded_at";
pub(crate) const COLUMN_COUNT: usize = 14;

/// `INSERT ... VALUES (p1..p14), (p15..p28), ...` for `rows` rows, each
/// parameter written by `placeholder` (`$n` on PostgreSQL, `?n` on SQLite).
pub(crate) fn insert_sql(rows: usize, placeholder: fn(usize) -> String) -> String {
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=COLUMN_COUNT)
                .map(|c| placeholder(r * COLUMN_COUNT + c))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {TABLE} ({COLUMNS}) VALUES {}",
        tuples.join(", ")
    )
}

/// One row of the events table shape, owned: what an insert binds and what
/// the scan decodes into.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) position: i64,
    pub(crate) tenant_id: String,
    pub(crate) stream_id: String,
    pub(crate) category: String,
    pub(crate) version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) data: Value,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) actor: Option<String>,
    pub(crate) recorded_at: DateTime<Utc>,
}

impl Row {
    fn from_event(
        position: i64,
        tenant: &TenantId,
        stream: &str,
        version: i64,
        e: NewEvent,
    ) -> Self {
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        Self {
            position,
            tenant_id: tenant.as_str().to_owned(),
            stream_id: stream.to_owned(),
            category: category.to_owned(),
            version,
            event_id: e.id.as_uuid(),
            event_type: e.event_type,
            schema_version: i32::try_from(e.schema_version).unwrap_or(i32::MAX),
            data: e.data,
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            traceparent: e.metadata.traceparent,
            actor: e.metadata.actor,
            recorded_at: Utc::now(),
        }
    }
}

/// Makes baseline rows: positions continue across calls (as a log's would)
/// and each stream's versions count from 0.
#[derive(Debug)]
pub(crate) struct RowSource {
    tenant: TenantId,
    next_position: i64,
    versions: HashMap<String, i64>,
}

impl RowSource {
    pub(crate) fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            next_position: 1,
            versions: HashMap::new(),
        }
    }

    /// The next row of `stream`.
    pub(crate) fn row(&mut self, stream: &str) -> Row {
        let position = self.next_position;
        self.next_position += 1;
        let version = match self.versions.get_mut(stream) {
            Some(v) => {
                *v += 1;
                *v
            }
            None => {
                self.versions.insert(stream.to_owned(), 0);
                0
            }
        };
        let seq = u64::try_from(position).unwrap_or(0);
        Row::from_event(position, &self.tenant, stream, version, order_event(seq))
    }

    /// The tenant every row belongs to.
    pub(crate) fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Rows made so far.
    pub(crate) fn made(&self) -> u64 {
        u64::try_from(self.next_position - 1).unwrap_or(0)
    }
}

/// The outcome of one timed baseline run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timed {
    pub(crate) rows: u64,
    pub(crate) elapsed: Duration,
}

impl Timed {
    pub(crate) fn since(start: Instant, rows: u64) -> Self {
        Self {
            rows,
            elapsed: start.elapsed(),
        }
    }
}

/// The baseline for one backend.
#[derive(Debug)]
pub(crate) enum Baseline {
    Sqlite(SqliteBaseline),
    Postgres(PgBaseline),
}

impl Baseline {
    /// `rows` single-row INSERTs into `stream`, each its own transaction.
    pub(crate) async fn insert_1_per_tx(
        &mut self,
        stream: &str,
        rows: u64,
    ) -> anyhow::Result<Timed> {
        match self {
            Self::Sqlite(b) => b.insert_1_per_tx(stream, rows).await,
            Self::Postgres(b) => b.insert_1_per_tx(stream, rows).await,
        }
    }

    /// `batches` 100-row INSERTs, each its own transaction; `stream` names
    /// the stream they go to.
    pub(crate) async fn insert_100_per_tx(
        &mut self,
        stream: &str,
        batches: u64,
    ) -> anyhow::Result<Timed> {
        match self {
            Self::Sqlite(b) => b.insert_100_per_tx(stream, batches).await,
            Self::Postgres(b) => b.insert_100_per_tx(stream, batches).await,
        }
    }

    /// Rows in the table so far.
    pub(crate) fn rows(&self) -> u64 {
        match self {
            Self::Sqlite(b) => b.rows(),
            Self::Postgres(b) => b.rows(),
        }
    }

    /// Adds rows (untimed) until the table holds `target`, so the scan
    /// reads exactly as many rows as Cairn's catch-up.
    pub(crate) async fn top_up(&mut self, target: u64) -> anyhow::Result<()> {
        let missing = target.saturating_sub(self.rows());
        let batches = missing / BATCH_ROWS as u64;
        if batches > 0 {
            self.insert_100_per_tx("order-fill", batches).await?;
        }
        let rest = missing % BATCH_ROWS as u64;
        if rest > 0 {
            self.insert_1_per_tx("order-fill", rest).await?;
        }
        Ok(())
    }

    /// Reads every row in position order, decoding each fully.
    pub(crate) async fn select_scan(&mut self) -> anyhow::Result<Timed> {
        match self {
            Self::Sqlite(b) => b.select_scan().await,
            Self::Postgres(b) => b.select_scan().await,
        }
    }

    /// [`select_streams`](Self::select_streams) under the store's
    /// row-level-security policy, on PostgreSQL (SQLite has none: `None`).
    pub(crate) async fn select_streams_rls(
        &mut self,
        streams: &[String],
        reads: u64,
    ) -> anyhow::Result<Option<Timed>> {
        match self {
            Self::Sqlite(_) => Ok(None),
            Self::Postgres(b) => b.select_streams_rls(streams, reads).await.map(Some),
        }
    }

    /// `commands` commands done in plain SQL on one connection, in turn on
    /// `streams` streams named `<prefix>N`: select the stream, insert the
    /// next event at the version read.
    pub(crate) async fn command_loop(
        &mut self,
        prefix: &str,
        streams: u64,
        commands: u64,
    ) -> anyhow::Result<Timed> {
        match self {
            Self::Sqlite(b) => b.command_loop(prefix, streams, commands).await,
            Self::Postgres(b) => b.command_loop(prefix, streams, commands).await,
        }
    }

    /// `reads` selects of one whole stream each, cycling through
    /// `streams`, every row decoded; `rows` of the result counts reads.
    pub(crate) async fn select_streams(
        &mut self,
        streams: &[String],
        reads: u64,
    ) -> anyhow::Result<Timed> {
        match self {
            Self::Sqlite(b) => b.select_streams(streams, reads).await,
            Self::Postgres(b) => b.select_streams(streams, reads).await,
        }
    }
}
