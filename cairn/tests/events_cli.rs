//! `cairn events` end to end: the real binary against SQLite and PostgreSQL.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

fn cairn(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("events")
        .args(args)
        .args(["--store", store, "--tenant", "acme"])
        .env_remove("CAIRN_STORE")
        .env_remove("CAIRN_TENANT")
        .output()
        .expect("run cairn")
}

fn ok_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "cairn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(out.stdout.is_empty());
    stderr
}

fn temp_db() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("cairn-cli-{}", uuid::Uuid::now_v7()));
    let url = format!("sqlite://{}", dir.join("store.db").display());
    (dir, url)
}

/// The whole operator workflow against one store URL.
fn workflow(store: &str) {
    let appended = ok_lines(&cairn(
        store,
        &[
            "append",
            "--stream",
            "flight-1",
            "--type",
            "FlightScheduled",
            "--data",
            r#"{"number":"SK1421"}"#,
            "--expected",
            "no-stream",
        ],
    ));
    assert_eq!(appended.len(), 1);
    assert_eq!(appended[0]["version"], 0);
    let first_position = appended[0]["position"].as_u64().unwrap();
    assert!(first_position >= 1);

    // Idempotent resend with a fixed id.
    let id = "0190f5a4-7c1e-7000-8000-000000000001";
    let args = [
        "append",
        "--stream",
        "flight-1",
        "--type",
        "FlightDeparted",
        "--data",
        "{}",
        "--id",
        id,
        "--expected",
        "0",
        "--metadata",
        r#"{"correlationId":"c-1","actor":"ops"}"#,
    ];
    let once = ok_lines(&cairn(store, &args));
    let twice = ok_lines(&cairn(store, &args));
    assert_eq!(once, twice);
    assert_eq!(once[0]["version"], 1);

    // Stale expected version: one clear line, non-zero exit, nothing written.
    let err = error_line(&cairn(
        store,
        &[
            "append",
            "--stream",
            "flight-1",
            "--type",
            "X",
            "--data",
            "{}",
            "--expected",
            "0",
        ],
    ));
    assert!(err.contains("wrong_expected_version"), "{err}");
    let bad_inputs: [(&[&str], &str); 5] = [
        (
            &[
                "append", "--stream", "flight-1", "--type", "X", "--data", "{nope",
            ],
            "--data",
        ),
        (
            &["append", "--stream", "", "--type", "X", "--data", "{}"],
            "stream",
        ),
        (
            &[
                "append",
                "--stream",
                "s-1",
                "--type",
                "X",
                "--data",
                "{}",
                "--expected",
                "maybe",
            ],
            "expected",
        ),
        (
            &[
                "append",
                "--stream",
                "s-1",
                "--type",
                "X",
                "--data",
                "{}",
                "--id",
                "not-a-uuid",
            ],
            "UUID",
        ),
        (
            &[
                "append",
                "--stream",
                "s-1",
                "--type",
                "X",
                "--data",
                "{}",
                "--metadata",
                r#"{"traceparent":"bad"}"#,
            ],
            "traceparent",
        ),
    ];
    for (bad, what) in bad_inputs {
        let err = error_line(&cairn(store, bad));
        assert!(err.contains(what), "{what}: {err}");
    }

    let read = ok_lines(&cairn(store, &["read", "--stream", "flight-1"]));
    assert_eq!(read.len(), 2, "rejected appends wrote nothing");
    assert_eq!(read[0]["eventType"], "FlightScheduled");
    assert_eq!(read[1]["metadata"]["correlationId"], "c-1");
    assert_eq!(read[1]["id"], id);
    let backward = ok_lines(&cairn(
        store,
        &["read", "--stream", "flight-1", "--backward", "--limit", "1"],
    ));
    assert_eq!(backward[0]["version"], 1);

    ok_lines(&cairn(
        store,
        &[
            "append",
            "--stream",
            "passenger-1",
            "--type",
            "PassengerAdded",
            "--data",
            "{}",
        ],
    ));
    assert_eq!(ok_lines(&cairn(store, &["all"])).len(), 3);
    assert_eq!(
        ok_lines(&cairn(store, &["all", "--category", "flight-*"])).len(),
        2
    );
    assert_eq!(
        ok_lines(&cairn(store, &["all", "--type", "FlightDeparted"])).len(),
        1
    );
    let after = ok_lines(&cairn(
        store,
        &[
            "all",
            "--after",
            &first_position.to_string(),
            "--limit",
            "1",
        ],
    ));
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["eventType"], "FlightDeparted");

    let streams = ok_lines(&cairn(store, &["streams"]));
    let names: Vec<_> = streams
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["flight-1", "passenger-1"]);

    // tail: history from a position, then a live event, then stop at --count.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "events", "tail", "--store", store, "--tenant", "acme", "--after", "0", "--count", "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok_lines(&cairn(
        store,
        &[
            "append",
            "--stream",
            "flight-2",
            "--type",
            "FlightScheduled",
            "--data",
            "{}",
        ],
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tail.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = tail.kill();
            panic!("tail did not stop after --count");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = tail.wait_with_output().unwrap();
    let tailed = ok_lines(&out);
    assert_eq!(tailed.len(), 4, "tail stops after --count");
    assert_eq!(tailed[3]["stream"], "flight-2");
}

#[test]
fn events_commands_on_sqlite() {
    let (dir, url) = temp_db();
    workflow(&url);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn events_commands_on_postgres() {
    let base = std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!(
        "cairn_test_{}_cli{}",
        chrono::Utc::now().timestamp(),
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    );
    let url = format!("{base}?schema={schema}");
    let probe = cairn(&url, &["streams"]);
    if !probe.status.success() {
        let _: Option<()> = cairn_store::testkit::service_absent(
            "PostgreSQL",
            String::from_utf8_lossy(&probe.stderr),
        );
        return;
    }
    workflow(&url);
}

#[test]
fn bad_store_urls_and_tenants_are_one_line_errors() {
    let err = error_line(&cairn("mysql://x", &["streams"]));
    assert!(err.contains("unknown store URL"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "events",
            "streams",
            "--store",
            "memory:",
            "--tenant",
            "Not Valid",
        ])
        .output()
        .unwrap();
    let err = error_line(&out);
    assert!(err.contains("tenant"), "{err}");
    let err = error_line(&cairn(
        "postgres://postgres:hunter2@127.0.0.1:1/none",
        &["streams"],
    ));
    assert!(!err.contains("hunter2"), "{err}");
}
