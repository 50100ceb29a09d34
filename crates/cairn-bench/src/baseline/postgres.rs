//! The PostgreSQL baseline: sqlx on one connection, in a schema of its own in
//! the database the store uses, with a copy of the store's `events` table
//! (`CREATE TABLE ... (LIKE ... INCLUDING ALL)`).

use std::{hint::black_box, time::Instant};

use anyhow::Context;
use cairn_core::TenantId;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde_json::Value;
use sqlx::{
    Connection, Executor, PgConnection, Postgres, Row as _, postgres::PgArguments, query::Query,
};
use uuid::Uuid;

use super::{BATCH_ROWS, COLUMNS, Row, RowSource, TABLE, Timed, insert_sql};

/// A copy of the store's own `events` table (types, collations,
/// constraints, indexes), taken from the schema the store just migrated, so
/// the two can never drift apart and index upkeep costs the same on both
/// sides.
fn create_table_sql(store_schema: &str) -> String {
    format!(
        "CREATE TABLE {TABLE} (LIKE {}.events INCLUDING ALL)",
        quote_ident(store_schema)
    )
}

fn bind_row(q: Query<'_, Postgres, PgArguments>, row: Row) -> Query<'_, Postgres, PgArguments> {
    q.bind(row.position)
        .bind(row.tenant_id)
        .bind(row.stream_id)
        .bind(row.category)
        .bind(row.version)
        .bind(row.event_id)
        .bind(row.event_type)
        .bind(row.schema_version)
        .bind(row.data)
        .bind(row.correlation_id)
        .bind(row.causation_id)
        .bind(row.traceparent)
        .bind(row.actor)
        .bind(row.recorded_at)
}

/// Quotes an identifier (our schema names are generated, but quoting keeps
/// any name safe to splice).
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[derive(Debug)]
pub(crate) struct PgBaseline {
    conn: PgConnection,
    source: RowSource,
    insert_one: String,
    insert_batch: String,
}

impl PgBaseline {
    /// Connects to `url` and creates `schema` with an empty baseline table
    /// shaped like `store_schema.events`; fails if the schema already
    /// exists, so a run never mixes with old rows.
    pub(crate) async fn create(
        url: &str,
        schema: &str,
        store_schema: &str,
        tenant: TenantId,
    ) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect(url)
            .await
            .context("connecting to PostgreSQL for the baseline")?;
        let quoted = quote_ident(schema);
        conn.execute(format!("CREATE SCHEMA {quoted}").as_str())
            .await
            .with_context(|| format!("creating baseline schema {schema}"))?;
        conn.execute(format!("SET search_path TO {quoted}").as_str())
            .await
            .context("selecting the baseline schema")?;
        conn.execute(sqlx::raw_sql(&create_table_sql(store_schema)))
            .await
            .context("creating the baseline table")?;
        Ok(Self {
            conn,
            source: RowSource::new(tenant),
            insert_one: insert_sql(1, |n| format!("${n}")),
            insert_batch: insert_sql(BATCH_ROWS, |n| format!("${n}")),
        })
    }

    pub(crate) fn rows(&self) -> u64 {
        self.source.made()
    }

    pub(crate) async fn insert_1_per_tx(
        &mut self,
        stream: &str,
        rows: u64,
    ) -> anyhow::Result<Timed> {
        let start = Instant::now();
        for _ in 0..rows {
            let row = self.source.row(stream);
            // Outside an explicit transaction each statement commits on its
            // own: one INSERT, one transaction, one WAL flush.
            bind_row(sqlx::query(&self.insert_one), row)
                .execute(&mut self.conn)
                .await
                .context("baseline single-row insert")?;
        }
        Ok(Timed::since(start, rows))
    }

    pub(crate) async fn insert_100_per_tx(
        &mut self,
        stream: &str,
        batches: u64,
    ) -> anyhow::Result<Timed> {
        let start = Instant::now();
        for _ in 0..batches {
            let mut q = sqlx::query(&self.insert_batch);
            for _ in 0..BATCH_ROWS {
                q = bind_row(q, self.source.row(stream));
            }
            q.execute(&mut self.conn)
                .await
                .context("baseline 100-row insert")?;
        }
        Ok(Timed::since(start, batches * BATCH_ROWS as u64))
    }

    pub(crate) async fn select_scan(&mut self) -> anyhow::Result<Timed> {
        let sql = format!("SELECT {COLUMNS} FROM {TABLE} ORDER BY position");
        let start = Instant::now();
        let mut rows = sqlx::query(&sql).fetch(&mut self.conn);
        let mut count = 0u64;
        while let Some(r) = rows.try_next().await.context("baseline scan")? {
            black_box(decode(&r)?);
            count += 1;
        }
        Ok(Timed::since(start, count))
    }

    pub(crate) async fn select_streams(
        &mut self,
        streams: &[String],
        reads: u64,
    ) -> anyhow::Result<Timed> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {TABLE} WHERE tenant_id = $1 AND stream_id = $2 ORDER BY version"
        );
        let tenant = self.source.tenant().as_str().to_owned();
        let start = Instant::now();
        for i in 0..reads {
            let stream = &streams[(i % streams.len() as u64) as usize];
            let rows = sqlx::query(&sql)
                .bind(&tenant)
                .bind(stream)
                .fetch_all(&mut self.conn)
                .await
                .context("baseline stream select")?;
            let decoded = rows
                .iter()
                .map(decode)
                .collect::<anyhow::Result<Vec<_>>>()?;
            black_box(decoded);
        }
        Ok(Timed::since(start, reads))
    }
}

