//! The Audit bounded context: every event of every service, filterable and
//! paged, from its own read model (`audit_log`).
//!
//! Two feeds fill it. In one process (`cairn up`) the [`AuditProjection`]
//! follows `$all` and every event's global position is its place in the
//! log. On its own (`cairn run audit`), consumers of each service's public
//! events write through [`AuditSink`], and the log numbers entries itself
//! as they arrive (per tenant), since events from several services come
//! through separate channels. Either way entries are read in `seq` order,
//! and `after`/`next` page by `seq`.

use std::time::Duration;

use async_trait::async_trait;
use axum::{Json, Router, routing::get};
use cairn_core::{ErrorCode, RecordedEvent, TenantId};
use cairn_flightops_contracts::Page;
use cairn_http::{ApiError, ApiQuery, Context};
use cairn_messaging::{Broker, Consumer, EventHandler, HandlerError, IntegrationEvent};
use cairn_projection::{Projection, ProjectionError, Projections};
use cairn_service_db::{ServiceDb, protect_tenant_tables};
use cairn_store::AllFilter;
use serde::{Deserialize, Serialize};
use sqlx::{Any, AnyPool, Row, Transaction, any::AnyRow};

/// The projection's name (its checkpoint key).
pub const PROJECTION: &str = "audit.log";
/// Largest page of `GET /api/audit`.
pub use cairn_flightops_contracts::MAX_PAGE;
pub use descriptor::{AuditLogAudit, SERVICE, descriptor};

mod descriptor;
pub mod live;

/// One entry of the audit log: an event as it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The entry's place in this tenant's audit log (what `after` pages by).
    pub seq: u64,
    /// The event's global position in its service's event store.
    pub position: u64,
    /// The service that published it (empty when read from a shared log).
    pub source: String,
    pub id: String,
    pub stream: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: String,
}

/// Copies every event into `audit_log`, each entry naming the service that
/// owns its stream's category as its `source` (as a published event's
/// CloudEvents `source` does when the services run apart).
#[derive(Debug, Default)]
pub struct AuditProjection {
    /// Stream category -> owning service.
    sources: std::collections::BTreeMap<String, String>,
}

/// The `source` of an entry whose category no service claims: events the
/// platform itself writes (cross-tenant read records, say).
pub const PLATFORM_SOURCE: &str = "cairn";

impl AuditProjection {
    /// A projection that knows which service owns which categories: the
    /// services' published-event declarations (`PublicEvents`).
    pub fn new<'a>(services: impl IntoIterator<Item = &'a cairn_messaging::PublicEvents>) -> Self {
        let mut sources = std::collections::BTreeMap::new();
        for service in services {
            for category in &service.categories {
                sources.insert(category.clone(), service.service.clone());
            }
        }
        Self { sources }
    }

    fn source_of(&self, event: &RecordedEvent) -> &str {
        self.sources
            .get(event.stream.category().as_str())
            .map_or(PLATFORM_SOURCE, String::as_str)
    }
}

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants()
    }

    fn schema(&self) -> Vec<String> {
        vec![
            "CREATE TABLE IF NOT EXISTS audit_log (
                tenant_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                source TEXT NOT NULL,
                position BIGINT NOT NULL,
                id TEXT NOT NULL,
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                event_type TEXT NOT NULL,
                data TEXT NOT NULL,
                metadata TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                PRIMARY KEY (tenant_id, seq))"
                .into(),
            "CREATE UNIQUE INDEX IF NOT EXISTS audit_log_id ON audit_log (tenant_id, id)".into(),
            "CREATE INDEX IF NOT EXISTS audit_log_stream ON audit_log (tenant_id, stream_id, seq)"
                .into(),
            "CREATE INDEX IF NOT EXISTS audit_log_type ON audit_log (tenant_id, event_type, seq)"
                .into(),
            "CREATE INDEX IF NOT EXISTS audit_log_position ON audit_log (tenant_id, position)"
                .into(),
            "CREATE TABLE IF NOT EXISTS audit_seq (
                tenant_id TEXT PRIMARY KEY,
                last BIGINT NOT NULL)"
                .into(),
        ]
    }

    fn reset(&self) -> Vec<String> {
        vec![
            "DROP TABLE IF EXISTS audit_log".into(),
            "DROP TABLE IF EXISTS audit_seq".into(),
        ]
    }

    /// 2: entries carry their own `seq` and `source`; 3: the source is
    /// the owning service's name in one process too.
    fn version(&self) -> u32 {
        3
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        insert(tx, event, event.position, self.source_of(event)).await
    }
}

/// Stream categories whose events carry credentials (the identity
/// service's users, clients and sealed signing keys): the log records that
/// they happened, by whom and when, but not their data.
pub const REDACTED_CATEGORIES: [&str; 3] = ["user", "client", "realmkeys"];

