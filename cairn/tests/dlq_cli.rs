//! `cairn dlq` against a service database holding real dead letters: made
//! by a consumer whose handler fails, then listed, shown, replayed (the
//! running consumer handles the replay) and dropped from the command line.

use std::{
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use cairn_core::{EventId, RecordedEvent, StreamId, TenantId};
use cairn_messaging::{
    Broker, Consumer, ConsumerOptions, EventHandler, HandlerError, IntegrationEvent, MemoryBroker,
};
use cairn_service_db::ServiceDb;
use serde_json::{Value, json};
use sqlx::{Any, Transaction};

fn cairn(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("dlq")
        .args(args)
        .args(["--store", db])
        .env_remove("CAIRN_STORE")
        .env_remove("CAIRN_DB")
        .output()
        .expect("run cairn")
}

/// Expects exit code 2 with `message` on stderr and nothing on stdout.
fn missing(out: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(message),
        "{stderr:?} does not say {message:?}"
    );
    assert!(out.stdout.is_empty());
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "cairn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[derive(Clone)]
struct Flaky {
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl EventHandler for Flaky {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::Reject("cannot handle this yet".into()));
        }
        sqlx::query("INSERT INTO handled (event_id) VALUES ($1)")
            .bind(event.id.to_string())
            .execute(&mut **tx)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?;
        Ok(())
    }
}

fn event(stream: &str) -> IntegrationEvent {
    let recorded = RecordedEvent {
        id: EventId::new(),
        tenant: TenantId::new("acme").unwrap(),
        stream: StreamId::new(stream).unwrap(),
        version: 0,
        position: 1,
        event_type: "Thing".into(),
        schema_version: 1,
        data: json!({}),
        metadata: Default::default(),
        recorded_at: chrono::Utc::now(),
    };
    IntegrationEvent::from_recorded("things", &recorded, None)
}

#[tokio::test]
async fn list_show_replay_and_drop_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("service.db").display());
    let db = ServiceDb::open(&url).await.unwrap();
    sqlx::query("CREATE TABLE handled (event_id TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let broker = MemoryBroker::new();
    let broken = Arc::new(AtomicBool::new(true));
    let consumer = Consumer::new(
        "things-watch",
        "things",
        db.clone(),
        Arc::new(broker.clone()),
    )
    .on(
        "Thing",
        Flaky {
            broken: broken.clone(),
        },
    )
    .with_options(ConsumerOptions {
        replay_poll: Duration::from_millis(50),
        ..ConsumerOptions::default()
    })
    .start()
    .await
    .unwrap();
    let (a, b) = (event("thing-a"), event("thing-b"));
    broker.publish(&[a.clone(), b.clone()]).await.unwrap();
    assert!(
        consumer
            .wait_until(Duration::from_secs(30), |s| s.dead_lettered == 2)
            .await
    );

    let listed = lines(&cairn(&url, &["list"]));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["consumer"], "things-watch");
    assert_eq!(listed[0]["error"], "cannot handle this yet");
    assert!(
        listed[0].get("body").is_none(),
        "list leaves the message out"
    );

    let shown = cairn(&url, &["show", &a.id.to_string()]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["stream"], "thing-a");
    assert_eq!(
        shown["body"]["subject"], "thing-a",
        "the message as it came"
    );
    assert_eq!(shown["body"]["specversion"], "1.0");

    // Bad input: unknown id, neither id nor --all.
    let unknown = cairn(&url, &["show", "0190b3f0-0000-7000-8000-000000000000"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no dead letter"));
    missing(&cairn(&url, &["replay"]), "--all");

    // The older flag still names the database.
    let old_flag = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["dlq", "list", "--db", &url])
        .env_remove("CAIRN_STORE")
        .output()
        .unwrap();
    assert_eq!(lines(&old_flag), listed);

    // Fixed: replay one; the running consumer handles it once.
    broken.store(false, Ordering::SeqCst);
    let replayed = lines(&cairn(&url, &["replay", &a.id.to_string()]));
    assert_eq!(replayed[0]["markedForReplay"], 1);
    assert!(
        consumer
            .wait_until(Duration::from_secs(30), |s| s.replayed == 1)
            .await
    );
    let handled: Vec<String> = sqlx::query_scalar("SELECT event_id FROM handled")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(handled, vec![a.id.to_string()]);

    // Drop the other for good.
    let dropped = lines(&cairn(&url, &["drop", "--all"]));
    assert_eq!(dropped[0]["dropped"], 1);
    assert!(lines(&cairn(&url, &["list"])).is_empty());
    consumer.shutdown().await;
}

const COMMANDS: [&[&str]; 4] = [
    &["list"],
    &["show", "0190b3f0-0000-7000-8000-000000000000"],
    &["replay", "--all"],
    &["drop", "--all"],
];

#[tokio::test]
async fn a_missing_service_database_is_an_error_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("nowhere").join("service.db");
    for args in COMMANDS {
        missing(
            &cairn(&format!("sqlite://{}", absent.display()), args),
            &format!("the file {} does not exist", absent.display()),
        );
    }
    assert!(!dir.path().join("nowhere").exists());

    // By default, the database `cairn up` keeps under the data dir.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir.path())
        .args(["dlq", "list"])
        .env_remove("CAIRN_STORE")
        .env_remove("CAIRN_DB")
        .env_remove("CAIRN_DATA_DIR")
        .output()
        .unwrap();
    missing(&out, "data/read-models.db does not exist");
    assert!(!dir.path().join("data").exists());

    // A database without dead letters (another service's, an event store)
    // gets no table.
    let other = dir.path().join("other.db");
    let url = format!("sqlite://{}", other.display());
    let db = ServiceDb::open(&url).await.unwrap();
    sqlx::query("CREATE TABLE handled (event_id TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    for args in COMMANDS {
        missing(&cairn(&url, args), "has no table cairn_dead_letters");
    }
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(tables, ["handled"]);
    db.close().await;

    // PostgreSQL: a schema that does not exist is not made.
    let base = std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = match sqlx::PgPool::connect(&base).await {
        Ok(pool) => pool,
        Err(e) => {
            let _: Option<()> = cairn_store::testkit::service_absent("PostgreSQL", e);
            return;
        }
    };
    let schema = format!(
        "dlq_cli_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    for args in COMMANDS {
        missing(
            &cairn(&format!("{base}?schema={schema}"), args),
            &format!("the schema \"{schema}\" does not exist"),
        );
    }
    let made: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!made, "the schema was created");
}
