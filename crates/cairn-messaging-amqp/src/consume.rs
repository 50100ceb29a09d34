//! Consumer groups: one durable queue per group, competing consumers with
//! manual acks.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_messaging::{Acker, BrokerError, ConsumerSpec, Deliveries, Delivery};
use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::task::JoinHandle;

use crate::link::{Link, bounded, map_err, short};

/// Longest pause before re-opening a consumer after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An open consumer of one group.
pub(crate) struct AmqpDeliveries {
    link: Arc<Link>,
    spec: ConsumerSpec,
    open: Option<Open>,
    /// Consecutive failures to (re-)open, for the back-off.
    failures: u32,
    /// RabbitMQ cancelled the consumer (the queue was deleted): for good.
    closed: bool,
}

struct Open {
    channel: Channel,
    consumer: Consumer,
}

impl std::fmt::Debug for AmqpDeliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDeliveries")
            .field("group", &self.spec.group)
            .field("source", &self.spec.source)
            .field("open", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

impl AmqpDeliveries {
    pub(crate) async fn open(link: Arc<Link>, spec: ConsumerSpec) -> Result<Self, BrokerError> {
        let open = open_consumer(&link, &spec).await?;
        Ok(Self {
            link,
            spec,
            open: Some(open),
            failures: 0,
            closed: false,
        })
    }

    fn wrap(&self, delivery: lapin::message::Delivery, channel: &Channel) -> Delivery {
        let delivery_count =
            delivery_count(delivery.redelivered, delivery.properties.headers().as_ref());
        let acker = AmqpAcker::new(
            delivery.acker,
            channel.clone(),
            self.spec.ack_wait,
            self.link.connect_timeout(),
        );
        Delivery {
            body: Bytes::from(delivery.data),
            delivery_count,
            acker: Box::new(acker),
        }
    }
}

async fn open_consumer(link: &Link, spec: &ConsumerSpec) -> Result<Open, BrokerError> {
    let (_live, channel) = link.channel().await?;
    let queue = link.group_queue(&spec.group);
    let opened = bounded(link.connect_timeout(), "opening a consumer", async {
        link.declare_group_on(&channel, spec).await?;
        channel
            .basic_qos(spec.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| map_err("setting the prefetch", &e))?;
        channel
            .basic_consume(
                short(&queue)?,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_err("opening a consumer", &e))
    })
    .await;
    match opened {
        Ok(consumer) => Ok(Open { channel, consumer }),
        Err(error) => {
            // Closing the channel gives back anything delivered meanwhile.
            drop(channel);
            Err(error)
        }
    }
}

#[async_trait]
impl Deliveries for AmqpDeliveries {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        if self.closed {
            return None;
        }
        if self.open.is_none() {
            if self.failures > 0 {
                let pause = Duration::from_millis(100u64 << self.failures.min(6)).min(MAX_BACKOFF);
                tokio::time::sleep(pause).await;
            }
            match open_consumer(&self.link, &self.spec).await {
                Ok(open) => {
                    self.open = Some(open);
                    self.failures = 0;
                }
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    return Some(Err(error));
                }
            }
        }
        let open = self.open.as_mut()?;
        match open.consumer.next().await {
            Some(Ok(delivery)) => {
                let channel = open.channel.clone();
                Some(Ok(self.wrap(delivery, &channel)))
            }
            Some(Err(error)) => {
                self.open = None;
                self.failures = 1;
                Some(Err(map_err("receiving", &error)))
            }
            None => {
                let dropped = !open.channel.status().connected();
                self.open = None;
                if dropped {
                    self.failures = 1;
                    Some(Err(BrokerError::Unavailable(
                        "the consumer's channel closed".to_owned(),
                    )))
                } else {
                    self.closed = true;
                    None
                }
            }
        }
    }
}

/// 1 on first delivery, 2 once RabbitMQ flags a redelivery; a quorum
/// queue's `x-delivery-count` (redeliveries so far) where present.
pub(crate) fn delivery_count(redelivered: bool, headers: Option<&FieldTable>) -> u32 {
    let counted = headers
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        });
    match counted {
        Some(n) => n.saturating_add(1),
        None if redelivered => 2,
        None => 1,
    }
}

/// Settles one message. Keeps its channel open until settled, so a message
/// held for a delayed nack is not requeued early when the consumer goes.
/// Dropped unsettled, it gives the message back at once.
struct AmqpAcker {
    acker: lapin::Acker,
    channel: Channel,
    /// Gives the message back once `ack_wait` has passed unsettled.
    ack_wait: Option<JoinHandle<()>>,
    timeout: Duration,
    /// Settled, or handed to a delayed nack.
    done: bool,
}

impl AmqpAcker {
    fn new(acker: lapin::Acker, channel: Channel, ack_wait: Duration, timeout: Duration) -> Self {
        let ack_wait = (!ack_wait.is_zero()).then(|| {
            let acker = acker.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ack_wait).await;
                if acker.usable() {
                    tracing::warn!(
                        ?ack_wait,
                        "a message was neither acked nor nacked in time; giving it back"
                    );
                    let _ = acker.nack(requeue()).await;
                }
            })
        });
        Self {
            acker,
            channel,
            ack_wait,
            timeout,
            done: false,
        }
    }

    fn settling(&mut self) {
        self.done = true;
        if let Some(timer) = self.ack_wait.take() {
            timer.abort();
        }
    }

    /// Why a settle found the message no longer ours.
    fn unusable(&self) -> BrokerError {
        if self.acker.poisoned() || !self.channel.status().connected() {
            BrokerError::Unavailable(
                "the message's channel closed; RabbitMQ has requeued it".to_owned(),
            )
        } else {
            BrokerError::Refused("the message was already given back (ack_wait passed)".to_owned())
        }
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if self.done || !self.acker.usable() {
            return;
        }
        self.settling();
        let acker = self.acker.clone();
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = acker.nack(requeue()).await;
                drop(channel);
            });
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.settling();
        let acked = bounded(self.timeout, "acking", async {
            self.acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| map_err("acking", &e))
        })
        .await?;
        if acked { Ok(()) } else { Err(self.unusable()) }
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        self.settling();
        if !self.acker.usable() {
            return Err(self.unusable());
        }
        if delay.is_zero() {
            let nacked = bounded(self.timeout, "nacking", async {
                self.acker
                    .nack(requeue())
                    .await
                    .map_err(|e| map_err("nacking", &e))
            })
            .await?;
            return if nacked { Ok(()) } else { Err(self.unusable()) };
        }
        let acker = self.acker.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(error) = acker.nack(requeue()).await {
                tracing::debug!(%error, "delayed nack failed; RabbitMQ requeues the message when its channel closes");
            }
            drop(channel);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_count_from_the_flag_or_the_quorum_header() {
        assert_eq!(delivery_count(false, None), 1);
        assert_eq!(delivery_count(true, None), 2);
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(true, Some(&headers)), 4);
    }
}
