//! The SQLite baseline: rusqlite on one connection to the store's own file,
//! with the store's pragmas (WAL, `synchronous=FULL`), writing a table shaped
//! like the store's `events` table. rusqlite is blocking, so every run goes
//! to the blocking thread pool with the connection moved in and back out.

use std::{hint::black_box, path::Path, time::Instant};

use anyhow::{Context, anyhow};
use cairn_core::TenantId;
use chrono::DateTime;
use rusqlite::{Connection, Statement};
use uuid::Uuid;

use super::{BATCH_ROWS, COLUMN_COUNT, COLUMNS, Row, RowSource, TABLE, Timed, insert_sql};

/// A copy of the store's own `events` table and its indexes, taken from
/// `sqlite_master` of the file the store just migrated, so the two can
/// never drift apart and index upkeep costs the same on both sides.
fn create_table_sql(conn: &Connection) -> anyhow::Result<String> {
    let mut statement = conn.prepare(
        "SELECT type, name, sql FROM sqlite_master
         WHERE tbl_name = 'events' AND sql IS NOT NULL ORDER BY type DESC",
    )?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut script = String::new();
    for row in rows {
        let (kind, name, sql) = row?;
        let (from, to) = match kind.as_str() {
            "table" => (
                "CREATE TABLE events".to_owned(),
                format!("CREATE TABLE {TABLE}"),
            ),
            _ => (
                format!("CREATE INDEX {name} ON events"),
                format!("CREATE INDEX {TABLE}_{name} ON {TABLE}"),
            ),
        };
        if !sql.starts_with(&from) {
            return Err(anyhow!("unexpected DDL for {name} in the store: {sql}"));
        }
        script.push_str(&sql.replacen(&from, &to, 1));
        script.push_str(";\n");
    }
    if !script.contains("CREATE TABLE") {
        return Err(anyhow!("the store has no events table to copy"));
    }
    Ok(script)
}

/// Binds `row` as the `slot`-th tuple of a prepared insert.
fn bind_row(stmt: &mut Statement<'_>, slot: usize, row: &Row) -> anyhow::Result<()> {
    let at = slot * COLUMN_COUNT;
    // The store keeps JSON as text, so serialising it is part of the row's cost.
    let data = serde_json::to_string(&row.data)?;
    stmt.raw_bind_parameter(at + 1, row.position)?;
    stmt.raw_bind_parameter(at + 2, &row.tenant_id)?;
    stmt.raw_bind_parameter(at + 3, &row.stream_id)?;
    stmt.raw_bind_parameter(at + 4, &row.category)?;
    stmt.raw_bind_parameter(at + 5, row.version)?;
    stmt.raw_bind_parameter(at + 6, &row.event_id.as_bytes()[..])?;
    stmt.raw_bind_parameter(at + 7, &row.event_type)?;
    stmt.raw_bind_parameter(at + 8, row.schema_version)?;
    stmt.raw_bind_parameter(at + 9, data)?;
    stmt.raw_bind_parameter(at + 10, &row.correlation_id)?;
    stmt.raw_bind_parameter(at + 11, &row.causation_id)?;
    stmt.raw_bind_parameter(at + 12, &row.traceparent)?;
    stmt.raw_bind_parameter(at + 13, &row.actor)?;
    stmt.raw_bind_parameter(at + 14, row.recorded_at.timestamp_micros())?;
    Ok(())
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    source: RowSource,
}

#[derive(Debug)]
pub(crate) struct SqliteBaseline {
    /// `None` only while a run holds it on the blocking pool (or after that
    /// run panicked).
    inner: Option<Inner>,
    rows: u64,
}

