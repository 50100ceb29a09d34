//! The in-process broker: what `cairn up` runs on, and what unit tests of
//! the runtime use. It keeps the broker contract (durable groups that start
//! at the oldest kept message, competing instances, ack, delayed nack,
//! redelivery after the ack wait, broker-side dedupe of event ids), but
//! "durable" means for the life of the process: a restart starts empty, and
//! the relay re-publishes from its checkpoint.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::EventId;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::{
    Acker, Broker, BrokerError, ConsumerSpec, Deliveries, Delivery, IntegrationEvent,
    RequestHandler, RequestTransport, RpcError, RpcRequest, Serving,
};

/// How many messages per source a new group can still see.
const RETAINED_PER_SOURCE: usize = 10_000;
/// How long a published id is remembered for dedupe.
const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// The in-process broker. Clones share state.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Off only in tests that need a re-sent id delivered again.
    no_dedupe: bool,
}

#[derive(Default)]
struct State {
    /// Recent messages per source, for groups created later.
    retained: HashMap<String, VecDeque<Message>>,
    groups: HashMap<String, Arc<Group>>,
    seen: HashSet<EventId>,
    seen_order: VecDeque<(Instant, EventId)>,
    servers: HashMap<String, Vec<Server>>,
    next_server: u64,
    round_robin: u64,
}

/// One serving registration: its id and handler.
type Server = (u64, Arc<dyn RequestHandler>);

#[derive(Clone)]
struct Message {
    body: Bytes,
    deliveries: u32,
}

struct Group {
    source: String,
    ready: Mutex<VecDeque<Message>>,
    notify: Notify,
}

impl Group {
    fn push(&self, message: Message) {
        self.ready.lock().expect("group lock").push_back(message);
        self.notify.notify_one();
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock().expect("broker lock");
        f.debug_struct("MemoryBroker")
            .field("groups", &state.groups.len())
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker that delivers a re-sent event id again (as RabbitMQ does),
    /// for tests of the consumers' own deduplication.
    pub fn without_dedupe() -> Self {
        Self {
            inner: Arc::new(Inner {
                no_dedupe: true,
                ..Inner::default()
            }),
        }
    }

    /// Hands `body` to every group of `source` as it is, without checks: how
    /// a message another publisher got wrong arrives.
    pub fn publish_raw(&self, source: &str, body: Bytes) {
        let state = self.inner.state.lock().expect("broker lock");
        for group in state.groups.values() {
            if group.source == source {
                group.push(Message {
                    body: body.clone(),
                    deliveries: 0,
                });
            }
        }
    }

    /// Messages waiting (not handed out) in `group`: for tests and status.
    pub fn ready(&self, group: &str) -> usize {
        let state = self.inner.state.lock().expect("broker lock");
        state
            .groups
            .get(group)
            .map_or(0, |g| g.ready.lock().expect("group lock").len())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, events: &[IntegrationEvent]) -> Result<(), BrokerError> {
        let mut state = self.inner.state.lock().expect("broker lock");
        let now = Instant::now();
        while let Some((at, id)) = state.seen_order.front().copied() {
            if now.duration_since(at) < DEDUPE_WINDOW {
                break;
            }
            state.seen_order.pop_front();
            state.seen.remove(&id);
        }
        for event in events {
            if !self.inner.no_dedupe {
                if !state.seen.insert(event.id) {
                    continue;
                }
                state.seen_order.push_back((now, event.id));
            }
            let message = Message {
                body: Bytes::from(event.to_json()),
                deliveries: 0,
            };
            let retained = state.retained.entry(event.source.clone()).or_default();
            retained.push_back(message.clone());
            if retained.len() > RETAINED_PER_SOURCE {
                retained.pop_front();
            }
            for group in state.groups.values() {
                if group.source == event.source {
                    group.push(message.clone());
                }
            }
        }
        Ok(())
    }

    async fn consume(&self, spec: &ConsumerSpec) -> Result<Box<dyn Deliveries>, BrokerError> {
        crate::validate_service(&spec.group)
            .map_err(|e| BrokerError::Refused(format!("group name: {e}")))?;
        let group = {
            let mut state = self.inner.state.lock().expect("broker lock");
            let retained: VecDeque<Message> = state
                .retained
                .get(&spec.source)
                .cloned()
                .unwrap_or_default();
            state
                .groups
                .entry(spec.group.clone())
                .or_insert_with(|| {
                    Arc::new(Group {
                        source: spec.source.clone(),
                        ready: Mutex::new(retained),
                        notify: Notify::new(),
                    })
                })
                .clone()
        };
        if group.source != spec.source {
            return Err(BrokerError::Refused(format!(
                "group {} already reads {}, not {}",
                spec.group, group.source, spec.source
            )));
        }
        Ok(Box::new(MemoryDeliveries {
            group,
            permits: Arc::new(Semaphore::new(usize::from(spec.prefetch.max(1)))),
            ack_wait: spec.ack_wait,
        }))
    }
}

struct MemoryDeliveries {
    group: Arc<Group>,
    permits: Arc<Semaphore>,
    ack_wait: Duration,
}

#[async_trait]
impl Deliveries for MemoryDeliveries {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        loop {
            let notified = self.group.notify.notified();
            let message = self.group.ready.lock().expect("group lock").pop_front();
            if let Some(mut message) = message {
                // Wake another waiting instance if more is ready.
                if !self.group.ready.lock().expect("group lock").is_empty() {
                    self.group.notify.notify_one();
                }
                message.deliveries += 1;
                let acker = Arc::new(MemoryAck {
                    group: Arc::downgrade(&self.group),
                    message: Mutex::new(Some(message.clone())),
                    _permit: Mutex::new(Some(permit)),
                });
                // The ack wait: not settled in time means redelivered.
                let watch = Arc::downgrade(&acker);
                let wait = self.ack_wait;
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Some(acker) = watch.upgrade() {
                        acker.settle(Some(Duration::ZERO));
                    }
                });
                return Some(Ok(Delivery {
                    body: message.body.clone(),
                    delivery_count: message.deliveries,
                    acker: Box::new(MemoryAckHandle(acker)),
                }));
            }
            notified.await;
        }
    }
}