/// Writes one entry; an event already in the log is left as it is.
async fn insert(
    tx: &mut Transaction<'_, Any>,
    event: &RecordedEvent,
    seq: u64,
    source: &str,
) -> Result<(), ProjectionError> {
    let metadata = serde_json::to_string(&event.metadata)
        .map_err(|e| ProjectionError::poison(e.to_string()))?;
    let data = if REDACTED_CATEGORIES.contains(&event.stream.category().as_str()) {
        r#"{"redacted":true}"#.to_owned()
    } else {
        event.data.to_string()
    };
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, seq, source, position, id, stream_id, version,
                                event_type, data, metadata, recorded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .bind(event.tenant.as_str())
    .bind(seq as i64)
    .bind(source)
    .bind(event.position as i64)
    .bind(event.id.to_string())
    .bind(event.stream.as_str())
    .bind(event.version as i64)
    .bind(event.event_type.as_str())
    .bind(data)
    .bind(metadata)
    .bind(
        event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the public events of other services into the audit log, numbering
/// them per tenant as they arrive: the handler of `cairn run audit`'s
/// consumers (one per publishing service).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditSink;

#[async_trait]
impl EventHandler for AuditSink {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        let recorded = event
            .to_recorded()
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let retry = |e: sqlx::Error| HandlerError::Retry(e.to_string());
        sqlx::query(
            "INSERT INTO audit_seq (tenant_id, last) VALUES ($1, 0) ON CONFLICT DO NOTHING",
        )
        .bind(recorded.tenant.as_str())
        .execute(&mut **tx)
        .await
        .map_err(retry)?;
        let seq: i64 = sqlx::query_scalar(
            "UPDATE audit_seq SET last = last + 1 WHERE tenant_id = $1 RETURNING last",
        )
        .bind(recorded.tenant.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(retry)?;
        insert(tx, &recorded, seq as u64, &event.source)
            .await
            .map_err(|e| match e {
                ProjectionError::Poison(reason) => HandlerError::Reject(reason),
                other => HandlerError::Retry(other.to_string()),
            })
    }
}

/// Creates the audit tables when no projection does (`cairn run audit`),
/// with the tenant policy on PostgreSQL as a projection's setup would.
pub async fn create_tables(pool: &AnyPool) -> Result<(), sqlx::Error> {
    for statement in AuditProjection::default().schema() {
        sqlx::query(&statement).execute(pool).await?;
    }
    let mut conn = pool.acquire().await?;
    protect_tenant_tables(&mut conn).await
}

/// The consumer group that feeds the audit log from `source`'s events.
pub fn group(source: &str) -> String {
    format!("audit-{source}-events")
}

/// The consumers that feed the audit log from `sources`' public events.
///
/// With `live`, each entry committed resets `audit.log` in its tenant.
pub fn consumers(
    db: &ServiceDb,
    broker: &std::sync::Arc<dyn Broker>,
    sources: &[&str],
    live: Option<cairn_live::Publisher>,
) -> Vec<Consumer> {
    let sink = cairn_service::live::Announce {
        handler: AuditSink,
        publisher: live,
        touched: crate::live::feed().touched,
    };
    sources
        .iter()
        .map(|source| {
            Consumer::new(group(source), *source, db.clone(), broker.clone()).on_any(sink.clone())
        })
        .collect()
}

/// `GET /api/audit` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditParams {
    /// Only this stream's events.
    pub stream: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Entries after this one (the previous page's `next`).
    #[param(pattern = "^[0-9]+$")]
    pub after: Option<String>,
    /// 1-200, default 50 (as every list).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Wait until the audit log has reached this position (with a shared
    /// log, the log's position; fed by consumers, until an event at or
    /// after this position of any service has arrived).
    pub min_position: Option<u64>,
}

// The documented `limit` maximum above is this one.
const _: () = assert!(MAX_PAGE == 200);

/// What the audit handler needs.
#[derive(Debug, Clone)]
pub enum AuditApi {
    /// Fed by the [`AuditProjection`] over a shared log.
    Log(Projections),
    /// Fed by consumers ([`AuditSink`]) into this database.
    Consumers(ServiceDb),
}

impl AuditApi {
    fn db(&self) -> &ServiceDb {
        match self {
            AuditApi::Log(projections) => projections.db(),
            AuditApi::Consumers(db) => db,
        }
    }

    /// Whether an event has been written at `position`. Fed by consumers,
    /// positions are those of other services' stores, which this process
    /// cannot ask: any position may come.
    async fn written(&self, position: u64) -> Result<bool, cairn_store::StoreError> {
        match self {
            AuditApi::Log(projections) => projections.written(position).await,
            AuditApi::Consumers(_) => Ok(true),
        }
    }

    async fn reached(&self, tenant: &TenantId, position: u64) -> bool {
        match self {
            AuditApi::Log(projections) => {
                projections
                    .wait_for(PROJECTION, position, Duration::from_secs(5))
                    .await
            }
            AuditApi::Consumers(db) => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    if holds_position(db, tenant, position).await.unwrap_or(false) {
                        return true;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
}

/// Whether `tenant`'s audit log holds an entry at or after `position`.
async fn holds_position(
    db: &ServiceDb,
    tenant: &TenantId,
    position: u64,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.scoped(tenant).await?;
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM audit_log WHERE tenant_id = $1 AND position >= $2 LIMIT 1",
    )
    .bind(tenant.as_str())
    .bind(position as i64)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(found.is_some())
}

/// The audit routes.
pub fn router(api: AuditApi) -> Router {
    Router::new().route("/api/audit", get(list)).with_state(api)
}

/// The audit log, oldest first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", operation_id = "listAuditEntries", params(AuditParams),
    responses((status = 200, description = "A page of audit entries", body = Page<AuditEntry>), cairn_http::QueryProblems),
    security(("bearer" = [])))]
async fn list(
    axum::extract::State(api): axum::extract::State<AuditApi>,
    Context(ctx): Context,
    caller: Option<axum::Extension<cairn_http::Caller>>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    // Behind token authentication, reading the log needs its permission.
    if caller.is_some() && !ctx.has_permission(cairn_auth::permissions::AUDIT_READ) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "reading the audit log needs the permission {}",
                cairn_auth::permissions::AUDIT_READ
            ),
        ));
    }
    let limit = params
        .limit
        .unwrap_or(cairn_flightops_contracts::DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::validation(
            "invalid query",
            vec![cairn_http::FieldError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            )],
        ));
    }
    let after = match params.after.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            return Err(ApiError::validation(
                "invalid query",
                vec![cairn_http::FieldError::new(
                    "after",
                    "must be a cursor from a previous page (a whole number)",
                )],
            ));
        }
    };
    if let Some(p) = params.min_position
        && !api.written(p).await.map_err(|e| {
            ApiError::new(
                e.code(),
                format!("cannot tell whether position {p} exists: {e}"),
            )
        })?
    {
        return Err(cairn_http::unwritten_position(p));
    }
    if let Some(p) = params.min_position
        && !api.reached(&ctx.tenant, p).await
    {
        return Err(ApiError::new(
            ErrorCode::Timeout,
            format!("the audit log did not reach position {p} in time"),
        ));
    }
    let page = query(
        api.db(),
        &ctx.tenant,
        params.stream.as_deref(),
        params.event_type.as_deref(),
        after,
        limit,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        ApiError::new(ErrorCode::Unavailable, "the audit log is unavailable")
    })?;
    Ok(Json(page))
}

