//! The broker contract: what the relay, the consumers and request/reply need
//! from a message broker, and nothing more. Backends: NATS JetStream
//! (`cairn-messaging-nats`), RabbitMQ (`cairn-messaging-amqp`) and the
//! in-process [`MemoryBroker`](crate::MemoryBroker).
//!
//! Delivery is at-least-once. Exactly-once *effect* is the consumer
//! runtime's job (its inbox), not the broker's; per-stream order across
//! competing instances is also kept by the consumer runtime (with the
//! events' `prevsequence`), so a backend only has to deliver every
//! acknowledged message until it is acked.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::TenantId;

use crate::IntegrationEvent;

/// A broker failure a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached, or the connection dropped. Retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation (a bad name, a full stream, a
    /// negative publish acknowledgement...).
    #[error("broker refused: {0}")]
    Refused(String),
    /// The operation did not complete in time.
    #[error("broker timed out: {0}")]
    Timeout(String),
}

/// A durable consumer group: every instance that opens the same `group`
/// shares its messages (competing consumers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Durable name, unique per consuming service and purpose
    /// (`passengers-flight-events`): same rules as a service name.
    pub group: String,
    /// The service whose public events this group reads (every tenant, every
    /// type: the consumer runtime skips types it has no handler for).
    pub source: String,
    /// Most messages handed out and not yet acked: per instance on
    /// RabbitMQ and in memory, for the whole group on NATS JetStream (its
    /// `max_ack_pending`).
    pub prefetch: u16,
    /// A message handed out and neither acked nor nacked within this time is
    /// delivered again (to any instance): the instance is presumed dead.
    pub ack_wait: Duration,
}

impl ConsumerSpec {
    pub fn new(group: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            source: source.into(),
            prefetch: 64,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Settles one delivered message. Exactly one of `ack` / `nack` is called.
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// Done with: the broker forgets the message for this group.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Give it back: the broker delivers it again (to any instance of the
    /// group) no sooner than `delay` from now.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError>;
}

/// One message handed to a consumer.
pub struct Delivery {
    /// The raw body (CloudEvents JSON), kept so an undecodable message can
    /// be dead-lettered as it came.
    pub body: Bytes,
    /// How many times the broker has handed this message out, this time
    /// included (1 on first delivery), where the broker counts; 1 or 2
    /// ("redelivered") where it only flags.
    pub delivery_count: u32,
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

/// An open consumer: messages as the broker hands them out.
#[async_trait]
pub trait Deliveries: Send + 'static {
    /// The next message. `None` once the consumer is closed for good; an
    /// error is a transport failure after which the caller may call `next`
    /// again (the backend reconnects) or re-open the consumer.
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>>;
}

/// The broker's acknowledgements of a batch already sent with
/// [`Broker::send`]: resolves once the broker has durably accepted every
/// event of the batch, or with why it did not.
pub type Acks = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Where integration events go and come from.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `nats`, `amqp` or `memory`: for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Publishes `events` in order and returns once the broker has durably
    /// accepted every one (JetStream ack / publisher confirm). Where the
    /// broker can, a re-sent event id is dropped broker-side. On error some
    /// prefix may have been accepted: the caller re-sends the whole batch.
    async fn publish(&self, events: &[IntegrationEvent]) -> Result<(), BrokerError>;

    /// The first half of [`publish`](Self::publish): returns once `events`
    /// are handed to the broker in order, ahead of anything sent after, with
    /// the broker's acknowledgements still to come in the returned [`Acks`].
    /// A caller can send its next batch while the last one is being
    /// acknowledged. If the acks fail, some prefix of the batch may have
    /// been accepted, and batches sent after it may have been too: the
    /// caller re-sends from the failed batch on. The default publishes the
    /// whole batch and returns settled acks.
    async fn send(&self, events: &[IntegrationEvent]) -> Result<Acks, BrokerError> {
        self.publish(events).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// Opens the group `spec.group` (creating its durable state if needed)
    /// and starts receiving from where the group left off; a new group
    /// starts at the oldest message the broker keeps.
    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError>;

    /// Creates the group's durable state without consuming, so that events
    /// published from now on are kept for it. Brokers that keep every event
    /// for groups created later (JetStream, the log) have nothing to do;
    /// RabbitMQ keeps a message only for queues that exist when it is
    /// published, so a publisher declares the groups known to need its
    /// events before its relay starts. Idempotent.
    async fn declare(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        let _ = spec;
        Ok(())
    }
}

/// A request to a service's request handler.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The message name (`GetFlightForBooking`).
    pub name: String,
    pub tenant: TenantId,
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    pub actor: Option<String>,
    /// The platform service sending it on the actor's behalf
    /// ([`RequestContext::service`](cairn_core::RequestContext::service)):
    /// what lets a message declared internal through. The broker is the
    /// trust boundary: only the platform's processes may publish requests.
    pub service: Option<String>,
    /// JSON body of the command or query.
    pub body: Bytes,
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No reply within the timeout.
    #[error("no reply from {service} within {timeout:?}")]
    Timeout { service: String, timeout: Duration },
    /// Nobody serves this service right now.
    #[error("no instance of {service} is serving requests")]
    NoResponders { service: String },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Answers requests: returns the reply body (see [`crate::rpc`] for the
/// envelope).
#[async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    async fn handle(&self, request: RpcRequest) -> Bytes;
}

/// Stops serving when dropped (or on [`Serving::stop`]).
pub struct Serving {
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Serving {
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Self {
        Self {
            stop: Some(Box::new(stop)),
        }
    }

    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl fmt::Debug for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

/// Synchronous questions between services. Instances of one service share
/// its requests (one of them answers each).
#[async_trait]
pub trait RequestTransport: Send + Sync + 'static {
    /// Sends `request` to `service` and waits up to `timeout` for its reply.
    async fn request(
        &self,
        service: &str,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<Bytes, RpcError>;

    /// Starts answering requests sent to `service` with `handler`, until the
    /// returned [`Serving`] is dropped.
    async fn serve(
        &self,
        service: &str,
        handler: std::sync::Arc<dyn RequestHandler>,
    ) -> Result<Serving, BrokerError>;
}
