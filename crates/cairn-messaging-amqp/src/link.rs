//! The handle's connection: opened lazily, replaced when it drops, and the
//! operations that only need a channel on it (declaring, publishing).

use std::{
    future::Future,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use cairn_messaging::{
    Acks, BrokerError, CONTENT_TYPE, ConsumerSpec, IntegrationEvent, validate_public_type,
    validate_service,
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{FieldTable, ShortString},
    uri::AMQPUri,
};
use tokio::sync::Mutex;

use crate::{AmqpOptions, rpc::RpcClient};

/// The persistent delivery mode.
const PERSISTENT: u8 = 2;

/// The connection state shared by every clone of a handle, its consumers
/// and its servers.
pub(crate) struct Link {
    uri: AMQPUri,
    options: AmqpOptions,
    exchange: String,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    live: Option<Arc<Live>>,
    generation: u64,
    failed: Option<(Instant, BrokerError)>,
}

/// One open connection, with the channels the handle shares on it.
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// The confirm-mode channel events are published on.
    publisher: Mutex<Option<Channel>>,
    /// The channel requests are sent and replies received on.
    pub(crate) rpc: Mutex<Option<Arc<RpcClient>>>,
}

impl Link {
    pub(crate) fn new(url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        validate_prefix(&options.prefix)?;
        let mut uri: AMQPUri = url
            .parse()
            .map_err(|e| BrokerError::Refused(format!("invalid AMQP URL: {e}")))?;
        if uri.query.heartbeat.is_none() {
            let secs = options.heartbeat.as_secs().min(u64::from(u16::MAX));
            uri.query.heartbeat = Some(u16::try_from(secs).unwrap_or(u16::MAX));
        }
        if uri.query.connection_timeout.is_none() {
            let millis = options.connect_timeout.as_millis();
            uri.query.connection_timeout = Some(u64::try_from(millis).unwrap_or(u64::MAX));
        }
        let exchange = format!("{}.events", options.prefix);
        Ok(Self {
            uri,
            options,
            exchange,
            slot: Mutex::new(Slot::default()),
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.options.prefix
    }

    pub(crate) fn exchange(&self) -> &str {
        &self.exchange
    }

    pub(crate) fn group_queue(&self, group: &str) -> String {
        format!("{}.{group}", self.options.prefix)
    }

    pub(crate) fn rpc_queue(&self, service: &str) -> String {
        format!("{}.rpc.{service}", self.options.prefix)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.options.connect_timeout
    }

    /// The open connection, opening a new one if there is none or it dropped.
    ///
    /// Calls that were waiting while another call's attempt failed share
    /// that failure instead of each trying (and waiting) again in turn.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, BrokerError> {
        let asked = Instant::now();
        let mut slot = self.slot.lock().await;
        if let Some(live) = &slot.live {
            if live.connection.status().connected() {
                return Ok(live.clone());
            }
            tracing::info!(prefix = %self.options.prefix, "RabbitMQ connection lost; reconnecting");
            slot.live = None;
        }
        if let Some((at, error)) = &slot.failed
            && *at >= asked
        {
            return Err(error.clone());
        }
        slot.generation += 1;
        let generation = slot.generation;
        let opened = bounded(
            self.options.connect_timeout,
            "connecting to RabbitMQ",
            async { self.open(generation).await },
        )
        .await;
        match opened {
            Ok(live) => {
                let live = Arc::new(live);
                slot.live = Some(live.clone());
                slot.failed = None;
                Ok(live)
            }
            Err(error) => {
                tracing::warn!(prefix = %self.options.prefix, %error, "cannot connect to RabbitMQ");
                slot.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    async fn open(&self, generation: u64) -> Result<Live, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("cairn {}", self.options.prefix).into());
        let connection = Connection::connect_uri(self.uri.clone(), properties)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("connecting to RabbitMQ: {e}")))?;
        let publisher = self.open_publisher(&connection).await?;
        Ok(Live {
            generation,
            connection,
            publisher: Mutex::new(Some(publisher)),
            rpc: Mutex::new(None),
        })
    }

