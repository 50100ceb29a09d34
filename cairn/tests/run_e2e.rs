//! End-to-end: Flights, Passengers and Audit as separate `cairn run`
//! processes (Flights and Passengers on one PostgreSQL event store, each
//! service with its own database schema), talking over NATS JetStream and,
//! again, over RabbitMQ, behind `cairn run gateway`, which sends each path
//! to its service and checks tokens at the edge. Every scenario of
//! `scenarios/` (the ones `cairn up` passes) runs here too, through the
//! gateway, plus what only separate processes show. Each test owns its
//! schemas and a broker prefix, so tests never see each other's messages.
//! On NATS the gateway is also the live endpoint: the services answer it
//! with the RES-Service protocol, and `resclient` runs through it.

#[path = "support/js.rs"]
mod js;
mod scenarios;
#[path = "support/ws.rs"]
mod ws;

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// A running `cairn run <service>`, killed when dropped.
struct Proc {
    child: Child,
    base: String,
    /// (tenant, admin password) printed on the identity service's first start.
    passwords: Vec<(String, String)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nats,
    Amqp,
}

/// Deletes what a test's prefix created on the shared RabbitMQ (durable
/// queues and the exchange), when dropped.
struct AmqpCleanup {
    prefix: String,
}

impl Drop for AmqpCleanup {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), async move {
                    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
                    let connection =
                        lapin::Connection::connect(&broker_url(Kind::Amqp), Default::default())
                            .await?;
                    let channel = connection.create_channel().await?;
                    for group in [
                        "passengers-flight-events",
                        "flights-passenger-events",
                        "audit-flights-events",
                        "audit-passengers-events",
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
                    connection.close(200, "cleaned up".into()).await
                })
                .await;
            });
        })
        .join();
    }
}

/// Deletes the JetStream stream a test's prefix created on the shared NATS
/// server, when dropped.
struct NatsCleanup {
    prefix: String,
}

impl Drop for NatsCleanup {
    fn drop(&mut self) {
        let stream = cairn_messaging_nats::stream_name(&self.prefix);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), async move {
                    let client = async_nats::connect(broker_url(Kind::Nats)).await?;
                    let jetstream = async_nats::jetstream::new(client);
                    let _ = jetstream.delete_stream(&stream).await;
                    Ok::<_, async_nats::ConnectError>(())
                })
                .await;
            });
        })
        .join();
    }
}

/// Clusters run one at a time: each holds dozens of PostgreSQL connections
/// (every process has its pools) and the server allows 100 in all.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    kind: Kind,
    store: String,
    schema: String,
    prefix: String,
    identity: Proc,
    flights: Proc,
    passengers: Option<Proc>,
    audit: Proc,
    /// `cairn run gateway` in front of the processes the cluster started
    /// with (a service started again later has another address).
    gateway: Proc,
    /// Acts as demo's admin.
    client: Client,
    /// The platform's super-admin's token.
    super_admin: String,
    /// A token of `globex`'s operator `eve`.
    other: String,
    /// The token `client` sends.
    demo: String,
    /// After the processes, before the turn: the broker's leftovers.
    _cleanup: Option<AmqpCleanup>,
    _nats_cleanup: Option<NatsCleanup>,
    /// Last, so the processes stop before the next cluster starts.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Each part of the API to the process that serves it.
fn routes(
    flights: &Proc,
    passengers: &Proc,
    audit: &Proc,
    identity: &Proc,
) -> Vec<(&'static str, String)> {
    vec![
        ("/api/flights", flights.base.clone()),
        ("/api/passengers", passengers.base.clone()),
        ("/api/audit", audit.base.clone()),
        ("/realms", identity.base.clone()),
        ("/api/admin", identity.base.clone()),
    ]
}

fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn broker_url(kind: Kind) -> String {
    match kind {
        Kind::Nats => {
            std::env::var("CAIRN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
        }
        Kind::Amqp => std::env::var("CAIRN_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
    }
}

/// Whether PostgreSQL and the broker answer; `None` skips (or fails when
/// services are required).
async fn services(kind: Kind) -> Option<()> {
    if let Err(e) = sqlx::PgPool::connect(&postgres_url()).await {
        return cairn_store::testkit::service_absent("PostgreSQL", e);
    }
    let addr = match kind {
        Kind::Nats => "127.0.0.1:4222",
        Kind::Amqp => "127.0.0.1:5672",
    };
    if let Err(e) = tokio::net::TcpStream::connect(addr).await {
        return cairn_store::testkit::service_absent(&format!("{kind:?} broker"), e);
    }
    Some(())
}

/// The master key of the test's identity service (tests only).
const TEST_MASTER_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";

fn spawn(
    service: &str,
    store: Option<&str>,
    db: &str,
    kind: Kind,
    prefix: &str,
    issuer: Option<&str>,
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["run", service, "--listen", "127.0.0.1:0"])
        .args(["--db", db]);
    if let Some(store) = store {
        cmd.args(["--store", store]);
    }
    match issuer {
        Some(issuer) => {
            cmd.args(["--issuer", issuer]);
        }
        // The tests of messaging alone, without an identity service.
        None if service != "identity" => {
            cmd.arg("--insecure-tenant-header");
        }
        None => {}
    }
    cmd.args(["--broker", &broker_url(kind), "--prefix", prefix])
        .env("CAIRN_MASTER_KEY", TEST_MASTER_KEY);
    let (child, base, mut lines) = start(cmd, service);
    // The identity service's first start prints the admins' passwords.
    let mut passwords = Vec::new();
    if service == "identity" {
        while passwords.len() < 2 {
            let line = lines
                .next()
                .expect("the identity service prints its first tenants")
                .unwrap();
            if let Some((head, rest)) = line.split_once(" password: ") {
                let tenant = head
                    .trim()
                    .strip_prefix("created tenant ")
                    .and_then(|t| t.split(':').next())
                    .unwrap()
                    .to_owned();
                let password = rest.split_whitespace().next().unwrap().to_owned();
                passwords.push((tenant, password));
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child,
        base,
        passwords,
    }
}

/// Starts `cmd` (a `cairn run <service>`) without the environment's
/// `CAIRN_*` settings and waits until it says where it listens.
fn start(
    mut cmd: Command,
    service: &str,
) -> (Child, String, std::io::Lines<BufReader<ChildStdout>>) {
    for var in [
        "CAIRN_CONFIG",
        "CAIRN_STORE",
        "CAIRN_DB",
        "CAIRN_BROKER",
        "CAIRN_ISSUER",
        "CAIRN_IDENTITY_URL",
        "CAIRN_PUBLIC_URL",
        "CAIRN_MASTER_KEY_FILE",
        "CAIRN_DEFAULT_TENANT",
        "CAIRN_UPSTREAM_TIMEOUT_MS",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cairn binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let marker = format!("cairn run {service}: listening on ");
    let base = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("cairn run {service} exited before listening"))
            .unwrap();
        if let Some(rest) = line.strip_prefix(&marker) {
            break rest.trim().to_owned();
        }
    };
    (child, base, lines)
}

/// `cairn run gateway` with `routes` (prefix, upstream), checking the
/// tokens of `issuer`'s realms at the edge.
fn spawn_gateway(routes: &[(&str, String)], issuer: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args([
        "run",
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--issuer",
        issuer,
    ])
    .args(extra);
    for (prefix, upstream) in routes {
        cmd.arg("--route").arg(format!("{prefix}={upstream}"));
    }
    let (child, base, lines) = start(cmd, "gateway");
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child,
        base,
        passwords: Vec::new(),
    }
}

impl Cluster {
    async fn start(kind: Kind) -> Option<Self> {
        services(kind).await?;
        let turn = ONE_AT_A_TIME.lock().await;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let schema = format!("cairn_test_{secs}_{id}");
        let store = format!("{}?schema={schema}", postgres_url());
        let prefix = format!("t{id}");
        // The identity service first: it declares the groups that hear its
        // revocations before its relay publishes any.
        let identity = spawn(
            "identity",
            Some(&format!("{}?schema={schema}_identity", postgres_url())),
            &format!("{}?schema={schema}_identity_db", postgres_url()),
            kind,
            &prefix,
            None,
        );
        let issuer = identity.base.clone();
        let password = |tenant: &str| {
            identity
                .passwords
                .iter()
                .find(|(t, _)| t == tenant)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("no password printed for {tenant}"))
        };
        let demo = scenarios::login(&issuer, "demo", "admin", &password("demo")).await;
        let demo = demo["access_token"].as_str().unwrap().to_owned();
        let platform = scenarios::login(&issuer, "platform", "admin", &password("platform")).await;
        let super_admin = platform["access_token"].as_str().unwrap().to_owned();
        let other = scenarios::user_in(&issuer, &super_admin, "globex", "eve", "operator").await;
        // Consumers next: on RabbitMQ a group only gets what is published
        // after its queue exists.
        let audit = spawn(
            "audit",
            None,
            &format!("{}?schema={schema}_audit", postgres_url()),
            kind,
            &prefix,
            Some(&issuer),
        );
        let flights = spawn(
            "flights",
            Some(&store),
            &format!("{}?schema={schema}_flights", postgres_url()),
            kind,
            &prefix,
            Some(&issuer),
        );
        let passengers = spawn(
            "passengers",
            Some(&store),
            &format!("{}?schema={schema}_passengers", postgres_url()),
            kind,
            &prefix,
            Some(&issuer),
        );
        // The gateway also hears revocations, into a database of its own.
        let gateway_db = format!("{}?schema={schema}_gateway", postgres_url());
        let gateway = spawn_gateway(
            &routes(&flights, &passengers, &audit, &identity),
            &issuer,
            &[
                "--db",
                &gateway_db,
                "--broker",
                &broker_url(kind),
                "--prefix",
                &prefix,
            ],
        );
        let mut cluster = Self {
            kind,
            flights,
            identity,
            passengers: Some(passengers),
            audit,
            gateway,
            store,
            schema,
            prefix,
            client: scenarios::bearer_client(&demo),
            demo,
            super_admin,
            other,
            _cleanup: None,
            _nats_cleanup: None,
            _turn: turn,
        };
        match kind {
            Kind::Amqp => {
                cluster._cleanup = Some(AmqpCleanup {
                    prefix: cluster.prefix.clone(),
                });
            }
            Kind::Nats => {
                cluster._nats_cleanup = Some(NatsCleanup {
                    prefix: cluster.prefix.clone(),
                });
            }
        }
        Some(cluster)
    }

    /// The gateway's routes to this cluster's processes.
    fn routes(&self) -> Vec<(&'static str, String)> {
        routes(
            &self.flights,
            self.passengers.as_ref().expect("passengers running"),
            &self.audit,
            &self.identity,
        )
    }

    fn demo_token(&self) -> String {
        self.demo.clone()
    }

    fn issuer(&self) -> String {
        self.identity.base.clone()
    }

    fn start_passengers(&mut self) {
        self.passengers = Some(spawn(
            "passengers",
            Some(&self.store),
            &format!("{}?schema={}_passengers", postgres_url(), self.schema),
            self.kind,
            &self.prefix,
            Some(&self.issuer()),
        ));
    }

    /// The whole API behind the gateway, for the shared scenarios.
    async fn app(&self) -> scenarios::App {
        scenarios::App {
            child: None,
            base: self.gateway.base.clone(),
            client: self.client.clone(),
            separate: true,
            other: scenarios::OtherTenant::Token(self.other.clone()),
        }
    }

    fn flights(&self, path: &str) -> String {
        format!("{}{path}", self.flights.base)
    }

    /// Kills Flights (SIGKILL) and starts it again on the same store,
    /// database and prefix.
    fn restart_flights(&mut self) {
        let db = format!("{}?schema={}_flights", postgres_url(), self.schema);
        let issuer = self.issuer();
        let old = std::mem::replace(
            &mut self.flights,
            spawn(
                "flights",
                Some(&self.store),
                &db,
                self.kind,
                &self.prefix,
                Some(&issuer),
            ),
        );
        drop(old);
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) Passengers.
    fn freeze_passengers(&self, frozen: bool) {
        let pid = self.passengers.as_ref().unwrap().child.id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    fn audit(&self, path: &str) -> String {
        format!("{}{path}", self.audit.base)
    }

    fn passengers(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.passengers.as_ref().expect("passengers running").base
        )
    }

    async fn post(&self, url: String, body: Value) -> Response {
        self.client.post(url).json(&body).send().await.unwrap()
    }

    async fn get(&self, url: String) -> Value {
        let r = self.client.get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    async fn create_flight(&self, capacity: u32) -> String {
        let r = self
            .post(
                self.flights("/api/flights"),
                json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                       "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z",
                       "capacity": capacity}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn add_passenger(&self, flight: &str, document: &str) -> Response {
        self.post(
            self.passengers("/api/passengers"),
            json!({"flightId": flight, "name": "Ada Lovelace", "document": document}),
        )
        .await
    }

    /// Reads `url` until `done` holds: the consumers run asynchronously.
    async fn eventually(&self, url: String, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..300 {
            last = self.get(url.clone()).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never reached the expected state; last read: {last}");
    }
}

async fn problem(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

/// Booking asks Flights over request/reply; boarding and departure cross
/// back; passenger counts reach Flights' view through the broker.
async fn bookings_boarding_and_departure(c: Cluster) {
    let id = c.create_flight(2).await;
    let ada: Value = {
        let r = c.add_passenger(&id, "P1").await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    };
    let body = problem(
        c.add_passenger(&id, "P1").await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "duplicate_document");
    assert_eq!(
        c.add_passenger(&id, "P2").await.status(),
        StatusCode::CREATED
    );
    let body = problem(
        c.add_passenger(&id, "P3").await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "no_seats_left");
    // An unknown flight: Flights answers "not found" across the broker.
    let r = c
        .add_passenger("0190b3f0-0000-7000-8000-000000000000", "X1")
        .await;
    assert!(
        r.status() == StatusCode::NOT_FOUND || r.status() == StatusCode::CONFLICT,
        "{}",
        r.status()
    );

    // Counts arrive through Passengers' public events.
    c.eventually(c.flights(&format!("/api/flights/{id}")), |f| {
        f["passengers"] == json!({"total": 2, "boarded": 0})
    })
    .await;

    // Departure asks Passengers to close boarding: refused, 409, details kept.
    let body = problem(
        c.post(
            c.flights(&format!("/api/flights/{id}/departure")),
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "passengers_not_boarded", "{body}");

    let ada_id = ada["id"].as_str().unwrap();
    let all: Value = c
        .get(c.passengers(&format!("/api/passengers?flightId={id}")))
        .await;
    for p in all["items"].as_array().unwrap() {
        let r = c
            .post(
                c.passengers(&format!(
                    "/api/passengers/{}/boarding",
                    p["id"].as_str().unwrap()
                )),
                json!({}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = c
        .post(
            c.flights(&format!("/api/flights/{id}/departure")),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Boarding is closed now: nobody joins, and the boarded stay.
    let body = problem(
        c.add_passenger(&id, "P9").await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "flight_not_scheduled");
    c.eventually(c.flights(&format!("/api/flights/{id}")), |f| {
        f["status"] == "departed" && f["passengers"] == json!({"total": 2, "boarded": 2})
    })
    .await;
    let _ = ada_id;
}

/// Passengers is down when a flight is deleted: the deletion stands, and
/// Passengers removes the passengers from `FlightDeleted` once it is back.
async fn deletion_reaches_passengers_after_an_outage(mut c: Cluster) {
    let id = c.create_flight(10).await;
    for doc in ["A1", "A2", "A3"] {
        assert_eq!(
            c.add_passenger(&id, doc).await.status(),
            StatusCode::CREATED
        );
    }
    c.passengers = None; // killed
    let r = c
        .client
        .delete(c.flights(&format!("/api/flights/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .client
        .get(c.flights(&format!("/api/flights/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    c.start_passengers();
    let left = c
        .eventually(
            c.passengers(&format!("/api/passengers?flightId={id}")),
            |l| l["total"] == 0,
        )
        .await;
    assert_eq!(left["items"], json!([]));
}

/// With both up, deletion removes passengers at once (request/reply).
async fn deletion_removes_passengers(c: Cluster) {
    let id = c.create_flight(10).await;
    for doc in ["A1", "A2"] {
        assert_eq!(
            c.add_passenger(&id, doc).await.status(),
            StatusCode::CREATED
        );
    }
    let r = c
        .client
        .delete(c.flights(&format!("/api/flights/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let left = c
        .get(c.passengers(&format!(
            "/api/passengers?flightId={id}&minPosition={position}"
        )))
        .await;
    assert_eq!(left["total"], 0, "{left}");
}

/// Audit runs on its own and hears every service's public events, numbered
/// in arrival order, filterable and paged, each with who caused it.
async fn audit_hears_every_service(c: Cluster) {
    let me = c
        .get(format!(
            "{}/realms/demo/protocol/openid-connect/userinfo",
            c.issuer()
        ))
        .await;
    let me = me["sub"].as_str().expect("userinfo names the subject");
    let id = c.create_flight(5).await;
    assert_eq!(
        c.add_passenger(&id, "Z1").await.status(),
        StatusCode::CREATED
    );
    let flight_events = c
        .eventually(c.audit(&format!("/api/audit?stream=flight-{id}")), |a| {
            a["total"] == 1
        })
        .await;
    assert_eq!(flight_events["items"][0]["type"], "FlightScheduled");
    assert_eq!(flight_events["items"][0]["source"], "flights");
    // The actor crossed the broker with the event, as it is in the log.
    assert_eq!(flight_events["items"][0]["metadata"]["actor"], me);
    let added = c
        .eventually(c.audit("/api/audit?type=PassengerAdded"), |a| {
            a["total"] == 1
        })
        .await;
    assert_eq!(added["items"][0]["source"], "passengers");
    assert_eq!(added["items"][0]["data"]["flightId"], id.as_str());
    assert_eq!(added["items"][0]["metadata"]["actor"], me);
    // The identity service's events are there too: demo's signing key and
    // admin, without their data (they carry credentials).
    let admin = c
        .eventually(c.audit("/api/audit?type=UserCreated"), |a| a["total"] == 1)
        .await;
    assert_eq!(admin["items"][0]["source"], "identity");
    assert_eq!(admin["items"][0]["stream"], "user-admin");
    assert_eq!(admin["items"][0]["data"], json!({"redacted": true}));
    assert_eq!(admin["items"][0]["metadata"]["actor"], "bootstrap");
    let key = c
        .eventually(c.audit("/api/audit?type=SigningKeyAdded"), |a| {
            a["total"] == 1
        })
        .await;
    assert_eq!(key["items"][0]["data"], json!({"redacted": true}));
    // Paging by the log's own order: one entry a page, each after the last.
    let mut page = c.get(c.audit("/api/audit?limit=1")).await;
    let total = page["total"].as_u64().unwrap();
    assert!(total >= 4, "{page}");
    let mut seen = 1;
    let mut last = page["items"][0]["seq"].as_u64().unwrap();
    while let Some(next) = page["next"].as_str() {
        page = c
            .get(c.audit(&format!("/api/audit?limit=1&after={next}")))
            .await;
        let seq = page["items"][0]["seq"].as_u64().unwrap();
        assert!(seq > last, "{page}");
        last = seq;
        seen += 1;
    }
    assert_eq!(seen, total);
    // Relay and consumers are measured.
    let text = |url: String| {
        let client = c.client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let flights_metrics = text(c.flights("/metrics")).await;
    assert!(
        flights_metrics.contains("cairn_relay_published_total{service=\"flights\"}"),
        "{flights_metrics}"
    );
    assert!(flights_metrics.contains("cairn_relay_lag_events{service=\"flights\"}"));
    let audit_metrics = text(c.audit("/metrics")).await;
    assert!(
        audit_metrics.contains(
            "cairn_consumer_messages_total{group=\"audit-passengers-events\",outcome=\"handled\"}"
        ),
        "{audit_metrics}"
    );
    // Another tenant sees none of it: only its own identity events.
    let r = Client::new()
        .get(c.audit("/api/audit?limit=200"))
        .bearer_auth(&c.other)
        .send()
        .await
        .unwrap();
    let theirs: Value = r.json().await.unwrap();
    for entry in theirs["items"].as_array().unwrap() {
        assert_eq!(entry["source"], "identity", "{entry}");
        assert!(!entry.to_string().contains(&id), "{entry}");
    }
}

/// Every service checks tokens itself: none, forged or another
/// deployment's are refused; a tenant's token never reaches another
/// tenant's data; the super-admin's cross-tenant reads are recorded in the
/// read tenant's audit log; and a token revoked at the identity service is
/// refused by every service soon after (its revocation travels as an
/// event over the broker).
async fn every_service_checks_tokens(c: Cluster) {
    let id = c.create_flight(5).await;
    let anonymous = Client::new();
    for url in [
        c.flights("/api/flights"),
        c.passengers(&format!("/api/passengers?flightId={id}")),
        c.audit("/api/audit"),
    ] {
        let r = anonymous.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{url}");
        assert!(r.headers().contains_key("www-authenticate"));
        // A header naming a tenant is no way around it.
        let r = anonymous
            .get(&url)
            .header("x-cairn-tenant", "demo")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{url}");
        // A token with its signature cut off.
        let demo_token = c.demo_token();
        let (unsigned, _) = demo_token.rsplit_once('.').unwrap();
        let r = anonymous
            .get(&url)
            .bearer_auth(format!("{unsigned}.AAAA"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{url}");
    }
    // Another tenant's operator: 404, never the data; writes on it fail.
    let other = scenarios::bearer_client(&c.other);
    let r = other
        .get(c.flights(&format!("/api/flights/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = other
        .post(c.passengers("/api/passengers"))
        .json(&json!({"flightId": id, "name": "Eve", "document": "E1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The header may name another tenant only for a super-admin's reads,
    // and each such read is audited in the read tenant.
    let r = other
        .get(c.flights(&format!("/api/flights/{id}")))
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let admin = scenarios::bearer_client(&c.super_admin);
    let r = admin
        .get(c.flights(&format!("/api/flights/{id}")))
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = admin
        .delete(c.flights(&format!("/api/flights/{id}")))
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "cross-tenant writes never"
    );
    let r = admin
        .get(c.audit("/api/audit"))
        .header("x-cairn-tenant", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let reads = c
        .eventually(c.audit("/api/audit?type=CrossTenantRead"), |a| {
            a["total"] == 2
        })
        .await;
    let mut streams: Vec<&str> = reads["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    streams.sort_unstable();
    assert_eq!(
        streams,
        ["crossread_audit-platform", "crossread_flights-platform"]
    );
    assert_eq!(reads["items"][0]["data"]["actorTenant"], "platform");
    for read in reads["items"].as_array().unwrap() {
        assert_eq!(read["metadata"]["actor"], read["data"]["actor"], "{read}");
    }

    // Revocation: a fresh session of demo's admin works everywhere, is
    // revoked at the identity service, and is then refused everywhere.
    let password = c
        .identity
        .passwords
        .iter()
        .find(|(t, _)| t == "demo")
        .unwrap()
        .1
        .clone();
    let session = scenarios::login(&c.issuer(), "demo", "admin", &password).await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let urls = [
        c.flights(&format!("/api/flights/{id}")),
        c.passengers(&format!("/api/passengers?flightId={id}")),
        c.audit("/api/audit"),
        // Through the gateway, which refuses it at the edge as well.
        format!("{}/api/flights/{id}", c.gateway.base),
    ];
    let status = |url: String, token: String| async move {
        Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    };
    for url in &urls {
        assert_eq!(status(url.clone(), token.clone()).await, StatusCode::OK);
    }
    let r = Client::new()
        .post(format!(
            "{}/realms/demo/protocol/openid-connect/revoke",
            c.issuer()
        ))
        .form(&[("token", token.as_str()), ("client_id", "cairn")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for url in &urls {
        let mut last = StatusCode::OK;
        for _ in 0..200 {
            last = status(url.clone(), token.clone()).await;
            if last == StatusCode::UNAUTHORIZED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            last,
            StatusCode::UNAUTHORIZED,
            "{url} still takes a revoked token"
        );
    }
    // Other sessions are untouched.
    assert_eq!(
        status(urls[0].clone(), c.demo_token()).await,
        StatusCode::OK
    );
    // The gateway refuses the revoked token itself: with Passengers frozen
    // the answer is still an immediate 401, not a wait for an upstream.
    // (Its list may lag the services' by a poll: ask until it answers.)
    c.freeze_passengers(true);
    let mut at_the_edge = None;
    for _ in 0..20 {
        let r = Client::new()
            .get(format!("{}/api/passengers?flightId={id}", c.gateway.base))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if let Ok(r) = r {
            at_the_edge = Some(r.status());
            break;
        }
    }
    c.freeze_passengers(false);
    assert_eq!(at_the_edge, Some(StatusCode::UNAUTHORIZED));
    // The revocation is in demo's audit log, heard from the identity service.
    let revoked = c
        .eventually(c.audit("/api/audit?type=AccessTokenRevoked"), |a| {
            a["total"] == 1
        })
        .await;
    assert_eq!(revoked["items"][0]["source"], "identity");
}

async fn lifecycle(c: Cluster) {
    scenarios::lifecycle(&c.app().await).await;
}

async fn deleting_a_flight_removes_its_passengers(c: Cluster) {
    scenarios::deleting_a_flight_removes_its_passengers(&c.app().await).await;
}

async fn bad_input_gets_a_problem(c: Cluster) {
    scenarios::bad_input_gets_a_problem(&c.app().await).await;
}

async fn tenants_never_see_each_other(c: Cluster) {
    scenarios::tenants_never_see_each_other(&c.app().await).await;
}

async fn fifty_bookings_on_thirty_seats(c: Cluster) {
    scenarios::fifty_bookings_on_thirty_seats(&c.app().await).await;
}

/// Two instances of Audit compete for the same groups: every event lands
/// once, and both do some of the work.
async fn competing_instances_share_the_work(c: Cluster) {
    let second = spawn(
        "audit",
        None,
        &format!("{}?schema={}_audit", postgres_url(), c.schema),
        c.kind,
        &c.prefix,
        Some(&c.issuer()),
    );
    let creates = (0..40).map(|_| c.create_flight(3));
    let ids: Vec<String> = futures_util::future::join_all(creates).await;
    let log = c
        .eventually(c.audit("/api/audit?type=FlightScheduled&limit=200"), |a| {
            a["total"] == 40
        })
        .await;
    let mut seen: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 40, "each flight once");
    for id in &ids {
        assert!(seen.contains(&format!("flight-{id}").as_str()));
    }
    let handled = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("cairn_consumer_messages_total{group=\"audit-flights-events\",outcome=\"handled\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let text = |base: &str| {
        let (client, url) = (c.client.clone(), format!("{base}/metrics"));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let (a, b) = (
        handled(&text(&c.audit.base).await),
        handled(&text(&second.base).await),
    );
    assert_eq!(a + b, 40.0, "handled once in all: {a} + {b}");
    assert!(a > 0.0 && b > 0.0, "both instances took a share: {a} + {b}");
}

/// Flights dies in the middle of a departure, after asking Passengers to
/// close boarding and before hearing back. The departure saga's deadline,
/// stored in Flights' database, fires in the restarted process and undoes
/// the half-done departure: boarding opens again, the flight stays
/// scheduled.
async fn a_departure_cut_short_by_a_crash_is_undone(mut c: Cluster) {
    let id = c.create_flight(5).await;
    let p1: Value = c.add_passenger(&id, "P1").await.json().await.unwrap();
    let r = c
        .post(
            c.passengers(&format!(
                "/api/passengers/{}/boarding",
                p1["id"].as_str().unwrap()
            )),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Passengers hangs; the departure waits for its answer; Flights dies.
    c.freeze_passengers(true);
    let depart = {
        let (client, url) = (
            c.client.clone(),
            c.flights(&format!("/api/flights/{id}/departure")),
        );
        tokio::spawn(async move { client.post(url).json(&json!({})).send().await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart_flights();
    assert!(
        depart.await.unwrap().is_err(),
        "the request died with Flights"
    );
    c.freeze_passengers(false);

    // Passengers did close boarding when it resumed...
    c.eventually(c.audit("/api/audit?type=BoardingClosed"), |a| {
        a["total"] == 1
    })
    .await;
    let r = c.add_passenger(&id, "P2").await;
    let body = problem(r, StatusCode::CONFLICT, "rule_violation").await;
    assert_eq!(body["rule"], "boarding_closed");
    // ...and the saga's deadline reopens it (the step deadline is 30 s).
    let mut reopened = Value::Null;
    for _ in 0..90 {
        reopened = c.get(c.audit("/api/audit?type=BoardingReopened")).await;
        if reopened["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(reopened["total"], 1, "boarding was never reopened");
    assert_eq!(
        c.add_passenger(&id, "P2").await.status(),
        StatusCode::CREATED
    );
    let flight = c.get(c.flights(&format!("/api/flights/{id}"))).await;
    assert_eq!(flight["status"], "scheduled");
}

/// The gateway checks tokens itself: with Passengers frozen (SIGSTOP), a
/// request without a valid token still gets its 401 at once, from the
/// gateway; a valid one is forwarded and, with nobody answering, ends as a
/// 504 after the gateway's upstream timeout; once Passengers runs again
/// the same request passes.
async fn the_gateway_refuses_requests_without_a_token_itself(c: Cluster) {
    let id = c.create_flight(5).await;
    let gateway = spawn_gateway(&c.routes(), &c.issuer(), &["--upstream-timeout-ms", "1000"]);
    let url = format!("{}/api/passengers?flightId={id}", gateway.base);
    let anonymous = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Forwarded while Passengers runs: the route works.
    let r = c.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    c.freeze_passengers(true);
    let started = Instant::now();
    let r = anonymous.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="cairn""#);
    problem(r, StatusCode::UNAUTHORIZED, "missing_token").await;
    let demo_token = c.demo_token();
    let (unsigned, _) = demo_token.rsplit_once('.').unwrap();
    let r = anonymous
        .get(&url)
        .bearer_auth(format!("{unsigned}.AAAA"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED, "invalid_signature").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the gateway answered without waiting for Passengers: {:?}",
        started.elapsed()
    );
    let r = anonymous
        .get(&url)
        .bearer_auth(&demo_token)
        .send()
        .await
        .unwrap();
    let unanswered = problem(r, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
    c.freeze_passengers(false);
    assert!(unanswered["detail"].is_string());

    let r = c.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = anonymous
        .get(format!("{}/metrics", gateway.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for status in ["200", "401", "504"] {
        let series = format!(
            r#"cairn_http_requests_total{{method="GET",route="/api/passengers",status="{status}"}}"#
        );
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
}

/// How long a revoked token still passes the gateway: `ROUNDS` sessions of
/// demo's admin are each revoked at the identity service, and from the
/// revoke call's answer the gateway is asked every 10 ms until it refuses
/// the token. The delays are printed (p50, p99, max); the test holds only
/// that every revoked token is refused, as `revoked`, well within
/// `REFUSED_WITHIN`.
async fn revocation_delay_through_the_gateway(c: Cluster) {
    const ROUNDS: usize = 20;
    const REFUSED_WITHIN: Duration = Duration::from_secs(30);
    let password = c
        .identity
        .passwords
        .iter()
        .find(|(t, _)| t == "demo")
        .unwrap()
        .1
        .clone();
    let url = format!("{}/api/flights?limit=1", c.gateway.base);
    let client = Client::new();
    let mut delays = Vec::with_capacity(ROUNDS);
    let mut refusals = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let session = scenarios::login(&c.issuer(), "demo", "admin", &password).await;
        let token = session["access_token"].as_str().unwrap().to_owned();
        let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "round {round}: before revoking");
        let r = client
            .post(format!(
                "{}/realms/demo/protocol/openid-connect/revoke",
                c.issuer()
            ))
            .form(&[("token", token.as_str()), ("client_id", "cairn")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let revoked_at = Instant::now();
        let refusal = loop {
            let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
            if r.status() == StatusCode::UNAUTHORIZED {
                break r.json::<Value>().await.unwrap();
            }
            assert_eq!(r.status(), StatusCode::OK, "round {round}");
            assert!(
                revoked_at.elapsed() < REFUSED_WITHIN,
                "round {round}: the gateway still takes a token revoked {:?} ago",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        delays.push(revoked_at.elapsed());
        refusals.push(refusal);
    }
    delays.sort_unstable();
    let at =
        |q: f64| delays[((delays.len() as f64 * q).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "revocation through the gateway ({:?}, {ROUNDS} tokens): p50 {} ms, p99 {} ms, max {} ms",
        c.kind,
        at(0.50).as_millis(),
        at(0.99).as_millis(),
        delays[delays.len() - 1].as_millis()
    );
    for refusal in refusals {
        assert_eq!(refusal["code"], "revoked", "{refusal}");
    }
}

/// On RabbitMQ a queue keeps only what is published after it exists: a
/// service declares the groups that read its events before it publishes,
/// so a consumer started later still gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_consumers_started_late_get_what_was_published_before() {
    if services(Kind::Amqp).await.is_none() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let schema = format!("cairn_test_{secs}_{id}");
    let prefix = format!("t{id}");
    let _cleanup = AmqpCleanup {
        prefix: prefix.clone(),
    };
    let store = format!("{}?schema={schema}", postgres_url());
    let db = |name: &str| format!("{}?schema={schema}_{name}", postgres_url());
    let flights = spawn(
        "flights",
        Some(&store),
        &db("flights"),
        Kind::Amqp,
        &prefix,
        None,
    );
    let client = Client::new();
    let r = client
        .post(format!("{}/api/flights", flights.base))
        .json(
            &json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                       "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z",
                       "capacity": 5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let position: u64 = r.headers()["x-cairn-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Wait until the relay has published it, before any consumer exists.
    for _ in 0..300 {
        let text = client
            .get(format!("{}/metrics", flights.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let published = text.lines().any(|l| {
            l.starts_with("cairn_relay_position{service=\"flights\"}")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|p| p >= position as f64)
        });
        if published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = spawn("audit", None, &db("audit"), Kind::Amqp, &prefix, None);
    let mut seen = Value::Null;
    for _ in 0..300 {
        seen = client
            .get(format!("{}/api/audit?type=FlightScheduled", audit.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if seen["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen["total"], 1, "the late consumer missed it: {seen}");
    drop((audit, flights));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_departure_cut_short_by_a_crash_is_undone() {
    if let Some(c) = Cluster::start(Kind::Nats).await {
        a_departure_cut_short_by_a_crash_is_undone(c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_the_gateway_refuses_requests_without_a_token_itself() {
    if let Some(c) = Cluster::start(Kind::Nats).await {
        the_gateway_refuses_requests_without_a_token_itself(c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_the_live_api_and_the_console_through_the_gateway() {
    if let Some(c) = Cluster::start(Kind::Nats).await {
        live_through_the_gateway(c).await;
    }
}

/// The gateway's `/ws`, with every resource answered by the service that
/// owns it over NATS and every change heard there.
async fn live_through_the_gateway(c: Cluster) {
    let host = c.gateway.base.trim_start_matches("http://").to_owned();
    // The console is the gateway's too.
    let page = reqwest::get(format!("{}/", c.gateway.base)).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("<html"));

    let mut anonymous = ws::Client::connect(&host, None).await;
    let r = anonymous
        .request("subscribe.flights.flights", Value::Null)
        .await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");

    let mut live = ws::Client::connect(&host, Some(&c.demo)).await;
    let r = live.request("subscribe.flights.flights", Value::Null).await;
    assert!(
        r["result"]["collections"]["flights.flights"].is_array(),
        "{r}"
    );
    // A call goes to Flights' command bus and answers the new flight, by
    // the name a client knows (no tenant in it).
    let r = live
        .request(
            "call.flights.flights.create",
            json!({"number": "SK77", "origin": "ARN", "destination": "LHR",
                   "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                   "capacity": 3}),
        )
        .await;
    let rid = r["result"]["rid"].as_str().expect("a resource").to_owned();
    let id = rid
        .strip_prefix("flights.flight.")
        .expect("a flight")
        .to_owned();
    assert_eq!(r["result"]["models"][&rid]["number"], "SK77", "{r}");
    let seen = live.events_until(&["flights.flights.add".to_owned()]).await;
    assert_eq!(
        seen["flights.flights.add"]["data"]["value"]["rid"], rid,
        "{seen:?}"
    );
    // What HTTP changes reaches the live client from another service.
    let r = live.request(&format!("subscribe.{rid}"), Value::Null).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = c.add_passenger(&id, "L1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let seen = live.events_until(&[format!("{rid}.change")]).await;
    assert!(
        seen[&format!("{rid}.change")].to_string().contains("1"),
        "{seen:?}"
    );
    let manifest = format!("passengers.flight.{id}");
    let r = live
        .request(&format!("subscribe.{manifest}"), Value::Null)
        .await;
    let refs = r["result"]["collections"][&manifest]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(refs.len(), 1, "{r}");
    let passenger = refs[0]["rid"].as_str().unwrap();
    assert!(passenger.starts_with("passengers.passenger."), "{r}");
    assert!(r["result"]["models"][passenger].is_object(), "{r}");
    let r = live.request("subscribe.audit.log", Value::Null).await;
    assert!(r["result"]["collections"]["audit.log"].is_array(), "{r}");

    // Another tenant's flight is not found; its calls are refused.
    let mut eve = ws::Client::connect(&host, Some(&c.other)).await;
    let r = eve.request(&format!("subscribe.{rid}"), Value::Null).await;
    assert_eq!(r["error"]["code"], "system.notFound", "{r}");
    let r = eve.request(&format!("call.{rid}.depart"), json!({})).await;
    assert!(r.get("error").is_some(), "{r}");

    // The super-admin reads demo's flight read-only, and Flights records
    // the read before answering it.
    let mut root = ws::Client::connect(&host, None).await;
    let r = root
        .request(
            "auth.identity.session.token",
            json!({"token": c.super_admin, "tenant": "demo"}),
        )
        .await;
    assert_eq!(r["result"]["payload"]["crossTenant"], true, "{r}");
    let r = root.request(&format!("subscribe.{rid}"), Value::Null).await;
    assert_eq!(r["result"]["models"][&rid]["number"], "SK77", "{r}");
    let r = root.request(&format!("call.{rid}.depart"), json!({})).await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");
    let read = c
        .eventually(c.audit("/api/audit?type=CrossTenantRead&limit=50"), |r| {
            r["items"].to_string().contains(&rid)
        })
        .await;
    assert!(read.to_string().contains("RES subscribe"), "{read}");

    // The operations are every service's, put together by the gateway:
    // both services' projections, the consumers, the stores' heads added.
    let r = live.request("subscribe.ops.projections", Value::Null).await;
    let projections = r["result"]["collections"]["ops.projections"].to_string();
    for name in ["ops.projection.flights.", "ops.projection.passengers."] {
        assert!(projections.contains(name), "{name} in {r}");
    }
    let first = r["result"]["collections"]["ops.projections"][0]["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(r["result"]["models"][&first]["state"], "running", "{r}");
    let r = live.request("subscribe.ops.consumers", Value::Null).await;
    assert!(
        r["result"]["collections"]["ops.consumers"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{r}"
    );
    let r = live.request("subscribe.ops.store", Value::Null).await;
    let head = r["result"]["models"]["ops.store"]["head"].as_u64().unwrap();
    assert!(head > 0, "{r}");
    let r = live.request("subscribe.ops.deadletters", Value::Null).await;
    assert!(
        r["result"]["collections"]["ops.deadletters"].is_array(),
        "{r}"
    );
    // Once a second the gateway has them read again: a new event moves
    // the head.
    let r = c.add_passenger(&id, "L2").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = live.event().await;
        if event["event"] == "ops.store.change"
            && event["data"]["values"]["head"]
                .as_u64()
                .is_some_and(|moved| moved > head)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no higher head within 10 s; last {event}"
        );
    }
    let r = anonymous.request("subscribe.ops.store", Value::Null).await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");

    // Resgate's own client and the console in Chromium, through the
    // gateway.
    let password = c
        .identity
        .passwords
        .iter()
        .find(|(t, _)| t == "demo")
        .map(|(_, p)| p.clone())
        .unwrap();
    for (file, chromium) in [("resclient.test.mjs", false), ("console.test.mjs", true)] {
        if js::ready(file, chromium) {
            let (host, password) = (host.clone(), password.clone());
            tokio::task::spawn_blocking(move || js::run_node(file, &host, &password, "gateway"))
                .await
                .unwrap();
        }
    }
}

macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(c) = super::Cluster::start(super::Kind::Nats).await {
                        super::$name(c).await;
                    }
                }
            )*
        }
        mod amqp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(c) = super::Cluster::start(super::Kind::Amqp).await {
                        super::$name(c).await;
                    }
                }
            )*
        }
    };
}

on_both_brokers!(
    every_service_checks_tokens,
    revocation_delay_through_the_gateway,
    lifecycle,
    deleting_a_flight_removes_its_passengers,
    bad_input_gets_a_problem,
    tenants_never_see_each_other,
    fifty_bookings_on_thirty_seats,
    audit_hears_every_service,
    competing_instances_share_the_work,
    bookings_boarding_and_departure,
    deletion_removes_passengers,
    deletion_reaches_passengers_after_an_outage,
);
