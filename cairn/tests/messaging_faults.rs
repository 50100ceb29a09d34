//! Faults, process by process: `cairn run flights` and `cairn run audit` on
//! PostgreSQL and a broker the test controls, a nats-server of its own on a
//! free port or a TCP proxy in front of RabbitMQ, never the shared broker
//! itself going away.
//!
//! - A consumer killed with SIGKILL mid-stream and started again handles
//!   every event, and none twice.
//! - While the broker is down, commands keep succeeding (the log is the
//!   outbox); once it is back the relay catches up: nothing lost, nothing
//!   doubled.
//! - A poison message ends in the dead letters (at once when it is not a
//!   CloudEvent, after the retries when its handling keeps failing) and the
//!   consumer carries on; `cairn dlq` lists and drops it.
//!
//! Each test owns its PostgreSQL schemas and a broker prefix. Every wait is
//! a bounded poll; nothing asserts how long anything took.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use cairn_core::{EventId, StreamId, TenantId};
use cairn_messaging::{IntegrationEvent, SPEC_VERSION};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    time::Instant,
};

/// The tenant every request runs as (the services' default).
const TENANT: &str = "demo";
/// The consumer of Flights' events inside `cairn run audit`.
const AUDIT_FLIGHTS: &str = "audit-flights-events";
/// Where the test-owned NATS server comes from.
const NATS_SERVER: &str = "/usr/sbin/nats-server";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Nats,
    Amqp,
}

fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn amqp_url() -> String {
    std::env::var("CAIRN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One connection to the test database (a pool would retry for its whole
/// acquire timeout when PostgreSQL is absent).
/// A server with every connection slot taken (other suites share it) is
/// busy, not absent: that is retried for a while.
async fn pg() -> Result<sqlx::PgConnection, String> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect(&postgres_url()),
        )
        .await
        {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => e.to_string(),
            Err(_) => return Err("connect timed out".to_owned()),
        };
        if !busy(&error) || attempts >= 30 {
            return Err(error);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a PostgreSQL error says every connection slot is taken.
fn busy(error: &str) -> bool {
    error.contains("too many clients")
}

/// One deployment at a time in this file: each holds a few dozen
/// PostgreSQL connections and runs two or three processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `host:port` of the shared RabbitMQ.
fn amqp_upstream() -> String {
    let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("AMQP URL");
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

// ---------------------------------------------------------------------------
// The broker under test's control.

/// A nats-server of the test's own, on a free port with its own store
/// directory, so it can be killed and started again with its streams.
struct OwnNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnNats {
    async fn start() -> Option<Self> {
        if !std::path::Path::new(NATS_SERVER).exists() {
            return cairn_store::testkit::service_absent(
                "nats-server",
                format!("{NATS_SERVER} not found"),
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::Builder::new()
            .prefix("cairn-faults-nats-")
            .tempdir()
            .expect("a store directory");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.restart().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store directory and
    /// waits until it accepts connections.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no goodbye to the clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of the shared RabbitMQ: `cut` resets every
/// connection through it and refuses new ones, `restore` forwards again.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let upstream = amqp_upstream();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let modes = up.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *modes.borrow() {
                    tokio::spawn(forward(client, upstream.clone(), modes.subscribe()));
                } else {
                    drop(client);
                }
            }
        });
        Self { addr, up, accept }
    }

    /// The shared RabbitMQ's URL, through this proxy.
    fn url(&self) -> String {
        let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("AMQP URL");
        let vhost = if uri.vhost == "/" {
            "%2f".to_owned()
        } else {
            uri.vhost.clone()
        };
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{vhost}",
            uri.authority.userinfo.username,
            uri.authority.userinfo.password,
            self.addr.port()
        )
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.accept.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: String, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
    // Dropping both sockets resets the connection on either side.
}

/// Deletes what the services declared on the shared RabbitMQ under the
/// test's prefix, from a thread of its own (it also runs while a failed
/// test unwinds).
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
                        lapin::Connection::connect(&amqp_url(), Default::default()).await?;
                    for group in [
                        AUDIT_FLIGHTS,
                        "audit-passengers-events",
                        "flights-passenger-events",
                        "rpc.flights",
                    ] {
                        let channel = connection.create_channel().await?;
                        let _ = channel
                            .queue_delete(
                                format!("{prefix}.{group}").into(),
                                QueueDeleteOptions::default(),
                            )
                            .await;
                    }
                    let channel = connection.create_channel().await?;
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

/// The broker the services talk to, and the test's hand on it.
enum Broker {
    Nats(OwnNats),
    Amqp { proxy: Proxy, _cleanup: AmqpCleanup },
}

impl Broker {
    /// `None` (skip) when the broker is absent and not required.
    async fn start(kind: Kind, prefix: &str) -> Option<Self> {
        match kind {
            Kind::Nats => Some(Self::Nats(OwnNats::start().await?)),
            Kind::Amqp => {
                if let Err(e) = TcpStream::connect(amqp_upstream()).await {
                    return cairn_store::testkit::service_absent("RabbitMQ", e);
                }
                Some(Self::Amqp {
                    proxy: Proxy::start().await,
                    _cleanup: AmqpCleanup {
                        prefix: prefix.to_owned(),
                    },
                })
            }
        }
    }

    /// What the services connect to.
    fn url(&self) -> String {
        match self {
            Self::Nats(server) => server.url(),
            Self::Amqp { proxy, .. } => proxy.url(),
        }
    }

    /// The broker goes away: the server is killed, or the proxy cut.
    fn down(&mut self) {
        match self {
            Self::Nats(server) => server.kill(),
            Self::Amqp { proxy, .. } => proxy.cut(),
        }
    }

    /// The broker is back: the same server on the same port and store, or
    /// the proxy forwarding again.
    async fn up(&mut self) {
        match self {
            Self::Nats(server) => server.restart().await,
            Self::Amqp { proxy, .. } => proxy.restore(),
        }
    }

    /// Publishes `body` as it is, bypassing Cairn, where Flights' public
    /// events go, and waits for the broker to take it.
    async fn publish_raw(&self, prefix: &str, event_type: &str, body: Vec<u8>) {
        let subject = format!("{prefix}.{TENANT}.flights.{event_type}");
        match self {
            Self::Nats(server) => {
                let client = async_nats::connect(server.url())
                    .await
                    .expect("connect to the test's nats-server");
                let js = async_nats::jetstream::new(client);
                js.publish(subject, body.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("JetStream stores the message");
            }
            Self::Amqp { .. } => {
                use lapin::{
                    BasicProperties, Confirmation,
                    options::{BasicPublishOptions, ConfirmSelectOptions},
                };
                let connection = lapin::Connection::connect(&amqp_url(), Default::default())
                    .await
                    .expect("connect to RabbitMQ");
                let channel = connection.create_channel().await.expect("channel");
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .expect("confirm mode");
                let confirm = channel
                    .basic_publish(
                        format!("{prefix}.events").into(),
                        subject.into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
                assert!(matches!(confirm, Confirmation::Ack(_)), "{confirm:?}");
                let _ = connection.close(200, "published".into()).await;
            }
        }
    }

    /// Whether the broker holds nothing more for `group`: nothing waiting,
    /// nothing delivered and unacknowledged (NATS) or nothing ready
    /// (RabbitMQ, whose unacknowledged count this client cannot see).
    async fn drained(&self, prefix: &str, group: &str) -> bool {
        match self {
            Self::Nats(server) => {
                let Ok(client) = async_nats::connect(server.url()).await else {
                    return false;
                };
                let js = async_nats::jetstream::new(client);
                let stream = cairn_messaging_nats::stream_name(prefix);
                let Ok(mut consumer) = js
                    .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                        group, stream,
                    )
                    .await
                else {
                    return false;
                };
                consumer
                    .info()
                    .await
                    .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0)
            }
            Self::Amqp { .. } => {
                use lapin::{options::QueueDeclareOptions, types::FieldTable};
                let Ok(connection) =
                    lapin::Connection::connect(&amqp_url(), Default::default()).await
                else {
                    return false;
                };
                let ready = async {
                    let channel = connection.create_channel().await?;
                    channel
                        .queue_declare(
                            format!("{prefix}.{group}").into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .map(|q| q.message_count())
                }
                .await;
                let _ = connection.close(200, "asked".into()).await;
                ready.is_ok_and(|n| n == 0)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The services.

/// A running `cairn run <service>`, killed (SIGKILL) when dropped. Its
/// output is echoed, tagged, into the test's captured output.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    async fn start(name: &str, store: Option<&str>, db: &str, broker: &str, prefix: &str) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["run", name, "--listen", "127.0.0.1:0", "--db", db]);
        if let Some(store) = store {
            cmd.args(["--store", store]);
        }
        // These tests are about messaging: requests name their tenant.
        cmd.args([
            "--broker",
            broker,
            "--prefix",
            prefix,
            "--insecure-tenant-header",
        ]);
        for var in [
            "CAIRN_CONFIG",
            "CAIRN_STORE",
            "CAIRN_DB",
            "CAIRN_BROKER",
            "CAIRN_LISTEN",
            "CAIRN_PREFIX",
            "CAIRN_DEFAULT_TENANT",
            "CAIRN_LOG_FORMAT",
            "CAIRN_ISSUER",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the cairn binary starts");
        let tag = format!("[{name} {}]", child.id());
        echo(child.stderr.take().expect("stderr"), tag.clone());
        let stdout = child.stdout.take().expect("stdout");
        let marker = format!("cairn run {name}: listening on ");
        let (found, listening) = oneshot::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(&marker)
                    && let Some(found) = found.take()
                {
                    let _ = found.send(rest.trim().to_owned());
                }
                eprintln!("{tag} {line}");
            }
        });
        match tokio::time::timeout(Duration::from_secs(90), listening).await {
            Ok(Ok(base)) => Self { child, base },
            Ok(Err(_)) => {
                let status = child.wait();
                panic!("cairn run {name} exited before listening: {status:?}")
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cairn run {name} did not listen within 90 s")
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the process.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies a child's output into the test's (captured) output, line by line.
fn echo(output: impl Read + Send + 'static, tag: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            eprintln!("{tag} {line}");
        }
    });
}

/// Flights and Audit as separate processes on fresh schemas and a fresh
/// prefix, with the broker in the test's hands. Services are declared
/// before the broker so they are stopped first.
struct Deployment {
    flights: Service,
    audit: Option<Service>,
    broker: Broker,
    schema: String,
    prefix: String,
    client: Client,
    /// Held until everything above is stopped.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Deployment {
    /// `None` (skip) when PostgreSQL or the broker is absent and services
    /// are not required.
    async fn start(kind: Kind) -> Option<Self> {
        let turn = ONE_AT_A_TIME.lock().await;
        if let Err(e) = pg().await {
            return cairn_store::testkit::service_absent("PostgreSQL", e);
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let schema = format!("cairn_test_{secs}_{id}");
        let prefix = format!("t{id}");
        let broker = Broker::start(kind, &prefix).await?;
        // Consumers first: on RabbitMQ a group only gets what is published
        // after its queue exists.
        let audit = Service::start(
            "audit",
            None,
            &db_url(&format!("{schema}_audit")),
            &broker.url(),
            &prefix,
        )
        .await;
        let flights = Service::start(
            "flights",
            Some(&db_url(&schema)),
            &db_url(&format!("{schema}_flights")),
            &broker.url(),
            &prefix,
        )
        .await;
        Some(Self {
            flights,
            audit: Some(audit),
            broker,
            schema,
            prefix,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            _turn: turn,
        })
    }

    fn audit_schema(&self) -> String {
        format!("{}_audit", self.schema)
    }

    fn audit_db(&self) -> String {
        db_url(&self.audit_schema())
    }

    fn audit(&self) -> &Service {
        self.audit.as_ref().expect("audit running")
    }

    fn kill_audit(&mut self) {
        if let Some(mut audit) = self.audit.take() {
            audit.kill();
        }
    }

    /// Starts audit again on the same database and prefix.
    async fn restart_audit(&mut self) {
        assert!(self.audit.is_none(), "audit already running");
        let audit = Service::start(
            "audit",
            None,
            &self.audit_db(),
            &self.broker.url(),
            &self.prefix,
        )
        .await;
        self.audit = Some(audit);
    }

    async fn create_flight(&self) -> String {
        create_flight(&self.client, &self.flights.url("/api/flights")).await
    }

    /// Every `FlightScheduled` the audit log holds.
    async fn audited_flights(&self) -> Vec<Value> {
        let r = self
            .client
            .get(
                self.audit()
                    .url("/api/audit?type=FlightScheduled&limit=200"),
            )
            .send()
            .await
            .expect("audit answers");
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.expect("a page");
        assert!(page["next"].is_null(), "more than one page: {page}");
        page["items"].as_array().expect("items").clone()
    }

    /// Polls the audit log until it has a `FlightScheduled` for every flight
    /// in `expected`, for at most `within`; returns the entries.
    async fn await_audit(&self, expected: &HashSet<String>, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let entries = self.audited_flights().await;
            let seen: HashSet<&str> = entries.iter().filter_map(flight_of).collect();
            let missing = expected
                .iter()
                .filter(|id| !seen.contains(id.as_str()))
                .count();
            if missing == 0 {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "after {within:?} the audit log still misses {missing} of {} flights \
                 ({} entries)",
                expected.len(),
                entries.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the broker has nothing more for audit's consumer of
    /// Flights' events (so no redelivery is still to come), then checks
    /// the audit log once more: each flight exactly once.
    async fn assert_settled_exactly_once(&self, expected: &HashSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self.broker.drained(&self.prefix, AUDIT_FLIGHTS).await {
            assert!(
                Instant::now() < deadline,
                "the broker still holds messages for {AUDIT_FLIGHTS}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_exactly_once(&self.audited_flights().await, expected);
    }

    /// `cairn dlq <args> --db <audit database>`: its stdout.
    async fn dlq(&self, args: &[&str]) -> String {
        let argv: Vec<String> = std::iter::once("dlq".to_owned())
            .chain(args.iter().map(|a| (*a).to_owned()))
            .chain(["--db".to_owned(), self.audit_db()])
            .collect();
        let mut attempts = 0;
        let output = loop {
            attempts += 1;
            let argv = argv.clone();
            let output = tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_cairn"))
                    .args(argv)
                    .env_remove("CAIRN_DB")
                    .env("RUST_LOG", "warn")
                    .output()
            })
            .await
            .expect("join")
            .expect("cairn dlq runs");
            // A full server (other suites share it) is worth another try.
            if output.status.success()
                || !busy(&String::from_utf8_lossy(&output.stderr))
                || attempts >= 30
            {
                break output;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        assert!(
            output.status.success(),
            "cairn dlq {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// The dead letters of the audit database, one JSON object each.
    async fn dead_letters(&self) -> Vec<Value> {
        self.dlq(&["list"])
            .await
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect()
    }

    /// Stops every process, then drops the test's schemas (a failed test
    /// leaves them to the hourly sweep of `cairn_test_*` schemas).
    async fn finish(mut self) {
        self.kill_audit();
        self.flights.kill();
        if let Ok(mut conn) = pg().await {
            for schema in [
                self.schema.clone(),
                format!("{}_flights", self.schema),
                self.audit_schema(),
            ] {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

fn db_url(schema: &str) -> String {
    format!("{}?schema={schema}", postgres_url())
}

async fn create_flight(client: &Client, url: &str) -> String {
    let r = client
        .post(url)
        .json(
            &json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                      "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z",
                      "capacity": 100}),
        )
        .send()
        .await
        .expect("flights answers");
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("the new flight's id").to_owned()
}

/// The flight id of an audit entry (its stream is `flight-<id>`).
fn flight_of(entry: &Value) -> Option<&str> {
    entry["stream"].as_str()?.strip_prefix("flight-")
}

/// One entry per expected flight, no other, no event twice.
fn assert_exactly_once(entries: &[Value], expected: &HashSet<String>) {
    let mut per_flight: HashMap<&str, usize> = HashMap::new();
    for entry in entries {
        *per_flight
            .entry(flight_of(entry).expect("a flight stream"))
            .or_default() += 1;
    }
    let twice: Vec<_> = per_flight.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "flights audited more than once: {twice:?}"
    );
    let ids: HashSet<&str> = entries.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), entries.len(), "an event id appears twice");
    let seen: HashSet<String> = per_flight.keys().map(|id| (*id).to_owned()).collect();
    assert_eq!(&seen, expected, "audited flights differ from those created");
    assert_eq!(entries.len(), expected.len());
}

// ---------------------------------------------------------------------------
// The faults.

/// SIGKILL on audit while it consumes a burst of 150 flights, then a
/// restart on the same database: every flight is audited, none twice.
async fn killed_consumer_resumes_without_loss_or_duplicates(mut d: Deployment) {
    const FLIGHTS: usize = 150;
    const WRITERS: usize = 3;
    let url = d.flights.url("/api/flights");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, url) = (d.client.clone(), url.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in (w..FLIGHTS).step_by(WRITERS) {
                    ids.push(create_flight(&client, &url).await);
                }
                ids
            })
        })
        .collect();

    // Kill as soon as the first entries are in: the burst is still going.
    let deadline = Instant::now() + Duration::from_secs(60);
    let count_url = d.audit().url("/api/audit?type=FlightScheduled&limit=1");
    loop {
        let page: Value = d
            .client
            .get(&count_url)
            .send()
            .await
            .expect("audit answers")
            .json()
            .await
            .expect("a page");
        if page["total"].as_u64().unwrap_or(0) >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit never received the first flights"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill_audit();

    // What the killed process had committed: some, not all.
    let mut conn = pg().await.expect("PostgreSQL");
    let at_kill: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM \"{}\".audit_log WHERE event_type = 'FlightScheduled'",
        d.audit_schema()
    ))
    .fetch_one(&mut conn)
    .await
    .expect("count the audit log");
    drop(conn);
    eprintln!("audit killed with {at_kill} of {FLIGHTS} flights handled");
    assert!(
        at_kill > 0 && at_kill < FLIGHTS as i64,
        "the kill did not land mid-stream ({at_kill} of {FLIGHTS} handled)"
    );

    let mut expected = HashSet::new();
    for writer in writers {
        expected.extend(writer.await.expect("writer"));
    }
    assert_eq!(expected.len(), FLIGHTS);

    d.restart_audit().await;
    // On NATS, what the killed process held unacknowledged comes back after
    // the group's ack wait (30 s).
    d.await_audit(&expected, Duration::from_secs(120)).await;
    d.assert_settled_exactly_once(&expected).await;
    d.finish().await;
}

/// The broker goes away for a while and comes back: every command during
/// the outage succeeds, and every flight from before, during and after
/// reaches the audit log exactly once.
async fn broker_outage_loses_nothing_and_doubles_nothing(mut d: Deployment) {
    let mut expected = HashSet::new();
    for _ in 0..10 {
        expected.insert(d.create_flight().await);
    }
    d.await_audit(&expected, Duration::from_secs(60)).await;

    d.broker.down();
    for _ in 0..20 {
        // The log is the outbox: 201 without a broker.
        expected.insert(d.create_flight().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing can have gone through while it was down.
    assert_eq!(
        d.audited_flights().await.len(),
        10,
        "events reached audit while the broker was down"
    );

    d.broker.up().await;
    for _ in 0..10 {
        expected.insert(d.create_flight().await);
    }
    assert_eq!(expected.len(), 40);
    d.await_audit(&expected, Duration::from_secs(90)).await;
    d.assert_settled_exactly_once(&expected).await;
    d.finish().await;
}

/// Two poison messages reach audit's consumer of Flights' events: one that
/// is not a CloudEvent (dead-lettered at once) and a valid CloudEvent the
/// audit database refuses every time (dead-lettered after the retries).
/// Flights created meanwhile and after are audited; `cairn dlq` lists both
/// letters and `drop --all` empties the table.
async fn poison_goes_to_dead_letters_and_the_consumer_carries_on(d: Deployment) {
    let mut expected = HashSet::new();
    expected.insert(d.create_flight().await);
    d.await_audit(&expected, Duration::from_secs(60)).await;
    assert!(d.dead_letters().await.is_empty());

    // A fault in the audit database: it refuses any entry mentioning
    // "poison", so handling such an event fails on every attempt.
    let mut conn = pg().await.expect("PostgreSQL");
    sqlx::query(&format!(
        "ALTER TABLE \"{}\".audit_log ADD CONSTRAINT audit_refuses_poison \
         CHECK (data NOT LIKE '%poison%')",
        d.audit_schema()
    ))
    .execute(&mut conn)
    .await
    .expect("add the constraint");
    drop(conn);

    let garbage = b"{\"this is\": \"not a CloudEvent\"".to_vec();
    d.broker
        .publish_raw(&d.prefix, "FlightScheduled", garbage)
        .await;
    let refused = IntegrationEvent {
        specversion: SPEC_VERSION.to_owned(),
        id: EventId::new(),
        source: "flights".to_owned(),
        event_type: "FlightScheduled".to_owned(),
        subject: StreamId::new(format!("flight-{}", uuid::Uuid::new_v4())).expect("stream"),
        time: chrono::Utc::now(),
        datacontenttype: "application/json".to_owned(),
        data: json!({"poison": true}),
        tenantid: TenantId::new(TENANT).expect("tenant"),
        traceparent: None,
        correlationid: None,
        causationid: None,
        actor: None,
        sequence: "0".to_owned(),
        prevsequence: None,
        position: "999999".to_owned(),
        schemaversion: 1,
    };
    d.broker
        .publish_raw(&d.prefix, "FlightScheduled", refused.to_json())
        .await;
    // While the refused event is being retried, other events go through.
    expected.insert(d.create_flight().await);
    d.await_audit(&expected, Duration::from_secs(60)).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let letters = loop {
        let letters = d.dead_letters().await;
        if letters.len() >= 2 {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "the poison never reached the dead letters: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(letters.len(), 2, "{letters:?}");
    let undecodable = letters
        .iter()
        .find(|l| l["tenant"].is_null())
        .unwrap_or_else(|| panic!("no undecodable letter: {letters:?}"));
    assert_eq!(undecodable["consumer"], AUDIT_FLIGHTS);
    assert_eq!(undecodable["attempts"], 1);
    assert!(
        undecodable["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a Cairn CloudEvent")),
        "{undecodable}"
    );
    let retried = letters
        .iter()
        .find(|l| l["eventId"] == refused.id.to_string())
        .unwrap_or_else(|| panic!("the refused event is not a dead letter: {letters:?}"));
    assert_eq!(retried["consumer"], AUDIT_FLIGHTS);
    assert_eq!(retried["tenant"], TENANT);
    assert_eq!(retried["stream"], refused.subject.as_str());
    assert_eq!(retried["eventType"], "FlightScheduled");
    assert_eq!(retried["attempts"], 5, "the default number of attempts");
    assert!(
        retried["error"]
            .as_str()
            .is_some_and(|e| e.contains("audit_refuses_poison")),
        "{retried}"
    );
    let shown: Value = serde_json::from_str(&d.dlq(&["show", &refused.id.to_string()]).await)
        .expect("one JSON object");
    assert_eq!(shown["body"]["data"], json!({"poison": true}), "{shown}");

    // The consumer carries on after giving up.
    expected.insert(d.create_flight().await);
    d.await_audit(&expected, Duration::from_secs(60)).await;
    d.assert_settled_exactly_once(&expected).await;

    let dropped: Value =
        serde_json::from_str(d.dlq(&["drop", "--all"]).await.trim()).expect("one JSON object");
    assert_eq!(dropped, json!({"dropped": 2}));
    assert!(d.dead_letters().await.is_empty());
    d.finish().await;
}

macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(d) = super::Deployment::start(super::Kind::Nats).await {
                        super::$name(d).await;
                    }
                }
            )*
        }
        mod amqp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(d) = super::Deployment::start(super::Kind::Amqp).await {
                        super::$name(d).await;
                    }
                }
            )*
        }
    };
}

on_both_brokers!(
    killed_consumer_resumes_without_loss_or_duplicates,
    broker_outage_loses_nothing_and_doubles_nothing,
    poison_goes_to_dead_letters_and_the_consumer_carries_on,
);
