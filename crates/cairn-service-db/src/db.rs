//! The service database: one [`ServiceDb`] handle over an [`sqlx::AnyPool`],
//! so a service writes its tables with the same portable SQL (`$1`
//! placeholders; `TEXT`, `BIGINT`, `BOOLEAN`, `DOUBLE PRECISION`) on SQLite
//! and on PostgreSQL.
//!
//! What each kind of URL guarantees:
//! - `sqlite://PATH` (relative or absolute): the file and its directory are
//!   created if missing; WAL journal (readers never wait for the writer),
//!   `synchronous=NORMAL` (a power cut may lose the last commits, never half
//!   of one: read-model rows and checkpoints roll back together), a busy
//!   timeout, foreign keys on. [`ServiceDb::begin`] takes the write lock at
//!   `BEGIN` (`BEGIN IMMEDIATE`), so two writers wait for each other instead
//!   of failing when a read-then-write transaction would have to upgrade.
//! - `sqlite::memory:` or [`ServiceDb::ephemeral`]: an in-memory database with
//!   a unique name, shared by every connection of this handle and gone when
//!   the last clone is dropped. Shared-cache SQLite answers conflicting
//!   writers with errors or deadlocks rather than waiting, so this pool has
//!   exactly one connection: everything queues on it. Never hold a
//!   transaction while acquiring a second connection from the same handle.
//! - `postgres://...[?schema=NAME]`: with a schema, it is created if missing
//!   and every connection's `search_path` is set to it, so unqualified table
//!   names land there.
//!
//! Row-level security on PostgreSQL ([`cairn_store::row_security`]): every
//! table of the schema with a `tenant_id` column carries the tenant policy
//! (at open, and after each projection's schema: [`protect_tenant_tables`]).
//! [`ServiceDb::pool`] is system access: its sessions see every tenant
//! (`cairn.tenant = '*'`); that is what projections, consumers, relays and
//! checkpoints use. A query on behalf of one tenant runs in
//! [`ServiceDb::scoped`]: a transaction of a second pool whose sessions see
//! nothing until the transaction names its tenant, as a role bound by the
//! policy. SQLite has no row-level security: there `scoped` is a plain
//! transaction and the queries' own tenant filters are the only wall.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_core::TenantId;
use cairn_store::{redact_password, row_security};
use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Executor, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use crate::ServiceDbError;

/// Which SQL engine a [`ServiceDb`] talks to, for the rare statement that must
/// differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    /// SQLite (a file, or in memory).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl DbKind {
    /// What sqlx's `Any` driver calls PostgreSQL (`backend_name`).
    const POSTGRES_NAME: &'static str = "PostgreSQL";
}

/// How to open a [`ServiceDb`]. The defaults suit a laptop.
#[derive(Debug, Clone)]
pub struct ServiceDbOptions {
    /// Pool size for file SQLite and PostgreSQL (the in-memory database always
    /// uses one connection). On PostgreSQL, the size of each of its two
    /// pools (system and tenant-scoped; the second opens connections as
    /// needed). Default 8.
    pub max_connections: u32,
    /// Longest wait for a free connection. Default 30 s.
    pub acquire_timeout: Duration,
    /// Longest wait for SQLite's write lock before a statement fails as busy.
    /// Default 10 s.
    pub busy_timeout: Duration,
}

impl Default for ServiceDbOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// A handle on a service's database. Clones share its pools.
#[derive(Clone)]
pub struct ServiceDb {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    /// PostgreSQL: the pool of [`ServiceDb::scoped`] transactions.
    tenant_pool: Option<AnyPool>,
    kind: DbKind,
    /// Where it points, without a password: for logs and `Debug`.
    location: String,
    /// For the in-memory database: a connection outside the pool that keeps
    /// the database alive even if the pool recycles its own connection.
    _keeper: Option<Mutex<AnyConnection>>,
}

impl std::fmt::Debug for ServiceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDb")
            .field("kind", &self.inner.kind)
            .field("location", &self.inner.location)
            .finish()
    }
}

/// A parsed service-database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Memory,
    SqliteFile(PathBuf),
    Postgres { url: String, schema: Option<String> },
}

