//! Between Cairn's values and SQLite's columns, for the reader and the
//! writer alike.
//!
//! Rows are decoded straight from borrowed column values: text is validated
//! in place, the payload is parsed once, and tenant and stream ids are
//! interned per connection so a page of events from a few streams allocates
//! each id once. A row that does not decode (wrong type, invalid id, bad
//! JSON, negative position) is [`StoreError::Corrupt`], never a panic; a
//! failure of SQLite itself is [`StoreError::Unavailable`].

use std::collections::HashMap;

use cairn_core::{EventId, Metadata, RecordedEvent, StreamId, TenantId};
use cairn_store::StoreError;
use chrono::{DateTime, Utc};
use rusqlite::{
    Connection, Row,
    types::{FromSqlError, ValueRef},
};

/// The columns every event query selects, in the order [`Decoder::event`]
/// reads them. A macro rather than a `const` so queries can be built with
/// `concat!` and stay `&'static str` (the statement cache is keyed by text).
macro_rules! event_columns {
    () => {
        "position, tenant_id, stream_id, version, event_id, event_type, schema_version, data, \
         correlation_id, causation_id, traceparent, actor, recorded_at"
    };
}
pub(crate) use event_columns;

/// Interned ids are dropped past this many, so a scan over millions of
/// streams cannot grow the cache without bound.
const INTERN_LIMIT: usize = 4096;

/// Maps SQLite's errors onto the store's: the backend failed.
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Unavailable(format!("sqlite: {e}")))
    }
}

fn corrupt(column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {column}: {why}"))
}

/// Store-assigned numbers (positions, versions) as SQLite integers. They
/// start at 0 or 1 and grow by one per event, so they never reach
/// `i64::MAX`; a caller-supplied bound beyond it saturates, which keeps
/// range comparisons right.
pub(crate) fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A store-assigned number read back; negative means the row is damaged.
pub(crate) fn from_sql(column: &str, n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt(column, format!("negative value {n}")))
}

/// Caller-chosen numbers that are only compared in Rust (truncation points)
/// are stored bit for bit, so every `u64` round-trips exactly.
pub(crate) fn to_sql_bits(n: u64) -> i64 {
    i64::from_ne_bytes(n.to_ne_bytes())
}

pub(crate) fn from_sql_bits(n: i64) -> u64 {
    u64::from_ne_bytes(n.to_ne_bytes())
}

fn value<'r>(row: &'r Row<'_>, idx: usize) -> Result<ValueRef<'r>, StoreError> {
    row.get_ref(idx).db()
}

fn typed<T>(column: &str, r: Result<T, FromSqlError>) -> Result<T, StoreError> {
    r.map_err(|e| corrupt(column, e))
}

pub(crate) fn text<'r>(row: &'r Row<'_>, idx: usize, column: &str) -> Result<&'r str, StoreError> {
    typed(column, value(row, idx)?.as_str())
}

fn opt_text(row: &Row<'_>, idx: usize, column: &str) -> Result<Option<String>, StoreError> {
    Ok(typed(column, value(row, idx)?.as_str_or_null())?.map(str::to_owned))
}

pub(crate) fn int(row: &Row<'_>, idx: usize, column: &str) -> Result<i64, StoreError> {
    typed(column, value(row, idx)?.as_i64())
}

pub(crate) fn opt_int(row: &Row<'_>, idx: usize, column: &str) -> Result<Option<i64>, StoreError> {
    typed(column, value(row, idx)?.as_i64_or_null())
}

pub(crate) fn number(row: &Row<'_>, idx: usize, column: &str) -> Result<u64, StoreError> {
    from_sql(column, int(row, idx, column)?)
}

pub(crate) fn small_number(row: &Row<'_>, idx: usize, column: &str) -> Result<u32, StoreError> {
    let n = int(row, idx, column)?;
    u32::try_from(n).map_err(|_| corrupt(column, format!("{n} is out of range")))
}

pub(crate) fn json(
    row: &Row<'_>,
    idx: usize,
    column: &str,
) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text(row, idx, column)?).map_err(|e| corrupt(column, e))
}

/// Decodes rows, interning the ids it has seen.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    tenants: HashMap<Box<str>, TenantId>,
    streams: HashMap<Box<str>, StreamId>,
}

impl Decoder {
    pub(crate) fn tenant(&mut self, id: &str) -> Result<TenantId, StoreError> {
        if let Some(t) = self.tenants.get(id) {
            return Ok(t.clone());
        }
        let t = TenantId::new(id).map_err(|e| corrupt("tenant_id", e))?;
        if self.tenants.len() >= INTERN_LIMIT {
            self.tenants.clear();
        }
        self.tenants.insert(id.into(), t.clone());
        Ok(t)
    }

    pub(crate) fn stream(&mut self, id: &str) -> Result<StreamId, StoreError> {
        if let Some(s) = self.streams.get(id) {
            return Ok(s.clone());
        }
        let s = StreamId::new(id).map_err(|e| corrupt("stream_id", e))?;
        if self.streams.len() >= INTERN_LIMIT {
            self.streams.clear();
        }
        self.streams.insert(id.into(), s.clone());
        Ok(s)
    }