impl SqliteBaseline {
    /// Opens `path` (the store's file, already created by the store) with
    /// the store's pragmas and creates the baseline table.
    pub(crate) async fn create(path: &Path, tenant: TenantId) -> anyhow::Result<Self> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> anyhow::Result<Connection> {
            let conn = Connection::open(&path)
                .with_context(|| format!("opening {} for the baseline", path.display()))?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(anyhow!(
                    "cannot switch {} to WAL (got {mode})",
                    path.display()
                ));
            }
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "busy_timeout", 5_000)?;
            conn.execute_batch(&create_table_sql(&conn)?)
                .context("creating the baseline table")?;
            Ok(conn)
        })
        .await
        .context("baseline setup task failed")??;
        Ok(Self {
            inner: Some(Inner {
                conn,
                source: RowSource::new(tenant),
            }),
            rows: 0,
        })
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Runs `f` on the blocking pool with the connection, then takes the
    /// connection back.
    async fn blocking(
        &mut self,
        f: impl FnOnce(&mut Inner) -> anyhow::Result<Timed> + Send + 'static,
    ) -> anyhow::Result<Timed> {
        let mut inner = self
            .inner
            .take()
            .context("the baseline connection was lost in an earlier failure")?;
        let (inner, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut inner);
            (inner, result)
        })
        .await
        .context("baseline task failed")?;
        self.rows = inner.source.made();
        self.inner = Some(inner);
        result
    }

    pub(crate) async fn insert_1_per_tx(
        &mut self,
        stream: &str,
        rows: u64,
    ) -> anyhow::Result<Timed> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let sql = insert_sql(1, |n| format!("?{n}"));
            let mut stmt = inner.conn.prepare(&sql)?;
            let start = Instant::now();
            for _ in 0..rows {
                let row = inner.source.row(&stream);
                bind_row(&mut stmt, 0, &row)?;
                // Autocommit: each INSERT is its own transaction.
                stmt.raw_execute().context("baseline single-row insert")?;
            }
            Ok(Timed::since(start, rows))
        })
        .await
    }

    pub(crate) async fn insert_100_per_tx(
        &mut self,
        stream: &str,
        batches: u64,
    ) -> anyhow::Result<Timed> {
        let stream = stream.to_owned();
        self.blocking(move |inner| {
            let sql = insert_sql(BATCH_ROWS, |n| format!("?{n}"));
            let mut stmt = inner.conn.prepare(&sql)?;
            let start = Instant::now();
            for _ in 0..batches {
                for slot in 0..BATCH_ROWS {
                    let row = inner.source.row(&stream);
                    bind_row(&mut stmt, slot, &row)?;
                }
                stmt.raw_execute().context("baseline 100-row insert")?;
            }
            Ok(Timed::since(start, batches * BATCH_ROWS as u64))
        })
        .await
    }

    pub(crate) async fn select_scan(&mut self) -> anyhow::Result<Timed> {
        self.blocking(|inner| {
            let sql = format!("SELECT {COLUMNS} FROM {TABLE} ORDER BY position");
            let start = Instant::now();
            let mut stmt = inner.conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            let mut count = 0u64;
            while let Some(r) = rows.next().context("baseline scan")? {
                black_box(decode(r)?);
                count += 1;
            }
            Ok(Timed::since(start, count))
        })
        .await
    }

    pub(crate) async fn select_streams(
        &mut self,
        streams: &[String],
        reads: u64,
    ) -> anyhow::Result<Timed> {
        let streams = streams.to_vec();
        self.blocking(move |inner| {
            let sql = format!(
                "SELECT {COLUMNS} FROM {TABLE} WHERE tenant_id = ?1 AND stream_id = ?2 ORDER BY version"
            );
            let tenant = inner.source.tenant().as_str().to_owned();
            let mut stmt = inner.conn.prepare(&sql)?;
            let start = Instant::now();
            for i in 0..reads {
                let stream = &streams[(i % streams.len() as u64) as usize];
                let mut rows = stmt.query(rusqlite::params![tenant, stream])?;
                let mut decoded = Vec::new();
                while let Some(r) = rows.next().context("baseline stream select")? {
                    decoded.push(decode(r)?);
                }
                black_box(decoded);
            }
            Ok(Timed::since(start, reads))
        })
        .await
    }
}

impl SqliteBaseline {
    /// `commands` commands done by hand, in turn on the streams
    /// `<prefix>0` … `<prefix><streams - 1>`: the stream's events selected
    /// and decoded, then the next one inserted at the version read (its
    /// own transaction; the unique (stream, version) index checks it).
    pub(crate) async fn command_loop(
        &mut self,
        prefix: &str,
        streams: u64,
        commands: u64,
    ) -> anyhow::Result<Timed> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| {
            let select = format!(
                "SELECT {COLUMNS} FROM {TABLE} WHERE tenant_id = ?1 AND stream_id = ?2 ORDER BY version"
            );
            let insert = insert_sql(1, |n| format!("?{n}"));
            let tenant = inner.source.tenant().as_str().to_owned();
            let mut select = inner.conn.prepare(&select)?;
            let mut insert = inner.conn.prepare(&insert)?;
            let start = Instant::now();
            for seq in 0..commands {
                let stream = format!("{prefix}{}", seq % streams.max(1));
                let mut rows = select.query(rusqlite::params![tenant, stream])?;
                let mut history = Vec::new();
                while let Some(r) = rows.next().context("baseline command select")? {
                    history.push(decode(r)?);
                }
                let mut row = inner.source.row(&stream);
                row.version = i64::try_from(history.len())?;
                bind_row(&mut insert, 0, &row)?;
                insert.raw_execute().context("baseline command insert")?;
                black_box(history);
            }
            Ok(Timed::since(start, commands))
        })
        .await
    }
}

/// A selected row, decoded into owned values with its JSON parsed.
fn decode(r: &rusqlite::Row<'_>) -> anyhow::Result<Row> {
    let id: Vec<u8> = r.get(5)?;
    let data: String = r.get(8)?;
    let micros: i64 = r.get(13)?;
    Ok(Row {
        position: r.get(0)?,
        tenant_id: r.get(1)?,
        stream_id: r.get(2)?,
        category: r.get(3)?,
        version: r.get(4)?,
        event_id: Uuid::from_slice(&id)?,
        event_type: r.get(6)?,
        schema_version: r.get(7)?,
        data: serde_json::from_str(&data)?,
        correlation_id: r.get(9)?,
        causation_id: r.get(10)?,
        traceparent: r.get(11)?,
        actor: r.get(12)?,
        recorded_at: DateTime::from_timestamp_micros(micros).context("recorded_at out of range")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("t").unwrap()
    }

    #[tokio::test]
    async fn writes_and_scans_back_every_row() {
        let dir = std::env::temp_dir().join(format!("cairn-bench-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("baseline.db");
        let _ = std::fs::remove_file(&path);
        // The baseline copies the store's table, so the store comes first.
        let store = cairn_store_sqlite::SqliteStore::open(&path).await.unwrap();
        let mut b = SqliteBaseline::create(&path, tenant()).await.unwrap();
        drop(store);
        assert_eq!(b.insert_1_per_tx("order-1", 3).await.unwrap().rows, 3);
        assert_eq!(b.insert_100_per_tx("order-x", 2).await.unwrap().rows, 200);
        assert_eq!(b.rows(), 203);
        assert_eq!(b.select_scan().await.unwrap().rows, 203);
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
