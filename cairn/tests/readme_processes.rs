//! The README's "Separate processes" block, run as printed, on NATS and
//! again on RabbitMQ (the `B=` of the block's last comment): the master key
//! made by its `head … | base64` line, every `cairn run` line started as it
//! is written, then a token, a flight and the audit log through the
//! gateway. What the harness changes, and only this:
//! - the ports 8080-8084 become free ones (the same port everywhere);
//! - every `cairn run` line gets `--prefix <unique>` (the README tells
//!   everyone sharing a broker to choose one) and runs in the background
//!   with its output in `<service>.log`;
//! - the schemas it names (`identity`, `audit_read`, `ops`) and those its
//!   services default to (`flights_read`, `passengers_read`) are dropped
//!   before and after, so each run starts from nothing.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// The schemas the block names, and those its services default to for
/// their databases (`<service>_read` beside the `ops` store).
const SCHEMAS: [&str; 5] = [
    "identity",
    "audit_read",
    "ops",
    "flights_read",
    "passengers_read",
];

fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The block's lines as a reader runs them (continuations joined), and the
/// broker URL of its closing comment.
fn block(readme: &str) -> (Vec<String>, String) {
    let start = readme
        .find("### Separate processes")
        .expect("the Separate processes heading");
    let body = &readme[start..];
    let open = body.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let close = open + body[open..].find("```").expect("the block's end");
    let mut lines = Vec::new();
    let mut pending = String::new();
    let mut other_broker = None;
    for line in body[open..close].lines() {
        if let Some(rest) = line.trim().strip_prefix("# the same with B=") {
            other_broker = Some(rest.trim().to_owned());
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if !full.trim().is_empty() && !full.trim_start().starts_with('#') {
            lines.push(full);
        }
    }
    (
        lines,
        other_broker.expect("the block names the RabbitMQ variant"),
    )
}

/// The script the harness runs: the block with its ports, broker and
/// prefix set, each `cairn run` in the background.
fn script(lines: &[String], ports: &[(u16, u16)], broker: Option<&str>, prefix: &str) -> String {
    let mut script = String::from("set -e\n");
    for line in lines {
        let mut line = line.clone();
        for (from, to) in ports {
            line = line.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
        }
        if let Some(broker) = broker {
            let at = line.find(" B=").map(|i| i + 3);
            if let Some(at) = at {
                let end = line[at..].find(' ').map_or(line.len(), |i| at + i);
                line.replace_range(at..end, broker);
            }
        }
        // A trailing comment is the reader's, not the shell's business.
        let code = match line.find("   #") {
            Some(i) => line[..i].trim_end().to_owned(),
            None => line,
        };
        if let Some(rest) = code.strip_prefix("cairn run ") {
            let service = rest.split_whitespace().next().unwrap();
            script.push_str(&format!(
                "{code} --prefix {prefix} > {service}.log 2>&1 &\necho $! >> pids\n"
            ));
        } else {
            script.push_str(&code);
            script.push('\n');
        }
    }
    script
}

#[test]
fn the_harness_reads_the_block_as_a_reader_would() {
    let readme = "### Separate processes\n\n```sh\nexport S=pg B=nats://h:4222 I=http://127.0.0.1:8084\n\
                  # a comment\ncairn run flights --listen 127.0.0.1:8081 \\\n  --issuer $I   # trailing\n\
                  # the same with B=amqp://g:g@h:5672/%2f\n```\n";
    let (lines, other) = block(readme);
    assert_eq!(other, "amqp://g:g@h:5672/%2f");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let s = script(&lines, &[(8084, 9), (8081, 10)], Some(&other), "p1");
    assert!(
        s.contains("export S=pg B=amqp://g:g@h:5672/%2f I=http://127.0.0.1:9\n"),
        "{s}"
    );
    assert!(
        s.contains(
            "cairn run flights --listen 127.0.0.1:10   --issuer $I --prefix p1 > flights.log 2>&1 &"
        ),
        "{s}"
    );
}

async fn drop_schemas(pool: &sqlx::PgPool) {
    for schema in SCHEMAS {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Kills what the script started, then removes what its prefix left on the
/// broker and the schemas.
struct Cleanup {
    dir: tempfile::TempDir,
    prefix: String,
    amqp: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.dir.path().join("pids")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        let prefix = self.prefix.clone();
        let amqp = self.amqp.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                // The processes let go of their connections first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), async move {
                    match amqp {
                        Some(url) => {
                            use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
                            let connection =
                                lapin::Connection::connect(&url, Default::default()).await?;
                            let channel = connection.create_channel().await?;
                            for group in [
                                "passengers-flight-events",
                                "flights-passenger-events",
                                "audit-flights-events",
                                "audit-passengers-events",
                                "audit-identity-events",
                                "flights-revocations",
                                "passengers-revocations",
                                "audit-revocations",
                            ] {
                                let _ = channel
                                    .queue_delete(
                                        format!("{prefix}.{group}").into(),
                                        QueueDeleteOptions::default(),
                                    )
                                    .await;
                            }
                            let _ = channel
                                .exchange_delete(
                                    format!("{prefix}.events").into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                            connection.close(200, "cleaned up".into()).await?;
                        }
                        None => {
                            let client = async_nats::connect("nats://127.0.0.1:4222").await?;
                            let jetstream = async_nats::jetstream::new(client);
                            let _ = jetstream
                                .delete_stream(cairn_messaging_nats::stream_name(&prefix))
                                .await;
                        }
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
                .await;
                if let Ok(pool) = sqlx::PgPool::connect(&postgres_url()).await {
                    drop_schemas(&pool).await;
                }
            });
        })
        .join();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `<service>.log` says where it listens; the log on failure.
fn wait_listening(dir: &Path, service: &str) {
    let marker = format!("cairn run {service}: listening on ");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = std::fs::read_to_string(dir.join(format!("{service}.log"))).unwrap_or_default();
        if log.contains(&marker) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cairn run {service} did not start:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `url` with `client` until `done` holds on its JSON.
async fn eventually(client: &Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.get(url).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == StatusCode::OK && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{url}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_block(broker: Option<&str>) {
    let required = std::env::var("CAIRN_TEST_SERVICES").is_ok_and(|v| v == "required");
    let pool = match sqlx::PgPool::connect(&postgres_url()).await {
        Ok(pool) => pool,
        Err(e) => {
            assert!(!required, "PostgreSQL is required: {e}");
            eprintln!("skipping: PostgreSQL is absent ({e})");
            return;
        }
    };
    let broker_addr = if broker.is_some() {
        "127.0.0.1:5672"
    } else {
        "127.0.0.1:4222"
    };
    if let Err(e) = tokio::net::TcpStream::connect(broker_addr).await {
        assert!(!required, "the broker at {broker_addr} is required: {e}");
        eprintln!("skipping: no broker at {broker_addr} ({e})");
        return;
    }
    drop_schemas(&pool).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let (lines, amqp) = block(&readme);
    let broker = broker.map(|_| amqp.as_str());
    let ports: Vec<(u16, u16)> = (8080..=8084).map(|p| (p, free_port())).collect();
    let prefix = format!("readme{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cleanup = Cleanup {
        dir: tempfile::tempdir().unwrap(),
        prefix: prefix.clone(),
        amqp: broker.map(str::to_owned),
    };
    let dir = cleanup.dir.path();
    let cairn = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let mut shell = Command::new("bash");
    shell
        .args(["-c", &script(&lines, &ports, broker, &prefix)])
        .current_dir(dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                cairn.parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("CAIRN_") {
            shell.env_remove(key);
        }
    }
    let out = shell.output().expect("bash runs");
    assert!(
        out.status.success(),
        "the block stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["identity", "audit", "passengers", "flights", "gateway"] {
        wait_listening(dir, service);
    }

    // Through the gateway, as the README's readers would go on.
    let gateway = format!("http://127.0.0.1:{}", ports[0].1);
    let identity_log = std::fs::read_to_string(dir.join("identity.log")).unwrap();
    let password = identity_log
        .lines()
        .find(|l| l.contains("tenant demo") && l.contains("password: "))
        .and_then(|l| l.split_once("password: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the identity service printed demo's password:\n{identity_log}"))
        .to_owned();
    let r = Client::new()
        .post(format!(
            "{gateway}/realms/demo/protocol/openid-connect/token"
        ))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", &password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a token through the gateway");
    let token: Value = r.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let client = Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let r = client
        .post(format!("{gateway}/api/flights"))
        .json(
            &json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                      "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                      "capacity": 30}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let flight: Value = r.json().await.unwrap();
    let id = flight["id"].as_str().unwrap().to_owned();
    eventually(&client, &format!("{gateway}/api/flights/{id}"), |f| {
        f["number"] == "SK1421"
    })
    .await;
    // The audit service heard it over the broker, with who did it.
    let audit = eventually(
        &client,
        &format!("{gateway}/api/audit?stream=flight-{id}"),
        |a| a["total"] == 1,
    )
    .await;
    assert_eq!(audit["items"][0]["type"], "FlightScheduled", "{audit}");
    assert_eq!(audit["items"][0]["source"], "flights", "{audit}");
    assert!(
        audit["items"][0]["metadata"]["actor"]
            .as_str()
            .is_some_and(|a| !a.is_empty()),
        "{audit}"
    );

    // The README's `cairn dlq` block, on a dead letter of Passengers'
    // consumer: the harness writes a `FlightDeleted` that names no flight
    // (the consumer rejects it at once), waits for it to be dead-lettered,
    // then runs the block's lines as printed, `<event-id>` being that
    // letter's id. Its last line reads `cairn up`'s database, which this
    // directory does not have: exit 2, as the README says of a database
    // without dead letters.
    let export = script(&lines[..1], &ports, broker, &prefix);
    let sh = |code: &str| {
        let mut shell = Command::new("bash");
        shell
            .args(["-c", &format!("{export}{code}")])
            .current_dir(dir)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    cairn.parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("RUST_LOG", "warn");
        for (key, _) in std::env::vars() {
            if key.starts_with("CAIRN_") {
                shell.env_remove(key);
            }
        }
        shell.output().expect("bash runs")
    };
    let out = sh(
        "cairn events append --store \"$S?schema=ops\" --tenant demo --stream flight- \
                  --type FlightDeleted --data '{}' --raw",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dlq = dlq_block(&readme);
    let list = dlq[0].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let letter: Value = loop {
        let out = sh(&list);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && let Some(line) = stdout.lines().next()
        {
            break serde_json::from_str(line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(letter["eventType"], "FlightDeleted", "{letter}");
    assert_eq!(letter["stream"], "flight-", "{letter}");
    let id = letter["eventId"].as_str().unwrap();
    let mut said = Vec::new();
    for line in &dlq {
        let code = line.replace("<event-id>", id);
        let code = match code.find("   #") {
            Some(i) => code[..i].trim_end().to_owned(),
            None => code,
        };
        let out = sh(&code);
        let expected = if code.trim() == "cairn dlq list" {
            2
        } else {
            0
        };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        said.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert!(said[1].contains(id), "show: {}", said[1]);
    assert_eq!(said[2].trim(), r#"{"markedForReplay":1}"#, "replay");
    assert_eq!(said[3].trim(), r#"{"dropped":1}"#, "drop");
    let out = sh(&list);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "dropped for good"
    );
    drop(cleanup);
}

/// The lines of the README's `cairn dlq` block.
fn dlq_block(readme: &str) -> Vec<String> {
    let start = readme
        .find("```sh\ncairn dlq list")
        .expect("the cairn dlq block")
        + "```sh\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_processes_run_as_printed_on_nats_then_rabbitmq() {
    // One after the other: the block's schemas and ports are its own.
    run_block(None).await;
    run_block(Some("amqp")).await;
}
