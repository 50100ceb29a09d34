//! End-to-end: the real `cairn up` binary on port 0, a fresh store per test,
//! driven over HTTP. Every scenario (`scenarios/`) runs on embedded SQLite
//! and on PostgreSQL.

mod scenarios;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use reqwest::{Client, StatusCode};
use scenarios::*;
use serde_json::{Value, json};

#[derive(Clone)]
enum Backend {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn sqlite() -> (tempfile::TempDir, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    (dir, Backend::Sqlite(path))
}

async fn postgres() -> Option<Backend> {
    if let Err(e) = sqlx::PgPool::connect(&postgres_url()).await {
        return cairn_store::testkit::service_absent("PostgreSQL", e);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let schema = format!(
        "cairn_test_{secs}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    Some(Backend::Postgres(format!(
        "{}?schema={schema}",
        postgres_url()
    )))
}

fn start(backend: &Backend) -> App {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["up", "--listen", "127.0.0.1:0"]);
    match backend {
        Backend::Sqlite(dir) => cmd.arg("--data-dir").arg(dir),
        Backend::Postgres(url) => cmd.args(["--store", url]),
    };
    let mut child = cmd
        .env_remove("CAIRN_STORE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cairn binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("cairn up printed its address before exiting")
            .unwrap();
        if let Some(rest) = line.strip_prefix("cairn up: listening on ") {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    App {
        child: Some(child),
        base,
        client: Client::new(),
        separate: false,
    }
}

/// The value of the first sample of `text` whose line starts with `start`
/// (metric name and labels), if any.
fn sample(text: &str, start: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(start)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

async fn metrics_are_served(app: &App) {
    let f = app.create_flight(5).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let r = app.add_passenger(&id, "M1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let r = app
        .get(&format!("/api/flights/{id}?minPosition={position}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    problem(
        app.post(&format!("/api/flights/{id}/landing"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(
        app.get("/no/such/page").await.status(),
        StatusCode::NOT_FOUND
    );

    let r = app.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();

    // RED by route template, never by the requested path.
    for (start, at_least) in [
        (
            r#"cairn_http_requests_total{method="POST",route="/api/flights",status="201"}"#,
            1.0,
        ),
        (
            r#"cairn_http_requests_total{method="GET",route="/api/flights/{id}",status="200"}"#,
            1.0,
        ),
        (
            r#"cairn_http_requests_total{method="POST",route="/api/flights/{id}/landing",status="409"}"#,
            1.0,
        ),
        (
            r#"cairn_http_requests_total{method="GET",route="unmatched",status="404"}"#,
            1.0,
        ),
        (
            r#"cairn_http_request_duration_seconds_count{method="POST",route="/api/passengers"}"#,
            1.0,
        ),
        // Commands by aggregate category and outcome.
        (
            r#"cairn_commands_total{category="flight",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"cairn_commands_total{category="flight",outcome="rule_violation"}"#,
            1.0,
        ),
        (
            r#"cairn_commands_total{category="manifest",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"cairn_command_duration_seconds_count{category="flight"}"#,
            2.0,
        ),
        // Read at scrape time.
        ("cairn_store_head_position", 2.0),
        (
            r#"cairn_projection_position{projection="flights.flights"}"#,
            2.0,
        ),
        (
            r#"cairn_projection_running{projection="flights.flights"}"#,
            1.0,
        ),
    ] {
        let value = sample(&text, start).unwrap_or_else(|| panic!("{start} missing:\n{text}"));
        assert!(value >= at_least, "{start} is {value}:\n{text}");
    }
    let lag = sample(
        &text,
        r#"cairn_projection_lag_events{projection="flights.flights"}"#,
    )
    .unwrap_or_else(|| panic!("flights lag missing:\n{text}"));
    assert!(lag >= 0.0);
    for projection in ["flights.flights", "passengers.passengers", "audit.log"] {
        let start = format!(r#"cairn_projection_failed{{projection="{projection}"}}"#);
        assert_eq!(sample(&text, &start), Some(0.0), "{start}:\n{text}");
    }
    assert!(!text.contains(&id), "a flight id in the metrics:\n{text}");
    assert!(!text.contains("demo"), "a tenant in the metrics:\n{text}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, backend) = super::sqlite();
                    let app = super::start(&backend);
                    super::$name(&app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::postgres().await else { return };
                    let app = super::start(&backend);
                    super::$name(&app).await;
                }
            )*
        }
    };
}

on_both!(
    lifecycle,
    deleting_a_flight_removes_its_passengers,
    bad_input_gets_a_problem,
    tenants_never_see_each_other,
    fifty_bookings_on_thirty_seats,
    metrics_are_served,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_state_and_does_not_reapply_projections() {
    let (_dir, backend) = sqlite();
    let app = start(&backend);
    let f = app.create_flight(10).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let r = app.add_passenger(&id, "A1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let before: Value = app
        .get(&format!("/api/audit?minPosition={position}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before["total"], 2);

    // A graceful stop (SIGTERM), then a new process on the same data.
    let mut app = app;
    let child = app.child.as_mut().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status}");
    drop(app);

    let app = start(&backend);
    let flight: Value = app
        .get(&format!("/api/flights/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(flight["passengers"]["total"], 1, "{flight}");
    let after: Value = app.get("/api/audit").await.json().await.unwrap();
    assert_eq!(after["total"], before["total"]);
    // And it goes on from there.
    let r = app.add_passenger(&id, "A2").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let flight: Value = app
        .get(&format!("/api/flights/{id}?minPosition={position}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(flight["passengers"]["total"], 2);
}
