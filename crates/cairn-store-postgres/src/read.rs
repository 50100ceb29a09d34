//! Reads. Each is one statement (one snapshot), so what a read returns is
//! consistent; the gap-safety of `$all` comes from how positions are
//! written (see the crate docs), not from anything the reader does.
//!
//! Reads of one tenant run on the tenant pool with the tenant set first, so
//! row-level security hides every other tenant's rows even if a query forgot
//! its filter. The reads of a command (a stream's events, its row, its
//! snapshot) are one round trip each: one call of a SQL function
//! (`migrations/0004_one_round_trip_reads.sql`) that sets the tenant for its
//! own statement's transaction and reads, so there is no `BEGIN`, no
//! `ROLLBACK` and no separate stream-row query. The listing of streams runs
//! in a transaction that sets the tenant first ([`scoped`]). `$all` is
//! system access, on the system pool.

use cairn_core::{EventId, Metadata, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AllFilter, Direction, ReadStream, Snapshot, StoreError, StreamInfo, TenantScope, row_security,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::TryStreamExt;

use sqlx::{
    PgConnection, PgPool, Postgres, Row, Transaction, pool::PoolConnection, postgres::PgRow,
};
use uuid::Uuid;

use crate::unavailable;

pub(crate) const EVENT_COLUMNS: &str = "position, tenant_id, stream_id, version, event_id, event_type, \
     schema_version, data, correlation_id, causation_id, traceparent, actor, recorded_at";

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn decode_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let get = |e: sqlx::Error| corrupt("event row", e);
    let tenant: &str = row.try_get(1).map_err(get)?;
    let stream: &str = row.try_get(2).map_err(get)?;
    let id: Uuid = row.try_get(4).map_err(get)?;
    let position: i64 = row.try_get(0).map_err(get)?;
    let version: i64 = row.try_get(3).map_err(get)?;
    let schema_version: i32 = row.try_get(6).map_err(get)?;
    Ok(RecordedEvent {
        id: EventId::from_uuid(id),
        tenant: TenantId::new(tenant).map_err(|e| corrupt("tenant id", e))?,
        stream: StreamId::new(stream).map_err(|e| corrupt("stream id", e))?,
        version: version as u64,
        position: position as u64,
        event_type: row.try_get(5).map_err(get)?,
        schema_version: schema_version as u32,
        data: row.try_get::<Value, _>(7).map_err(get)?,
        metadata: Metadata {
            correlation_id: row.try_get(8).map_err(get)?,
            causation_id: row.try_get(9).map_err(get)?,
            traceparent: row.try_get(10).map_err(get)?,
            actor: row.try_get(11).map_err(get)?,
        },
        recorded_at: row.try_get::<DateTime<Utc>, _>(12).map_err(get)?,
    })
}

fn decode_info(row: &PgRow) -> Result<StreamInfo, StoreError> {
    let get = |e: sqlx::Error| corrupt("stream row", e);
    let stream: &str = row.try_get(0).map_err(get)?;
    let version: i64 = row.try_get(1).map_err(get)?;
    let truncate: Option<i64> = row.try_get(3).map_err(get)?;
    Ok(StreamInfo {
        stream: StreamId::new(stream).map_err(|e| corrupt("stream id", e))?,
        version: version as u64,
        deleted: row.try_get(2).map_err(get)?,
        truncate_before: truncate.map(|t| t as u64),
    })
}

/// Begins a transaction on the tenant pool that sees only `tenant`'s rows:
/// `BEGIN` and the transaction's tenant in one round trip.
pub(crate) async fn scoped(
    tenant_pool: &PgPool,
    tenant: &TenantId,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    let begin = row_security::begin_scoped(tenant);
    reading(tenant_pool, || tenant_pool.begin_with(begin.clone())).await
}

/// Ends a read-only tenant transaction by dropping it: sqlx queues its
/// `ROLLBACK` and sends it with the check it makes on every connection
/// going back to the pool, in the background, so the reader does not wait a
/// round trip for `COMMIT`. The connection is reused only after both.
fn finish<T>(tx: Transaction<'static, Postgres>, value: T) -> T {
    drop(tx);
    value
}

/// Whether `error` says the connection is gone (the network dropped it, or
/// the server ended the session: SQLSTATE class 57P, such as an
/// administrator's `pg_terminate_backend` or a shutdown) rather than
/// anything about the statement.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| code.starts_with("57P")),
        _ => false,
    }
}

