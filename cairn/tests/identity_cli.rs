//! `cairn tenants`, `cairn users` and `cairn token`: the real binary works
//! straight on the store a stopped `cairn up` left, and the next `cairn up`
//! on that store accepts what they made: the token, and the printed admin
//! password at the realm's token endpoint. Bad input exits non-zero with a
//! message naming what is wrong and writes nothing.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// The public URL the restarted server issues as, and the CLI mints for.
const PUBLIC_URL: &str = "https://cairn.example";
/// A fixed master key for the PostgreSQL run (which has no data directory).
const TEST_MASTER_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Backend {
    /// A `cairn` command on this store, with nothing inherited that could
    /// point it elsewhere.
    fn cairn(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args);
        for var in [
            "CAIRN_STORE",
            "CAIRN_DATA_DIR",
            "CAIRN_MASTER_KEY",
            "CAIRN_MASTER_KEY_FILE",
            "CAIRN_PUBLIC_URL",
            "CAIRN_LISTEN",
        ] {
            cmd.env_remove(var);
        }
        match self {
            Backend::Sqlite(dir) => cmd.arg("--data-dir").arg(dir),
            Backend::Postgres(url) => cmd
                .args(["--store", url])
                .env("CAIRN_MASTER_KEY", TEST_MASTER_KEY),
        };
        cmd.env("RUST_LOG", "warn");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cairn(args).output().expect("cairn runs")
    }
}

/// Runs `args`, expecting success; returns stdout.
fn ok(backend: &Backend, args: &[&str]) -> String {
    let out = backend.run(args);
    assert!(
        out.status.success(),
        "cairn {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `args`, expecting exit code 1 and a stderr containing `message`.
fn fails(backend: &Backend, args: &[&str], message: &str) {
    let out = backend.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "cairn {args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "cairn {args:?}: {stderr:?} does not say {message:?}"
    );
    assert!(out.stdout.is_empty(), "cairn {args:?} printed on failure");
}

/// Runs `args`, expecting exit code 2 (something named is missing) and a
/// stderr containing `message`.
fn missing(backend: &Backend, args: &[&str], message: &str) {
    let out = backend.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "cairn {args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "cairn {args:?}: {stderr:?} does not say {message:?}"
    );
    assert!(out.stdout.is_empty(), "cairn {args:?} printed on failure");
}

