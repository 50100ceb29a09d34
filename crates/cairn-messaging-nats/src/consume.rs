//! Consumer groups as durable JetStream pull consumers.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, ErrorCode,
    consumer::{
        AckPolicy, DeliverPolicy, PullConsumer,
        pull::{self, MessagesErrorKind},
    },
    stream::ConsumerErrorKind,
};
use async_trait::async_trait;
use cairn_messaging::{Acker, BrokerError, ConsumerSpec, Deliveries, Delivery, validate_service};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::{NatsBroker, options::source_filter};

/// How long one pull request waits on the server for messages before the
/// client sends another.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server sends a heartbeat this often while a pull request waits; two
/// missed ones mean the connection or the pull is gone.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// After a failed re-open, the next attempt waits this long.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct NatsDeliveries {
    broker: NatsBroker,
    spec: ConsumerSpec,
    messages: Option<pull::Stream>,
    retry_at: Option<Instant>,
}

impl NatsDeliveries {
    pub(crate) async fn open(broker: NatsBroker, spec: ConsumerSpec) -> Result<Self, BrokerError> {
        validate_service(&spec.group)
            .map_err(|e| BrokerError::Refused(format!("consumer group {:?}: {e}", spec.group)))?;
        validate_service(&spec.source)
            .map_err(|e| BrokerError::Refused(format!("event source {:?}: {e}", spec.source)))?;
        if spec.ack_wait.is_zero() {
            return Err(BrokerError::Refused("ack_wait must be positive".to_owned()));
        }
        broker.check_connected()?;
        let messages = open_messages(&broker, &spec).await?;
        Ok(Self {
            broker,
            spec,
            messages: Some(messages),
            retry_at: None,
        })
    }

    async fn reopen(&mut self) -> Result<(), BrokerError> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        let opened = match self.broker.check_connected() {
            Ok(()) => open_messages(&self.broker, &self.spec).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(messages) => {
                self.messages = Some(messages);
                Ok(())
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + REOPEN_BACKOFF);
                Err(e)
            }
        }
    }
}

/// Creates the durable consumer (or updates the settings a server may
/// change in place) and starts pulling from it.
async fn open_messages(
    broker: &NatsBroker,
    spec: &ConsumerSpec,
) -> Result<pull::Stream, BrokerError> {
    let consumer = match create_consumer(broker, spec).await {
        Err(CreateFailure::StreamMissing) => {
            broker.ensure_stream().await?;
            create_consumer(broker, spec).await
        }
        other => other,
    }
    .map_err(|e| match e {
        CreateFailure::Broker(e) => e,
        CreateFailure::StreamMissing => BrokerError::Unavailable(format!(
            "JetStream stream {} is missing",
            broker.stream_name()
        )),
    })?;
    consumer
        .stream()
        .max_messages_per_batch(prefetch(spec))
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| BrokerError::Unavailable(format!("pulling from group {}: {e}", spec.group)))
}

fn prefetch(spec: &ConsumerSpec) -> usize {
    usize::from(spec.prefetch.max(1))
}

enum CreateFailure {
    StreamMissing,
    Broker(BrokerError),
}

async fn create_consumer(
    broker: &NatsBroker,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, CreateFailure> {
    let filter_subject = source_filter(broker.prefix(), &spec.source);
    // A server may let a durable consumer change its filter in place; a
    // group reading another source is a mistake to report instead.
    let existing = broker
        .jetstream()
        .get_consumer_from_stream::<pull::Config, _, _>(&spec.group, broker.stream_name())
        .await;
    if let Ok(existing) = existing {
        let current = &existing.cached_info().config.filter_subject;
        if *current != filter_subject {
            return Err(CreateFailure::Broker(BrokerError::Refused(format!(
                "group {} already reads {current}, not {filter_subject}",
                spec.group
            ))));
        }
    }
    let config = pull::Config {
        durable_name: Some(spec.group.clone()),
        description: Some(format!(
            "Cairn group {} reading {}",
            spec.group, spec.source
        )),
        filter_subject,
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_ack_pending: i64::try_from(prefetch(spec)).unwrap_or(i64::MAX),
        max_deliver: -1,
        ..Default::default()
    };
    broker
        .jetstream()
        .create_consumer_on_stream(config, broker.stream_name())
        .await
        .map_err(|e| {
            let message = format!("opening consumer group {}: {e}", spec.group);
            match e.kind() {
                ConsumerErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    CreateFailure::StreamMissing
                }
                ConsumerErrorKind::TimedOut => CreateFailure::Broker(BrokerError::Timeout(message)),
                ConsumerErrorKind::Request => {
                    CreateFailure::Broker(BrokerError::Unavailable(message))
                }
                _ => CreateFailure::Broker(BrokerError::Refused(message)),
            }
        })
}

#[async_trait]
impl Deliveries for NatsDeliveries {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let messages = match self.messages.as_mut() {
            Some(messages) => messages,
            None => {
                if let Err(e) = self.reopen().await {
                    return Some(Err(e));
                }
                self.messages.as_mut()?
            }
        };
        match messages.next().await? {
            Ok(message) => {
                let delivery_count = message
                    .info()
                    .ok()
                    .and_then(|info| u32::try_from(info.delivered).ok())
                    .unwrap_or(1)
                    .max(1);
                Some(Ok(Delivery {
                    body: message.payload.clone(),
                    delivery_count,
                    acker: Box::new(NatsAcker {
                        message,
                        timeout: self.broker.options().request_timeout,
                    }),
                }))
            }
            Err(e) => {
                let error =
                    BrokerError::Unavailable(format!("consumer group {}: {e}", self.spec.group));
                // While the connection is down the pull resumes by itself on
                // reconnect; a missed heartbeat on a live connection, or any
                // other failure, means the pull is gone: open it again.
                let keep = e.kind() == MessagesErrorKind::MissingHeartbeat
                    && self.broker.check_connected().is_err();
                if !keep {
                    self.messages = None;
                }
                Some(Err(error))
            }
        }
    }
}

struct NatsAcker {
    message: jetstream::Message,
    timeout: Duration,
}

impl NatsAcker {
    async fn send(&self, kind: AckKind, what: &str) -> Result<(), BrokerError> {
        match tokio::time::timeout(self.timeout, self.message.ack_with(kind)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BrokerError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(BrokerError::Timeout(format!("{what} not sent in time"))),
        }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.send(AckKind::Ack, "ack").await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.send(AckKind::Nak(delay), "nack").await
    }
}