impl Target {
    fn parse(url: &str) -> Result<Self, ServiceDbError> {
        if matches!(url, "sqlite::memory:" | "sqlite://:memory:" | "memory:") {
            return Ok(Self::Memory);
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(ServiceDbError::invalid(
                    "read_db_url",
                    "a sqlite URL needs a path: sqlite://PATH",
                ));
            }
            return Ok(Self::SqliteFile(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (url, schema) = split_schema(url);
            if let Some(schema) = &schema {
                validate_schema(schema)?;
            }
            return Ok(Self::Postgres { url, schema });
        }
        Err(ServiceDbError::invalid(
            "read_db_url",
            "expected sqlite://PATH, sqlite::memory: or postgres://...",
        ))
    }
}

impl ServiceDb {
    /// Opens the database a URL names, with default options.
    pub async fn open(url: &str) -> Result<Self, ServiceDbError> {
        Self::open_with(url, ServiceDbOptions::default()).await
    }

    /// Opens the database a URL names.
    pub async fn open_with(url: &str, options: ServiceDbOptions) -> Result<Self, ServiceDbError> {
        sqlx::any::install_default_drivers();
        match Target::parse(url)? {
            Target::Memory => Self::memory(&options).await,
            Target::SqliteFile(path) => Self::sqlite_file(&path, &options).await,
            Target::Postgres { url, schema } => {
                Self::postgres(&url, schema.as_deref(), &options).await
            }
        }
    }

    /// A fresh in-memory SQLite database, private to this handle and its
    /// clones (`--ephemeral`).
    pub async fn ephemeral() -> Result<Self, ServiceDbError> {
        sqlx::any::install_default_drivers();
        Self::memory(&ServiceDbOptions::default()).await
    }

    /// Opens (creating if missing) a SQLite file.
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Self, ServiceDbError> {
        sqlx::any::install_default_drivers();
        Self::sqlite_file(path.as_ref(), &ServiceDbOptions::default()).await
    }

    /// The pool, for a service's own queries. On PostgreSQL its sessions see
    /// every tenant's rows: it is system access (projections, consumers,
    /// checkpoints, DDL). A query on behalf of one tenant belongs in
    /// [`Self::scoped`].
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Begins a transaction on behalf of `tenant`. On PostgreSQL it sees
    /// only `tenant`'s rows of every table with a `tenant_id` column,
    /// whatever its queries filter on, and sees nothing of tables without
    /// one (a row it writes must be `tenant`'s too, where its role may write
    /// at all): the tenant is set for this transaction only, on a connection
    /// whose sessions see nothing otherwise. On SQLite it is a plain
    /// (deferred) transaction. Keep the tenant filters in the queries all
    /// the same; this is the second wall.
    pub async fn scoped(
        &self,
        tenant: &TenantId,
    ) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match &self.inner.tenant_pool {
            Some(pool) => pool.begin_with(row_security::begin_scoped(tenant)).await,
            None => self.inner.pool.begin().await,
        }
    }

    /// Which engine this is.
    pub fn kind(&self) -> DbKind {
        self.inner.kind
    }

