//! Reads: a small pool of read connections and the queries they run.
//!
//! Each read checks a connection out (waiting for one of `readers` permits,
//! so blocking reads never crowd tokio's blocking pool), runs on
//! `spawn_blocking`, and returns it. A read that needs two statements (a
//! stream's row, then its events) runs them in one read transaction, so it
//! sees one snapshot of the file. WAL readers never wait for the writer.
//!
//! `$all` filters are turned into SQL so that every plan walks an index (or
//! the table itself) in position order: a filter value that is alone for its
//! column becomes an equality the planner can use with the
//! `(tenant_id, …, position)` indexes; a list becomes `+column IN (…)`, which
//! the unary `+` keeps out of index lookups. A multi-value index lookup would
//! need a sort, and a sort under `LIMIT` reads every matching row to the end
//! of the log for each page; without it a page costs what it scans.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use cairn_core::{RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AllFilter, Direction, ReadStream, Snapshot, StoreError, StreamInfo, TenantScope,
};
use rusqlite::{Connection, types::Value};
use tokio::sync::Semaphore;

use crate::codec::{
    DbResult, Decoder, StreamRow, event_columns, from_sql_bits, int, json, number, opt_int,
    small_number, stream_row, text, to_sql,
};

/// A read connection with the decoder whose id cache belongs to it.
#[derive(Debug)]
pub(crate) struct ReadConn {
    pub(crate) conn: Connection,
    pub(crate) decoder: Decoder,
}

/// The read connections of one store.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<ReadConn>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// Opens `count` connections up front, so a bad path fails at open.
    pub(crate) fn open(path: PathBuf, count: usize) -> Result<Self, StoreError> {
        let count = count.max(1);
        let idle = (0..count)
            .map(|_| open_conn(&path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path,
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(count)),
        })
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ReadConn) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the read pool is closed".into()))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A connection lost to a panic is replaced here, lazily.
            let taken = pool.lock().pop();
            let mut conn = match taken {
                Some(c) => c,
                None => open_conn(&pool.path)?,
            };
            let result = f(&mut conn);
            pool.lock().push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ReadConn>> {
        // The vector is consistent at every point a panic could unwind from.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_conn(path: &std::path::Path) -> Result<ReadConn, StoreError> {
    Ok(ReadConn {
        conn: crate::schema::open_reader(path)?,
        decoder: Decoder::default(),
    })
}

fn limit_sql(limit: usize) -> i64 {
    // SQLite reads a negative LIMIT as "no limit".
    i64::try_from(limit).unwrap_or(-1)
}

fn collect_events(
    decoder: &mut Decoder,
    mut rows: rusqlite::Rows<'_>,
    capacity: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut out = Vec::with_capacity(capacity.min(1024));
    while let Some(row) = rows.next().db()? {
        out.push(decoder.event(row)?);
    }
    Ok(out)
}

pub(crate) fn read_stream(
    rc: &mut ReadConn,
    tenant: &TenantId,
    stream: &StreamId,
    read: ReadStream,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let tx = rc.conn.transaction().db()?;
    let Some(s) = stream_row(&tx, tenant, stream)? else {
        return Ok(Vec::new());
    };
    if s.deleted {
        return Err(StoreError::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let Some((lo, hi)) = read.bounds(s.truncate_before.unwrap_or(0), s.version) else {
        return Ok(Vec::new());
    };
    let sql = match read.direction {
        Direction::Forward => STREAM_FORWARD,
        Direction::Backward => STREAM_BACKWARD,
    };
    let events = {
        let mut stmt = tx.prepare_cached(sql).db()?;
        let rows = stmt
            .query((tenant.as_str(), stream.as_str(), to_sql(lo), to_sql(hi)))
            .db()?;
        collect_events(&mut rc.decoder, rows, (hi - lo).saturating_add(1) as usize)?
    };
    tx.commit().db()?;
    Ok(events)
}

const STREAM_FORWARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = ?1 AND stream_id = ?2 AND version BETWEEN ?3 AND ?4",
    " ORDER BY version ASC"
);
const STREAM_BACKWARD: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE tenant_id = ?1 AND stream_id = ?2 AND version BETWEEN ?3 AND ?4",
    " ORDER BY version DESC"
);

/// The SQL and parameters of a `$all` read, or `None` when the filter can
/// match nothing (an empty tenant list).
pub(crate) fn all_query(
    after: u64,
    filter: &AllFilter,
    limit: usize,
) -> Option<(String, Vec<Value>)> {
    let mut sql = String::from(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE position > ?"
    ));
    let mut params = vec![Value::Integer(to_sql(after))];
    let tenants = match &filter.tenants {
        TenantScope::AllTenants => Vec::new(),
        TenantScope::Tenants(ts) if ts.is_empty() => return None,
        TenantScope::Tenants(ts) => ts.iter().map(|t| t.as_str().to_owned()).collect(),
    };
    for (column, values) in [
        ("tenant_id", tenants),
        ("category", filter.categories.clone()),
        ("event_type", filter.event_types.clone()),
    ] {
        push_term(&mut sql, &mut params, column, values);
    }
    sql.push_str(" ORDER BY position LIMIT ?");
    params.push(Value::Integer(limit_sql(limit)));
    Some((sql, params))
}