impl PgBaseline {
    /// `reads` selects as in [`select_streams`](Self::select_streams), but
    /// under the store's own row-level security: the baseline table gets
    /// the store's policy ([`row_security::protect_tenant_tables`]), and
    /// the connection switches to the store's bound role with the tenant
    /// set for the session (set once, outside the timing), so what this
    /// adds to the plain selects is the policy's own cost. The connection
    /// is back as it was afterwards; later inserts (as the connecting
    /// superuser) are not bound by the policy.
    pub(crate) async fn select_streams_rls(
        &mut self,
        streams: &[String],
        reads: u64,
    ) -> anyhow::Result<Timed> {
        use cairn_store::row_security::{ROLE, TENANT_SETTING, ensure_role, protect_tenant_tables};
        self.conn
            .execute(ensure_role(ROLE).as_str())
            .await
            .context("the row-security role for the baseline")?;
        self.conn
            .execute(protect_tenant_tables(Some(ROLE)).as_str())
            .await
            .context("the row-security policy on the baseline table")?;
        let tenant = self.source.tenant().as_str().to_owned();
        self.conn
            .execute(format!("SET ROLE {}", quote_ident(ROLE)).as_str())
            .await
            .context("switching to the row-security role")?;
        // The policy binds: another tenant sees nothing, this one its rows.
        let count = format!("SELECT count(*) FROM {TABLE}");
        let mut visible = Vec::new();
        for as_tenant in ["bench-nobody", tenant.as_str()] {
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(TENANT_SETTING)
                .bind(as_tenant)
                .execute(&mut self.conn)
                .await
                .context("setting the baseline's tenant")?;
            let n: i64 = sqlx::query_scalar(&count)
                .fetch_one(&mut self.conn)
                .await
                .context("counting the rows the policy lets through")?;
            visible.push(n);
        }
        let timed = if visible[0] == 0 && visible[1] > 0 {
            self.select_streams(streams, reads).await
        } else {
            Err(anyhow::anyhow!(
                "the row-security policy on the baseline does not bind as the store's does \
                 (rows seen as another tenant: {}, as {tenant}: {})",
                visible[0],
                visible[1]
            ))
        };
        self.conn
            .execute(sqlx::raw_sql(&format!(
                "RESET ROLE; RESET {TENANT_SETTING}"
            )))
            .await
            .context("leaving the row-security role")?;
        timed
    }

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
        let select = format!(
            "SELECT {COLUMNS} FROM {TABLE} WHERE tenant_id = $1 AND stream_id = $2 ORDER BY version"
        );
        let tenant = self.source.tenant().as_str().to_owned();
        let start = Instant::now();
        for seq in 0..commands {
            let stream = format!("{prefix}{}", seq % streams.max(1));
            let rows = sqlx::query(&select)
                .bind(&tenant)
                .bind(&stream)
                .fetch_all(&mut self.conn)
                .await
                .context("baseline command select")?;
            let history = rows
                .iter()
                .map(decode)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut row = self.source.row(&stream);
            row.version = i64::try_from(history.len())?;
            bind_row(sqlx::query(&self.insert_one), row)
                .execute(&mut self.conn)
                .await
                .context("baseline command insert")?;
            black_box(history);
        }
        Ok(Timed::since(start, commands))
    }
}

/// A selected row, decoded into owned values with its JSON parsed.
fn decode(r: &sqlx::postgres::PgRow) -> anyhow::Result<Row> {
    Ok(Row {
        position: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        stream_id: r.try_get(2)?,
        category: r.try_get(3)?,
        version: r.try_get(4)?,
        event_id: r.try_get::<Uuid, _>(5)?,
        event_type: r.try_get(6)?,
        schema_version: r.try_get(7)?,
        data: r.try_get::<Value, _>(8)?,
        correlation_id: r.try_get(9)?,
        causation_id: r.try_get(10)?,
        traceparent: r.try_get(11)?,
        actor: r.try_get(12)?,
        recorded_at: r.try_get::<DateTime<Utc>, _>(13)?,
    })
}

/// Drops `schemas` (the store's and the baseline's) with a connection of
/// its own, so it works even when the run failed before the baseline existed.
pub(crate) async fn drop_pg_schemas(url: &str, schemas: &[String]) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL to drop the bench schemas")?;
    for schema in schemas {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
        conn.execute(sql.as_str())
            .await
            .with_context(|| format!("dropping schema {schema}"))?;
    }
    conn.close().await.context("closing the cleanup connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_parameter() {
        use super::super::COLUMN_COUNT;
        let sql = insert_sql(2, |n| format!("${n}"));
        assert!(
            sql.ends_with("($15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)")
        );
        assert_eq!(sql.matches('$').count(), 2 * COLUMN_COUNT);
        assert_eq!(COLUMNS.split(',').count(), COLUMN_COUNT);
    }
}
