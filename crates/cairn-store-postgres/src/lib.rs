//! The PostgreSQL event store: the production backend.
//!
//! - **Gap-safe global order.** Every write transaction locks the single
//!   `log_head` row before it assigns positions and holds the lock until it
//!   commits. PostgreSQL makes a transaction visible before it releases its
//!   locks, so the next writer can only assign higher positions after the
//!   previous ones are visible: a reader that has seen position `p` can never
//!   later find an event below `p`. Positions are dense (no holes).
//! - **Group commit.** One writer task per store handle takes every request
//!   queued at that moment and runs them in one transaction, judging each on
//!   its own expected version in memory, so a conflict in one does not fail
//!   the others and the transaction costs one WAL flush for all of them.
//!   Plain appends (exact or no-stream expectations on distinct streams)
//!   commit in a single statement instead; see the `fast` module.
//! - **Live notification.** Each commit sends `pg_notify` with the new head;
//!   a listener turns it into the handle's [`EventStore::head`] watch, which
//!   wakes subscriptions. Polling covers a lost notification.
//! - **Isolation between deployments and tests**: everything lives in one
//!   schema ([`PostgresOptions::schema`]), created and migrated on connect.
//! - **Row-level security** as a second wall between tenants
//!   ([`cairn_store::row_security`]): the tables carry a policy on
//!   `tenant_id`. Two pools: the *system* pool (the writer, `$all`, the
//!   listener) sets `cairn.tenant = '*'` for its sessions; the *tenant* pool
//!   (stream reads, stream metadata, snapshots) denies everything by default
//!   and each read runs in a transaction that sets the caller's tenant
//!   ([`PostgresStore::scoped`]), as a role bound by the policy.

mod fast;
mod migrations;
mod read;
mod writer;

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AllFilter, AppendOutcome, EventStore, EventSubscription, ExpectedVersion, ReadStream, Snapshot,
    StoreError, StreamInfo, row_security, validate_append,
};
use sqlx::{
    Connection, Executor, PgConnection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::writer::Request;

/// How to connect.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema holding Cairn's tables: lower-case letters, digits and `_`,
    /// starting with a letter or `_`, at most 48 bytes. Default `cairn`.
    pub schema: String,
    /// Size of each of the two pools: the system pool (the writer, which
    /// keeps one connection for its one-statement appends, `$all` reads, the
    /// notification listener) and the tenant pool (stream reads, stream
    /// metadata, snapshots; opened as needed). Default 8.
    pub max_connections: u32,
    /// Most requests sharing one write transaction. Default 1024.
    pub max_batch: usize,
    /// Pause a random time in this range inside every write transaction,
    /// after positions are assigned and before commit. Only for tests that
    /// prove the global order holds while transactions are slow.
    #[doc(hidden)]
    pub pause_in_transaction: Option<Range<Duration>>,
    /// The role tenant connections switch to when the connecting user
    /// ignores row-level security. Default [`row_security::ROLE`]; another
    /// name only for tests that need a role of their own.
    #[doc(hidden)]
    pub row_security_role: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "cairn".into(),
            max_connections: 8,
            max_batch: 1024,
            pause_in_transaction: None,
            row_security_role: row_security::ROLE.into(),
        }
    }
}

impl PostgresOptions {
    fn validate(&self) -> Result<(), StoreError> {
        let s = &self.schema;
        let ok = !s.is_empty()
            && s.len() <= 48
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(StoreError::invalid(
                "schema",
                "must be 1-48 of a-z, 0-9, '_', starting with a letter or '_'",
            ));
        }
        if self.max_connections < 2 {
            return Err(StoreError::invalid("max_connections", "needs at least 2"));
        }
        if !row_security::is_plain_identifier(&self.row_security_role) {
            return Err(StoreError::invalid(
                "row_security_role",
                "must be 1-63 of a-z, 0-9, '_', starting with a letter or '_'",
            ));
        }
        Ok(())
    }

    /// The NOTIFY channel of this schema.
    fn channel(&self) -> String {
        format!("cairn_head_{}", self.schema)
    }
}

/// The PostgreSQL event store. Clones share one pool and one writer.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    listener: JoinHandle<()>,
}

