//! The broker handle: one NATS connection, the JetStream event stream, and
//! publishing.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use async_nats::{
    Client, ConnectErrorKind, ConnectOptions, HeaderMap,
    connection::State,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self, ErrorCode,
        context::{CreateStreamErrorKind, PublishAckFuture, PublishErrorKind},
        message::PublishMessage,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use async_trait::async_trait;
use cairn_messaging::{
    Broker, BrokerError, CONTENT_TYPE, ConsumerSpec, Deliveries, IntegrationEvent,
};

use crate::{
    consume,
    options::{NatsOptions, events_filter, stream_name},
};

/// Most publishes of one `publish` call awaiting their acknowledgement at
/// once: the batch is pipelined in windows of this size.
const PUBLISH_WINDOW: usize = 1024;

/// A handle on NATS JetStream: publishes integration events, opens consumer
/// groups and carries request/reply. Cheap to clone (one shared
/// connection); it reconnects by itself after the server comes back.
#[derive(Debug, Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    jetstream: jetstream::Context,
    options: NatsOptions,
    stream: String,
}

impl NatsBroker {
    /// Connects to `url` (`nats://127.0.0.1:4222`, or a comma-separated list
    /// of servers), then creates the event stream `<PREFIX>_EVENTS` or
    /// brings its subjects, age and duplicate window in line with `options`.
    ///
    /// Fails with [`BrokerError::Unavailable`] when no server answers within
    /// `connect_timeout` (no retry here: the caller decides); once connected,
    /// the handle reconnects for ever.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, BrokerError> {
        options.validate()?;
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(BrokerError::Refused("no NATS server URL".to_owned()));
        }
        // Built without a TLS crypto backend: TLS works only once the
        // process installed a rustls `CryptoProvider` (rustls panics
        // otherwise).
        let tls = servers.iter().any(|s| s.starts_with("tls://"));
        if tls && async_nats::rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(BrokerError::Refused(
                "a tls:// server needs a rustls CryptoProvider installed in the process".to_owned(),
            ));
        }
        let prefix = options.prefix.clone();
        let connect = ConnectOptions::new()
            .name(format!("cairn {prefix}"))
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            .event_callback(move |event| {
                let prefix = prefix.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(prefix, "nats connected");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(prefix, "nats connection lost, reconnecting");
                        }
                        // The handle was dropped: nothing went wrong.
                        async_nats::Event::Closed => {
                            tracing::debug!(prefix, "nats connection closed");
                        }
                        other => tracing::warn!(prefix, event = %other, "nats connection event"),
                    }
                }
            })
            .connect(servers);
        // The handshake is bounded by `connection_timeout`; this also bounds
        // name resolution and anything else before it.
        let client =
            tokio::time::timeout(options.connect_timeout + Duration::from_secs(1), connect)
                .await
                .map_err(|_| BrokerError::Unavailable(format!("connecting to {url} timed out")))?
                .map_err(|e| match e.kind() {
                    ConnectErrorKind::ServerParse => {
                        BrokerError::Refused(format!("NATS server URL {url:?}: {e}"))
                    }
                    _ => BrokerError::Unavailable(format!("connecting to {url}: {e}")),
                })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .max_ack_inflight(1 << 20)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let broker = Self {
            inner: Arc::new(Inner {
                client,
                jetstream,
                stream: stream_name(&options.prefix),
                options,
            }),
        };
        broker.ensure_stream().await?;
        Ok(broker)
    }

    /// The NATS connection, shared by every clone of this handle.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The JetStream context this handle publishes and consumes with.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    pub fn prefix(&self) -> &str {
        &self.inner.options.prefix
    }

    /// The name of the JetStream stream holding this prefix's events.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream
    }

    /// Creates the event stream, or updates it when it exists with other
    /// settings. Called by [`connect`](Self::connect), and again when a
    /// publish or a consumer finds the stream gone (a server that lost its
    /// store).
    pub async fn ensure_stream(&self) -> Result<(), BrokerError> {
        let options = &self.inner.options;
        let config = stream::Config {
            name: self.inner.stream.clone(),
            description: Some(format!("Cairn integration events under {}", options.prefix)),
            subjects: vec![events_filter(&options.prefix)],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            max_age: options.stream_max_age,
            duplicate_window: options.duplicate_window,
            max_bytes: -1,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            max_message_size: -1,
            num_replicas: 1,
            ..Default::default()
        };
        let js = &self.inner.jetstream;
        let error = match js.create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        match error.kind() {
            CreateStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NAME_EXIST =>
            {
                js.update_stream(config)
                    .await
                    .map(drop)
                    .map_err(|e| stream_error("updating", &self.inner.stream, e))
            }
            _ => Err(stream_error("creating", &self.inner.stream, error)),
        }
    }

    /// [`BrokerError::Unavailable`] unless the connection is up: calls made
    /// while it is down fail at once instead of queueing behind it.
    pub(crate) fn check_connected(&self) -> Result<(), BrokerError> {
        match self.inner.client.connection_state() {
            State::Connected => Ok(()),
            State::Disconnected | State::Pending => Err(BrokerError::Unavailable(
                "not connected to NATS (reconnecting)".to_owned(),
            )),
        }
    }

    async fn publish_once(&self, events: &[IntegrationEvent]) -> Result<(), PublishFailure> {
        self.check_connected().map_err(PublishFailure::Broker)?;
        let js = &self.inner.jetstream;
        let prefix = &self.inner.options.prefix;
        let mut in_flight: VecDeque<PublishAckFuture> =
            VecDeque::with_capacity(events.len().min(PUBLISH_WINDOW));
        for event in events {
            if in_flight.len() == PUBLISH_WINDOW
                && let Some(oldest) = in_flight.pop_front()
            {
                settle(oldest).await?;
            }
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, event.id.to_string().as_str());
            headers.insert("Content-Type", CONTENT_TYPE);
            let message = PublishMessage::build()
                .headers(headers)
                .payload(event.to_json().into());
            let ack = js
                .send_publish(event.topic(prefix), message)
                .await
                .map_err(PublishFailure::from)?;
            in_flight.push_back(ack);
        }
        for ack in in_flight {
            settle(ack).await?;
        }
        Ok(())
    }
}