    /// Decodes a row selected with [`event_columns!`].
    pub(crate) fn event(&mut self, row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
        let id = typed("event_id", value(row, 4)?.as_blob())?;
        let id = uuid::Uuid::from_slice(id).map_err(|e| corrupt("event_id", e))?;
        let micros = int(row, 12, "recorded_at")?;
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt("recorded_at", format!("{micros} is out of range")))?;
        Ok(RecordedEvent {
            position: number(row, 0, "position")?,
            tenant: self.tenant(text(row, 1, "tenant_id")?)?,
            stream: self.stream(text(row, 2, "stream_id")?)?,
            version: number(row, 3, "version")?,
            id: EventId::from_uuid(id),
            event_type: text(row, 5, "event_type")?.to_owned(),
            schema_version: small_number(row, 6, "schema_version")?,
            data: json(row, 7, "data")?,
            metadata: Metadata {
                correlation_id: opt_text(row, 8, "correlation_id")?,
                causation_id: opt_text(row, 9, "causation_id")?,
                traceparent: opt_text(row, 10, "traceparent")?,
                actor: opt_text(row, 11, "actor")?,
            },
            recorded_at,
        })
    }
}

/// A stream's row in `streams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamRow {
    /// Version of the last event.
    pub(crate) version: u64,
    pub(crate) deleted: bool,
    pub(crate) truncate_before: Option<u64>,
}

/// The stream's row, or `None` when it has no events.
pub(crate) fn stream_row(
    conn: &Connection,
    tenant: &TenantId,
    stream: &StreamId,
) -> Result<Option<StreamRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT version, deleted, truncate_before FROM streams
             WHERE tenant_id = ?1 AND stream_id = ?2",
        )
        .db()?;
    let mut rows = stmt.query((tenant.as_str(), stream.as_str())).db()?;
    match rows.next().db()? {
        None => Ok(None),
        Some(row) => Ok(Some(StreamRow {
            version: number(row, 0, "streams.version")?,
            deleted: int(row, 1, "streams.deleted")? != 0,
            truncate_before: opt_int(row, 2, "streams.truncate_before")?.map(from_sql_bits),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        conn
    }

    fn insert(conn: &Connection, tenant: &str, stream: &str, id: &[u8], data: &str, pos: i64) {
        conn.execute(
            "INSERT INTO events (position, tenant_id, stream_id, category, version, event_id,
                 event_type, schema_version, data, actor, recorded_at)
             VALUES (?1, ?2, ?3, 'c', ?1, ?4, 'T', 1, ?5, 'ada', 1700000000123456)",
            (pos, tenant, stream, id, data),
        )
        .unwrap();
    }

    fn decode(conn: &Connection, pos: i64) -> Result<RecordedEvent, StoreError> {
        let mut stmt = conn
            .prepare(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE position = ?1"
            ))
            .unwrap();
        let mut rows = stmt.query([pos]).unwrap();
        let row = rows.next().unwrap().unwrap();
        Decoder::default().event(row)
    }

    #[test]
    fn a_good_row_decodes_with_metadata_and_microseconds() {
        let conn = conn();
        let id = EventId::new();
        insert(
            &conn,
            "acme",
            "flight-1",
            id.as_uuid().as_bytes(),
            r#"{"n":1}"#,
            7,
        );
        let e = decode(&conn, 7).unwrap();
        assert_eq!(e.id, id);
        assert_eq!((e.position, e.version), (7, 7));
        assert_eq!(e.tenant.as_str(), "acme");
        assert_eq!(e.metadata.actor.as_deref(), Some("ada"));
        assert_eq!(e.metadata.traceparent, None);
        assert_eq!(e.recorded_at.timestamp_micros(), 1_700_000_000_123_456);
        assert_eq!(e.data, serde_json::json!({"n": 1}));
    }

    #[test]
    fn damaged_rows_are_corrupt_not_panics() {
        let conn = conn();
        let ok_id = EventId::new();
        insert(&conn, "acme", "s-1", &[1, 2, 3], "{}", 1);
        insert(
            &conn,
            "ACME",
            "s-1",
            EventId::new().as_uuid().as_bytes(),
            "{}",
            2,
        );
        insert(
            &conn,
            "acme",
            "$all",
            EventId::new().as_uuid().as_bytes(),
            "{}",
            3,
        );
        insert(
            &conn,
            "acme",
            "s-1",
            ok_id.as_uuid().as_bytes(),
            "{not json",
            4,
        );
        for pos in 1..=4 {
            let err = decode(&conn, pos).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{pos}: {err:?}");
        }
    }

    #[test]
    fn numbers_round_trip() {
        for n in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(from_sql_bits(to_sql_bits(n)), n);
        }
        assert_eq!(to_sql(u64::MAX), i64::MAX);
        assert_eq!(from_sql("x", 5).unwrap(), 5);
        assert!(from_sql("x", -1).is_err());
    }

    #[test]
    fn interning_is_bounded() {
        let mut d = Decoder::default();
        for i in 0..INTERN_LIMIT * 2 {
            d.stream(&format!("s-{i}")).unwrap();
        }
        assert!(d.streams.len() <= INTERN_LIMIT);
        assert_eq!(d.stream("s-1").unwrap().as_str(), "s-1");
    }
}