/// What the writer task and readers share.
pub(crate) struct Shared {
    /// System access: sessions see every tenant.
    pub(crate) pool: PgPool,
    /// Tenant access: sessions see nothing until a transaction or a read
    /// names its tenant ([`read::scoped`], [`read::TenantReads`]).
    pub(crate) tenant_reads: read::TenantReads,
    pub(crate) head: watch::Sender<u64>,
    pub(crate) commits: AtomicU64,
    pub(crate) one_statement_commits: AtomicU64,
    pub(crate) options: PostgresOptions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.shared.options.schema)
            .field("head", &*self.inner.shared.head.borrow())
            .finish()
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl PostgresStore {
    /// Connects with default options (schema `cairn`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects, creates the schema if needed, applies migrations and brings
    /// row-level security up to date (creating the role tenant reads switch
    /// to, when the connecting user would ignore the policies).
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        options.validate()?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::invalid(
                "store_url",
                "must start with postgres:// or postgresql://",
            ));
        }
        let connect: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e| StoreError::invalid("store_url", format!("not a PostgreSQL URL: {e}")))?
            .options([("search_path", options.schema.as_str())]);
        // Migrate on a connection of its own: the pool's connections prepare
        // the writer's load statement as they open, which needs the tables.
        // Migrations and grants run as the connecting user, before any
        // connection switches roles.
        let mut setup = PgConnection::connect_with(&connect)
            .await
            .map_err(unavailable)?;
        let switch_role =
            migrations::apply(&mut setup, &options.schema, &options.row_security_role)
                .await
                .map_err(unavailable)?;
        let _ = setup.close().await;
        // System sessions see every tenant, as the connecting user: a
        // superuser or BYPASSRLS user then carries no policy at all, which
        // keeps the planner's estimates for `$all` honest
        // (docs/design/tenant-isolation.md).
        let system_session: Arc<str> = format!(
            "SET {} TO '{}'",
            row_security::TENANT_SETTING,
            row_security::ALL_TENANTS
        )
        .into();
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let session = system_session.clone();
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(&session)).await?;
                    writer::prepare(conn).await
                })
            })
            .connect_with(connect.clone())
            .await
            .map_err(unavailable)?;
        // The tenant pool opens connections only when a tenant read needs
        // one. Its sessions deny everything (an empty tenant) and, when the
        // connecting user would ignore the policies, run as a role bound by
        // them.
        let mut tenant_session = String::new();
        if switch_role {
            tenant_session.push_str(&format!(
                "SET ROLE {}; ",
                migrations::quote_ident(&options.row_security_role)
            ));
        }
        tenant_session.push_str(&format!("SET {} TO ''", row_security::TENANT_SETTING));
        let tenant_session: Arc<str> = tenant_session.into();
        // Its connections are not pinged before use: a tenant read is one
        // round trip, and the ping would be a second. A read that meets a dead
        // connection runs again on another (`read::reading`).
        let tenant_pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let session = tenant_session.clone();
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(&session)).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(connect);

        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&pool)
            .await
            .map_err(unavailable)?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(unavailable)?;
        listener
            .listen(&options.channel())
            .await
            .map_err(unavailable)?;

        let shared = Arc::new(Shared {
            pool,
            tenant_reads: read::TenantReads::new(tenant_pool, options.max_connections),
            head: watch::Sender::new(head as u64),
            commits: AtomicU64::new(0),
            one_statement_commits: AtomicU64::new(0),
            options,
        });
        let (requests, queue) = mpsc::channel(shared.options.max_batch.max(1) * 4);
        tokio::spawn(writer::run(shared.clone(), queue));
        let listener = tokio::spawn(follow_notifications(shared.clone(), listener));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                requests,
                listener,
            }),
        })
    }

    /// Write transactions committed by this handle: with group commit, far
    /// fewer than the appends it served.
    pub fn commits(&self) -> u64 {
        self.inner.shared.commits.load(Ordering::Relaxed)
    }

    /// Of [`Self::commits`], those made by the one-statement append (plain
    /// appends with an exact or no-stream expectation on distinct streams;
    /// see the one-statement append in docs/design/group-commit.md).
    pub fn one_statement_commits(&self) -> u64 {
        self.inner
            .shared
            .one_statement_commits
            .load(Ordering::Relaxed)
    }

    /// The system connection pool: its sessions see every tenant's rows
    /// (`cairn.tenant = '*'`). For a query of one tenant, use
    /// [`Self::scoped`].
    pub fn pool(&self) -> &PgPool {
        &self.inner.shared.pool
    }

    /// Begins a transaction that sees only `tenant`'s rows of the store's
    /// tables, whatever its queries filter on: it runs on the tenant pool,
    /// bound by row-level security, with `cairn.tenant` set for this
    /// transaction only. The store's own stream reads use it. When the
    /// connecting user ignores row-level security, the transaction runs as
    /// the role [`row_security::ROLE`], which may only read; otherwise a
    /// row it writes must still be `tenant`'s.
    pub async fn scoped(
        &self,
        tenant: &TenantId,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        read::scoped(self.inner.shared.tenant_reads.pool(), tenant).await
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer stopped mid-request".into()))?
    }
}

/// Turns NOTIFY payloads into head updates. sqlx reconnects a dropped
/// listener on the next `recv`; while it is down, subscriptions poll.
async fn follow_notifications(shared: Arc<Shared>, mut listener: PgListener) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                if let Ok(position) = n.payload().parse::<u64>() {
                    shared.head.send_if_modified(|h| {
                        let moved = position > *h;
                        *h = (*h).max(position);
                        moved
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "event store notification listener failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(&events)?;
        self.submit(|reply| Request::Append {
            tenant: tenant.clone(),
            stream: stream.clone(),
            expected,
            events,
            reply,
        })
        .await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read::read_stream(&self.inner.shared.tenant_reads, tenant, stream, read).await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read::read_all(&self.inner.shared.pool, after, filter, limit).await
    }

    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription {
        EventSubscription::follow(Arc::new(self.clone()), after, filter)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.shared.head.subscribe()
    }

    async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<StreamInfo>, StoreError> {
        read::stream_info(&self.inner.shared.tenant_reads, tenant, stream).await
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        read::list_streams(self.inner.shared.tenant_reads.pool(), tenant, after, limit).await
    }

    async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Request::Delete {
            tenant: tenant.clone(),
            stream: stream.clone(),
            expected,
            reply,
        })
        .await
    }

    async fn truncate_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Request::Truncate {
            tenant: tenant.clone(),
            stream: stream.clone(),
            before,
            reply,
        })
        .await
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Request::Snapshot {
            tenant: tenant.clone(),
            stream: stream.clone(),
            snapshot,
            reply,
        })
        .await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        read::load_snapshot(&self.inner.shared.tenant_reads, tenant, stream).await
    }
}
