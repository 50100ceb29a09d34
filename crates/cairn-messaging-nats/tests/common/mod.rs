//! Test support: every test gets its own prefix on the shared NATS server
//! (so its own stream, subjects and consumers), and deletes its stream at
//! the end. Streams of earlier runs are swept after an hour.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use cairn_core::{EventId, StreamId, TenantId};
use cairn_messaging::{BrokerError, Deliveries, Delivery, IntegrationEvent};
use cairn_messaging_nats::{NatsBroker, NatsOptions};
use futures_util::StreamExt;

pub fn url() -> String {
    std::env::var("CAIRN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Whether `CAIRN_TEST_SERVICES=required` is set: an absent service is then
/// a failure instead of a skip.
pub fn services_required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").is_ok_and(|v| v == "required")
}

/// Reports that `service` is unreachable: panics when services are required,
/// otherwise prints a skip notice and returns `None`.
pub fn service_absent<T>(service: &str, why: impl std::fmt::Display) -> Option<T> {
    assert!(
        !services_required(),
        "{service} is required (CAIRN_TEST_SERVICES=required) but unavailable: {why}"
    );
    eprintln!(
        "skipping: {service} unavailable ({why}); set CAIRN_TEST_SERVICES=required to fail instead"
    );
    None
}

/// `t` and 10 random lowercase hex digits.
pub fn fresh_prefix() -> String {
    format!("t{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

/// Deletes test streams (`T<10 hex>_EVENTS`) created more than an hour ago.
async fn sweep(broker: &NatsBroker) {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let js = broker.jetstream();
            let mut streams = js.streams();
            let cutoff = chrono::Utc::now() - chrono::Duration::hours(1);
            let mut old = Vec::new();
            while let Some(Ok(info)) = streams.next().await {
                let name = &info.config.name;
                let test_name = name.len() == 18
                    && name.starts_with('T')
                    && name.ends_with("_EVENTS")
                    && name[1..11]
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c));
                let created = info.created.unix_timestamp();
                if test_name && created < cutoff.timestamp() {
                    old.push(name.clone());
                }
            }
            for name in old {
                let _ = js.delete_stream(&name).await;
            }
        })
        .await;
}

/// A broker on the shared server under a fresh prefix, or `None` (skip)
/// when NATS is absent and not required.
pub async fn broker() -> Option<NatsBroker> {
    broker_with(NatsOptions::with_prefix(fresh_prefix())).await
}

/// Retries a timed-out connect twice: the shared server can be slow to
/// create a stream while other suites hammer it, which is not absence.
pub async fn broker_with(options: NatsOptions) -> Option<NatsBroker> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match NatsBroker::connect(&url(), options.clone()).await {
            Ok(broker) => {
                sweep(&broker).await;
                return Some(broker);
            }
            Err(BrokerError::Timeout(why)) if attempts < 3 => {
                eprintln!("connect timed out ({why}); retrying");
            }
            Err(e) => return service_absent("NATS", e),
        }
    }
}

/// Deletes the broker's stream (and with it its consumers).
pub async fn cleanup(broker: &NatsBroker) {
    let _ = broker.jetstream().delete_stream(broker.stream_name()).await;
}

/// How many messages the broker's stream holds.
pub async fn stored(broker: &NatsBroker) -> u64 {
    let mut stream = broker
        .jetstream()
        .get_stream(broker.stream_name())
        .await
        .expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("test tenant")
}

/// An integration event of `source` for `tenant` whose data carries `n`.
pub fn event(tenant_name: &str, source: &str, event_type: &str, n: u64) -> IntegrationEvent {
    IntegrationEvent {
        specversion: cairn_messaging::SPEC_VERSION.to_owned(),
        id: EventId::new(),
        source: source.to_owned(),
        event_type: event_type.to_owned(),
        subject: StreamId::new(format!("s-{n}")).expect("stream id"),
        time: chrono::Utc::now(),
        datacontenttype: "application/json".to_owned(),
        data: serde_json::json!({ "n": n }),
        tenantid: tenant(tenant_name),
        traceparent: None,
        correlationid: None,
        causationid: None,
        actor: None,
        sequence: n.to_string(),
        prevsequence: None,
        position: n.to_string(),
        schemaversion: 1,
    }
}

/// `count` events of `source` for `tenant`, numbered from `first`.
pub fn events(tenant_name: &str, source: &str, first: u64, count: u64) -> Vec<IntegrationEvent> {
    (first..first + count)
        .map(|n| event(tenant_name, source, "Happened", n))
        .collect()
}

/// The next delivery within `wait`, skipping transport errors; `None` when
/// nothing came.
pub async fn recv(deliveries: &mut Box<dyn Deliveries>, wait: Duration) -> Option<Delivery> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, deliveries.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("deliveries closed"),
            Ok(Some(Ok(delivery))) => return Some(delivery),
            Ok(Some(Err(e))) => eprintln!("transport error while receiving: {e}"),
        }
    }
}

/// The event a delivery carries.
pub fn decode(delivery: &Delivery) -> IntegrationEvent {
    IntegrationEvent::from_json(&delivery.body).expect("a Cairn CloudEvent")
}

/// Receives `count` deliveries (panics if they do not come within `wait`
/// each), acking each one, and returns their events.
pub async fn take_acked(
    deliveries: &mut Box<dyn Deliveries>,
    count: usize,
    wait: Duration,
) -> Vec<IntegrationEvent> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let delivery = recv(deliveries, wait)
            .await
            .unwrap_or_else(|| panic!("delivery {i} of {count} did not come"));
        out.push(decode(&delivery));
        delivery.acker.ack().await.expect("ack");
    }
    out
}

/// A nats-server of the test's own, on a free port with its own store, so
/// the test can kill it and start it again.
pub struct OwnServer {
    pub port: u16,
    pub store: PathBuf,
    child: Option<Child>,
}

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

impl OwnServer {
    /// `None` (skip) when the binary is missing and services are not required.
    pub fn start() -> Option<Self> {
        if !std::path::Path::new(NATS_SERVER).exists() {
            return service_absent("nats-server binary", format!("{NATS_SERVER} not found"));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = std::env::temp_dir().join(format!("cairn-nats-test-{}", fresh_prefix()));
        std::fs::create_dir_all(&store).expect("store dir");
        let mut server = Self {
            port,
            store,
            child: None,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store, and waits until
    /// it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes (`true`, SIGSTOP) or thaws (`false`, SIGCONT) the server:
    /// while frozen its connections stay open but nothing answers.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("running");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
        if frozen {
            // A signal stops each thread as it next runs: wait until every
            // thread of the server reports itself stopped.
            let pid = child.id();
            for _ in 0..200 {
                if all_threads_stopped(pid) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("nats-server {pid} did not stop");
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Whether every thread of process `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}
