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
        self, ErrorCode, context::DeleteStreamErrorKind, context::PublishAckFuture,
        message::PublishMessage,
    },
};
use cairn_core::{EventId, StreamId, TenantId};
use cairn_messaging::{CONTENT_TYPE, IntegrationEvent};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{FieldTable, ShortString},
};

use crate::bench::workload::{EVENT_TYPE, order_event};

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
/// topic exchange with one durable queue bound to everything under its
/// prefix.
pub(super) struct AmqpRaw {
    connection: Connection,
    channel: Channel,
    exchange: ShortString,
}

impl std::fmt::Debug for AmqpRaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpRaw")
            .field("exchange", &self.exchange.as_str())
            .finish_non_exhaustive()
    }
}

/// The names the raw AMQP publisher creates under `prefix`.
pub(super) fn amqp_raw_names(prefix: &str) -> (String, String) {
    (format!("{prefix}.events"), format!("{prefix}.ceiling"))
}

impl AmqpRaw {
    pub(super) async fn open(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let (exchange, queue) = amqp_raw_names(prefix);
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
        bounded(
            "declaring the raw queue",
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
            "binding the raw queue",
            channel.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                format!("{prefix}.*.*.*").into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        bounded(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self {
            connection,
            channel,
            exchange: exchange.into(),
        })
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
            let mut write = Box::pin(self.channel.basic_publish(
                self.exchange.clone(),
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