    /// Begins a write transaction. On SQLite it holds the write lock from the
    /// start (`BEGIN IMMEDIATE`), so it never fails halfway because another
    /// writer got in first; keep it short.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.inner.kind {
            DbKind::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await,
            DbKind::Postgres => self.inner.pool.begin().await,
        }
    }

    /// Closes the pools: waits for connections in use to come back, then
    /// closes them all. Every clone sees the pools closed afterwards.
    pub async fn close(&self) {
        if let Some(pool) = &self.inner.tenant_pool {
            pool.close().await;
        }
        self.inner.pool.close().await;
    }

    async fn memory(options: &ServiceDbOptions) -> Result<Self, ServiceDbError> {
        let name = format!("cairn-read-{}", uuid::Uuid::now_v7().simple());
        let url = format!("sqlite:file:{name}?mode=memory&cache=shared");
        let connect = any_options(&url)?;
        let keeper = AnyConnection::connect_with(&connect).await?;
        let pool = sqlite_pool_options(options)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                tenant_pool: None,
                kind: DbKind::Sqlite,
                location: format!("sqlite::memory: ({name})"),
                _keeper: Some(Mutex::new(keeper)),
            }),
        })
    }

    async fn sqlite_file(path: &Path, options: &ServiceDbOptions) -> Result<Self, ServiceDbError> {
        let path = std::path::absolute(path)
            .map_err(|e| ServiceDbError::invalid("read_db_url", format!("bad path: {e}")))?;
        let text = path.to_str().ok_or_else(|| {
            ServiceDbError::invalid("read_db_url", "the SQLite path must be valid UTF-8")
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                sqlx::Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("creating {}: {e}", dir.display()),
                ))
            })?;
        }
        let url = format!("sqlite://{}?mode=rwc", encode_path(text));
        let connect = any_options(&url)?;

        // The journal mode is a property of the file; switching needs a
        // moment without other connections, which another process opening
        // the same file at the same time may deny: retry briefly.
        let mut attempt = 0;
        loop {
            let result = async {
                let mut setup = AnyConnection::connect_with(&connect).await?;
                setup.execute("PRAGMA journal_mode = WAL").await?;
                setup.close().await
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) if attempt < 20 && crate::is_transient(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }

        let pool = sqlite_pool_options(options)
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                tenant_pool: None,
                kind: DbKind::Sqlite,
                location: format!("sqlite://{}", path.display()),
                _keeper: None,
            }),
        })
    }

    async fn postgres(
        url: &str,
        schema: Option<&str>,
        options: &ServiceDbOptions,
    ) -> Result<Self, ServiceDbError> {
        let connect = any_options(url)?;
        let mut setup = AnyConnection::connect_with(&connect).await?;
        let mut search_path = String::new();
        if let Some(schema) = schema {
            let created = setup
                .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
                .await;
            if let Err(e) = created {
                // Two processes creating the schema at once: one loses the
                // race on the catalog's unique index, and the schema exists.
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
                        .bind(schema)
                        .fetch_optional(&mut setup)
                        .await?;
                if exists.is_none() {
                    return Err(e.into());
                }
            }
            search_path = format!("SET search_path TO \"{schema}\"; ");
            setup.execute(search_path.as_str()).await?;
        }
        // Row-level security is set up as the connecting user, before any
        // connection switches roles.
        let switch_role = prepare_row_security(&mut setup).await?;
        setup.close().await?;

        let system_session = format!(
            "{search_path}SET {} TO '{}'",
            row_security::TENANT_SETTING,
            row_security::ALL_TENANTS
        );
        let pool = postgres_pool(options, &system_session)
            .connect_with(connect.clone())
            .await?;
        let role = if switch_role {
            format!("SET ROLE {}; ", row_security::ROLE)
        } else {
            String::new()
        };
        let tenant_session = format!(
            "{search_path}{role}SET {} TO ''",
            row_security::TENANT_SETTING
        );
        let tenant_pool = postgres_pool(options, &tenant_session).connect_lazy_with(connect);
        let location = match schema {
            Some(s) => format!("{} (schema {s})", redact_password(url)),
            None => redact_password(url),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                tenant_pool: Some(tenant_pool),
                kind: DbKind::Postgres,
                location,
                _keeper: None,
            }),
        })
    }
}

/// A PostgreSQL pool whose connections start by running `session`.
fn postgres_pool(options: &ServiceDbOptions, session: &str) -> AnyPoolOptions {
    let session = Arc::<str>::from(session);
    AnyPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .after_connect(move |conn, _| {
            let session = session.clone();
            Box::pin(async move {
                conn.execute(&*session).await?;
                Ok(())
            })
        })
}

