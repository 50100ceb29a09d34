//! Request/reply: a shared queue per service, replies over direct reply-to.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use bytes::Bytes;
use cairn_core::TenantId;
use cairn_messaging::{BrokerError, RequestHandler, RpcError, RpcRequest, Serving};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::{
    sync::oneshot,
    task::{JoinHandle, JoinSet},
};

use crate::link::{Link, Live, bounded, map_err, short, validate_name};

/// RabbitMQ's pseudo-queue for direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Requests one serving instance works on at once.
const SERVE_PREFETCH: u16 = 32;
/// Longest pause before re-opening a server's consumer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const JSON: &str = "application/json";

pub(crate) const TENANT: &str = "Cairn-Tenant";
pub(crate) const CORRELATION_ID: &str = "Cairn-Correlation-Id";
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const ACTOR: &str = "Cairn-Actor";
pub(crate) const SERVICE: &str = "Cairn-Service";
pub(crate) const NAME: &str = "Cairn-Name";

type Pending = Arc<StdMutex<HashMap<String, oneshot::Sender<Bytes>>>>;

/// The requesting side of one connection: a confirm-mode channel that
/// publishes requests and consumes their replies.
pub(crate) struct RpcClient {
    channel: Channel,
    pending: Pending,
    dispatcher: JoinHandle<()>,
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl RpcClient {
    async fn open(link: &Link, live: &Live) -> Result<Self, BrokerError> {
        let channel = link.channel_on(live).await?;
        let consumer = bounded(
            link.connect_timeout(),
            "opening the reply consumer",
            async {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| map_err("enabling publisher confirms", &e))?;
                channel
                    .basic_consume(
                        REPLY_TO.into(),
                        "".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| map_err("consuming replies", &e))
            },
        )
        .await?;
        let pending = Pending::default();
        let dispatcher = tokio::spawn(dispatch(consumer, pending.clone()));
        Ok(Self {
            channel,
            pending,
            dispatcher,
        })
    }

    fn usable(&self) -> bool {
        self.channel.status().connected() && !self.dispatcher.is_finished()
    }
}

/// Hands each reply to its waiting request; when the reply consumer ends,
/// drops every waiter (they fail as unavailable).
async fn dispatch(mut consumer: Consumer, pending: Pending) {
    while let Some(Ok(reply)) = consumer.next().await {
        let Some(id) = reply.properties.correlation_id() else {
            continue;
        };
        let waiter = lock(&pending).remove(id.as_str());
        if let Some(waiter) = waiter {
            let _ = waiter.send(Bytes::from(reply.data));
        }
    }
    lock(&pending).clear();
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Bytes>>> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes a request's waiter however the request ends.
struct Waiting<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

async fn client(link: &Link) -> Result<Arc<RpcClient>, BrokerError> {
    let live = link.live().await?;
    let mut slot = live.rpc.lock().await;
    if let Some(client) = slot.as_ref()
        && client.usable()
    {
        return Ok(client.clone());
    }
    *slot = None;
    let client = Arc::new(RpcClient::open(link, &live).await?);
    *slot = Some(client.clone());
    Ok(client)
}

pub(crate) async fn request(
    link: &Link,
    service: &str,
    request: RpcRequest,
    timeout: Duration,
) -> Result<Bytes, RpcError> {
    validate_name("service", service)?;
    let queue = short(&link.rpc_queue(service))?;
    let exchange_and_reply = async {
        let client = client(link).await?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&client.pending).insert(id.clone(), tx);
        let _waiting = Waiting {
            pending: &client.pending,
            id: id.clone(),
        };
        let properties = BasicProperties::default()
            .with_correlation_id(id.into())
            .with_reply_to(REPLY_TO.into())
            .with_content_type(JSON.into())
            .with_expiration(timeout.as_millis().max(1).to_string().into())
            .with_type(short(&request.name)?)
            .with_headers(request_headers(&request));
        let confirm = client
            .channel
            .basic_publish(
                "".into(),
                queue,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &request.body,
                properties,
            )
            .await
            .map_err(|e| map_err("sending a request", &e))?;
        match confirm.await {
            Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => {
                return Err(RpcError::NoResponders {
                    service: service.to_owned(),
                });
            }
            Ok(Confirmation::Nack(None)) => {
                return Err(
                    BrokerError::Refused("RabbitMQ did not accept the request".into()).into(),
                );
            }
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {}
            Err(e) => return Err(map_err("sending a request", &e).into()),
        }
        rx.await.map_err(|_| {
            RpcError::Broker(BrokerError::Unavailable(
                "the connection dropped before the reply came".to_owned(),
            ))
        })
    };
    match tokio::time::timeout(timeout, exchange_and_reply).await {
        Ok(result) => result,
        Err(_) => Err(RpcError::Timeout {
            service: service.to_owned(),
            timeout,
        }),
    }
}

fn request_headers(request: &RpcRequest) -> FieldTable {
    let mut headers = FieldTable::default();
    let mut put = |key: &str, value: &str| {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    };
    put(TENANT, request.tenant.as_str());
    put(NAME, &request.name);
    if let Some(v) = &request.correlation_id {
        put(CORRELATION_ID, v);
    }
    if let Some(v) = &request.traceparent {
        put(TRACEPARENT, v);
    }
    if let Some(v) = &request.actor {
        put(ACTOR, v);
    }
    if let Some(v) = &request.service {
        put(SERVICE, v);
    }
    headers
}

