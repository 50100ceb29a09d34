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

/// What `cairn up` printed on start.
struct Printed {
    base: String,
    /// The platform admin's password, printed on first start only.
    platform_password: Option<String>,
    /// The `--dev` token of demo's admin.
    token: String,
}

/// A fixed master key for the PostgreSQL runs (which have no data directory).
const TEST_MASTER_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn spawn(backend: &Backend, stderr: Stdio) -> (std::process::Child, Printed) {
    spawn_with(backend, stderr, &[])
}

/// `cairn up` with `extra` arguments.
fn spawn_with(backend: &Backend, stderr: Stdio, extra: &[&str]) -> (std::process::Child, Printed) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["up", "--listen", "127.0.0.1:0", "--dev"])
        .args(extra);
    match backend {
        Backend::Sqlite(dir) => cmd.arg("--data-dir").arg(dir),
        Backend::Postgres(url) => cmd
            .args(["--store", url])
            .env("CAIRN_MASTER_KEY", TEST_MASTER_KEY),
    };
    let mut child = cmd
        .env_remove("CAIRN_STORE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("cairn binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut platform_password, mut token) = (None, None, None);
    loop {
        let line = lines
            .next()
            .expect("cairn up printed its banner before exiting")
            .unwrap();
        if let Some(rest) = line.strip_prefix("cairn up: listening on ") {
            base = Some(rest.trim().to_owned());
        }
        if line.contains("tenant platform")
            && let Some((_, rest)) = line.split_once("password: ")
        {
            platform_password = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.trim_start().strip_prefix("token:") {
            token = Some(rest.trim().to_owned());
        }
        if line.trim_start().starts_with("stop:") {
            break;
        }
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let printed = Printed {
        base: base.expect("the address was printed"),
        platform_password,
        token: token.expect("--dev printed a token"),
    };
    (child, printed)
}

async fn start(backend: &Backend) -> App {
    let (child, printed) = spawn(backend, Stdio::inherit());
    let other = match &printed.platform_password {
        Some(password) => {
            let admin = login(&printed.base, "platform", "admin", password).await;
            let admin = admin["access_token"].as_str().unwrap();
            OtherTenant::Token(user_in(&printed.base, admin, "globex", "eve", "operator").await)
        }
        // A restart: the first start made the tenants.
        None => OtherTenant::Header("globex".into()),
    };
    App {
        child: Some(child),
        base: printed.base,
        client: bearer_client(&printed.token),
        separate: false,
        other,
    }
}

/// The app around a `cairn up` started with [`spawn`], its other tenant
/// named by header.
fn app_of(child: std::process::Child, printed: &Printed) -> App {
    App {
        child: Some(child),
        base: printed.base.clone(),
        client: bearer_client(&printed.token),
        separate: false,
        other: OtherTenant::Header("globex".into()),
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
                    let app = super::start(&backend).await;
                    super::$name(&app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::postgres().await else { return };
                    let app = super::start(&backend).await;
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
    let app = start(&backend).await;
    let f = app.create_flight(10).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let r = app.add_passenger(&id, "A1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let before: Value = app
        .get(&format!(
            "/api/audit?minPosition={position}&type=PassengerAdded"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before["total"], 1);
    assert_eq!(before["items"][0]["source"], "passengers", "{before}");

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

    let app = start(&backend).await;
    let flight: Value = app
        .get(&format!("/api/flights/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(flight["passengers"]["total"], 1, "{flight}");
    let after: Value = app
        .get("/api/audit?type=PassengerAdded")
        .await
        .json()
        .await
        .unwrap();
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

/// The API behind tokens: what is refused, how, and that nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_requires_a_valid_token_and_tenants_stay_apart() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let (_dir, backend) = sqlite();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (child, printed) = spawn(&backend, Stdio::from(log.reopen().unwrap()));
    let app = app_of(child, &printed);
    let base = printed.base.clone();
    let anonymous = Client::new();
    let demo_flight = app.create_flight(5).await;
    let flight_url = format!("{base}/api/flights/{}", demo_flight["id"].as_str().unwrap());

    // No token; a token that is not one; a forged one; a tampered one.
    let r = anonymous.get(&flight_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let parts: Vec<&str> = printed.token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    claims["roles"] = json!(["super-admin"]);
    claims["tenant"] = json!("platform");
    let raised = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    for (bad, codes) in [
        ("garbage".to_owned(), &["malformed_token"][..]),
        (
            format!("{none_header}.{}.", parts[1]),
            &["malformed_token"][..],
        ),
        (
            format!("{}.{raised}.{}", parts[0], parts[2]),
            &["invalid_signature"][..],
        ),
        (
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                &parts[2][..parts[2].len() - 4]
            ),
            &["invalid_signature", "malformed_token"][..],
        ),
    ] {
        let r = anonymous
            .get(&flight_url)
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:.40}");
        let problem: Value = r.json().await.unwrap();
        assert!(
            codes.contains(&problem["code"].as_str().unwrap_or_default()),
            "{bad:.40}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.contains(&bad), "the token is never echoed");
    }

    // Tenant A's token on tenant B's flight: 404, never the data.
    let platform = login(
        &base,
        "platform",
        "admin",
        printed.platform_password.as_deref().unwrap(),
    )
    .await;
    let super_admin = platform["access_token"].as_str().unwrap().to_owned();
    let globex = user_in(&base, &super_admin, "globex", "eve", "operator").await;
    let r = anonymous
        .get(&flight_url)
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!r.text().await.unwrap().contains("SK1421"));
    // Naming another tenant in the header is not a way around it.
    let r = anonymous
        .get(&flight_url)
        .bearer_auth(&globex)
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A viewer reads but does not write.
    let viewer = user_in(&base, &super_admin, "demo", "vic", "viewer").await;
    let r = anonymous
        .get(&flight_url)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = anonymous
        .post(format!("{base}/api/flights"))
        .bearer_auth(&viewer)
        .json(&scenarios::flight(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The super-admin reads demo's flight across tenants; the read is in
    // demo's audit log. Writing across tenants is refused.
    let r = anonymous
        .get(&flight_url)
        .bearer_auth(&super_admin)
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let audit = app
        .eventually("/api/audit?type=CrossTenantRead", |v| v["total"] == 1)
        .await;
    assert_eq!(audit["items"][0]["stream"], "crossread-platform");
    assert_eq!(audit["items"][0]["data"]["actorTenant"], "platform");
    let r = anonymous
        .post(format!("{base}/api/flights"))
        .bearer_auth(&super_admin)
        .header("x-cairn-tenant", "demo")
        .json(&scenarios::flight(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Identity events are in the audit log without their secrets.
    let users: Value = app
        .get("/api/audit?stream=user-vic")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["items"][0]["data"], json!({"redacted": true}));

    // A revoked token stops working; a reused refresh token is refused.
    let session = login(&base, "demo", "vic", "a long password").await;
    let token = session["access_token"].as_str().unwrap();
    let realm = format!("{base}/realms/demo/protocol/openid-connect");
    let r = anonymous
        .post(format!("{realm}/revoke"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = anonymous
        .get(&flight_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let refresh = session["refresh_token"].as_str().unwrap();
    let use_refresh = || {
        anonymous
            .post(format!("{realm}/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
            .send()
    };
    assert_eq!(use_refresh().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        use_refresh().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // Failed logins: refused, then locked.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = anonymous
            .post(format!("{realm}/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "vic"),
                ("password", "hunter2-wrong"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![400, 400, 400, 400, 400, 429]);

    // Secrets never reach the log.
    drop(app);
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        logged.contains("login locked"),
        "the lock is logged:\n{logged}"
    );
    for secret in [
        "hunter2-wrong",
        "a long password",
        printed.platform_password.as_deref().unwrap(),
        token,
        refresh,
        &printed.token,
    ] {
        assert!(!logged.contains(secret), "a secret in the log:\n{logged}");
    }
}

/// Tenant groups: demo and globex form a group sharing `flights`; globex's
/// operator then reads demo's flights (GET only, recorded in demo's audit
/// log) but nothing else of demo's, and initech, outside the group, reads
/// nothing. Leaving the group ends it for tokens issued afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_groups_share_what_they_mark() {
    let (_dir, backend) = sqlite();
    let (child, printed) = spawn(&backend, Stdio::inherit());
    let app = app_of(child, &printed);
    let base = printed.base.clone();
    let flight = app.create_flight(5).await;
    let id = flight["id"].as_str().unwrap().to_owned();
    let r = app.add_passenger(&id, "G1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let platform = login(
        &base,
        "platform",
        "admin",
        printed.platform_password.as_deref().unwrap(),
    )
    .await;
    let super_admin = bearer_client(platform["access_token"].as_str().unwrap());
    // Tenants exist before the group names them.
    user_in(
        &base,
        platform["access_token"].as_str().unwrap(),
        "globex",
        "eve",
        "operator",
    )
    .await;
    let initech = user_in(
        &base,
        platform["access_token"].as_str().unwrap(),
        "initech",
        "ivy",
        "operator",
    )
    .await;
    let r = super_admin
        .post(format!("{base}/api/admin/groups"))
        .json(&json!({"id": "alliance", "name": "Alliance",
                      "tenants": ["demo", "globex"], "shared": ["flights"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    // A token issued after the group exists carries it.
    let eve = login(&base, "globex", "eve", "a long password").await;
    let eve = bearer_client(eve["access_token"].as_str().unwrap());
    let as_demo = |request: reqwest::RequestBuilder| request.header("x-cairn-tenant", "demo");

    let r = as_demo(eve.get(format!("{base}/api/flights/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], id.as_str());
    let list: Value = as_demo(eve.get(format!("{base}/api/flights")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    // Not shared: passengers, the audit log. Never a write.
    for r in [
        as_demo(eve.get(format!("{base}/api/passengers?flightId={id}"))),
        as_demo(eve.get(format!("{base}/api/audit"))),
        as_demo(eve.post(format!("{base}/api/flights"))).json(&scenarios::flight(3)),
        as_demo(eve.delete(format!("{base}/api/flights/{id}"))),
    ] {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // Without the header, globex sees its own (empty) flights.
    let own: Value = eve
        .get(format!("{base}/api/flights"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["total"], 0);
    // Outside the group: nothing.
    let r = Client::new()
        .get(format!("{base}/api/flights/{id}"))
        .bearer_auth(&initech)
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Demo's audit log names each shared read.
    let reads = app
        .eventually("/api/audit?type=CrossTenantRead", |v| v["total"] == 2)
        .await;
    assert_eq!(reads["items"][0]["data"]["actorTenant"], "globex");
    assert_eq!(reads["items"][0]["data"]["shared"], "flights");
    assert_eq!(reads["items"][0]["stream"], "crossread-globex");

    // Globex leaves the group: its next token shares nothing.
    let r = super_admin
        .put(format!("{base}/api/admin/groups/alliance"))
        .json(&json!({"tenants": ["demo", "initech"], "shared": ["flights"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let eve = login(&base, "globex", "eve", "a long password").await;
    let r = Client::new()
        .get(format!("{base}/api/flights/{id}"))
        .bearer_auth(eve["access_token"].as_str().unwrap())
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

fn cairn_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("CAIRN_STORE")
        .env_remove("CAIRN_TENANT")
        .env_remove("CAIRN_URL")
        .env_remove("CAIRN_TOKEN")
        .output()
        .expect("run cairn")
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "cairn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes, unchecked, the event of the README's old example: a
/// `FlightRescheduled` without `flightId`, which the flights read model
/// cannot apply. Answers what `cairn events append` printed.
fn append_poison(store: &str) -> Value {
    let appended = stdout_of(&cairn_cli(&[
        "events",
        "append",
        "--store",
        store,
        "--tenant",
        "demo",
        "--stream",
        "flight-1",
        "--type",
        "FlightRescheduled",
        "--data",
        r#"{"departure":"2026-12-01T09:00:00Z"}"#,
        "--raw",
    ]));
    serde_json::from_str(appended.trim()).unwrap()
}

/// A graceful stop (SIGTERM) of the app's process.
fn stop(mut app: App) {
    let child = app.child.as_mut().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

/// A bad event written straight into the live store stops the flights
/// projection alone: the API keeps answering, honestly (a committed write
/// is never an error that invites a resend), readiness names the failure,
/// a restart keeps it, and one CLI command recovers.
async fn a_poison_event_stops_one_projection_and_one_command_recovers(backend: Backend) {
    let (child, printed) = spawn(&backend, Stdio::inherit());
    let app = app_of(child, &printed);
    let before = app.create_flight(5).await;
    let store = match &backend {
        Backend::Sqlite(dir) => format!("sqlite://{}", dir.join("events.db").display()),
        Backend::Postgres(url) => url.clone(),
    };
    let poison = append_poison(&store);
    let poison_position = poison["position"]
        .as_u64()
        .unwrap_or_else(|| panic!("{poison}"));

    // Readiness stays 200 but says what is wrong.
    let health = app
        .eventually("/health/ready", |h| h["status"] == "degraded")
        .await;
    let check = &health["checks"]["projection:flights.flights"];
    assert_eq!(check["status"], "degraded", "{health}");
    assert!(
        check["error"]
            .as_str()
            .unwrap()
            .contains("FlightRescheduled"),
        "{health}"
    );
    assert_eq!(health["checks"]["projection:audit.log"]["status"], "up");

    // A command is committed and says so: 202, never 5xx.
    let r = app.post("/api/flights", flight(5)).await;
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let body = problem(r, StatusCode::ACCEPTED, "read_model_behind").await;
    assert_eq!(body["committed"], true, "{body}");
    assert_eq!(body["projection"], "flights.flights");
    assert_eq!(body["position"].to_string(), position);
    assert!(
        location.ends_with(body["id"].as_str().unwrap()),
        "{location}"
    );
    // Reads of the flights read model still answer, as it was.
    let r = app
        .get(&format!("/api/flights/{}", before["id"].as_str().unwrap()))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(
            &metrics,
            r#"cairn_projection_failed{projection="flights.flights"}"#
        ),
        Some(1.0),
        "{metrics}"
    );

    // The failure survives a restart.
    stop(app);
    let (child, printed) = spawn(&backend, Stdio::inherit());
    let app = app_of(child, &printed);
    let listed = stdout_of(&cairn_cli(&[
        "projections",
        "list",
        "--url",
        &app.base,
        "--token",
        &printed.token,
    ]));
    let flights: Value = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|s| s["name"] == "flights.flights")
        .unwrap();
    assert_eq!(flights["state"], "failed", "{flights}");
    assert_eq!(flights["failure"]["position"], poison_position);
    // Without a token the admin API refuses, and the CLI says why.
    let refused = cairn_cli(&["projections", "list", "--url", &app.base]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{stderr}"
    );

    // One command: skip the event it stopped at.
    stdout_of(&cairn_cli(&[
        "projections",
        "skip",
        "flights.flights",
        "--url",
        &app.base,
        "--token",
        &printed.token,
    ]));
    let r = app.get(&format!("{location}?minPosition={position}")).await;
    assert_eq!(r.status(), StatusCode::OK, "the committed flight is shown");
    app.eventually("/health/ready", |h| h["status"] == "ready")
        .await;
    app.create_flight(5).await;
    let letters = stdout_of(&cairn_cli(&[
        "projections",
        "dead-letters",
        "flights.flights",
        "--url",
        &app.base,
        "--token",
        &printed.token,
    ]));
    let letters: Vec<Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "skipped");
    assert_eq!(letters[0]["position"], poison_position);
    assert!(
        letters[0]["actor"].as_str().unwrap().starts_with("demo/"),
        "{letters:?}"
    );
    // Nothing left to skip.
    let again = cairn_cli(&[
        "projections",
        "skip",
        "flights.flights",
        "--url",
        &app.base,
        "--token",
        &printed.token,
    ]);
    assert_eq!(again.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_survived_on_sqlite() {
    let (_dir, backend) = sqlite();
    a_poison_event_stops_one_projection_and_one_command_recovers(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_survived_on_postgres() {
    let Some(backend) = postgres().await else {
        return;
    };
    a_poison_event_stops_one_projection_and_one_command_recovers(backend).await;
}

/// `cairn up ARGS` run to its end (it is expected to refuse to start).
fn up_refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("up")
        .args(args)
        .env_remove("CAIRN_STORE")
        .env_remove("CAIRN_DATA_DIR")
        .env_remove("CAIRN_LISTEN")
        .env_remove("CAIRN_MASTER_KEY")
        .env_remove("CAIRN_MASTER_KEY_FILE")
        .stdout(Stdio::null())
        .output()
        .expect("run cairn");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The files in `dir`, to show none was added. (Their sizes may change:
/// the running `cairn up` owns them.)
fn contents(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cairn_up_on_the_same_data_dir_is_refused_until_the_first_dies() {
    let (_dir, backend) = sqlite();
    let Backend::Sqlite(data) = &backend else {
        unreachable!()
    };
    let (mut first, _) = spawn(&backend, Stdio::inherit());
    let before = contents(data);
    let data_arg = data.to_str().unwrap();
    let (code, stderr) = up_refused(&["--listen", "127.0.0.1:0", "--data-dir", data_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the data dir {data_arg} is in use")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(contents(data), before, "the refused start touched nothing");

    // The lock is the OS's: it goes with the process, even on kill -9.
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut again, printed) = spawn(&backend, Stdio::inherit());
    assert!(
        printed.platform_password.is_none(),
        "the same data, not new"
    );
    again.kill().unwrap();
    again.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_refused_before_any_data_is_made() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = up_refused(&["--listen", &listen, "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {listen}")),
        "{stderr}"
    );
    assert!(!data.exists(), "no data dir, key or database was made");

    // On PostgreSQL: no schema either.
    let Some(Backend::Postgres(url)) = postgres().await else {
        return;
    };
    let (code, stderr) = up_refused(&["--listen", &listen, "--store", &url]);
    assert_eq!(code, Some(1), "{stderr}");
    let (_, schema) = url.split_once("?schema=").unwrap();
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1")
        .bind(format!("{schema}%"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(made, 0, "no schema was made");
}

#[test]
fn a_bad_projection_policy_is_refused_before_any_data_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for policy in ["nope=park", "flights.flights=skip", "flights.flights"] {
        let (code, stderr) = up_refused(&[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--projection-policy",
            policy,
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("--projection-policy"), "{stderr}");
        assert!(!data.exists(), "nothing was made for {policy}");
    }
}

/// With the park policy a poison event is recorded and the projection goes
/// on: commands answer as usual, readiness stays `ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_park_policy_passes_over_a_poison_event() {
    let (_dir, backend) = sqlite();
    let Backend::Sqlite(data) = &backend else {
        unreachable!()
    };
    let (child, printed) = spawn_with(
        &backend,
        Stdio::inherit(),
        &["--projection-policy", "flights.flights=park"],
    );
    let app = app_of(child, &printed);
    let store = format!("sqlite://{}", data.join("events.db").display());
    let poison = append_poison(&store);
    app.create_flight(5).await;
    let status: Value = app
        .get("/api/projections/flights.flights")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(
        (status["policy"].as_str(), status["parked"].as_u64()),
        (Some("park"), Some(1))
    );
    let letters: Value = app
        .get("/api/projections/flights.flights/dead-letters")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        letters["items"][0]["position"], poison["position"],
        "{letters}"
    );
    assert_eq!(letters["items"][0]["reason"], "parked");
    let health: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(health["status"], "ready", "{health}");
}
