//! The RabbitMQ backend of Cairn's messaging contract
//! ([`Broker`] and [`RequestTransport`]), on AMQP 0-9-1 with `lapin`.
//!
//! # Topology
//!
//! Everything is named after the handle's prefix ([`AmqpOptions::prefix`],
//! default `cairn`):
//!
//! - **Events** go to one durable topic exchange, `<prefix>.events`, with the
//!   routing key [`IntegrationEvent::topic`] (`<prefix>.<tenant>.<source>.<type>`).
//!   Messages are persistent (delivery mode 2), carry the content type
//!   `application/cloudevents+json` and the event id as `message_id`, and are
//!   published on a channel in confirm mode: [`Broker::publish`] sends the whole
//!   batch, then waits for every confirm, and only returns once RabbitMQ has
//!   accepted each one. A negative confirm is [`BrokerError::Refused`].
//! - **A consumer group** is one durable (classic) queue, `<prefix>.<group>`,
//!   bound to the exchange with `<prefix>.*.<source>.*`: every tenant, every
//!   type of the source service. The instances of a group consume the same
//!   queue with manual acks and a per-consumer prefetch, so they compete for
//!   its messages.
//! - **Requests** to a service go through the default exchange to the shared
//!   queue `<prefix>.rpc.<service>` (non-durable, auto-delete: it disappears
//!   when the last instance stops serving), published with `mandatory`, so a
//!   request nobody can take comes back (`basic.return`) and fails at once
//!   with [`RpcError::NoResponders`]. Replies come back over RabbitMQ's direct
//!   reply-to (`amq.rabbitmq.reply-to`) and are matched on `correlation_id`.
//!   Requests carry their timeout as the message expiration, so a request
//!   that waited in the queue longer than its caller is dropped unanswered.
//!
//! # What RabbitMQ does differently from JetStream
//!
//! - **A queue only receives what is published after it exists.** There is
//!   no stream to replay: events published before a group's queue was
//!   declared are never delivered to that group. A service therefore calls
//!   [`AmqpBroker::declare`] for each of its consumer groups at start-up,
//!   before anything it depends on publishes; [`Broker::consume`] declares the
//!   queue too, but only then. Once declared, the queue keeps every event
//!   until the group acks it, whether or not an instance is running.
//! - **No broker-side dedupe.** Publishing the same event id twice delivers
//!   it twice; the consumer runtime's inbox drops the second one.
//! - **`delivery_count` is 1, or 2 once RabbitMQ flags the message as
//!   redelivered** (classic queues do not count; if the queue is a quorum
//!   queue, its `x-delivery-count` header is used instead).
//! - **`nack(delay)` is held client-side**: the message stays unacked on its
//!   channel (and counts against the prefetch) until the delay has passed,
//!   then a task sends `basic.nack` with requeue. The channel is kept open
//!   until every held message has been given back, so the delay holds even
//!   when the consumer is dropped meanwhile; if the connection drops, RabbitMQ
//!   requeues the message at once.
//! - **`ack_wait` is enforced client-side**: a message neither acked nor
//!   nacked within [`ConsumerSpec::ack_wait`] is given back (requeued). A
//!   message whose instance died is requeued by RabbitMQ as soon as the
//!   instance's channel or connection closes.
//!
//! # Failures and reconnection
//!
//! A handle holds one connection (with a heartbeat, [`AmqpOptions::heartbeat`])
//! and reconnects lazily: when the connection has dropped, the next call opens
//! a new one. Every operation is bounded: opening the connection and any set-up
//! round trip by [`AmqpOptions::connect_timeout`], waiting for publish confirms
//! by [`AmqpOptions::confirm_timeout`]. A broker that cannot be reached gives
//! [`BrokerError::Unavailable`]; one that stops answering gives
//! [`BrokerError::Timeout`] (and the handle drops that connection). An open
//! [`Deliveries`] returns the error once and
//! re-opens its consumer on the next call; a [`Serving`] keeps re-opening its
//! consumer in the background until it is stopped.

