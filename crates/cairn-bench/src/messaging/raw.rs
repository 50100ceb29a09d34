//! The ceiling the messaging benchmark compares Cairn against: acknowledged
//! publishes straight to the broker with its own client, of messages the
//! size and shape of what Cairn's relay sends, under a prefix of their own
//! (so Cairn's consumer group never sees them), with none of Cairn's work
//! around them (no log to read, no checkpoint, no consumer).
//!
//! - NATS JetStream (`raw_jetstream_publish_acked`): `send_publish` on a
//!   stream created with exactly the settings of Cairn's event stream (file
//!   storage, duplicate window), with the same headers (`Nats-Msg-Id`, a
//!   fresh id per message, and the content type), up to [`WINDOW`]
//!   acknowledgements awaited at once, as Cairn's backend pipelines a batch.
//! - RabbitMQ (`raw_amqp_publish_confirmed`): lapin on a confirm-mode
//!   channel, persistent messages with the same properties as Cairn's, to a
//!   durable topic exchange with one durable queue bound (a message no
//!   queue takes is never stored, which would flatter the ceiling), up to
//!   [`WINDOW`] confirms awaited at once, each publish started before the
//!   previous one's write is waited for (as Cairn's backend sends a batch).
//!
//! Beside each, the broker's own round trip, to show how much of the
//! publish ceiling is left once the broker also delivers every message and
//! takes its ack: the same publishes to a subject of their own, while one
//! consumer with Cairn's default prefetch ([`PREFETCH`] unacknowledged)
//! takes each message and acks it, timed until the last ack. No database,
//! no relay, no inbox:
//! - NATS JetStream (`raw_jetstream_round_trip`): a durable pull consumer
//!   with explicit acks on the same stream, as Cairn's groups are.
//! - RabbitMQ (`raw_amqp_round_trip`): a durable queue of its own on the
//!   same exchange, consumed on a connection of its own with manual acks,
//!   as Cairn's groups are.
//!
//! Both also remove what a run created: [`delete_nats_streams`] and
//! [`delete_amqp_objects`].

use std::{
    collections::VecDeque,
    task::Poll,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use async_nats::{
    HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self, AckKind, ErrorCode,
        consumer::{AckPolicy, DeliverPolicy, pull},
        context::DeleteStreamErrorKind,
        context::PublishAckFuture,
        message::PublishMessage,
    },
};
use cairn_core::{EventId, StreamId, TenantId};
use cairn_messaging::{CONTENT_TYPE, IntegrationEvent};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{FieldTable, ShortString},
};

use crate::workload::{EVENT_TYPE, order_event};

/// Most publishes awaiting their acknowledgement at once: the window Cairn's
/// NATS backend pipelines a batch in.
pub(super) const WINDOW: usize = 1024;

/// Publishes the raw AMQP publisher starts before it waits for the oldest
/// one's write: the relay's batch size.
const WRITES: usize = 256;

/// Distinct bodies the raw publishers cycle through (each message still
/// gets its own id).
const BODIES: u64 = 1_000;

/// Bound on connecting and on any single set-up or clean-up round trip.
const ROUND_TRIP: Duration = Duration::from_secs(10);

/// The persistent delivery mode.
const PERSISTENT: u8 = 2;

/// Unacknowledged messages a round-trip consumer may hold: Cairn's default
/// consumer prefetch (`ConsumerOptions::prefetch`).
const PREFETCH: u16 = 512;

/// The service (topic word) round-trip messages are published under, so
/// the ceiling's queue never takes them and the round trip's never takes
/// the ceiling's.
pub(super) const ROUND_TRIP_SERVICE: &str = "round-trip";

/// The JetStream durable consumer of the round trip.
const ROUND_TRIP_CONSUMER: &str = "round-trip";

/// `n` CloudEvents bodies exactly as the relay would send the benchmark's
/// events: the same payload, envelope and extensions.
pub(super) fn bodies(tenant: &TenantId, service: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..BODIES)
        .map(|seq| {
            let e = order_event(seq + 1);
            let recorded = cairn_core::RecordedEvent {
                id: e.id,
                tenant: tenant.clone(),
                stream: StreamId::new(format!("order-raw-{}", seq % 64))
                    .context("raw stream id")?,
                version: seq / 64,
                position: seq + 1,
                event_type: e.event_type,
                schema_version: e.schema_version,
                data: e.data,
                metadata: e.metadata,
                recorded_at: chrono::Utc::now(),
            };
            let prev = (seq >= 64).then(|| seq / 64 - 1);
            Ok(IntegrationEvent::from_recorded(service, &recorded, prev).to_json())
        })
        .collect()
}

