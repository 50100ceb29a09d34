//! Test support: every test works under its own random prefix on the shared
//! RabbitMQ, so exchanges and queues never collide, and deletes what it
//! declared when it ends (even when it fails).

#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_core::{EventId, StreamId, TenantId};
use cairn_messaging::{
    ConsumerSpec, Deliveries, Delivery, IntegrationEvent, SPEC_VERSION, validate_service,
};
use cairn_messaging_amqp::{AmqpBroker, AmqpOptions};
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
    uri::AMQPUri,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub fn url() -> String {
    std::env::var("CAIRN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn services_required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").is_ok_and(|v| v == "required")
}

/// Reports that RabbitMQ is unreachable: panics when services are required,
/// otherwise prints a skip notice and returns `None`.
pub fn service_absent<T>(why: impl std::fmt::Display) -> Option<T> {
    assert!(
        !services_required(),
        "RabbitMQ is required (CAIRN_TEST_SERVICES=required) but unavailable: {why}"
    );
    eprintln!(
        "skipping: RabbitMQ unavailable ({why}); set CAIRN_TEST_SERVICES=required to fail instead"
    );
    None
}

/// `t` and 10 random hex digits.
pub fn fresh_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..10])
}

/// Short timeouts, so a test that goes wrong fails fast.
pub fn options(prefix: &str) -> AmqpOptions {
    AmqpOptions {
        prefix: prefix.to_owned(),
        connect_timeout: Duration::from_secs(3),
        confirm_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(5),
    }
}

/// One test's corner of RabbitMQ: a prefix, and what to delete at the end.
pub struct Env {
    pub prefix: String,
    pub broker: AmqpBroker,
    cleanup: Cleanup,
}

impl Env {
    /// A handle for this test's prefix, or `None` (skip) when RabbitMQ is
    /// absent and not required.
    pub async fn new() -> Option<Self> {
        let prefix = fresh_prefix();
        let broker = connect(&url(), options(&prefix)).await?;
        Some(Self {
            cleanup: Cleanup::new(&prefix),
            prefix,
            broker,
        })
    }

    /// Another handle (its own connection) on the same prefix.
    pub async fn another(&self) -> AmqpBroker {
        AmqpBroker::connect(&url(), options(&self.prefix))
            .await
            .expect("second handle")
    }

    /// A consumer group of this test (its queue is deleted at the end).
    pub fn spec(&self, group: &str, source: &str) -> ConsumerSpec {
        self.cleanup.queue(format!("{}.{group}", self.prefix));
        ConsumerSpec::new(group, source)
    }

    /// A service this test serves (its request queue is deleted at the end).
    pub fn service(&self, service: &str) -> String {
        assert!(validate_service(service).is_ok());
        self.cleanup.queue(format!("{}.rpc.{service}", self.prefix));
        service.to_owned()
    }

    /// How many messages the group's queue holds (ready, not delivered).
    pub async fn ready(&self, group: &str) -> u32 {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                format!("{}.{group}", self.prefix).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the group's queue exists");
        let _ = connection.close(200, "done".into()).await;
        queue.message_count()
    }
}

pub async fn connect(url: &str, options: AmqpOptions) -> Option<AmqpBroker> {
    match tokio::time::timeout(Duration::from_secs(20), AmqpBroker::connect(url, options)).await {
        Ok(Ok(broker)) => Some(broker),
        Ok(Err(e)) => service_absent(e),
        Err(_) => service_absent("connect timed out"),
    }
}

/// Deletes the test's queues and exchange when dropped, from a thread of
/// its own (it also runs while a failed test unwinds).
struct Cleanup {
    prefix: String,
    queues: Arc<Mutex<Vec<String>>>,
}

impl Cleanup {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            queues: Arc::default(),
        }
    }

    fn queue(&self, name: String) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if !queues.contains(&name) {
            queues.push(name);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let exchange = format!("{}.events", self.prefix);
        let url = url();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), async move {
                    let connection =
                        Connection::connect(&url, ConnectionProperties::default()).await?;
                    let channel = connection.create_channel().await?;
                    for queue in queues {
                        channel
                            .queue_delete(queue.into(), QueueDeleteOptions::default())
                            .await?;
                    }
                    channel
                        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                        .await?;
                    connection.close(200, "cleaned up".into()).await
                })
                .await;
            });
        })
        .join();
    }
}

