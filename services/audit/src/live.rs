//! The audit log live: `audit.log[?type=…&stream=…]`, the latest entries
//! of the caller's tenant, newest first, each a data value. It needs the
//! permission `audit:read`, as `GET /api/audit` does behind a token.
//!
//! In one process, [`feed`] resets it on every event once the audit
//! projection shows it: a client holding it gets the new entry as an `add`
//! at the top, and the oldest one past the window as a `remove`.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{ErrorCode, RequestContext, TenantId};
use cairn_live::Resources;
use cairn_res::{ResError, Resource, Rid, Value};
use cairn_service::live::LiveFeed;
use cairn_service_db::ServiceDb;

use crate::{AuditApi, AuditEntry, PROJECTION, from_row};

/// How many entries `audit.log` holds.
pub const LATEST: u32 = 50;

/// The audit log's live resources.
#[derive(Debug, Clone)]
pub struct AuditLive {
    pub api: AuditApi,
}

/// The filters of `audit.log`'s query.
fn filters(rid: &Rid) -> Result<(Option<String>, Option<String>), ResError> {
    let (mut event_type, mut stream) = (None, None);
    for pair in rid
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("type", v)) if !v.is_empty() => event_type = Some(v.to_owned()),
            Some(("stream", v)) if !v.is_empty() => stream = Some(v.to_owned()),
            _ => {
                return Err(ResError::invalid_query(format!(
                    "{pair:?}: audit.log takes type=<event type> and stream=<stream>"
                )));
            }
        }
    }
    Ok((event_type, stream))
}

#[async_trait]
impl Resources for AuditLive {
    fn read_permissions(&self) -> Vec<String> {
        vec![cairn_auth::permissions::AUDIT_READ.to_owned()]
    }

    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        if rid.name() != "audit.log" {
            return Err(ResError::not_found());
        }
        if !ctx.has_permission(cairn_auth::permissions::AUDIT_READ) {
            return Err(ResError::from_code(
                ErrorCode::Forbidden,
                format!(
                    "reading the audit log needs the permission {}",
                    cairn_auth::permissions::AUDIT_READ
                ),
            ));
        }
        let (event_type, stream) = filters(rid)?;
        let entries = latest(
            self.api.db(),
            &ctx.tenant,
            stream.as_deref(),
            event_type.as_deref(),
            LATEST,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit query failed");
            ResError::from_code(ErrorCode::Unavailable, "the audit log is unavailable")
        })?;
        Ok(Resource::Collection(
            entries
                .into_iter()
                .map(|e| Value::Data(serde_json::to_value(e).unwrap_or_default()))
                .collect(),
        ))
    }
}

/// The latest `limit` entries of `tenant`'s audit log, newest first.
pub async fn latest(
    db: &ServiceDb,
    tenant: &TenantId,
    stream: Option<&str>,
    event_type: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let mut values: Vec<&str> = vec![tenant.as_str()];
    let mut conditions = "tenant_id = $1".to_owned();
    for (column, value) in [("stream_id", stream), ("event_type", event_type)] {
        if let Some(v) = value {
            values.push(v);
            conditions.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    let sql = format!(
        "SELECT seq, source, position, id, stream_id, version, event_type, data, metadata,
                recorded_at
         FROM audit_log WHERE {conditions} ORDER BY seq DESC LIMIT {limit}"
    );
    let mut query = sqlx::query(&sql);
    for v in &values {
        query = query.bind(*v);
    }
    let mut tx = db.scoped(tenant).await?;
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    rows.iter().map(from_row).collect()
}

/// Every event reaches the audit log: each resets `audit.log`.
pub fn feed() -> LiveFeed {
    LiveFeed {
        categories: Vec::new(),
        projection: PROJECTION,
        touched: Arc::new(|_| vec!["audit.log".to_owned()]),
    }
}