fn header(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The request a delivery carries, or why it is not one.
fn decode_request(delivery: &Delivery) -> Result<RpcRequest, String> {
    let headers = delivery.properties.headers().as_ref();
    let tenant = header(headers, TENANT).ok_or_else(|| format!("no {TENANT} header"))?;
    let tenant = TenantId::new(&tenant).map_err(|e| format!("bad {TENANT} header: {e}"))?;
    let name = header(headers, NAME)
        .or_else(|| delivery.properties.kind().as_ref().map(|k| k.to_string()))
        .ok_or_else(|| format!("no {NAME} header"))?;
    Ok(RpcRequest {
        name,
        tenant,
        correlation_id: header(headers, CORRELATION_ID),
        traceparent: header(headers, TRACEPARENT),
        actor: header(headers, ACTOR),
        service: header(headers, SERVICE),
        body: Bytes::from(delivery.data.clone()),
    })
}

struct Server {
    channel: Channel,
    consumer: Consumer,
}

async fn open_server(link: &Link, queue: &str) -> Result<Server, BrokerError> {
    // The queue is auto-delete: an instance that stops as this one starts
    // may delete it between the declare and the consume. Declare again then.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_open_server(link, queue).await {
            Err(BrokerError::Refused(_)) if attempt < 3 => continue,
            result => return result,
        }
    }
}

async fn try_open_server(link: &Link, queue: &str) -> Result<Server, BrokerError> {
    let (_live, channel) = link.channel().await?;
    let consumer = bounded(
        link.connect_timeout(),
        "opening a request consumer",
        async {
            channel
                .queue_declare(
                    short(queue)?,
                    QueueDeclareOptions {
                        durable: false,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| map_err("declaring the request queue", &e))?;
            channel
                .basic_qos(SERVE_PREFETCH, BasicQosOptions::default())
                .await
                .map_err(|e| map_err("setting the prefetch", &e))?;
            channel
                .basic_consume(
                    short(queue)?,
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| map_err("consuming requests", &e))
        },
    )
    .await?;
    Ok(Server { channel, consumer })
}

pub(crate) async fn serve(
    link: Arc<Link>,
    service: &str,
    handler: Arc<dyn RequestHandler>,
) -> Result<Serving, BrokerError> {
    validate_name("service", service)?;
    let queue = link.rpc_queue(service);
    let server = open_server(&link, &queue).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_loop(link, queue, handler, server, stopped));
    Ok(Serving::new(move || {
        let _ = stop.send(());
    }))
}

/// Answers requests until stopped, re-opening the consumer when the
/// connection drops.
async fn serve_loop(
    link: Arc<Link>,
    queue: String,
    handler: Arc<dyn RequestHandler>,
    first: Server,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut server = Some(first);
    // Consecutive failures, for the back-off before re-opening.
    let mut failures = 0u32;
    let mut handling = JoinSet::new();
    loop {
        let Server {
            channel,
            mut consumer,
        } = match server.take() {
            Some(server) => server,
            None => {
                let pause = Duration::from_millis(100u64 << failures.min(6)).min(MAX_BACKOFF);
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(pause) => {}
                }
                match open_server(&link, &queue).await {
                    Ok(server) => server,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%queue, %error, "cannot serve requests; retrying");
                        continue;
                    }
                }
            }
        };
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    let tag = consumer.tag();
                    let _ = tokio::time::timeout(
                        link.connect_timeout(),
                        channel.basic_cancel(tag, BasicCancelOptions::default()),
                    )
                    .await;
                    drop(consumer);
                    // Let the requests under way answer; anything prefetched
                    // and not started is requeued when the channel closes.
                    while handling.join_next().await.is_some() {}
                    let _ = tokio::time::timeout(
                        link.connect_timeout(),
                        channel.close(200, "stopped serving".into()),
                    )
                    .await;
                    return;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        handling.spawn(answer(delivery, channel.clone(), handler.clone()));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%queue, %error, "request consumer failed; re-opening");
                        failures = 1;
                        break;
                    }
                    None => {
                        tracing::info!(%queue, "request consumer cancelled; re-opening");
                        failures = 1;
                        break;
                    }
                },
                Some(_) = handling.join_next(), if !handling.is_empty() => {}
            }
        }
    }
}

async fn answer(delivery: Delivery, channel: Channel, handler: Arc<dyn RequestHandler>) {
    let request = match decode_request(&delivery) {
        Ok(request) => request,
        Err(why) => {
            tracing::warn!(%why, "dropping a message that is not a request");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    let reply_to = delivery.properties.reply_to().clone();
    let correlation: Option<ShortString> = delivery.properties.correlation_id().clone();
    let body = handler.handle(request).await;
    if let Some(reply_to) = reply_to {
        let mut properties = BasicProperties::default().with_content_type(JSON.into());
        if let Some(correlation) = correlation {
            properties = properties.with_correlation_id(correlation);
        }
        if let Err(error) = channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
        {
            tracing::warn!(%error, "cannot send a reply");
        }
    }
    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
}
