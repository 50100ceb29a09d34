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
            "--raw",
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
        "--raw",
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
            "--raw",
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
            "--raw",
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
    // A reachable server answers "no such schema" (2); an absent one fails (1).
    let probe = cairn(&url, &["streams"]);
    if probe.status.code() != Some(2) {
        let _: Option<()> = cairn_store::testkit::service_absent(
            "PostgreSQL",
            String::from_utf8_lossy(&probe.stderr),
        );
        return;
    }
    let err = error_line(&probe);
    assert!(
        err.contains(&format!("schema \"{schema}\" does not exist")),
        "{err}"
    );
    for read in [
        &["read", "--stream", "flight-1"][..],
        &["all"],
        &["tail", "--count", "1"],
    ] {
        assert_eq!(cairn(&url, read).status.code(), Some(2), "{read:?}");
    }
    assert!(
        !schema_exists(&base, &schema),
        "a read command created the schema"
    );
    workflow(&url);
    assert!(schema_exists(&base, &schema), "append creates the store");
    // A schema that holds something else is not an event store either.
    let other = format!("{base}?schema=information_schema");
    let err = error_line(&cairn(&other, &["streams"]));
    assert!(err.contains("has no table events, streams"), "{err}");
}

fn schema_exists(base: &str, schema: &str) -> bool {
    use sqlx::Connection as _;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut conn = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    })
}

/// `cairn events ARGS` in `dir` with no store named: the default applies.
fn cairn_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .arg("events")
        .args(args)
        .args(["--tenant", "acme"])
        .env_remove("CAIRN_STORE")
        .env_remove("CAIRN_DATA_DIR")
        .env_remove("CAIRN_TENANT")
        .output()
        .expect("run cairn")
}

const READ_COMMANDS: [&[&str]; 4] = [
    &["read", "--stream", "flight-1"],
    &["all"],
    &["streams"],
    &["tail", "--count", "1"],
];

#[test]
fn read_commands_never_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("store.db");
    let url = format!("sqlite://{}", missing.display());
    for read in READ_COMMANDS {
        let out = cairn(&url, read);
        assert_eq!(out.status.code(), Some(2), "{read:?}");
        let err = error_line(&out);
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
    assert!(!dir.path().join("nowhere").exists(), "nothing is created");

    // The default is the data dir `cairn up` uses, moved by --data-dir.
    for read in READ_COMMANDS {
        let err = error_line(&cairn_in(dir.path(), read));
        assert!(err.contains("data/events.db"), "{err}");
        let mut moved = read.to_vec();
        moved.extend(["--data-dir", "elsewhere"]);
        let err = error_line(&cairn_in(dir.path(), &moved));
        assert!(err.contains("elsewhere/events.db"), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no data dir was made"
    );

    // A SQLite file that is not an event store stays as it was.
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let url = format!("sqlite://{}", foreign.display());
    for read in READ_COMMANDS {
        let out = cairn(&url, read);
        assert_eq!(out.status.code(), Some(2), "{read:?}");
        assert!(error_line(&out).contains("has no table events, streams"));
    }
    let tables: i64 = rusqlite::Connection::open(&foreign)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "no table was added");

    // Writing creates, under the default data dir.
    let out = cairn_in(
        dir.path(),
        &[
            "append", "--stream", "s-1", "--type", "Noted", "--data", "{}",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("data/events.db").is_file());
    assert_eq!(ok_lines(&cairn_in(dir.path(), &["all"])).len(), 1);
}

#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly() {
    let (dir, url) = temp_db();
    for i in 0..3 {
        ok_lines(&cairn(
            &url,
            &[
                "append",
                "--stream",
                &format!("s-{i}"),
                "--type",
                "Noted",
                "--data",
                "{}",
            ],
        ));
    }
    for read in [&["all"][..], &["streams"], &["read", "--stream", "s-1"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("events")
            .args(read)
            .args(["--store", &url, "--tenant", "acme"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command writes: its first line meets a broken pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{read:?}: {:?}", out.status);
        assert!(
            out.stderr.is_empty(),
            "{read:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn payloads_of_service_event_types_are_checked_unless_raw() {
    let (dir, url) = temp_db();
    let append = |event_type: &str, data: &str, extra: &[&str]| {
        let mut args = vec![
            "append", "--stream", "flight-9", "--type", event_type, "--data", data,
        ];
        args.extend(extra);
        cairn(&url, &args)
    };
    // The README's old example: no flightId. Refused, nothing written.
    let no_id = r#"{"departure":"2030-01-01T10:00:00Z","arrival":"2030-01-01T12:00:00Z"}"#;
    let out = append("FlightRescheduled", no_id, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = error_line(&out);
    assert!(err.contains("FlightRescheduled"), "{err}");
    assert!(err.contains("missing field `flightId`"), "{err}");
    // Types of each service are checked by that service.
    for (event_type, data) in [
        ("PassengerAdded", r#"{"flightId":"f"}"#),
        ("TenantCreated", r#"{"name":1}"#),
        ("FlightDeparted", r#"{"flightId":"f","at":"yesterday"}"#),
    ] {
        let out = append(event_type, data, &[]);
        assert_eq!(out.status.code(), Some(2), "{event_type}");
        assert!(error_line(&out).contains(event_type));
    }
    assert!(
        !dir.join("store.db").exists(),
        "refused payloads wrote nothing, not even an empty store"
    );

    let with_id = r#"{"flightId":"flight-9","departure":"2030-01-01T10:00:00Z","arrival":"2030-01-01T12:00:00Z"}"#;
    let out = append("FlightRescheduled", with_id, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "a checked type needs no note");
    let out = append("FlightRescheduled", no_id, &["--raw"]);
    assert!(out.status.success(), "--raw stores it unchecked");
    // Nobody's type: stored, with a note.
    let out = append("SomethingNoted", "{}", &[]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("SomethingNoted") && note.lines().count() == 1,
        "{note}"
    );

    let types: Vec<_> = ok_lines(&cairn(&url, &["read", "--stream", "flight-9"]))
        .iter()
        .map(|e| e["eventType"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["FlightRescheduled", "FlightRescheduled", "SomethingNoted"]
    );
    let _ = std::fs::remove_dir_all(dir);
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
