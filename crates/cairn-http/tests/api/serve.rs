//! Graceful shutdown: a request in flight when shutdown begins still gets
//! its answer, and `serve` returns once it is done.

use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;

use crate::common::{Shared, api};

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let shared = Shared::default();
    let router = cairn_http::app(
        api(shared.clone()),
        axum::Router::new(),
        &cairn_http::HttpOptions {
            tenant: cairn_http::TenantHeaderOptions {
                default_tenant: Some(cairn_core::TenantId::new("demo").unwrap()),
            },
            ..Default::default()
        },
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(cairn_http::serve(listener, router, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(
        client
            .post(format!("http://{addr}/flights"))
            .json(&json!({"number": "SLOW", "capacity": 1}))
            .send(),
    );
    shared.wait_entered().await;
    stop.send(()).unwrap();
    // Shutdown has begun; the request is still inside its handler.
    assert!(!server.is_finished());
    shared.release.add_permits(1);

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["number"],
        "SLOW"
    );
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops once the request is done")
        .unwrap()
        .unwrap();
}