/// Mean size of `bodies`, in bytes.
pub(super) fn mean_len(bodies: &[Vec<u8>]) -> usize {
    bodies.iter().map(Vec::len).sum::<usize>() / bodies.len().max(1)
}

/// How long `messages` acknowledged publishes took.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ceiling {
    pub(super) messages: u64,
    pub(super) elapsed: Duration,
}

/// Publishes `messages` bodies to `subject` on `js` (whose stream captures
/// it), [`WINDOW`] acknowledgements in flight, and times the whole.
pub(super) async fn nats_publish(
    js: &jetstream::Context,
    subject: &str,
    bodies: &[Vec<u8>],
    messages: u64,
) -> anyhow::Result<Ceiling> {
    let start = Instant::now();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for (_, body) in (0..messages).zip(bodies.iter().cycle()) {
        if in_flight.len() == WINDOW
            && let Some(oldest) = in_flight.pop_front()
        {
            oldest.await.context("JetStream publish acknowledgement")?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, EventId::new().to_string().as_str());
        headers.insert("Content-Type", CONTENT_TYPE);
        let message = PublishMessage::build()
            .headers(headers)
            .payload(body.clone().into());
        let ack = js
            .send_publish(subject.to_owned(), message)
            .await
            .context("JetStream publish")?;
        in_flight.push_back(ack);
    }
    for ack in in_flight {
        ack.await.context("JetStream publish acknowledgement")?;
    }
    Ok(Ceiling {
        messages,
        elapsed: start.elapsed(),
    })
}

/// A durable pull consumer on `stream`, reading only `subject` and only
/// what is published from now on, explicit acks, at most [`PREFETCH`]
/// unacknowledged: the consuming half of the JetStream round trip.
pub(super) struct NatsRoundTrip {
    messages: pull::Stream,
}

impl std::fmt::Debug for NatsRoundTrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRoundTrip").finish_non_exhaustive()
    }
}

impl NatsRoundTrip {
    pub(super) async fn open(
        js: &jetstream::Context,
        stream: &str,
        subject: &str,
    ) -> anyhow::Result<Self> {
        let config = pull::Config {
            durable_name: Some(ROUND_TRIP_CONSUMER.to_owned()),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: i64::from(PREFETCH),
            ..Default::default()
        };
        let consumer = js
            .create_consumer_on_stream(config, stream)
            .await
            .context("creating the round-trip JetStream consumer")?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(usize::from(PREFETCH))
            .messages()
            .await
            .context("pulling from the round-trip JetStream consumer")?;
        Ok(Self { messages })
    }

    /// Publishes `messages` bodies to `subject` as [`nats_publish`] does
    /// while taking and acking as many, timed until the last ack is sent.
    pub(super) async fn run(
        &mut self,
        js: &jetstream::Context,
        subject: &str,
        bodies: &[Vec<u8>],
        messages: u64,
    ) -> anyhow::Result<Ceiling> {
        let consume = async {
            for _ in 0..messages {
                let message = tokio::time::timeout(ROUND_TRIP, self.messages.next())
                    .await
                    .map_err(|_| anyhow!("no round-trip message within {ROUND_TRIP:?}"))?
                    .ok_or_else(|| anyhow!("the round-trip JetStream consumer ended"))?
                    .map_err(|e| anyhow!("taking a round-trip message: {e}"))?;
                message
                    .ack_with(AckKind::Ack)
                    .await
                    .map_err(|e| anyhow!("acking a round-trip message: {e}"))?;
            }
            anyhow::Ok(())
        };
        round_trip(
            nats_publish(js, subject, bodies, messages),
            consume,
            messages,
        )
        .await
    }
}

/// Runs a round trip's publishing and consuming halves at once, timed until
/// both are done.
async fn round_trip(
    publish: impl Future<Output = anyhow::Result<Ceiling>>,
    consume: impl Future<Output = anyhow::Result<()>>,
    messages: u64,
) -> anyhow::Result<Ceiling> {
    let start = Instant::now();
    let (published, consumed) = tokio::join!(publish, consume);
    published?;
    consumed?;
    Ok(Ceiling {
        messages,
        elapsed: start.elapsed(),
    })
}