mod consume;
mod link;
mod rpc;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_messaging::{
    Acks, Broker, BrokerError, ConsumerSpec, Deliveries, IntegrationEvent, RequestHandler,
    RequestTransport, RpcError, RpcRequest, Serving,
};

use crate::link::Link;

/// How to connect, and what to call things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpOptions {
    /// The first token of every exchange, queue and routing key: 1-63 of
    /// `a-z`, `0-9`, `-`, `_`. Default `cairn`.
    pub prefix: String,
    /// Bound on opening the connection (TCP, AMQP handshake, declaring the
    /// exchange) and on every other single round trip (declaring a queue,
    /// opening a consumer, an ack). Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on a whole [`Broker::publish`] call once connected: sending the
    /// batch and receiving every confirm. Default 10 s.
    pub confirm_timeout: Duration,
    /// Heartbeat interval asked of the broker (whole seconds; zero turns
    /// heartbeats off), unless the URL sets `heartbeat` itself. A silently
    /// dead connection is noticed after about two intervals. Default 10 s.
    pub heartbeat: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            prefix: "cairn".to_owned(),
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
        }
    }
}

impl AmqpOptions {
    /// The default options with another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

/// A handle on RabbitMQ: publishes and consumes integration events, sends
/// and serves requests. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct AmqpBroker {
    link: Arc<Link>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("prefix", &self.link.prefix())
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Connects to `url` (`amqp://user:password@host:5672/vhost`, the vhost
    /// percent-encoded: `%2f` for `/`) and declares the events exchange.
    ///
    /// A malformed URL or prefix is [`BrokerError::Refused`]; a broker that
    /// cannot be reached within [`AmqpOptions::connect_timeout`] is
    /// [`BrokerError::Unavailable`] or [`BrokerError::Timeout`].
    pub async fn connect(url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let link = Arc::new(Link::new(url, options)?);
        link.live().await?;
        Ok(Self { link })
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        self.link.prefix()
    }

    /// The topic exchange events are published to: `<prefix>.events`.
    pub fn exchange(&self) -> &str {
        self.link.exchange()
    }

    /// The durable queue of a consumer group: `<prefix>.<group>`.
    pub fn group_queue(&self, group: &str) -> String {
        self.link.group_queue(group)
    }

    /// The shared request queue of a service: `<prefix>.rpc.<service>`.
    pub fn rpc_queue(&self, service: &str) -> String {
        self.link.rpc_queue(service)
    }

    /// Creates the group's durable queue and binds it to the source's events,
    /// without consuming. From then on the queue keeps every event of
    /// `spec.source` until the group acks it: call this at start-up for each
    /// consumer group, before the events it must not miss are published
    /// (RabbitMQ drops events that match no queue). Idempotent.
    pub async fn declare(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        self.link.declare_group(spec).await
    }

    /// Closes the connection (best effort, bounded by the connect timeout).
    /// Consumers and servers opened on this handle stop with it; a later
    /// call on the handle connects again.
    pub async fn close(&self) {
        self.link.close().await;
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    async fn publish(&self, events: &[IntegrationEvent]) -> Result<(), BrokerError> {
        self.link.send(events).await?.await
    }

    async fn send(&self, events: &[IntegrationEvent]) -> Result<Acks, BrokerError> {
        self.link.send(events).await
    }

    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError> {
        let deliveries = consume::AmqpDeliveries::open(self.link.clone(), spec.clone()).await?;
        Ok(Box::new(deliveries))
    }

    async fn declare(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        self.link.declare_group(spec).await
    }
}

#[async_trait]
impl RequestTransport for AmqpBroker {
    async fn request(
        &self,
        service: &str,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        rpc::request(&self.link, service, request, timeout).await
    }

    async fn serve(
        &self,
        service: &str,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<Serving, BrokerError> {
        rpc::serve(self.link.clone(), service, handler).await
    }
}
