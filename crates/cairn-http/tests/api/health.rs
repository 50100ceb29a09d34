//! `/health/live` and `/health/ready` over HTTP.

use cairn_http::Health;
use serde_json::json;

use crate::common::{spawn_with, sqlite_db};

#[tokio::test]
async fn live_is_200_and_ready_is_200_when_every_check_passes() {
    let db = sqlite_db().await.unwrap();
    let health = Health::new()
        .with_sql_check("database", db.pool.clone())
        .with_check("broker", || async { Ok::<_, String>(()) });
    let app = spawn_with(None, health).await;

    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(
        live.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "live"})
    );

    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "ready", "checks": {"database": {"status": "up"}, "broker": {"status": "up"}}})
    );
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn ready_is_503_naming_the_failed_checks() {
    let db = sqlite_db().await.unwrap();
    let pool = db.pool.clone();
    let health = Health::new()
        .with_sql_check("database", pool.clone())
        .with_check("broker", || async { Err("connection refused") });
    let app = spawn_with(None, health.clone()).await;
    pool.close().await;

    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unready");
    assert_eq!(
        body["checks"]["broker"],
        json!({"status": "down", "error": "connection refused"})
    );
    assert_eq!(body["checks"]["database"]["status"], "down");

    // Liveness does not depend on readiness.
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    health.set_draining();
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "draining"})
    );
    app.stop().await;
    db.drop_db().await;
}