/// Deletes the JetStream streams named `streams` (one missing is fine).
pub(super) async fn delete_nats_streams(url: &str, streams: &[String]) -> anyhow::Result<()> {
    let client = tokio::time::timeout(ROUND_TRIP, async_nats::connect(url))
        .await
        .map_err(|_| anyhow!("connecting to NATS to clean up timed out"))?
        .context("connecting to NATS to clean up")?;
    let js = jetstream::new(client);
    for stream in streams {
        match js.delete_stream(stream).await {
            Ok(_) => {}
            Err(e)
                if matches!(e.kind(), DeleteStreamErrorKind::JetStream(ref j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting JetStream stream {stream}")),
        }
    }
    Ok(())
}

/// A confirm-mode channel on its own connection, publishing to a durable
/// topic exchange with two durable queues bound: the ceiling's, taking
/// what is published under `service`, and the round trip's, taking what is
/// published under [`ROUND_TRIP_SERVICE`] and consumed (manual acks, at
/// most [`PREFETCH`] unacknowledged) on a second connection.
pub(super) struct AmqpRaw {
    connection: Connection,
    channel: Channel,
    exchange: ShortString,
    consuming: Connection,
    deliveries: lapin::Consumer,
}

impl std::fmt::Debug for AmqpRaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpRaw")
            .field("exchange", &self.exchange.as_str())
            .finish_non_exhaustive()
    }
}

/// The names the raw AMQP publisher creates under `prefix`: the exchange,
/// the ceiling's queue and the round trip's.
pub(super) fn amqp_raw_names(prefix: &str) -> (String, String, String) {
    (
        format!("{prefix}.events"),
        format!("{prefix}.ceiling"),
        format!("{prefix}.round-trip"),
    )
}

