//! `audit.log` as a live resource, on an audit database fed by the audit
//! service's consumer sink: the permission it needs, its filters, its
//! order, and one tenant's entries only.

use cairn_audit::{AuditApi, AuditSink, live::AuditLive};
use cairn_auth::permissions::AUDIT_READ;
use cairn_core::{EventId, Metadata, RecordedEvent, RequestContext, StreamId, TenantId};
use cairn_live::Resources;
use cairn_messaging::{EventHandler, IntegrationEvent};
use cairn_res::{Resource, Rid, Value};
use cairn_service_db::ServiceDb;
use serde_json::json;

fn reader(tenant: &str) -> RequestContext {
    let mut ctx = RequestContext::new(TenantId::new(tenant).unwrap()).with_actor("auditor");
    ctx.permissions = [AUDIT_READ.to_owned()].into();
    ctx
}

async fn record(db: &ServiceDb, tenant: &str, stream: &str, event_type: &str, position: u64) {
    let event = RecordedEvent {
        id: EventId::new(),
        tenant: TenantId::new(tenant).unwrap(),
        stream: StreamId::new(stream).unwrap(),
        version: 0,
        position,
        event_type: event_type.to_owned(),
        schema_version: 1,
        data: json!({ "n": position }),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    let message = IntegrationEvent::from_recorded("flights", &event, None);
    let mut tx = db.pool().begin().await.unwrap();
    AuditSink.handle(&mut tx, &message).await.unwrap();
    tx.commit().await.unwrap();
}

fn types(resource: Resource) -> Vec<(String, u64)> {
    let Resource::Collection(values) = resource else {
        panic!("audit.log is a collection");
    };
    values
        .into_iter()
        .map(|v| match v {
            Value::Data(entry) => (
                entry["type"].as_str().unwrap().to_owned(),
                entry["data"]["n"].as_u64().unwrap(),
            ),
            other => panic!("an entry is a data value: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_audit_log_is_newest_first_filtered_and_the_tenants_own() {
    let db = ServiceDb::ephemeral().await.unwrap();
    cairn_audit::create_tables(db.pool()).await.unwrap();
    record(&db, "acme", "flight-1", "FlightScheduled", 1).await;
    record(&db, "acme", "flight-2", "FlightScheduled", 2).await;
    record(&db, "acme", "flight-1", "FlightDeparted", 3).await;
    record(&db, "globex", "flight-9", "FlightScheduled", 4).await;
    let live = AuditLive {
        api: AuditApi::Consumers(db),
    };
    let rid = |text: &str| Rid::parse(text).unwrap();
    let acme = reader("acme");

    let all = live.get(&acme, &rid("audit.log")).await.unwrap();
    assert_eq!(
        types(all),
        [
            ("FlightDeparted".to_owned(), 3),
            ("FlightScheduled".to_owned(), 2),
            ("FlightScheduled".to_owned(), 1)
        ]
    );
    let scheduled = live
        .get(&acme, &rid("audit.log?type=FlightScheduled"))
        .await
        .unwrap();
    assert_eq!(types(scheduled).len(), 2);
    let one = live
        .get(&acme, &rid("audit.log?stream=flight-1&type=FlightDeparted"))
        .await
        .unwrap();
    assert_eq!(types(one), [("FlightDeparted".to_owned(), 3)]);
    let globex = live
        .get(&reader("globex"), &rid("audit.log"))
        .await
        .unwrap();
    assert_eq!(types(globex), [("FlightScheduled".to_owned(), 4)]);

    // Refused: without the permission, another resource, a bad filter.
    let no_permission = RequestContext::new(TenantId::new("acme").unwrap()).with_actor("x");
    let err = live
        .get(&no_permission, &rid("audit.log"))
        .await
        .unwrap_err();
    assert_eq!(err.code, "system.accessDenied", "{err}");
    let err = live.get(&acme, &rid("audit.other")).await.unwrap_err();
    assert_eq!(err.code, "system.notFound");
    for bad in [
        "audit.log?colour=red",
        "audit.log?type=",
        "audit.log?stream",
    ] {
        let err = live.get(&acme, &rid(bad)).await.unwrap_err();
        assert_eq!(err.code, "system.invalidQuery", "{bad}");
    }
}
