//! Audit as the runtime sees it: its [`descriptor()`].

use std::{future::Future, pin::Pin, sync::Arc};

use cairn_core::{EventId, StreamId};
use cairn_http::{CrossTenantAudit, CrossTenantRead};
use cairn_messaging::EventHandler as _;
use cairn_service::{ConsumerGroup, CrossReads, Env, ServiceDescriptor, Started, Topology};
use cairn_service_db::ServiceDb;
use utoipa::OpenApi as _;

use crate::{AuditApi, AuditOpenApi, AuditProjection, AuditSink};

/// The service name.
pub const SERVICE: &str = "audit";

/// Everything the runtime needs to run Audit: in one process a projection
/// over the shared log; on its own, consumers of every other service's
/// public events. It keeps no events of its own.
pub fn descriptor() -> ServiceDescriptor {
    ServiceDescriptor::new(SERVICE, "Cairn audit", start)
        .without_events()
        .openapi(AuditOpenApi::openapi)
        .shares("/api/audit", "audit")
        .projections(|env| match env.topology {
            Topology::Shared => vec![Arc::new(AuditProjection::new(env.published))],
            Topology::Own => Vec::new(),
        })
        .consumers(
            |layout| match layout.topology {
                Topology::Shared => Vec::new(),
                Topology::Own => sources(layout.published)
                    .into_iter()
                    .map(|source| {
                        ConsumerGroup::new(crate::group(source), source, Vec::<String>::new())
                    })
                    .collect(),
            },
            |env| match env.topology {
                Topology::Shared => Vec::new(),
                Topology::Own => crate::consumers(
                    &env.db,
                    &env.broker,
                    &sources(&env.published),
                    env.live.clone(),
                ),
            },
        )
        .cross_reads(CrossReads::Custom(Arc::new(|env: &Env| {
            Arc::new(AuditLogAudit(env.db.clone())) as Arc<dyn CrossTenantAudit>
        })))
}

/// Every other service that publishes events.
fn sources(published: &[cairn_messaging::PublicEvents]) -> Vec<&str> {
    published
        .iter()
        .map(|p| p.service.as_str())
        .filter(|s| *s != SERVICE)
        .collect()
}

async fn start(env: Env) -> anyhow::Result<Started> {
    let api = match (env.topology, &env.projections) {
        (Topology::Shared, Some(projections)) => AuditApi::Log(projections.clone()),
        _ => {
            crate::create_tables(env.db.pool())
                .await
                .map_err(|e| anyhow::anyhow!("creating the audit log: {e}"))?;
            AuditApi::Consumers(env.db.clone())
        }
    };
    let background = env.push_live(crate::live::feed()).into_iter().collect();
    Ok(Started {
        api: crate::router(api.clone()),
        background,
        live: Some(Arc::new(crate::live::AuditLive { api })),
        ..Started::default()
    })
}

/// Records each cross-tenant read of the audit service (which keeps no
/// events of its own) straight into the read tenant's audit log, as a
/// `CrossTenantRead` entry of source `audit` in stream
/// `crossread_audit-<reader's tenant>`.
#[derive(Debug)]
pub struct AuditLogAudit(pub ServiceDb);

impl CrossTenantAudit for AuditLogAudit {
    fn record(
        &self,
        read: CrossTenantRead,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let subject = StreamId::for_aggregate("crossread_audit", &read.actor_tenant)
                .map_err(|e| e.to_string())?;
            let event = cairn_messaging::IntegrationEvent {
                specversion: cairn_messaging::SPEC_VERSION.to_owned(),
                id: EventId::new(),
                source: SERVICE.into(),
                event_type: cairn_http::CROSS_TENANT_READ.into(),
                subject,
                time: chrono::Utc::now(),
                datacontenttype: "application/json".into(),
                data: cairn_http::cross_read_data(&read),
                tenantid: read.tenant.clone(),
                traceparent: None,
                correlationid: Some(read.correlation_id.clone()),
                causationid: None,
                actor: Some(read.actor.clone()),
                sequence: "0".into(),
                prevsequence: None,
                position: "0".into(),
                schemaversion: 1,
            };
            let mut tx = self.0.pool().begin().await.map_err(|e| e.to_string())?;
            AuditSink
                .handle(&mut tx, &event)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())
        })
    }
}
