//! End-to-end checks of `cairn bench store`, `cairn bench messaging` and
//! `cairn bench commands`: the real binary, run small on each backend, must
//! exit 0 and write a JSON array holding every metric, with baselines and
//! ratios where the backend has SQL to compare against; bad input must fail
//! with one clear line.
//!
//! `cairn bench commands` starts a real `cairn up` on embedded SQLite and on
//! PostgreSQL; its run must do every command asked for, none failing, and
//! leave no data directory or schema behind.
//!
//! PostgreSQL runs only when reachable at `CAIRN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); otherwise the test is skipped
//! with a notice, or fails when `CAIRN_TEST_SERVICES=required`.
//!
//! `cairn bench messaging` runs, with a small event count, on PostgreSQL and
//! NATS (`CAIRN_TEST_NATS_URL`, default `nats://127.0.0.1:4222`) or RabbitMQ
//! (`CAIRN_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! skipped or failed the same way when one is absent.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cairn_store::testkit::service_absent;
use serde_json::Value;
use sqlx::Connection;

/// The throughput metrics every run reports, each with its baseline on SQL
/// backends; the append ones also report `_p50` and `_p99` latencies.
const THROUGHPUT: [(&str, &str, &str); 9] = [
    ("append_1_writer", "raw_insert_1_per_tx", "events/s"),
    ("append_64_writers", "raw_insert_1_per_tx", "events/s"),
    ("append_batch_100", "raw_insert_100_per_tx", "events/s"),
    ("catchup_read", "raw_select_scan", "events/s"),
    ("stream_read", "raw_select_stream", "reads/s"),
    ("command_1_writer", "raw_command_1_conn", "commands/s"),
    ("command_64_writers", "raw_command_1_conn", "commands/s"),
    ("command_64_writers_hot", "raw_command_1_conn", "commands/s"),
    ("command_snapshot", "raw_command_1_conn", "commands/s"),
];

/// A fresh, empty directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-bench-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("bench")
        .arg("store")
        .args(args)
        .output()
        .expect("run cairn")
}

/// Runs a quick bench on `store`, asserts success and returns the JSON.
fn quick_run(store: &str, json: &Path) -> Vec<Value> {
    let json_arg = json.to_str().expect("utf-8 temp path");
    let out = bench(&["--store", store, "--quick", "--json", json_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("mode:    quick"), "{stdout}");
    assert!(stdout.contains("cores:"), "{stdout}");
    let text = std::fs::read_to_string(json).expect("JSON file written");
    match serde_json::from_str(&text).expect("JSON parses") {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

fn metric<'a>(metrics: &'a [Value], name: &str) -> &'a Value {
    metrics
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("metric {name} missing from {metrics:?}"))
}

/// Every metric present, positive, in the right unit; baselines and ratios
/// present on throughput rows exactly when `with_baseline`.
fn check_metrics(metrics: &[Value], with_baseline: bool) {
    for m in metrics {
        for field in [
            "name",
            "value",
            "unit",
            "baseline",
            "baseline_value",
            "ratio",
        ] {
            assert!(m.get(field).is_some(), "{field} missing in {m}");
        }
        // Lost races may be none; everything else moved.
        let least = if m["name"] == "command_64_writers_hot_retries" {
            0.0
        } else {
            f64::MIN_POSITIVE
        };
        assert!(m["value"].as_f64().is_some_and(|v| v >= least), "{m}");
    }
    let retries = metric(metrics, "command_64_writers_hot_retries");
    assert_eq!(retries["unit"], "retries", "{retries}");
    for (name, baseline, unit) in THROUGHPUT {
        let m = metric(metrics, name);
        assert_eq!(m["unit"], unit, "{m}");
        if with_baseline {
            assert_eq!(m["baseline"], baseline, "{m}");
            assert!(m["baseline_value"].as_f64().is_some_and(|v| v > 0.0), "{m}");
            let ratio = m["ratio"].as_f64().expect("ratio");
            let expected = m["value"].as_f64().unwrap() / m["baseline_value"].as_f64().unwrap();
            assert!(
                ratio > 0.0 && (ratio - expected).abs() < 1e-9 * expected,
                "{m}"
            );
        } else {
            assert!(m["baseline"].is_null() && m["ratio"].is_null(), "{m}");
            assert!(m["baseline_value"].is_null(), "{m}");
        }
        if name != "catchup_read" {
            for q in ["p50", "p99"] {
                let l = metric(metrics, &format!("{name}_{q}"));
                assert_eq!(l["unit"], "ms", "{l}");
                assert!(l["baseline"].is_null(), "{l}");
            }
        }
    }
    if with_baseline {
        let m = metric(metrics, "append_64_writers_events_per_tx");
        assert!(m["value"].as_f64().is_some_and(|v| v >= 1.0), "{m}");
    }
}