/// An integration event of `source` for `tenant`, carrying `n`.
pub fn event(source: &str, tenant: &str, event_type: &str, n: u64) -> IntegrationEvent {
    IntegrationEvent {
        specversion: SPEC_VERSION.to_owned(),
        id: EventId::new(),
        source: source.to_owned(),
        event_type: event_type.to_owned(),
        subject: StreamId::new(format!("s-{n}")).expect("stream"),
        time: chrono::Utc::now(),
        datacontenttype: "application/json".to_owned(),
        data: serde_json::json!({ "n": n }),
        tenantid: TenantId::new(tenant).expect("tenant"),
        traceparent: None,
        correlationid: None,
        causationid: None,
        actor: None,
        sequence: (n + 1).to_string(),
        prevsequence: None,
        position: (n + 1).to_string(),
        schemaversion: 1,
    }
}

/// `n` events of `source`, alternating between two tenants.
pub fn events(source: &str, count: u64) -> Vec<IntegrationEvent> {
    (0..count)
        .map(|n| {
            let tenant = if n % 2 == 0 { "acme" } else { "globex" };
            event(source, tenant, "Happened", n)
        })
        .collect()
}

/// The decoded event a delivery carries.
pub fn decode(delivery: &Delivery) -> IntegrationEvent {
    IntegrationEvent::from_json(&delivery.body).expect("a Cairn CloudEvent")
}

pub fn n_of(delivery: &Delivery) -> u64 {
    decode(delivery).data["n"].as_u64().expect("n")
}

/// The next delivery within `within`, or `None` if none came. A transport
/// error or a closed consumer fails the test.
pub async fn recv(deliveries: &mut Box<dyn Deliveries>, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, deliveries.next()).await {
        Ok(Some(Ok(delivery))) => Some(delivery),
        Ok(Some(Err(e))) => panic!("consumer failed: {e}"),
        Ok(None) => panic!("consumer closed"),
        Err(_) => None,
    }
}

/// Receives and acks `count` deliveries, returning their `n`s in order.
pub async fn take_acked(deliveries: &mut Box<dyn Deliveries>, count: usize) -> Vec<u64> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let delivery = recv(deliveries, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {} of {count} deliveries came", seen.len()));
        seen.push(n_of(&delivery));
        delivery.acker.ack().await.expect("ack");
    }
    seen
}

/// A TCP proxy in front of RabbitMQ that a test can cut (connections reset,
/// new ones refused), stall (nothing flows, sockets stay open) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Cut,
    Stall,
}

impl Proxy {
    pub async fn start() -> Self {
        let upstream: AMQPUri = url().parse().expect("AMQP URL");
        let upstream = format!("{}:{}", upstream.authority.host, upstream.authority.port);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Up);
        let modes = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let current = *modes.borrow();
                match current {
                    Mode::Cut => drop(client),
                    Mode::Stall => {
                        let mut rx = modes.subscribe();
                        tokio::spawn(async move {
                            let _ = rx.wait_for(|m| *m != Mode::Stall).await;
                            drop(client);
                        });
                    }
                    Mode::Up => {
                        let rx = modes.subscribe();
                        let upstream = upstream.clone();
                        tokio::spawn(forward(client, upstream, rx));
                    }
                }
            }
        });
        Self { addr, mode, accept }
    }

    /// The URL of RabbitMQ through this proxy.
    pub fn url(&self) -> String {
        let mut uri: AMQPUri = url().parse().expect("AMQP URL");
        let vhost = if uri.vhost == "/" {
            "%2f".to_owned()
        } else {
            uri.vhost.clone()
        };
        uri.authority.port = self.addr.port();
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{vhost}",
            uri.authority.userinfo.username,
            uri.authority.userinfo.password,
            self.addr.port()
        )
    }

    /// Resets every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops forwarding: connections stay open but nothing flows.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Forwards again (connections stalled meanwhile are reset).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.accept.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        _ = mode.wait_for(|m| *m != Mode::Up) => {}
    }
    if *mode.borrow() == Mode::Stall {
        let _ = mode.wait_for(|m| *m != Mode::Stall).await;
    }
    // Dropping both sockets resets the connection on either side.
}