    async fn open_publisher(&self, connection: &Connection) -> Result<Channel, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| map_err("opening a channel", &e))?;
        self.declare_exchange(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| map_err("enabling publisher confirms", &e))?;
        Ok(channel)
    }

    async fn declare_exchange(&self, channel: &Channel) -> Result<(), BrokerError> {
        channel
            .exchange_declare(
                short(&self.exchange)?,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_err("declaring the events exchange", &e))
    }

    /// Forgets the connection of `generation` (it stopped answering) so the
    /// next call opens a new one, and closes it in the background.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let dropped = {
            let mut slot = self.slot.lock().await;
            match &slot.live {
                Some(live) if live.generation == generation => slot.live.take(),
                _ => None,
            }
        };
        if let Some(live) = dropped {
            tracing::warn!(prefix = %self.options.prefix, "RabbitMQ stopped answering; dropping the connection");
            let timeout = self.options.connect_timeout;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    timeout,
                    live.connection.close(200, "unresponsive".into()),
                )
                .await;
            });
        }
    }

    pub(crate) async fn close(&self) {
        let dropped = self.slot.lock().await.live.take();
        if let Some(live) = dropped {
            let _ = tokio::time::timeout(
                self.options.connect_timeout,
                live.connection.close(200, "closing".into()),
            )
            .await;
        }
    }

    /// A new channel on the live connection, or the connection's error.
    pub(crate) async fn channel(&self) -> Result<(Arc<Live>, Channel), BrokerError> {
        let live = self.live().await?;
        let channel = self.channel_on(&live).await?;
        Ok((live, channel))
    }

    /// A new channel on `live`.
    pub(crate) async fn channel_on(&self, live: &Live) -> Result<Channel, BrokerError> {
        bounded(self.options.connect_timeout, "opening a channel", async {
            live.connection
                .create_channel()
                .await
                .map_err(|e| map_err("opening a channel", &e))
        })
        .await
    }

    /// Declares the events exchange, the group's queue and its binding on
    /// `channel`.
    pub(crate) async fn declare_group_on(
        &self,
        channel: &Channel,
        spec: &ConsumerSpec,
    ) -> Result<(), BrokerError> {
        validate_name("group", &spec.group)?;
        validate_name("source", &spec.source)?;
        let queue = self.group_queue(&spec.group);
        self.declare_exchange(channel).await?;
        channel
            .queue_declare(
                short(&queue)?,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_err("declaring the group's queue", &e))?;
        let pattern = format!("{}.*.{}.*", self.options.prefix, spec.source);
        channel
            .queue_bind(
                short(&queue)?,
                short(&self.exchange)?,
                short(&pattern)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_err("binding the group's queue", &e))
    }

    pub(crate) async fn declare_group(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        validate_name("group", &spec.group)?;
        validate_name("source", &spec.source)?;
        let (_live, channel) = self.channel().await?;
        let declared = bounded(self.options.connect_timeout, "declaring a group", async {
            self.declare_group_on(&channel, spec).await
        })
        .await;
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                self.options.connect_timeout,
                channel.close(200, "declared".into()),
            )
            .await;
        }
        declared
    }

    /// The confirm-mode channel, reopened if it was closed (a refused
    /// publish closes it).
    async fn publisher(&self) -> Result<(Arc<Live>, Channel), BrokerError> {
        let live = self.live().await?;
        let mut publisher = live.publisher.lock().await;
        if let Some(channel) = publisher.as_ref()
            && channel.status().connected()
        {
            return Ok((live.clone(), channel.clone()));
        }
        *publisher = None;
        let channel = bounded(
            self.options.connect_timeout,
            "opening the publisher",
            async { self.open_publisher(&live.connection).await },
        )
        .await?;
        *publisher = Some(channel.clone());
        drop(publisher);
        Ok((live, channel))
    }

    /// Writes `events` in order on the publisher channel and returns their
    /// publisher confirms, still to come: awaiting them is the rest of a
    /// publish. Both parts together take at most `confirm_timeout`; past
    /// it the connection is dropped (it stopped answering).
    pub(crate) async fn send(
        self: &Arc<Self>,
        events: &[IntegrationEvent],
    ) -> Result<Acks, BrokerError> {
        if events.is_empty() {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        }
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            validate_name("source", &event.source)?;
            validate_public_type(&event.event_type).map_err(|e| {
                BrokerError::Refused(format!("event {}: invalid type: {e}", event.id))
            })?;
            let routing_key = short(&event.topic(&self.options.prefix))?;
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_content_type(CONTENT_TYPE.into())
                .with_message_id(event.id.to_string().into())
                .with_type(short(&event.event_type)?)
                .with_app_id(short(&event.source)?);
            messages.push((routing_key, event.to_json(), properties, event.id));
        }
        let deadline = tokio::time::Instant::now() + self.options.confirm_timeout;
        let (live, channel) = self.publisher().await?;
        let exchange = short(&self.exchange)?;
        let write = async {
            // Every publish is started (polled once) before any is waited
            // for, in batch order: the first poll takes the message's
            // delivery tag and queues its frames, so the connection writes
            // the batch in order and in as few writes as it can, instead of
            // one round trip to the connection's I/O thread per message. A
            // publish that is still pending is only polled again below, in
            // the same order, so the order holds either way.
            let mut writes = Vec::with_capacity(messages.len());
            for (routing_key, body, properties, id) in &messages {
                let mut write = Box::pin(channel.basic_publish(
                    exchange.clone(),
                    routing_key.clone(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                ));
                let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
                writes.push((*id, first, write));
            }
            let mut confirms = Vec::with_capacity(writes.len());
            for (id, first, write) in writes {
                let confirm = match first {
                    Poll::Ready(written) => written,
                    Poll::Pending => write.await,
                }
                .map_err(|e| map_err("publishing", &e))?;
                confirms.push((id, confirm));
            }
            Ok::<_, BrokerError>(confirms)
        };
        let confirms = match tokio::time::timeout_at(deadline, write).await {
            Ok(written) => written?,
            Err(_) => return Err(self.unresponsive(&live).await),
        };
        let link = self.clone();
        Ok(Box::pin(async move {
            let settle = async {
                for (id, confirm) in confirms {
                    match confirm.await {
                        Ok(Confirmation::Ack(_)) => {}
                        Ok(Confirmation::Nack(_)) => {
                            return Err(BrokerError::Refused(format!(
                                "RabbitMQ did not accept event {id} (negative confirm)"
                            )));
                        }
                        Ok(Confirmation::NotRequested) => {
                            return Err(BrokerError::Unavailable(
                                "the publisher channel lost confirm mode".to_owned(),
                            ));
                        }
                        Err(e) => return Err(map_err("waiting for publisher confirms", &e)),
                    }
                }
                Ok(())
            };
            match tokio::time::timeout_at(deadline, settle).await {
                Ok(result) => result,
                Err(_) => Err(link.unresponsive(&live).await),
            }
        }))
    }

    /// Drops the connection that let a publish pass `confirm_timeout`.
    async fn unresponsive(&self, live: &Live) -> BrokerError {
        self.invalidate(live.generation).await;
        BrokerError::Timeout(format!(
            "RabbitMQ did not confirm the batch within {:?}",
            self.options.confirm_timeout
        ))
    }
}