/// Runs a read of the tenant pool, again on another connection while the
/// one it was given turns out to be dead, up to once per pooled connection
/// and one more. The tenant pool does not ping a connection before handing
/// it out (that would be a round trip more than the read itself); reads
/// change nothing, so running one again is safe, and sqlx drops a
/// connection that failed this way.
async fn reading<T, F>(tenant_pool: &PgPool, read: impl Fn() -> F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = tenant_pool.size() + 1;
    loop {
        match read().await {
            Err(error) if connection_lost(&error) && tries > 1 => {
                tracing::debug!(%error, "a pooled tenant connection was gone; reading again");
                tries -= 1;
            }
            result => return result.map_err(unavailable),
        }
    }
}

/// The tenant pool's connections for the one-statement reads, kept out of
/// the pool from one read to the next: sqlx pings a connection as it goes
/// back to its pool, a round trip (and a wakeup of the server process) as
/// costly as the read itself. A read takes a free kept connection, or, when
/// all are busy, one from the pool as usual. Half the pool is kept (at least
/// one); the rest serves the tenant transactions ([`scoped`]).
pub(crate) struct TenantReads {
    pool: PgPool,
    kept: Box<[tokio::sync::Mutex<Option<PoolConnection<Postgres>>>]>,
    next: AtomicUsize,
}

/// A connection for one read: kept, or from the pool.
enum Lease<'a> {
    Kept(tokio::sync::MutexGuard<'a, Option<PoolConnection<Postgres>>>),
    Pooled(PoolConnection<Postgres>),
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Lease::Kept(slot) => match slot.as_deref_mut() {
                Some(conn) => conn,
                None => unreachable!("a kept lease is filled before it is handed out"),
            },
            Lease::Pooled(conn) => conn,
        }
    }

    /// Closes the connection instead of keeping it (it is dead).
    fn discard(self) {
        match self {
            Lease::Kept(mut slot) => {
                if let Some(mut conn) = slot.take() {
                    conn.close_on_drop();
                }
            }
            Lease::Pooled(mut conn) => conn.close_on_drop(),
        }
    }
}

impl TenantReads {
    pub(crate) fn new(pool: PgPool, max_connections: u32) -> Self {
        let kept = (max_connections / 2).max(1) as usize;
        Self {
            pool,
            kept: (0..kept).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The tenant pool, for tenant transactions.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn lease(&self) -> Result<Lease<'_>, sqlx::Error> {
        let n = self.kept.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(mut slot) = self.kept[(start + i) % n].try_lock() {
                if slot.is_none() {
                    *slot = Some(self.pool.acquire().await?);
                }
                return Ok(Lease::Kept(slot));
            }
        }
        Ok(Lease::Pooled(self.pool.acquire().await?))
    }

    /// How many reads to try before a lost connection is the answer: one
    /// per connection that may be dead, and one more.
    fn tries(&self) -> u32 {
        self.kept.len() as u32 + self.pool.size() + 1
    }
}

/// Runs the read `$read` (a future using `$conn: &mut PgConnection`) on a
/// connection of `$reads`, again on another while the one it got turns out
/// to be dead (reads change nothing, so running one again is safe).
macro_rules! on_reader {
    ($reads:expr, |$conn:ident| $read:expr) => {{
        let reads: &TenantReads = $reads;
        let mut tries = reads.tries();
        loop {
            let mut lease = reads.lease().await.map_err(unavailable)?;
            let result = {
                let $conn: &mut PgConnection = lease.conn();
                $read.await
            };
            match result {
                Err(error) if connection_lost(&error) && tries > 1 => {
                    tracing::debug!(%error, "a tenant connection was gone; reading again");
                    lease.discard();
                    tries -= 1;
                }
                result => break result.map_err(unavailable),
            }
        }
    }};
}

pub(crate) async fn stream_info(
    reads: &TenantReads,
    tenant: &TenantId,
    stream: &StreamId,
) -> Result<Option<StreamInfo>, StoreError> {
    let row = on_reader!(reads, |conn| {
        sqlx::query("SELECT * FROM cairn_stream_info($1, $2)")
            .bind(tenant.as_str())
            .bind(stream.as_str())
            .fetch_optional(conn)
    })?;
    row.as_ref().map(decode_info).transpose()
}