struct MemoryAck {
    group: Weak<Group>,
    message: Mutex<Option<Message>>,
    _permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl MemoryAck {
    /// Settles once: `None` acks, `Some(delay)` gives it back after `delay`.
    fn settle(&self, requeue: Option<Duration>) {
        let Some(message) = self.message.lock().expect("ack lock").take() else {
            return;
        };
        self._permit.lock().expect("ack lock").take();
        let (Some(delay), Some(group)) = (requeue, self.group.upgrade()) else {
            return;
        };
        if delay.is_zero() {
            group.push(message);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                group.push(message);
            });
        }
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        // Dropped without settling: the instance is gone, redeliver now.
        self.settle(Some(Duration::ZERO));
    }
}

struct MemoryAckHandle(Arc<MemoryAck>);

#[async_trait]
impl Acker for MemoryAckHandle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.0.settle(None);
        Ok(())
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        self.0.settle(Some(delay));
        Ok(())
    }
}

#[async_trait]
impl RequestTransport for MemoryBroker {
    async fn request(
        &self,
        service: &str,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let handler = {
            let mut state = self.inner.state.lock().expect("broker lock");
            state.round_robin = state.round_robin.wrapping_add(1);
            let turn = state.round_robin;
            match state.servers.get(service) {
                Some(handlers) if !handlers.is_empty() => {
                    let i = usize::try_from(turn % handlers.len() as u64).unwrap_or(0);
                    handlers[i].1.clone()
                }
                _ => {
                    return Err(RpcError::NoResponders {
                        service: service.to_owned(),
                    });
                }
            }
        };
        tokio::time::timeout(timeout, handler.handle(request))
            .await
            .map_err(|_| RpcError::Timeout {
                service: service.to_owned(),
                timeout,
            })
    }

    async fn serve(
        &self,
        service: &str,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<Serving, BrokerError> {
        let id = {
            let mut state = self.inner.state.lock().expect("broker lock");
            state.next_server += 1;
            let id = state.next_server;
            state
                .servers
                .entry(service.to_owned())
                .or_default()
                .push((id, handler));
            id
        };
        let inner = Arc::downgrade(&self.inner);
        let service = service.to_owned();
        Ok(Serving::new(move || {
            if let Some(inner) = inner.upgrade() {
                let mut state = inner.state.lock().expect("broker lock");
                if let Some(handlers) = state.servers.get_mut(&service) {
                    handlers.retain(|(h, _)| *h != id);
                }
            }
        }))
    }
}