impl AmqpRaw {
    pub(super) async fn open(url: &str, prefix: &str, service: &str) -> anyhow::Result<Self> {
        let (exchange, queue, round_trip_queue) = amqp_raw_names(prefix);
        let connection = bounded(
            "connecting to RabbitMQ",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        bounded(
            "declaring the raw exchange",
            channel.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        for (queue, service) in [(&queue, service), (&round_trip_queue, ROUND_TRIP_SERVICE)] {
            bounded(
                "declaring a raw queue",
                channel.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            bounded(
                "binding a raw queue",
                channel.queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    format!("{prefix}.*.{service}.*").into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        bounded(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let consuming = bounded(
            "connecting to RabbitMQ to consume",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
        let consumer_channel = bounded("opening a channel", consuming.create_channel()).await?;
        bounded(
            "setting the round trip's prefetch",
            consumer_channel.basic_qos(PREFETCH, BasicQosOptions::default()),
        )
        .await?;
        let deliveries = bounded(
            "consuming the round-trip queue",
            consumer_channel.basic_consume(
                round_trip_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(Self {
            connection,
            channel,
            exchange: exchange.into(),
            consuming,
            deliveries,
        })
    }

    /// Publishes `messages` bodies with `routing_key` (one the round trip's
    /// queue takes) as [`Self::publish`] does while taking and acking as
    /// many, one ack per message, timed until the last ack is sent.
    pub(super) async fn round_trip(
        &mut self,
        routing_key: &str,
        bodies: &[Vec<u8>],
        messages: u64,
    ) -> anyhow::Result<Ceiling> {
        let deliveries = &mut self.deliveries;
        let consume = async move {
            for _ in 0..messages {
                let delivery = tokio::time::timeout(ROUND_TRIP, deliveries.next())
                    .await
                    .map_err(|_| anyhow!("no round-trip message within {ROUND_TRIP:?}"))?
                    .ok_or_else(|| anyhow!("the round-trip consumer ended"))?
                    .context("taking a round-trip message")?;
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .context("acking a round-trip message")?;
            }
            anyhow::Ok(())
        };
        let publish = Self::publish_on(
            &self.channel,
            &self.exchange,
            routing_key,
            ROUND_TRIP_SERVICE,
            bodies,
            messages,
        );
        round_trip(publish, consume, messages).await
    }

    /// Publishes `messages` persistent bodies with `routing_key`, [`WINDOW`]
    /// confirms in flight, and times the whole.
    pub(super) async fn publish(
        &self,
        routing_key: &str,
        service: &str,
        bodies: &[Vec<u8>],
        messages: u64,
    ) -> anyhow::Result<Ceiling> {
        Self::publish_on(
            &self.channel,
            &self.exchange,
            routing_key,
            service,
            bodies,
            messages,
        )
        .await
    }

    async fn publish_on(
        channel: &Channel,
        exchange: &ShortString,
        routing_key: &str,
        service: &str,
        bodies: &[Vec<u8>],
        messages: u64,
    ) -> anyhow::Result<Ceiling> {
        let routing_key: ShortString = routing_key.into();
        let start = Instant::now();
        let mut in_flight: VecDeque<PublisherConfirm> = VecDeque::with_capacity(WINDOW);
        let mut writing = VecDeque::with_capacity(WRITES + 1);
        for (_, body) in (0..messages).zip(bodies.iter().cycle()) {
            if in_flight.len() == WINDOW
                && let Some(oldest) = in_flight.pop_front()
            {
                confirmed(oldest.await)?;
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_content_type(CONTENT_TYPE.into())
                .with_message_id(EventId::new().to_string().into())
                .with_type(EVENT_TYPE.into())
                .with_app_id(service.into());
            // Started (polled once) now, its write waited for only once
            // [`WRITES`] later ones are started too, as Cairn's backend
            // starts a whole batch before waiting.
            let mut write = Box::pin(channel.basic_publish(
                exchange.clone(),
                routing_key.clone(),
                BasicPublishOptions::default(),
                body,
                properties,
            ));
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            writing.push_back((first, write));
            if writing.len() > WRITES
                && let Some(oldest) = writing.pop_front()
            {
                in_flight.push_back(written(oldest).await?);
            }
        }
        for write in writing {
            in_flight.push_back(written(write).await?);
        }
        for confirm in in_flight {
            confirmed(confirm.await)?;
        }
        Ok(Ceiling {
            messages,
            elapsed: start.elapsed(),
        })
    }

    pub(super) async fn close(self) {
        let _ = tokio::time::timeout(ROUND_TRIP, self.consuming.close(200, "done".into())).await;
        let _ = tokio::time::timeout(ROUND_TRIP, self.connection.close(200, "done".into())).await;
    }
}

/// A publish started with its first poll's result: waited for if the
/// first poll did not finish it.
async fn written<F>(
    (first, write): (Poll<lapin::Result<PublisherConfirm>>, std::pin::Pin<Box<F>>),
) -> anyhow::Result<PublisherConfirm>
where
    F: Future<Output = lapin::Result<PublisherConfirm>>,
{
    match first {
        Poll::Ready(written) => written,
        Poll::Pending => write.await,
    }
    .context("RabbitMQ publish")
}

fn confirmed(confirmation: lapin::Result<Confirmation>) -> anyhow::Result<()> {
    match confirmation.context("RabbitMQ publisher confirm")? {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => bail!("RabbitMQ refused a message (negative confirm)"),
        Confirmation::NotRequested => bail!("the channel is not in confirm mode"),
    }
}

/// Deletes the RabbitMQ `queues`, then the `exchanges` (missing ones are
/// fine), each on a channel of its own so one refusal cannot hide the rest.
pub(super) async fn delete_amqp_objects(
    url: &str,
    queues: &[String],
    exchanges: &[String],
) -> anyhow::Result<()> {
    let connection = bounded(
        "connecting to RabbitMQ to clean up",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await?;
    let mut failed = Vec::new();
    for queue in queues {
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        if let Err(e) = bounded(
            "deleting a queue",
            channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        {
            failed.push(format!("queue {queue}: {e:#}"));
        }
        let _ = tokio::time::timeout(ROUND_TRIP, channel.close(200, "done".into())).await;
    }
    for exchange in exchanges {
        let channel = bounded("opening a channel", connection.create_channel()).await?;
        if let Err(e) = bounded(
            "deleting an exchange",
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await
        {
            failed.push(format!("exchange {exchange}: {e:#}"));
        }
        let _ = tokio::time::timeout(ROUND_TRIP, channel.close(200, "done".into())).await;
    }
    let _ = tokio::time::timeout(ROUND_TRIP, connection.close(200, "done".into())).await;
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("cleaning up RabbitMQ: {}", failed.join("; "))
    }
}

/// Runs one RabbitMQ round trip for at most [`ROUND_TRIP`].
async fn bounded<T>(what: &str, f: impl Future<Output = lapin::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(ROUND_TRIP, f)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {ROUND_TRIP:?}"))?
        .with_context(|| what.to_owned())
}
