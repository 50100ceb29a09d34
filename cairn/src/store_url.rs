//! How a command names its store, and opening it.
//!
//! Every store command takes `--store URL` ([`StoreArgs`]), one of:
//! - `postgres://USER@HOST/DB[?schema=S]` (or `postgresql://`): Cairn's
//!   tables live in schema `S` (default `cairn` for an event store; for a
//!   service database, the connection's default schema);
//! - `sqlite://PATH`: a file, relative to the working directory
//!   (`sqlite:///abs/path` for an absolute one);
//! - `memory:`: an empty store that lives as long as the command.
//!
//! Without `--store`, a command uses the databases `cairn up` keeps under
//! `--data-dir` (`./data`): `events.db` is the event store and
//! `read-models.db` the services' database. What the URL names depends on
//! the command, and only in this: `cairn events`, `tenants`, `users` and
//! `token` name an event store (the identity commands find the read models
//! beside it, as `cairn up` puts them), `cairn dlq` names a service's own
//! database (`cairn run`'s `--db`).
//!
//! Guarantee: a command that only reads opens with [`IfMissing::Fail`] and
//! creates nothing. A missing file, database, schema or table is a
//! [`Usage`] error (exit code 2) naming what is missing, found before the
//! backend is asked to open anything (backends create and migrate on open).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use cairn_service_db::split_schema;
pub(crate) use cairn_store::StoreUrl;
use cairn_store::{EventStore, MemoryStore};

pub(crate) use crate::Usage;

/// How every store command names its store: `--store URL` (or
/// `CAIRN_STORE`), else the databases `cairn up` keeps under `--data-dir`
/// (or `CAIRN_DATA_DIR`, default `./data`). Flatten it into a command's
/// arguments and ask it for the URL the command works on.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// The store: postgres://USER@HOST/DB[?schema=S], sqlite://PATH or
    /// memory:. Default: the databases `cairn up` keeps under --data-dir.
    #[arg(long, env = "CAIRN_STORE", hide_env_values = true, value_name = "URL")]
    pub(crate) store: Option<String>,
    /// Directory of `cairn up`'s embedded databases, used when --store is
    /// absent.
    #[arg(
        long,
        env = "CAIRN_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    pub(crate) data_dir: PathBuf,
}

impl StoreArgs {
    /// The event store: --store, else `sqlite://<data-dir>/events.db`.
    pub(crate) fn event_store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir.join(EVENTS_DB)))
    }

    /// A service's own database (read models, dead letters): --store, else
    /// `sqlite://<data-dir>/read-models.db`, the one `cairn up` shares
    /// between its services.
    pub(crate) fn service_db_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir.join(READ_MODELS_DB)))
    }
}

/// The embedded event store's file under a data dir.
pub(crate) const EVENTS_DB: &str = "events.db";
/// The embedded read-model database's file under a data dir.
pub(crate) const READ_MODELS_DB: &str = "read-models.db";

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// What to do when the store a command names does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMissing {
    /// Create it (commands that write).
    Create,
    /// Fail with a [`Usage`] error naming what is missing, creating nothing
    /// (commands that only read, and those that need existing data).
    Fail,
}

/// The tables that make a database an event store (both backends).
const EVENT_STORE_TABLES: &[&str] = &["events", "streams"];

/// What `require_existing` looks for: an event store, or a service
/// database holding `tables` (none: it only has to exist).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect<'a> {
    EventStore,
    ServiceDb { tables: &'a [&'a str] },
}

/// Fails with a [`Usage`] error unless the database `url` names exists
/// and holds what `expect` says, touching nothing: a SQLite file is opened
/// without the right to create it, PostgreSQL is only queried.
pub(crate) async fn require_existing(url: &str, expect: Expect<'_>) -> anyhow::Result<()> {
    let parsed = StoreUrl::parse(url)?;
    let what = parsed.redacted();
    let (tables, default_schema) = match expect {
        // Where the backend puts an event store whose URL names no schema.
        Expect::EventStore => (
            EVENT_STORE_TABLES,
            Some(cairn_store_postgres::PostgresOptions::default().schema),
        ),
        Expect::ServiceDb { tables } => (tables, None),
    };
    let missing = match parsed {
        StoreUrl::Memory => return Ok(()),
        StoreUrl::Sqlite(path) => missing_sqlite(Path::new(&path), tables)?,
        StoreUrl::Postgres(url) => {
            let (url, schema) = split_schema(&url);
            missing_postgres(&url, schema.or(default_schema).as_deref(), tables).await?
        }
    };
    match missing {
        None => Ok(()),
        Some(missing) => Err(Usage(format!(
            "{} at {what}: {missing}; nothing was created{}",
            match expect {
                Expect::EventStore => "no event store",
                Expect::ServiceDb { .. } => "no service database",
            },
            match expect {
                Expect::EventStore =>
                    " (start `cairn up` once, or name another with --store or --data-dir)",
                Expect::ServiceDb { .. } =>
                    " (name a service's database with --store, e.g. postgres://…?schema=passengers_read)",
            }
        ))
        .into()),
    }
}

