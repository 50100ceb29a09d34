//! RED metrics and `GET /metrics`: requests are counted by route template,
//! not by path, and the endpoint serves the Prometheus text format.

use axum::{
    Router,
    routing::{get, post},
};
use cairn_core::TenantId;
use cairn_http::{ApiPath, HttpOptions, TenantHeaderOptions};
use cairn_telemetry::Metrics;
use tokio::sync::oneshot;

/// Serves `api` through the standard stack with the given metrics option.
async fn serve(api: Router, metrics: Option<Metrics>) -> (String, oneshot::Sender<()>) {
    let options = HttpOptions {
        tenant: TenantHeaderOptions {
            default_tenant: Some(TenantId::new("demo").unwrap()),
        },
        metrics,
        ..HttpOptions::default()
    };
    let router = cairn_http::app(api, Router::new(), &options, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(cairn_http::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), stop)
}

/// The sample lines of `metric` whose labels contain every one of `labels`.
fn samples<'a>(text: &'a str, metric: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{'))
                && labels.iter().all(|label| line.contains(label))
        })
        .collect()
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_served_at_metrics() {
    // A route only this test calls: the recorder is shared by the whole
    // test process.
    let api = Router::new().route(
        "/red-test/things/{id}",
        get(|ApiPath(id): ApiPath<u64>| async move { id.to_string() }),
    );
    let (base, stop) = serve(api, Some(Metrics::install())).await;
    let client = reqwest::Client::new();
    for path in [
        "/red-test/things/7",
        "/red-test/things/8",
        "/red-test/things/x",
    ] {
        client.get(format!("{base}{path}")).send().await.unwrap();
    }
    let r = client
        .post(format!("{base}/red-test/things/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = client
        .get(format!("{base}/red-test/unknown/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();

    let route = r#"route="/red-test/things/{id}""#;
    assert_eq!(
        samples(
            &text,
            "cairn_http_requests_total",
            &[route, r#"status="200""#]
        ),
        vec![
            r#"cairn_http_requests_total{method="GET",route="/red-test/things/{id}",status="200"} 2"#
        ],
        "{text}"
    );
    assert_eq!(
        samples(
            &text,
            "cairn_http_requests_total",
            &[route, r#"status="400""#]
        ),
        vec![
            r#"cairn_http_requests_total{method="GET",route="/red-test/things/{id}",status="400"} 1"#
        ],
        "{text}"
    );
    assert_eq!(
        samples(
            &text,
            "cairn_http_requests_total",
            &[route, r#"method="POST""#]
        ),
        vec![
            r#"cairn_http_requests_total{method="POST",route="/red-test/things/{id}",status="405"} 1"#
        ],
        "{text}"
    );
    assert!(
        !samples(
            &text,
            "cairn_http_requests_total",
            &[r#"route="unmatched""#, r#"status="404""#]
        )
        .is_empty(),
        "{text}"
    );
    assert!(!text.contains("/red-test/things/7"), "a raw path: {text}");
    assert!(!text.contains("/red-test/unknown"), "a raw path: {text}");

    assert_eq!(
        samples(
            &text,
            "cairn_http_request_duration_seconds_count",
            &[route, r#"method="GET""#]
        ),
        vec![
            r#"cairn_http_request_duration_seconds_count{method="GET",route="/red-test/things/{id}"} 3"#
        ],
        "{text}"
    );
    assert!(
        text.contains(
            r#"cairn_http_request_duration_seconds_bucket{method="GET",route="/red-test/things/{id}",le="+Inf"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE cairn_http_request_duration_seconds histogram"));
    assert!(text.contains("# HELP cairn_http_requests_total "));

    // The scrape itself is a request like any other.
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !samples(
            &text,
            "cairn_http_requests_total",
            &[r#"route="/metrics""#, r#"status="200""#]
        )
        .is_empty(),
        "{text}"
    );
    let _ = stop.send(());
}

#[tokio::test]
async fn collectors_run_when_metrics_are_scraped() {
    let metrics = Metrics::install().with_collector("red-test", || async {
        metrics::gauge!("cairn_red_test_scraped").set(1.0);
    });
    let (base, stop) = serve(Router::new(), Some(metrics)).await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l == "cairn_red_test_scraped 1"),
        "{text}"
    );
    let _ = stop.send(());
}

#[tokio::test]
async fn without_a_metrics_handle_there_is_no_metrics_route() {
    let api = Router::new().route("/red-test/ping", post(|| async { "pong" }));
    let (base, stop) = serve(api, None).await;
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let _ = stop.send(());
}