fn push_term(sql: &mut String, params: &mut Vec<Value>, column: &str, mut values: Vec<String>) {
    values.sort_unstable();
    values.dedup();
    match values.len() {
        0 => return,
        1 => sql.push_str(&format!(" AND {column} = ?")),
        n => {
            let marks = vec!["?"; n].join(", ");
            sql.push_str(&format!(" AND +{column} IN ({marks})"));
        }
    }
    params.extend(values.into_iter().map(Value::Text));
}

pub(crate) fn read_all(
    rc: &mut ReadConn,
    after: u64,
    filter: &AllFilter,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let Some((sql, params)) = all_query(after, filter, limit) else {
        return Ok(Vec::new());
    };
    let mut stmt = rc.conn.prepare_cached(&sql).db()?;
    let rows = stmt.query(rusqlite::params_from_iter(params)).db()?;
    collect_events(&mut rc.decoder, rows, limit)
}

fn info(stream: StreamId, row: StreamRow) -> StreamInfo {
    StreamInfo {
        stream,
        version: row.version,
        deleted: row.deleted,
        truncate_before: row.truncate_before,
    }
}

pub(crate) fn stream_info(
    rc: &mut ReadConn,
    tenant: &TenantId,
    stream: &StreamId,
) -> Result<Option<StreamInfo>, StoreError> {
    Ok(stream_row(&rc.conn, tenant, stream)?.map(|row| info(stream.clone(), row)))
}

pub(crate) fn list_streams(
    rc: &mut ReadConn,
    tenant: &TenantId,
    after: Option<&StreamId>,
    limit: usize,
) -> Result<Vec<StreamInfo>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // SQLite's BINARY collation compares UTF-8 bytes, the same order as
    // `StreamId`'s `Ord`, so pages line up with the in-memory backend.
    let mut stmt = rc
        .conn
        .prepare_cached(
            "SELECT stream_id, version, deleted, truncate_before FROM streams
             WHERE tenant_id = ?1 AND stream_id > ?2
             ORDER BY stream_id LIMIT ?3",
        )
        .db()?;
    let mut rows = stmt
        .query((
            tenant.as_str(),
            after.map_or("", StreamId::as_str),
            limit_sql(limit),
        ))
        .db()?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().db()? {
        let stream = rc.decoder.stream(text(row, 0, "streams.stream_id")?)?;
        let row = StreamRow {
            version: number(row, 1, "streams.version")?,
            deleted: int(row, 2, "streams.deleted")? != 0,
            truncate_before: opt_int(row, 3, "streams.truncate_before")?.map(from_sql_bits),
        };
        out.push(info(stream, row));
    }
    Ok(out)
}

pub(crate) fn load_snapshot(
    rc: &mut ReadConn,
    tenant: &TenantId,
    stream: &StreamId,
) -> Result<Option<Snapshot>, StoreError> {
    let mut stmt = rc
        .conn
        .prepare_cached(
            "SELECT version, schema_version, state FROM snapshots
             WHERE tenant_id = ?1 AND stream_id = ?2",
        )
        .db()?;
    let mut rows = stmt.query((tenant.as_str(), stream.as_str())).db()?;
    match rows.next().db()? {
        None => Ok(None),
        Some(row) => Ok(Some(Snapshot {
            version: number(row, 0, "snapshots.version")?,
            schema_version: small_number(row, 1, "snapshots.schema_version")?,
            state: json(row, 2, "snapshots.state")?,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn plan(conn: &Connection, filter: &AllFilter) -> String {
        let (sql, params) = all_query(10, filter, 100).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .join("; ")
    }

    #[test]
    fn all_reads_never_sort_and_use_an_index_for_one_tenant() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let one = || AllFilter::tenant(t("a"));
        let two = || AllFilter::tenants([t("a"), t("b")]);
        let cases = [
            (AllFilter::all_tenants(), None),
            (AllFilter::all_tenants().event_types(["X", "Y"]), None),
            (one(), Some("events_by_tenant ")),
            (
                one().categories(["flight"]),
                Some("events_by_tenant_category"),
            ),
            (one().event_types(["X"]), Some("events_by_tenant_type")),
            (
                one().categories(["flight", "crew"]),
                Some("events_by_tenant "),
            ),
            (
                one().categories(["flight"]).event_types(["X", "Y"]),
                Some("events_by_tenant_category"),
            ),
            (two(), None),
            (two().categories(["flight"]), None),
        ];
        for (filter, index) in cases {
            let plan = plan(&conn, &filter);
            assert!(!plan.contains("TEMP B-TREE"), "{filter:?} sorts: {plan}");
            match index {
                Some(index) => assert!(plan.contains(index), "{filter:?}: {plan}"),
                None => assert!(plan.contains("INTEGER PRIMARY KEY"), "{filter:?}: {plan}"),
            }
        }
    }

    #[test]
    fn filters_become_parameters_and_empty_tenant_lists_match_nothing() {
        assert!(all_query(0, &AllFilter::tenants(Vec::<TenantId>::new()), 1).is_none());
        let f = AllFilter::tenants([t("b"), t("a"), t("b")]).categories(["x-*"]);
        let (sql, params) = all_query(5, &f, usize::MAX).unwrap();
        assert!(sql.contains("+tenant_id IN (?, ?)"), "{sql}");
        assert!(sql.contains("category = ?"), "{sql}");
        assert_eq!(
            params,
            vec![
                Value::Integer(5),
                Value::Text("a".into()),
                Value::Text("b".into()),
                Value::Text("x".into()),
                Value::Integer(-1),
            ]
        );
    }
}
