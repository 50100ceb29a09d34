//! The projections' admin API: who may see and do what, and that a skip
//! passes over exactly the event the projection stopped at.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{Method, StatusCode},
    middleware::{self, Next},
    response::Response,
};
use cairn_auth::permissions::{PROJECTIONS_ADMIN, PROJECTIONS_READ, TENANTS_ADMIN};
use cairn_core::{NewEvent, RecordedEvent, RequestContext, StreamId, TenantId};
use cairn_http::{REDACTED, projections_router};
use cairn_projection::{
    Projection, ProjectionError, ProjectionOptions, ProjectionState, Projections,
};
use cairn_service_db::ServiceDb;
use cairn_store::{AllFilter, EventStore, ExpectedVersion, MemoryStore};
use serde_json::{Value, json};
use sqlx::{Any, Transaction};
use tower::ServiceExt;

/// Counts events; fails for good on events of type `Bad`.
struct Notes;

#[async_trait]
impl Projection for Notes {
    fn name(&self) -> &'static str {
        "notes"
    }

    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants()
    }

    fn schema(&self) -> Vec<String> {
        vec!["CREATE TABLE IF NOT EXISTS notes (tenant_id TEXT NOT NULL, n BIGINT NOT NULL)".into()]
    }

    fn reset(&self) -> Vec<String> {
        vec!["DROP TABLE IF EXISTS notes".into()]
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        if event.event_type == "Bad" {
            return Err(ProjectionError::poison("a note without text"));
        }
        sqlx::query("INSERT INTO notes (tenant_id, n) VALUES ($1, 1)")
            .bind(event.tenant.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn append(store: &MemoryStore, tenant: &str, event_type: &str) -> u64 {
    store
        .append(
            &TenantId::new(tenant).unwrap(),
            &StreamId::new(format!("note-{}", uuid::Uuid::new_v4().simple())).unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::new(event_type, json!({}))],
        )
        .await
        .unwrap()
        .last_position
}

/// The admin routes, with the caller's tenant and permissions taken from
/// test headers (a stand-in for the token layer, tested elsewhere).
fn app(projections: Projections) -> Router {
    async fn as_caller(mut request: Request, next: Next) -> Response {
        let ctx = {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let permissions = header("x-test-permissions");
            RequestContext::new(TenantId::new(header("x-test-tenant")).unwrap())
                .with_actor("eve")
                .with_permissions(permissions.split(',').filter(|p| !p.is_empty()))
        };
        request.extensions_mut().insert(ctx);
        next.run(request).await
    }
    projections_router(projections).layer(middleware::from_fn(as_caller))
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    caller: (&str, &[&str]),
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-test-tenant", caller.0)
        .header("x-test-permissions", caller.1.join(","))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn until_failed(projections: &Projections) {
    for _ in 0..500 {
        if projections.status_of("notes").await.unwrap().state == ProjectionState::Failed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the projection never failed");
}

#[tokio::test]
async fn operators_see_and_act_within_their_rights() {
    let store = Arc::new(MemoryStore::new());
    append(&store, "acme", "Good").await;
    let bad = append(&store, "acme", "Bad").await;
    let last = append(&store, "globex", "Good").await;
    let projections = Projections::start(
        ServiceDb::ephemeral().await.unwrap(),
        store.clone() as Arc<dyn EventStore>,
        [Arc::new(Notes) as Arc<dyn Projection>],
        ProjectionOptions::default(),
    )
    .await
    .unwrap();
    until_failed(&projections).await;
    let app = app(projections.clone());
    let reader: &[&str] = &[PROJECTIONS_READ];
    let admin: &[&str] = &[PROJECTIONS_READ, PROJECTIONS_ADMIN];
    let super_admin: &[&str] = &[PROJECTIONS_READ, PROJECTIONS_ADMIN, TENANTS_ADMIN];

    // Without the permission: 403, as a problem.
    let (status, body) = call(&app, Method::GET, "/api/projections", ("acme", &[]), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/projections/notes/retry",
        ("acme", reader),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The failing event's tenant sees its details; another tenant only its
    // position and type.
    let (status, body) = call(
        &app,
        Method::GET,
        "/api/projections",
        ("acme", reader),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let failure = &body[0]["failure"];
    assert_eq!(failure["position"], bad);
    assert_eq!(failure["tenant"], "acme");
    assert!(failure["error"].as_str().unwrap().contains("without text"));
    assert_eq!(body[0]["policy"], "stop");
    let (_, body) = call(
        &app,
        Method::GET,
        "/api/projections/notes",
        ("globex", reader),
        None,
    )
    .await;
    assert_eq!(body["failure"]["position"], bad);
    assert_eq!(body["failure"]["eventType"], "Bad");
    for hidden in ["tenant", "stream", "eventId", "error"] {
        assert_eq!(body["failure"][hidden], REDACTED, "{hidden}");
    }

    // Another tenant's admin may not skip it; nobody skips a position it
    // did not stop at; a tenant admin may not rebuild; bad bodies and
    // unknown names are problems. None of it changes anything.
    let skip = |position: u64| Some(json!({ "position": position }));
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/projections/notes/skip",
        ("globex", admin),
        skip(bad),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/projections/notes/skip",
        ("acme", admin),
        skip(last),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "rule_violation");
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/projections/notes/skip",
        ("acme", admin),
        Some(json!({ "position": "soon" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/projections/notes/rebuild",
        ("acme", admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(
        &app,
        Method::GET,
        "/api/projections/nope",
        ("acme", reader),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/projections/notes/dead-letters?limit=0",
        ("acme", reader),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        projections.status_of("notes").await.unwrap().state,
        ProjectionState::Failed
    );

    // The event's own tenant admin skips it; the projection runs on.
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/projections/notes/skip",
        ("acme", admin),
        skip(bad),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        projections
            .wait_for("notes", last, Duration::from_secs(10))
            .await
    );
    let (_, body) = call(
        &app,
        Method::GET,
        "/api/projections/notes/dead-letters",
        ("acme", reader),
        None,
    )
    .await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["reason"], "skipped");
    assert_eq!(items[0]["actor"], "acme/eve");
    assert_eq!(items[0]["position"], bad);
    let (_, body) = call(
        &app,
        Method::GET,
        "/api/projections/notes/dead-letters",
        ("globex", reader),
        None,
    )
    .await;
    assert_eq!(body["items"], json!([]), "another tenant's dead letters");

    // Retry and rebuild, by the super-admin.
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/projections/notes/retry",
        ("platform", super_admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "running");
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/projections/notes/rebuild",
        ("platform", super_admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        projections
            .wait_for("notes", last, Duration::from_secs(10))
            .await
    );
    let (_, body) = call(
        &app,
        Method::GET,
        "/api/projections/notes",
        ("platform", super_admin),
        None,
    )
    .await;
    assert_eq!(
        (body["state"].as_str(), body["skipped"].as_u64()),
        (Some("running"), Some(1))
    );
    projections.shutdown().await;
}