/// Runs `f` for at most `timeout`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    what: &str,
    f: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(BrokerError::Timeout(format!(
            "{what}: no answer within {timeout:?}"
        )))
    })
}

/// A channel-level refusal from RabbitMQ (a missing queue, a mismatched
/// declaration, an access error) is [`BrokerError::Refused`]; anything else
/// (I/O, a closed connection or channel) is [`BrokerError::Unavailable`].
pub(crate) fn map_err(what: &str, error: &lapin::Error) -> BrokerError {
    match error.kind() {
        ErrorKind::ProtocolError(_) if error.is_amqp_soft_error() => {
            BrokerError::Refused(format!("{what}: {error}"))
        }
        ErrorKind::ChannelsLimitReached | ErrorKind::AuthProviderError(_) => {
            BrokerError::Refused(format!("{what}: {error}"))
        }
        _ => BrokerError::Unavailable(format!("{what}: {error}")),
    }
}

/// An AMQP short string (at most 255 bytes).
pub(crate) fn short(s: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s)
        .map_err(|e| BrokerError::Refused(format!("name too long for AMQP ({s:.40}...): {e}")))
}

fn validate_prefix(prefix: &str) -> Result<(), BrokerError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 63
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Refused(format!(
            "invalid prefix {prefix:?}: 1-63 of a-z, 0-9, '-', '_'"
        )))
    }
}

pub(crate) fn validate_name(what: &str, name: &str) -> Result<(), BrokerError> {
    validate_service(name)
        .map_err(|e| BrokerError::Refused(format!("invalid {what} name {name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let link = Link::new(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            AmqpOptions::with_prefix("acme"),
        )
        .unwrap();
        assert_eq!(link.exchange(), "acme.events");
        assert_eq!(
            link.group_queue("passengers-flights"),
            "acme.passengers-flights"
        );
        assert_eq!(link.rpc_queue("flights"), "acme.rpc.flights");
        assert_eq!(link.uri.query.heartbeat, Some(10));
    }

    #[test]
    fn a_heartbeat_in_the_url_wins() {
        let link = Link::new(
            "amqp://127.0.0.1:5672/%2f?heartbeat=3",
            AmqpOptions::default(),
        )
        .unwrap();
        assert_eq!(link.uri.query.heartbeat, Some(3));
    }

    #[test]
    fn bad_prefixes_and_urls_are_refused() {
        for prefix in ["", "Cairn", "a.b", "a*", "a#"] {
            assert!(matches!(
                Link::new("amqp://127.0.0.1", AmqpOptions::with_prefix(prefix)),
                Err(BrokerError::Refused(_))
            ));
        }
        assert!(matches!(
            Link::new("http://[::1", AmqpOptions::default()),
            Err(BrokerError::Refused(_))
        ));
    }
}