#[test]
fn memory_quick_reports_every_metric_without_baselines() {
    let dir = scratch("memory");
    let json = dir.join("memory.json");
    let metrics = quick_run("memory:", &json);
    check_metrics(&metrics, false);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sqlite_quick_compares_against_raw_sql_and_cleans_up() {
    let dir = scratch("sqlite");
    let db = dir.join("b.db");
    let json = dir.join("sqlite.json");
    let url = format!("sqlite://{}", db.display());
    let metrics = quick_run(&url, &json);
    check_metrics(&metrics, true);
    assert!(
        !db.exists(),
        "the bench database should be removed without --keep"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sqlite_refuses_an_existing_file_and_leaves_it_alone() {
    let dir = scratch("existing");
    let db = dir.join("data.db");
    std::fs::write(&db, b"precious").unwrap();
    let out = bench(&["--store", &format!("sqlite://{}", db.display()), "--quick"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), b"precious");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_url_fails_with_one_clear_line() {
    let out = bench(&["--store", "mysql://localhost/x", "--quick"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains("store URL"),
        "{stderr}"
    );
}

#[test]
fn bad_tenant_fails_with_one_clear_line() {
    let out = bench(&["--store", "memory:", "--quick", "--tenant", "Not Valid"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--tenant"), "{stderr}");
}

fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Schemas in the database whose name starts with `prefix`.
async fn schemas_like(conn: &mut sqlx::PgConnection, prefix: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
        .bind(prefix)
        .fetch_all(conn)
        .await
        .expect("list schemas")
}

#[tokio::test]
async fn postgres_quick_compares_against_raw_sql_and_drops_its_schemas() {
    let url = postgres_url();
    let mut conn = match sqlx::PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = service_absent::<()>("PostgreSQL", e);
            return;
        }
    };
    let dir = scratch("postgres");
    let json = dir.join("pg.json");
    let json_arg = json.to_str().expect("utf-8 temp path").to_owned();
    // The bench names its schemas after its pid; spawn it to learn the pid.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "bench", "store", "--store", &url, "--quick", "--json", &json_arg,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cairn");
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("wait for cairn");
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let metrics: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
    check_metrics(&metrics, true);
    let left: Vec<String> = schemas_like(&mut conn, "cairn_bench_")
        .await
        .into_iter()
        .filter(|s| s.ends_with(&format!("_{pid}")) || s.ends_with(&format!("_{pid}_baseline")))
        .collect();
    assert!(left.is_empty(), "schemas left behind: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
}

// `cairn bench messaging`: a small run on each broker, on PostgreSQL, must
// report every metric with counts that match what was sent, ordered
// latencies and a ratio against the raw publish ceiling, and remove its
// schemas and broker objects. Skipped (or failed with
// `CAIRN_TEST_SERVICES=required`) when PostgreSQL or the broker is absent.

/// Events each run of the small messaging bench appends.
const MESSAGING_EVENTS: u64 = 200;

fn nats_url() -> String {
    std::env::var("CAIRN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_url() -> String {
    std::env::var("CAIRN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Runs `cairn bench messaging` on `broker` and returns its pid, stdout and
/// the JSON it wrote.
async fn messaging_run(broker: &str, broker_url: &str, tag: &str) -> (u32, String, Vec<Value>) {
    let dir = scratch(tag);
    let json = dir.join("messaging.json");
    let json_arg = json.to_str().expect("utf-8 temp path").to_owned();
    let events = MESSAGING_EVENTS.to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "messaging", "--broker", broker, "--broker-url"])
        .arg(broker_url)
        .args(["--store", &postgres_url(), "--events", &events])
        .args(["--json", &json_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cairn");
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("wait for cairn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let metrics: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
    std::fs::remove_dir_all(&dir).ok();
    (pid, stdout, metrics)
}

/// The broker prefix the run printed (`broker: ... (prefix cbench-...)`).
fn printed_prefix(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("broker:"))
        .unwrap_or_else(|| panic!("no broker line in {stdout}"));
    let (_, rest) = line
        .split_once("(prefix ")
        .expect("prefix on the broker line");
    let prefix = rest.trim_end_matches(')').to_owned();
    assert!(prefix.starts_with("cbench-"), "{line}");
    prefix
}

fn value(metrics: &[Value], name: &str) -> f64 {
    metric(metrics, name)["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} has no number"))
}

/// Every metric present with every field and a positive value; as many
/// events handled as sent in both runs; latencies ordered; throughputs
/// compared against `baseline` with the ratio they claim.
fn check_messaging(metrics: &[Value], baseline: &str) {
    for m in metrics {
        for field in [
            "name",
            "value",
            "unit",
            "baseline",
            "baseline_value",
            "ratio",
        ] {
            assert!(m.get(field).is_some(), "{field} missing in {m}");
        }
        assert!(m["value"].as_f64().is_some_and(|v| v > 0.0), "{m}");
    }
    for run in ["e2e", "paced"] {
        let events = metric(metrics, &format!("{run}_events"));
        assert_eq!(events["unit"], "events", "{events}");
        assert_eq!(
            events["value"].as_f64(),
            Some(MESSAGING_EVENTS as f64),
            "{events}"
        );
        let (p50, p99, max) = (
            value(metrics, &format!("{run}_p50")),
            value(metrics, &format!("{run}_p99")),
            value(metrics, &format!("{run}_max")),
        );
        assert!(
            p50 <= p99 && p99 <= max,
            "{run}: p50 {p50}, p99 {p99}, max {max}"
        );
        for q in ["p50", "p99", "max"] {
            let l = metric(metrics, &format!("{run}_{q}"));
            assert_eq!(l["unit"], "ms", "{l}");
            assert!(l["baseline"].is_null() && l["ratio"].is_null(), "{l}");
        }
    }
    for name in ["append", "paced_append"] {
        let m = metric(metrics, name);
        assert_eq!(m["unit"], "events/s", "{m}");
        assert!(m["baseline"].is_null(), "{m}");
    }
    for name in ["relay", "e2e", "paced_offered", "paced_e2e"] {
        let m = metric(metrics, name);
        assert_eq!(m["unit"], "events/s", "{m}");
        assert_eq!(m["baseline"], baseline, "{m}");
        let raw = m["baseline_value"].as_f64().expect("baseline value");
        assert!(raw > 0.0, "{m}");
        let ratio = m["ratio"].as_f64().expect("ratio");
        let expected = m["value"].as_f64().unwrap() / raw;
        assert!(
            ratio > 0.0 && (ratio - expected).abs() < 1e-9 * expected,
            "{m}"
        );
    }
    // The paced run is offered half the ceiling.
    let offered = metric(metrics, "paced_offered")["ratio"].as_f64().unwrap();
    assert!((offered - 0.5).abs() < 1e-9, "{offered}");
}

/// Whether PostgreSQL answers; `None` skips (or fails when required).
async fn postgres_conn() -> Option<sqlx::PgConnection> {
    match sqlx::PgConnection::connect(&postgres_url()).await {
        Ok(conn) => Some(conn),
        Err(e) => service_absent("PostgreSQL", e),
    }
}

/// No `cairn_bench_msg_*` schema of the bench process `pid` is left.
async fn assert_no_messaging_schemas(conn: &mut sqlx::PgConnection, pid: u32) {
    let left: Vec<String> = schemas_like(conn, "cairn_bench_msg_")
        .await
        .into_iter()
        .filter(|s| s.contains(&format!("_{pid}")))
        .collect();
    assert!(left.is_empty(), "schemas left behind: {left:?}");
}

#[tokio::test]
async fn messaging_nats_counts_every_event_and_cleans_up() {
    let Some(mut conn) = postgres_conn().await else {
        return;
    };
    let url = nats_url();
    let client = match async_nats::connect(&url).await {
        Ok(client) => client,
        Err(e) => {
            let _ = service_absent::<()>("NATS", e);
            return;
        }
    };
    let (pid, stdout, metrics) = messaging_run("nats", &url, "messaging-nats").await;
    check_messaging(&metrics, "raw_jetstream_publish_acked");
    assert_no_messaging_schemas(&mut conn, pid).await;
    let prefix = printed_prefix(&stdout);
    let js = async_nats::jetstream::new(client);
    for stream in [
        cairn_messaging_nats::stream_name(&prefix),
        cairn_messaging_nats::stream_name(&format!("{prefix}-raw")),
    ] {
        assert!(
            js.get_stream(&stream).await.is_err(),
            "JetStream stream {stream} left behind"
        );
    }
}

#[tokio::test]
async fn messaging_amqp_counts_every_event_and_cleans_up() {
    use lapin::{
        Connection, ConnectionProperties,
        options::{ExchangeDeclareOptions, QueueDeclareOptions},
        types::FieldTable,
    };

    let Some(mut conn) = postgres_conn().await else {
        return;
    };
    let url = amqp_url();
    let amqp = match Connection::connect(&url, ConnectionProperties::default()).await {
        Ok(amqp) => amqp,
        Err(e) => {
            let _ = service_absent::<()>("RabbitMQ", e);
            return;
        }
    };
    let (pid, stdout, metrics) = messaging_run("amqp", &url, "messaging-amqp").await;
    check_messaging(&metrics, "raw_amqp_publish_confirmed");
    assert_no_messaging_schemas(&mut conn, pid).await;
    let prefix = printed_prefix(&stdout);
    // A passive declaration fails (and closes its channel) when the object
    // is gone.
    for queue in [
        format!("{prefix}.bench-inbox"),
        format!("{prefix}-raw.ceiling"),
    ] {
        let channel = amqp.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(declared.is_err(), "queue {queue} left behind");
    }
    for exchange in [format!("{prefix}.events"), format!("{prefix}-raw.events")] {
        let channel = amqp.create_channel().await.expect("channel");
        let declared = channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(declared.is_err(), "exchange {exchange} left behind");
    }
    let _ = amqp.close(200, "done".into()).await;
}

#[test]
fn messaging_refuses_a_memory_store_with_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "bench",
            "messaging",
            "--broker",
            "nats",
            "--store",
            "memory:",
        ])
        .output()
        .expect("run cairn");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--store"), "{stderr}");
}

// `cairn bench commands`: a small run of the flow through a real `cairn up`
// on each store kind must do every command it was asked for with no
// failure, report every figure with the ratio it claims, and leave no data
// directory or schema behind. Speed is not asserted.

/// Timed commands of the small run: ten rounds of the flow (1 flight, 4
/// passengers added, 4 boarded) over two clients.
const COMMANDS: u64 = 90;

/// Runs `cairn bench commands` on `store` and returns its pid, stdout and
/// the JSON it wrote.
async fn commands_run(store: &str, tag: &str) -> (u32, String, Vec<Value>) {
    let dir = scratch(tag);
    let json = dir.join("commands.json");
    let json_arg = json.to_str().expect("utf-8 temp path").to_owned();
    let commands = COMMANDS.to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "bench",
            "commands",
            "--store",
            store,
            "--commands",
            &commands,
        ])
        .args(["--concurrency", "2", "--json", &json_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cairn");
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("wait for cairn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains("token") && !stderr.contains("Bearer"),
        "the dev token must not be printed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&json).expect("JSON file written");
    let metrics: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
    std::fs::remove_dir_all(&dir).ok();
    (pid, stdout, metrics)
}

/// Every figure present with every field; all commands done and none
/// failed; the kinds in the flow's order (no passenger boarded who was not
/// added, none added without a flight); latencies ordered; the
/// command rate against the store's append rate and that against raw SQL,
/// with the ratios they claim.
fn check_commands(metrics: &[Value]) {
    for m in metrics {
        for field in [
            "name",
            "value",
            "unit",
            "baseline",
            "baseline_value",
            "ratio",
        ] {
            assert!(m.get(field).is_some(), "{field} missing in {m}");
        }
        assert!(m["value"].as_f64().is_some_and(|v| v >= 0.0), "{m}");
    }
    assert_eq!(value(metrics, "commands_done"), COMMANDS as f64);
    assert_eq!(value(metrics, "errors"), 0.0);
    // Each client follows every tenth of its commands to the read models;
    // the two clients share the 90 commands in some split.
    let probes = value(metrics, "read_model_probes");
    assert!(probes == 8.0 || probes == 9.0, "{probes} probes");
    let total = value(metrics, "commands");
    let (flights, added, boarded) = (
        value(metrics, "create_flight"),
        value(metrics, "add_passenger"),
        value(metrics, "board_passenger"),
    );
    assert!(
        (flights + added + boarded - total).abs() < 1e-6 * total,
        "kinds {flights} + {added} + {boarded} vs all {total}"
    );
    assert!(
        // Rates of counts over one duration: compared with a rounding
        // margin (4 passengers per flight can come out 1 ulp above).
        flights > 0.0
            && boarded > 0.0
            && boarded <= added * (1.0 + 1e-9)
            && added <= 4.0 * flights * (1.0 + 1e-9),
        "{flights} {added} {boarded}"
    );
    for name in [
        "commands",
        "create_flight",
        "add_passenger",
        "board_passenger",
        "command_to_read_model",
        "audit_probe",
    ] {
        let (p50, p99) = (
            value(metrics, &format!("{name}_p50")),
            value(metrics, &format!("{name}_p99")),
        );
        assert!(0.0 < p50 && p50 <= p99, "{name}: p50 {p50}, p99 {p99}");
        assert_eq!(metric(metrics, &format!("{name}_p99"))["unit"], "ms");
    }
    // Reading the audit log comes after the command's answer.
    assert!(value(metrics, "command_to_read_model_p50") > value(metrics, "audit_probe_p50"));
    for (name, unit, baseline) in [
        ("commands", "commands/s", "store_append"),
        ("store_append", "events/s", "raw_insert_1_per_tx"),
    ] {
        let m = metric(metrics, name);
        assert_eq!(m["unit"], unit, "{m}");
        assert_eq!(m["baseline"], baseline, "{m}");
        let base = value(metrics, baseline);
        assert_eq!(m["baseline_value"].as_f64(), Some(base), "{m}");
        let ratio = m["ratio"].as_f64().expect("ratio");
        assert!(
            base > 0.0 && (ratio - m["value"].as_f64().unwrap() / base).abs() < 1e-9,
            "{m}"
        );
    }
}

/// No `cairn_bench_cmd_*_<pid>` directory left in the temp dir.
fn assert_no_commands_scratch(pid: u32) {
    let suffix = format!("_{pid}");
    let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("read the temp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cairn_bench_cmd_") && n.ends_with(&suffix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn commands_embedded_does_every_command_and_cleans_up() {
    let (pid, stdout, metrics) = commands_run("embedded", "commands-embedded").await;
    assert!(stdout.contains("store:       embedded"), "{stdout}");
    check_commands(&metrics);
    assert_no_commands_scratch(pid);
}

#[tokio::test]
async fn commands_postgres_does_every_command_and_drops_its_schemas() {
    let Some(mut conn) = postgres_conn().await else {
        return;
    };
    let (pid, _, metrics) = commands_run(&postgres_url(), "commands-postgres").await;
    check_commands(&metrics);
    assert_no_commands_scratch(pid);
    let left: Vec<String> = schemas_like(&mut conn, "cairn_bench_")
        .await
        .into_iter()
        .filter(|s| s.contains(&format!("_{pid}")))
        .collect();
    assert!(left.is_empty(), "schemas left behind: {left:?}");
}

#[test]
fn commands_refuse_bad_options_with_one_clear_line() {
    for (args, expected) in [
        (&["--store", "sqlite://x.db"][..], "--store"),
        (&["--store", "memory:"][..], "--store"),
        (&["--concurrency", "0"][..], "--concurrency"),
        (&["--concurrency", "5000"][..], "--concurrency"),
        (&["--commands", "0"][..], "--commands"),
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["bench", "commands"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run cairn");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait for cairn");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error:") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        // Refused before anything is made.
        assert_no_commands_scratch(pid);
    }
}