/// What a SQLite file lacks, if anything.
fn missing_sqlite(path: &Path, tables: &[&str]) -> anyhow::Result<Option<String>> {
    if !path.is_file() {
        return Ok(Some(format!("the file {} does not exist", path.display())));
    }
    // Read-write without CREATE: a WAL file's reader may need to write its
    // index, but nothing new is made.
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut absent = Vec::new();
    for table in tables {
        let found: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [table],
                |row| row.get(0),
            )
            .with_context(|| format!("reading {}", path.display()))?;
        if !found {
            absent.push(*table);
        }
    }
    Ok((!absent.is_empty()).then(|| no_tables(&absent, &path.display().to_string())))
}

/// What a PostgreSQL database lacks, if anything: the database itself, the
/// schema (`None`: the connection's default one) or tables in it.
async fn missing_postgres(
    url: &str,
    schema: Option<&str>,
    tables: &[&str],
) -> anyhow::Result<Option<String>> {
    use sqlx::Connection as _;
    /// PostgreSQL's SQLSTATE for "database does not exist".
    const INVALID_CATALOG_NAME: &str = "3D000";
    let mut conn = match sqlx::PgConnection::connect(url).await {
        Ok(conn) => conn,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(INVALID_CATALOG_NAME) => {
            return Ok(Some(e.message().to_owned()));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("connecting to PostgreSQL")),
    };
    let schema: String = match schema {
        Some(s) => s.to_owned(),
        None => {
            sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut conn)
                .await?
        }
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let _ = conn.close().await;
        return Ok(Some(format!("the schema {schema:?} does not exist")));
    }
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)",
    )
    .bind(&schema)
    .bind(tables)
    .fetch_all(&mut conn)
    .await?;
    let _ = conn.close().await;
    let absent: Vec<&str> = tables
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    Ok((!absent.is_empty()).then(|| no_tables(&absent, &format!("schema {schema:?}"))))
}

fn no_tables(absent: &[&str], place: &str) -> String {
    format!("{place} has no table {}", absent.join(", "))
}

/// Opens the event store a URL names; with [`IfMissing::Fail`], only one
/// that exists.
pub(crate) async fn open_event_store(
    url: &str,
    if_missing: IfMissing,
) -> anyhow::Result<Arc<dyn EventStore>> {
    if if_missing == IfMissing::Fail {
        require_existing(url, Expect::EventStore).await?;
    }
    open_store(url).await
}

/// Opens (creating if missing) the store a URL names.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    let parsed = StoreUrl::parse(url)?;
    let what = parsed.redacted();
    let store: Arc<dyn EventStore> = match parsed {
        StoreUrl::Memory => Arc::new(MemoryStore::new()),
        StoreUrl::Sqlite(path) => Arc::new(
            cairn_store_sqlite::SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening {what}"))?,
        ),
        StoreUrl::Postgres(url) => {
            let (url, schema) = split_schema(&url);
            let mut options = cairn_store_postgres::PostgresOptions::default();
            if let Some(schema) = schema {
                options.schema = schema;
            }
            Arc::new(
                cairn_store_postgres::PostgresStore::connect_with(&url, options)
                    .await
                    .with_context(|| format!("opening {what}"))?,
            )
        }
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_store_url_the_data_dir_of_cairn_up_is_used() {
        let args = |store: Option<&str>| StoreArgs {
            store: store.map(str::to_owned),
            data_dir: PathBuf::from("elsewhere"),
        };
        assert_eq!(args(None).event_store_url(), "sqlite://elsewhere/events.db");
        assert_eq!(
            args(None).service_db_url(),
            "sqlite://elsewhere/read-models.db"
        );
        let pg = "postgres://h/db?schema=s";
        assert_eq!(args(Some(pg)).event_store_url(), pg);
        assert_eq!(args(Some(pg)).service_db_url(), pg);
    }

    #[test]
    fn a_bad_store_url_is_a_usage_error() {
        for bad in ["mysql://x", "sqlite://", "data/events.db"] {
            let err = anyhow::Error::from(StoreUrl::parse(bad).unwrap_err());
            assert!(crate::is_usage(&err), "{bad}: {err}");
        }
    }
}