fn from_row(row: &AnyRow) -> Result<AuditEntry, sqlx::Error> {
    let json = |name: &str| -> Result<serde_json::Value, sqlx::Error> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(e.into()))
    };
    Ok(AuditEntry {
        seq: row.try_get::<i64, _>("seq")? as u64,
        position: row.try_get::<i64, _>("position")? as u64,
        source: row.try_get("source")?,
        id: row.try_get("id")?,
        stream: row.try_get("stream_id")?,
        version: row.try_get::<i64, _>("version")? as u64,
        event_type: row.try_get("event_type")?,
        data: json("data")?,
        metadata: json("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// A page of `tenant`'s audit log, read in a transaction scoped to `tenant`
/// ([`ServiceDb::scoped`]).
pub async fn query(
    db: &ServiceDb,
    tenant: &TenantId,
    stream: Option<&str>,
    event_type: Option<&str>,
    after: u64,
    limit: u32,
) -> Result<Page<AuditEntry>, sqlx::Error> {
    let mut values: Vec<&str> = vec![tenant.as_str()];
    let mut conditions = "tenant_id = $1".to_owned();
    for (column, value) in [("stream_id", stream), ("event_type", event_type)] {
        if let Some(v) = value {
            values.push(v);
            conditions.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    let total_sql = format!("SELECT COUNT(*) FROM audit_log WHERE {conditions}");
    let mut total_query = sqlx::query(&total_sql);
    for v in &values {
        total_query = total_query.bind(*v);
    }
    let mut tx = db.scoped(tenant).await?;
    let total: i64 = total_query.fetch_one(&mut *tx).await?.try_get(0)?;
    let sql = format!(
        "SELECT seq, source, position, id, stream_id, version, event_type, data, metadata,
                recorded_at
         FROM audit_log WHERE {conditions} AND seq > {after} ORDER BY seq LIMIT {}",
        u64::from(limit) + 1
    );
    let mut q = sqlx::query(&sql);
    for v in &values {
        q = q.bind(*v);
    }
    let rows = q.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Page {
        items,
        total: total.max(0) as u64,
        next,
    })
}

/// The OpenAPI description of the audit route.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(list),
    components(schemas(AuditEntry, Page<AuditEntry>)),
    tags((name = "audit", description = "Every event, filterable and paged"))
)]
pub struct AuditOpenApi;