pub(crate) async fn list_streams(
    tenant_pool: &PgPool,
    tenant: &TenantId,
    after: Option<&StreamId>,
    limit: usize,
) -> Result<Vec<StreamInfo>, StoreError> {
    let mut tx = scoped(tenant_pool, tenant).await?;
    let rows = sqlx::query(
        "SELECT stream_id, version, deleted, truncate_before FROM streams
         WHERE tenant_id = $1 AND ($2::text IS NULL OR stream_id > $2)
         ORDER BY stream_id LIMIT $3",
    )
    .bind(tenant.as_str())
    .bind(after.map(StreamId::as_str))
    .bind(clamp(limit as u64))
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    finish(tx, rows.iter().map(decode_info).collect())
}

pub(crate) async fn read_stream(
    reads: &TenantReads,
    tenant: &TenantId,
    stream: &StreamId,
    read: ReadStream,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = on_reader!(reads, |conn| {
        sqlx::query("SELECT * FROM cairn_read_stream($1, $2, $3, $4, $5)")
            .bind(tenant.as_str())
            .bind(stream.as_str())
            .bind(read.from.map(clamp))
            .bind(clamp(read.limit as u64))
            .bind(read.direction == Direction::Backward)
            .fetch_all(conn)
    })?;
    // A deleted stream is one row, flagged, with no event.
    let deleted = |row: &PgRow| row.try_get::<Option<bool>, _>(13).ok().flatten() == Some(true);
    if rows.first().is_some_and(deleted) {
        return Err(StoreError::StreamDeleted {
            stream: stream.clone(),
        });
    }
    rows.iter().map(decode_event).collect()
}

pub(crate) async fn read_all(
    pool: &PgPool,
    after: u64,
    filter: &AllFilter,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Only the conditions in use appear, so each shape gets its own cached
    // prepared statement and a plan that fits it.
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position > $1");
    let mut n = 1;
    let mut condition = |sql: &mut String, column: &str| {
        n += 1;
        sql.push_str(&format!(" AND {column} = ANY(${n})"));
    };
    let tenants: Option<Vec<&str>> = match &filter.tenants {
        TenantScope::AllTenants => None,
        TenantScope::Tenants(ts) => Some(ts.iter().map(TenantId::as_str).collect()),
    };
    if tenants.is_some() {
        condition(&mut sql, "tenant_id");
    }
    if !filter.categories.is_empty() {
        condition(&mut sql, "category");
    }
    if !filter.event_types.is_empty() {
        condition(&mut sql, "event_type");
    }
    sql.push_str(&format!(" ORDER BY position LIMIT ${}", n + 1));
    let mut query = sqlx::query(&sql).bind(clamp(after));
    if let Some(tenants) = tenants {
        query = query.bind(tenants);
    }
    if !filter.categories.is_empty() {
        query = query.bind(&filter.categories);
    }
    if !filter.event_types.is_empty() {
        query = query.bind(&filter.event_types);
    }
    // Decoded as the rows arrive, so the server sends the rest of the page
    // while the first rows are decoded (a page is about 400 KB).
    let mut rows = query.bind(clamp(limit as u64)).fetch(pool);
    let mut events = Vec::with_capacity(limit.min(4096));
    while let Some(row) = rows.try_next().await.map_err(unavailable)? {
        events.push(decode_event(&row)?);
    }
    Ok(events)
}

pub(crate) async fn load_snapshot(
    reads: &TenantReads,
    tenant: &TenantId,
    stream: &StreamId,
) -> Result<Option<Snapshot>, StoreError> {
    let row = on_reader!(reads, |conn| {
        sqlx::query("SELECT * FROM cairn_load_snapshot($1, $2)")
            .bind(tenant.as_str())
            .bind(stream.as_str())
            .fetch_optional(conn)
    })?;
    let Some(row) = row else { return Ok(None) };
    let get = |e: sqlx::Error| corrupt("snapshot row", e);
    let version: i64 = row.try_get(0).map_err(get)?;
    let schema_version: i32 = row.try_get(1).map_err(get)?;
    Ok(Some(Snapshot {
        version: version as u64,
        schema_version: schema_version as u32,
        state: row.try_get(2).map_err(get)?,
    }))
}