async fn settle(ack: PublishAckFuture) -> Result<(), PublishFailure> {
    ack.await.map(drop).map_err(PublishFailure::from)
}

/// Why a publish failed, keeping apart the one case a retry can fix here.
enum PublishFailure {
    StreamMissing,
    Broker(BrokerError),
}

impl From<jetstream::context::PublishError> for PublishFailure {
    fn from(e: jetstream::context::PublishError) -> Self {
        match e.kind() {
            PublishErrorKind::StreamNotFound => Self::StreamMissing,
            PublishErrorKind::TimedOut => Self::Broker(BrokerError::Timeout(format!(
                "publish acknowledgement: {e}"
            ))),
            PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
                Self::Broker(BrokerError::Unavailable(format!("publish: {e}")))
            }
            PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
            | PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::Other => {
                Self::Broker(BrokerError::Refused(format!("publish: {e}")))
            }
        }
    }
}

fn stream_error(
    doing: &str,
    stream: &str,
    e: jetstream::context::CreateStreamError,
) -> BrokerError {
    let message = format!("{doing} JetStream stream {stream}: {e}");
    match e.kind() {
        CreateStreamErrorKind::TimedOut => BrokerError::Timeout(message),
        CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::Response => {
            BrokerError::Unavailable(message)
        }
        _ => BrokerError::Refused(message),
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    /// Sends every event with `Nats-Msg-Id` = the event id (JetStream drops
    /// an id it saw within the duplicate window), pipelined, then waits for
    /// every acknowledgement. An invalid event (a source or type that is not
    /// one subject token...) fails the whole batch with `Refused` before
    /// anything is sent. Fails at once with `Unavailable` while the
    /// connection is down; each acknowledgement waits at most
    /// `request_timeout`. A stream that vanished is created again and the
    /// batch re-sent once.
    async fn publish(&self, events: &[IntegrationEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        // Each of tenant, source and type must be one subject token, or the
        // stream would not capture the event.
        for event in events {
            event.validate().map_err(|e| {
                BrokerError::Refused(format!("event {} cannot be published: {e}", event.id))
            })?;
        }
        match self.publish_once(events).await {
            Ok(()) => Ok(()),
            Err(PublishFailure::Broker(e)) => Err(e),
            Err(PublishFailure::StreamMissing) => {
                tracing::warn!(
                    stream = %self.inner.stream,
                    "no JetStream stream captures the events; creating it again"
                );
                self.ensure_stream().await?;
                self.publish_once(events).await.map_err(|e| match e {
                    PublishFailure::Broker(e) => e,
                    PublishFailure::StreamMissing => BrokerError::Unavailable(format!(
                        "JetStream stream {} does not answer",
                        self.inner.stream
                    )),
                })
            }
        }
    }

    /// Opens (creating or updating) the durable pull consumer `spec.group`
    /// on `<prefix>.*.<source>.*`: explicit acks, `ack_wait` from the spec,
    /// at most `prefetch` unacknowledged messages for the whole group, and a
    /// new group starts at the oldest message the stream keeps.
    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError> {
        let deliveries = consume::NatsDeliveries::open(self.clone(), spec.clone()).await?;
        Ok(Box::new(deliveries))
    }
}