/// In one transaction on the connection's schema, holding the schema's
/// lock first (the order every Cairn process takes it in: schema, then
/// role): when the connecting user ignores row-level security, makes sure
/// the role tenant connections switch to exists; then protects the schema's
/// tenant tables. Returns whether tenant connections must switch roles.
async fn prepare_row_security(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    tx.execute(row_security::LOCK_SCHEMA).await?;
    let bypasses: bool = sqlx::query_scalar(row_security::BYPASSES_QUERY)
        .fetch_one(&mut *tx)
        .await?;
    if bypasses {
        tx.execute(row_security::ensure_role(row_security::ROLE).as_str())
            .await?;
    }
    protect(&mut tx, bypasses).await?;
    tx.commit().await?;
    Ok(bypasses)
}

async fn protect(conn: &mut AnyConnection, bypasses: bool) -> Result<(), sqlx::Error> {
    let role = bypasses.then_some(row_security::ROLE);
    conn.execute(row_security::protect_tenant_tables(role).as_str())
        .await?;
    Ok(())
}

/// Puts the tenant policy on every table of the connection's schema that
/// has a `tenant_id` column and no policy yet (row-level security enabled
/// and forced), and lets the role of tenant-scoped transactions read them;
/// does nothing on SQLite. Idempotent, and safe to run from several
/// processes at once.
///
/// The projection runner runs it after each projection's schema, in the
/// same transaction; call it after creating tenant tables any other way,
/// with a connection of [`ServiceDb::pool`] (it alters tables, which needs the
/// connecting user).
pub async fn protect_tenant_tables(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    if conn.backend_name() != DbKind::POSTGRES_NAME {
        return Ok(());
    }
    let bypasses: bool = sqlx::query_scalar(row_security::BYPASSES_QUERY)
        .fetch_one(&mut *conn)
        .await?;
    protect(conn, bypasses).await
}

fn any_options(url: &str) -> Result<AnyConnectOptions, ServiceDbError> {
    url.parse::<AnyConnectOptions>().map_err(|e| {
        ServiceDbError::invalid(
            "read_db_url",
            format!("not a database URL ({}): {e}", redact_password(url)),
        )
    })
}

fn sqlite_pool_options(options: &ServiceDbOptions) -> AnyPoolOptions {
    let pragmas = Arc::<str>::from(format!(
        "PRAGMA busy_timeout = {}; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        options.busy_timeout.as_millis()
    ));
    AnyPoolOptions::new()
        .acquire_timeout(options.acquire_timeout)
        .after_connect(move |conn, _| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                conn.execute(&*pragmas).await?;
                Ok(())
            })
        })
}