/// The word after `password: ` on the line that has it.
fn printed_password(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.contains("password: "))
        .unwrap_or_else(|| panic!("no password line in {stdout:?}"));
    let (_, rest) = line.split_once("password: ").unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// A running `cairn up` and its address.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `cairn up` and waits until it serves (its SIGTERM handler is
    /// in place only from then on).
    async fn start(backend: &Backend, extra: &[&str]) -> Self {
        let mut args = vec!["up", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = backend
            .cairn(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cairn up starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut base = None;
        loop {
            let line = lines
                .next()
                .expect("cairn up printed its banner before exiting")
                .unwrap();
            if let Some(rest) = line.strip_prefix("cairn up: listening on ") {
                base = Some(rest.trim().to_owned());
            }
            if line.trim_start().starts_with("stop:") {
                break;
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let server = Self {
            child,
            base: base.expect("the address was printed"),
        };
        let ready = format!("{}/health/ready", server.base);
        for _ in 0..100 {
            if let Ok(r) = Client::new().get(&ready).send().await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("cairn up never became ready at {ready}");
    }

    /// A graceful stop (SIGTERM), so the store is left as an operator would find it.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "cairn up stops cleanly: {status}");
    }

    async fn flights_with(&self, token: &str) -> StatusCode {
        Client::new()
            .get(format!("{}/api/flights", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn login(&self, tenant: &str, username: &str, password: &str) -> (StatusCode, Value) {
        let r = Client::new()
            .post(format!(
                "{}/realms/{tenant}/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "cairn"),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The claims of a JWT, unverified (the server verifies).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Given a store a first `cairn up` made, when the operator creates a tenant,
/// a user and a token from the command line, then the next `cairn up`
/// accepts the token and the printed admin password.
async fn tenant_user_and_token_made_offline_work_online(backend: &Backend) {
    Server::start(backend, &[]).await.stop();

    let created = ok(
        backend,
        &["tenants", "create", "globex", "--name", "Globex"],
    );
    assert!(created.contains("created tenant globex"), "{created}");
    let admin_password = printed_password(&created);
    let created = ok(
        backend,
        &[
            "users", "create", "--tenant", "globex", "eve", "--role", "operator",
        ],
    );
    let eve_password = printed_password(&created);

    let listed = ok(backend, &["tenants", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    for tenant in ["globex\tGlobex", "platform\tPlatform", "demo\tdemo"] {
        assert!(lines.contains(&tenant), "{tenant} in {listed:?}");
    }
    let json = ok(backend, &["tenants", "list", "--json"]);
    let tenants: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(tenants.contains(&serde_json::json!({"id": "globex", "name": "Globex"})));
    let users = ok(backend, &["users", "list", "--tenant", "globex"]);
    assert!(
        users.lines().any(|l| l.starts_with("eve\toperator\t")),
        "{users}"
    );
    assert!(
        users.lines().any(|l| l.starts_with("admin\tadmin\t")),
        "{users}"
    );

    // Only the token on stdout, for `export TOKEN=$(cairn token …)`.
    let token = ok(
        backend,
        &[
            "token",
            "--tenant",
            "globex",
            "--user",
            "eve",
            "--public-url",
            PUBLIC_URL,
        ],
    );
    assert_eq!(token.lines().count(), 1, "{token:?}");
    let token = token.trim().to_owned();
    let c = claims(&token);
    assert_eq!(c["iss"], format!("{PUBLIC_URL}/realms/globex"));
    assert_eq!(c["tenant"], "globex");
    assert_eq!(c["preferred_username"], "eve");
    assert_eq!(c["roles"], serde_json::json!(["operator"]));
    let ttl = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert_eq!(ttl, 3600);
    // Minted for another public URL (the default one): another issuer.
    let elsewhere = ok(backend, &["token", "--tenant", "globex", "--user", "eve"]);
    let elsewhere = elsewhere.trim().to_owned();
    assert_eq!(
        claims(&elsewhere)["iss"],
        "http://127.0.0.1:8080/realms/globex"
    );

    let server = Server::start(backend, &["--public-url", PUBLIC_URL]).await;
    assert_eq!(server.flights_with(&token).await, StatusCode::OK);
    assert_eq!(
        server.flights_with(&elsewhere).await,
        StatusCode::UNAUTHORIZED,
        "a token of another public URL is refused"
    );
    let (status, body) = server.login("globex", "admin", &admin_password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["roles"], serde_json::json!(["admin"]));
    assert_eq!(server.flights_with(access).await, StatusCode::OK);
    let (status, body) = server.login("globex", "eve", &eve_password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop();
}

fn sqlite() -> (tempfile::TempDir, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, Backend::Sqlite(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_what_the_cli_makes_the_server_accepts() {
    let (_dir, backend) = sqlite();
    tenant_user_and_token_made_offline_work_online(&backend).await;
}

/// A fresh schema on the test PostgreSQL, or `None` (skip) when it is absent.
async fn postgres() -> Option<Backend> {
    let url = std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Err(e) = sqlx::PgPool::connect(&url).await {
        return cairn_store::testkit::service_absent("PostgreSQL", e);
    }
    let schema = format!(
        "cairn_cli_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    Some(Backend::Postgres(format!("{url}?schema={schema}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_what_the_cli_makes_the_server_accepts() {
    let Some(backend) = postgres().await else {
        return;
    };
    tenant_user_and_token_made_offline_work_online(&backend).await;
}

/// The tenants and users as listed, to show a refused command wrote nothing.
fn identity_listing(backend: &Backend) -> (String, String) {
    (
        ok(backend, &["tenants", "list"]),
        ok(backend, &["users", "list", "--tenant", "demo"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_message_and_writes_nothing() {
    let (dir, backend) = sqlite();
    Server::start(&backend, &[]).await.stop();
    let before = identity_listing(&backend);

    fails(
        &backend,
        &["tenants", "create", "demo"],
        "tenant demo already exists",
    );
    fails(
        &backend,
        &["tenants", "create", "Not-Valid"],
        "invalid tenant",
    );
    fails(
        &backend,
        &["tenants", "create", "acme", "--name", "  "],
        "invalid name",
    );
    fails(
        &backend,
        &[
            "users", "create", "--tenant", "demo", "eve", "--role", "pilot",
        ],
        "unknown role pilot",
    );
    fails(
        &backend,
        &[
            "users",
            "create",
            "--tenant",
            "demo",
            "eve",
            "--role",
            "super-admin",
        ],
        "super-admin exists only in the platform tenant",
    );
    fails(
        &backend,
        &["users", "create", "--tenant", "demo", "Eve!"],
        "invalid username",
    );
    fails(
        &backend,
        &["users", "create", "--tenant", "demo", "admin"],
        "user admin already exists",
    );
    fails(
        &backend,
        &["users", "create", "--tenant", "nowhere", "eve"],
        "tenant nowhere does not exist",
    );
    let short = dir.path().join("short-password");
    std::fs::write(&short, "short\n").unwrap();
    fails(
        &backend,
        &[
            "users",
            "create",
            "--tenant",
            "demo",
            "eve",
            "--password-file",
            short.to_str().unwrap(),
        ],
        "invalid password",
    );
    fails(
        &backend,
        &["token", "--tenant", "demo", "--user", "nobody"],
        "user nobody does not exist",
    );
    fails(
        &backend,
        &["token", "--tenant", "nowhere", "--user", "admin"],
        "nowhere does not exist",
    );
    assert_eq!(identity_listing(&backend), before);

    // Out of range: a usage error (exit 2), before anything is opened.
    let out = backend.run(&[
        "token", "--tenant", "demo", "--user", "admin", "--ttl", "86401",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));

    // A password from a file is not printed.
    let good = dir.path().join("password");
    std::fs::write(&good, "a long password\n").unwrap();
    let created = ok(
        &backend,
        &[
            "users",
            "create",
            "--tenant",
            "demo",
            "zoe",
            "--password-file",
            good.to_str().unwrap(),
        ],
    );
    assert!(!created.contains("password"), "{created}");
    assert!(
        created.contains("roles viewer"),
        "the default role: {created}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_master_key_is_an_error_not_a_new_key() {
    let (dir, backend) = sqlite();
    Server::start(&backend, &[]).await.stop();
    let Backend::Sqlite(data) = &backend else {
        unreachable!()
    };
    let key = data.join("master.key");
    let moved = dir.path().join("kept.key");
    std::fs::rename(&key, &moved).unwrap();

    missing(
        &backend,
        &["tenants", "list"],
        &format!("no master key at {}", key.display()),
    );
    assert!(!key.exists(), "the CLI made a master key");
    let absent = dir.path().join("absent.key");
    missing(
        &backend,
        &[
            "tenants",
            "create",
            "acme",
            "--master-key-file",
            absent.to_str().unwrap(),
        ],
        &format!("no master key at {}", absent.display()),
    );
    // With the key named, it works.
    let listed = ok(
        &backend,
        &[
            "tenants",
            "list",
            "--master-key-file",
            moved.to_str().unwrap(),
        ],
    );
    assert!(listed.contains("demo"), "{listed}");

    // No store at all: nothing is created either.
    let empty_dir = dir.path().join("empty");
    let empty = Backend::Sqlite(empty_dir.clone());
    missing(&empty, &["tenants", "list"], "no master key at");
    missing(
        &empty,
        &[
            "tenants",
            "create",
            "acme",
            "--master-key-file",
            moved.to_str().unwrap(),
        ],
        &format!(
            "the file {} does not exist",
            empty_dir.join("events.db").display()
        ),
    );
    assert!(!empty_dir.exists(), "the CLI made a data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_postgres_schema_is_an_error_and_is_not_created() {
    let Some(backend) = postgres().await else {
        return;
    };
    let Backend::Postgres(url) = &backend else {
        unreachable!()
    };
    let (base, schema) = url.split_once("?schema=").unwrap();
    for args in [
        &["tenants", "list"][..],
        &["users", "list", "--tenant", "demo"],
        &["tenants", "create", "acme"],
        &["token", "--tenant", "demo", "--user", "admin"],
    ] {
        missing(
            &backend,
            args,
            &format!("the schema \"{schema}\" does not exist"),
        );
    }
    let pool = sqlx::PgPool::connect(base).await.unwrap();
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1")
        .bind(format!("{schema}%"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        made, 0,
        "neither the store's schema nor its read models' was made"
    );
}
