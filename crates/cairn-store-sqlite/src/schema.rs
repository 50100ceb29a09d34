//! Opening connections and keeping the schema current.
//!
//! Every connection gets the same settings: WAL journal (readers never block
//! the writer and see a consistent snapshot per transaction), a 5 s busy
//! timeout (another process's writer holds the lock for one transaction at a
//! time), and for the writer the configured `synchronous` level.
//!
//! Migrations are embedded in the binary, numbered from 1 and applied in
//! order on open, all in one `BEGIN IMMEDIATE` transaction that also records
//! them in `cairn_migrations`. Taking the write lock first means two
//! processes opening the same new file serialize: the second finds the
//! migrations recorded and applies nothing. A file migrated by a newer build
//! (a version this build does not know) is refused rather than written to.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use cairn_store::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::codec::DbResult;

/// How long a connection waits for another one's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements each connection keeps prepared; `$all` reads build one SQL text
/// per filter shape, so leave room for several shapes, and the writer
/// prepares one insert and one id probe per run length (38 in all).
pub(crate) const STATEMENT_CACHE: usize = 64;

/// One embedded schema change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Every schema change, oldest first. Append only: a published migration
/// never changes, because files already migrated would not see the edit.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("migrations/0001_initial.sql"),
}];

/// Opens (creating if needed) the write connection in WAL mode and brings
/// the schema up to date.
pub(crate) fn open_writer(path: &Path, synchronous_full: bool) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).db()?;
    configure(&conn)?;
    // Set before anything takes a lock; openers racing on a new file retry
    // (see `switch_to_wal`).
    let mode = switch_to_wal(&conn)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use WAL journaling (got {mode}); a file on a local disk is required",
            path.display()
        )));
    }
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync).db()?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Sets WAL journaling and returns the journal mode now in force. When two
/// connections open the same new file at once, SQLite can answer this
/// pragma with `SQLITE_BUSY` without calling the busy handler, so this
/// retries for as long as the busy timeout would have waited.
fn switch_to_wal(conn: &Connection) -> Result<String, StoreError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other.db(),
        }
    }
}

/// Opens a connection for reads. It is opened read-write but set to
/// `query_only`: a read-only connection cannot rebuild the WAL index when it
/// is the first to open the file after a crash, a read-write one can.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).db()?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true).db()?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).db()?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Applies the migrations `conn`'s file lacks; a no-op when it is current.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .db()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS cairn_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL
         ) STRICT;",
    )
    .db()?;
    let applied: Vec<i64> = {
        let mut stmt = tx
            .prepare("SELECT version FROM cairn_migrations ORDER BY version")
            .db()?;
        stmt.query_map([], |row| row.get(0))
            .db()?
            .collect::<Result<_, _>>()
            .db()?
    };
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(StoreError::Unavailable(format!(
            "the database is at schema version {newest}, newer than this build knows ({known}); \
             upgrade Cairn to open it"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tx.execute_batch(m.sql).map_err(|e| {
            StoreError::Unavailable(format!("migration {} ({}) failed: {e}", m.version, m.name))
        })?;
        tx.execute(
            "INSERT INTO cairn_migrations (version, name, applied_at)
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (m.version, m.name),
        )
        .db()?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied schema migration"
        );
    }
    tx.commit().db()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(conn: &Connection) -> Vec<(i64, String)> {
        let mut stmt = conn
            .prepare("SELECT version, name FROM cairn_migrations ORDER BY version")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrations_are_numbered_densely_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn migrating_twice_applies_each_migration_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let expected: Vec<_> = MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name.to_owned()))
            .collect();
        assert_eq!(versions(&conn), expected);
        // Every table the backend uses exists and carries tenant_id.
        for table in ["events", "streams", "snapshots"] {
            let has_tenant: bool = conn
                .query_row(
                    &format!(
                        "SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = 'tenant_id'"
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(has_tenant, "{table}");
        }
    }

    #[test]
    fn a_file_from_a_newer_build_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO cairn_migrations VALUES (999, 'future', 'x')",
            [],
        )
        .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn the_writer_uses_wal_and_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/store.db");
        let conn = open_writer(&path, true).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let reader = open_reader(&path).unwrap();
        assert!(reader.execute("DELETE FROM events", []).is_err());
    }
}