/// Percent-encodes what a URL would otherwise read as structure, the way
/// sqlx's SQLite driver decodes it.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' | '?' | '#' | ' ' | '"' | '<' | '>' | '`' | '{' | '}' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Splits Cairn's own `schema=NAME` query parameter off a PostgreSQL URL
/// (the same convention as the event store URLs): the rest goes to the
/// driver, the schema selects where Cairn's tables live.
pub fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(name) => {
                schema = Some(name.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

/// Schema names are interpolated into SQL, so only plain identifiers pass.
fn validate_schema(schema: &str) -> Result<(), ServiceDbError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ServiceDbError::invalid(
            "schema",
            "must be 1-63 of a-z, 0-9, '_', starting with a letter or '_'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(Target::parse("sqlite::memory:").unwrap(), Target::Memory);
        assert_eq!(Target::parse("memory:").unwrap(), Target::Memory);
        assert_eq!(
            Target::parse("sqlite://data/read.db").unwrap(),
            Target::SqliteFile("data/read.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///tmp/read.db").unwrap(),
            Target::SqliteFile("/tmp/read.db".into())
        );
        assert_eq!(
            Target::parse("postgres://h/db?sslmode=disable&schema=flights").unwrap(),
            Target::Postgres {
                url: "postgres://h/db?sslmode=disable".into(),
                schema: Some("flights".into())
            }
        );
        assert_eq!(
            Target::parse("postgresql://h/db").unwrap(),
            Target::Postgres {
                url: "postgresql://h/db".into(),
                schema: None
            }
        );
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in [
            "",
            "sqlite://",
            "mysql://h/db",
            "postgres://h/db?schema=Robert'); DROP TABLE x;--",
            "postgres://h/db?schema=",
            "postgres://h/db?schema=1abc",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.code(), cairn_core::ErrorCode::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn the_schema_parameter_is_split_off_wherever_it_stands() {
        for (url, rest, schema) in [
            ("postgres://h/db", "postgres://h/db", None),
            (
                "postgres://h/db?sslmode=disable",
                "postgres://h/db?sslmode=disable",
                None,
            ),
            ("postgres://h/db?schema=s1", "postgres://h/db", Some("s1")),
            (
                "postgres://h/db?schema=s1&sslmode=disable",
                "postgres://h/db?sslmode=disable",
                Some("s1"),
            ),
            (
                "postgres://h/db?sslmode=disable&schema=s1&connect_timeout=5",
                "postgres://h/db?sslmode=disable&connect_timeout=5",
                Some("s1"),
            ),
            (
                "postgres://h/db?sslmode=disable&schema=s1",
                "postgres://h/db?sslmode=disable",
                Some("s1"),
            ),
            // An empty name is kept as given (`open` rejects it), empty
            // pairs are dropped, and `search_path` is not `schema`.
            ("postgres://h/db?schema=", "postgres://h/db", Some("")),
            ("postgres://h/db?&schema=s1&", "postgres://h/db", Some("s1")),
            (
                "postgres://h/db?search_path=x",
                "postgres://h/db?search_path=x",
                None,
            ),
        ] {
            assert_eq!(
                split_schema(url),
                (rest.to_owned(), schema.map(str::to_owned)),
                "{url}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_password("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn paths_are_encoded_for_the_url() {
        assert_eq!(encode_path("/a b/c?d#e%f.db"), "/a%20b/c%3Fd%23e%25f.db");
    }

    #[tokio::test]
    async fn ephemeral_databases_are_shared_by_the_pool_and_private_to_the_handle() {
        let a = ServiceDb::ephemeral().await.unwrap();
        let b = ServiceDb::open("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(a.pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (x) VALUES ($1)")
            .bind(7_i64)
            .execute(a.pool())
            .await
            .unwrap();
        let mut tx = a.begin().await.unwrap();
        let x: i64 = sqlx::query_scalar("SELECT x FROM t")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(x, 7);
        // Another ephemeral database does not see the table.
        assert!(
            sqlx::query("SELECT x FROM t")
                .fetch_one(b.pool())
                .await
                .is_err()
        );
        assert_eq!(a.kind(), DbKind::Sqlite);
    }

    #[tokio::test]
    async fn concurrent_transactions_on_the_ephemeral_database_queue_instead_of_deadlocking() {
        let db = ServiceDb::ephemeral().await.unwrap();
        sqlx::query("CREATE TABLE c (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO c (k, n) VALUES ('x', 0)")
            .execute(db.pool())
            .await
            .unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        let mut tx = db.begin().await.unwrap();
                        let n: i64 = sqlx::query_scalar("SELECT n FROM c WHERE k = 'x'")
                            .fetch_one(&mut *tx)
                            .await
                            .unwrap();
                        sqlx::query("UPDATE c SET n = $1 WHERE k = 'x'")
                            .bind(n + 1)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n: i64 = sqlx::query_scalar("SELECT n FROM c")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, 160);
    }

    #[tokio::test]
    async fn sqlite_file_is_created_with_wal_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested dir/read model#1.db");
        let db = ServiceDb::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(fk, 1);
        assert!(format!("{db:?}").contains("read model#1.db"));
    }

    #[tokio::test]
    async fn concurrent_read_then_write_transactions_on_a_file_serialize() {
        let dir = tempfile::tempdir().unwrap();
        let db = ServiceDb::open_sqlite(dir.path().join("r.db"))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE c (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO c (k, n) VALUES ('x', 0)")
            .execute(db.pool())
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        let mut tx = db.begin().await.unwrap();
                        let n: i64 = sqlx::query_scalar("SELECT n FROM c WHERE k = 'x'")
                            .fetch_one(&mut *tx)
                            .await
                            .unwrap();
                        sqlx::query("UPDATE c SET n = $1 WHERE k = 'x'")
                            .bind(n + 1)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n: i64 = sqlx::query_scalar("SELECT n FROM c")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, 80);
    }
}
