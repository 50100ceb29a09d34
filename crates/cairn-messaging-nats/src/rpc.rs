//! Request/reply over core NATS: a request goes to `<prefix>.rpc.<service>`,
//! the instances of a service share a queue group, and the reply comes back
//! on the requester's inbox.

use std::{
    sync::{Arc, Mutex, PoisonError},
    task::Poll,
    time::Duration,
};

use async_nats::{HeaderMap, Message, RequestErrorKind, Subscriber, header::HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::TenantId;
use cairn_messaging::{
    BrokerError, RequestHandler, RequestTransport, RpcError, RpcRequest, Serving, validate_service,
};
use futures_util::StreamExt;

use crate::{NatsBroker, options::rpc_subject};

/// The header names a request carries.
pub mod headers {
    /// The tenant the request acts for (required).
    pub const TENANT: &str = "Cairn-Tenant";
    /// The message name (`GetFlightForBooking`, required).
    pub const NAME: &str = "Cairn-Name";
    pub const CORRELATION_ID: &str = "Cairn-Correlation-Id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const ACTOR: &str = "Cairn-Actor";
    /// The platform service sending the request (internal messages).
    pub const SERVICE: &str = "Cairn-Service";
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, RpcError> {
    if value.chars().any(char::is_control) {
        return Err(RpcError::Broker(BrokerError::Refused(format!(
            "header {name} must not contain control characters"
        ))));
    }
    Ok(HeaderValue::from(value))
}

fn request_headers(request: &RpcRequest) -> Result<HeaderMap, RpcError> {
    let mut map = HeaderMap::new();
    map.insert(
        headers::TENANT,
        header_value(headers::TENANT, request.tenant.as_str())?,
    );
    map.insert(headers::NAME, header_value(headers::NAME, &request.name)?);
    let optional = [
        (headers::CORRELATION_ID, &request.correlation_id),
        (headers::TRACEPARENT, &request.traceparent),
        (headers::ACTOR, &request.actor),
        (headers::SERVICE, &request.service),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            map.insert(name, header_value(name, value)?);
        }
    }
    Ok(map)
}

/// Reads a request back from its headers; `Err` says what is wrong.
fn parse_request(message: &Message) -> Result<RpcRequest, String> {
    let headers = message.headers.as_ref().ok_or("no headers")?;
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let tenant = get(headers::TENANT).ok_or("no tenant header")?;
    let tenant = TenantId::new(tenant).map_err(|e| e.to_string())?;
    let name = get(headers::NAME).ok_or("no name header")?;
    Ok(RpcRequest {
        name,
        tenant,
        correlation_id: get(headers::CORRELATION_ID),
        traceparent: get(headers::TRACEPARENT),
        actor: get(headers::ACTOR),
        service: get(headers::SERVICE),
        body: message.payload.clone(),
    })
}

fn service_subject(broker: &NatsBroker, service: &str) -> Result<String, BrokerError> {
    validate_service(service)
        .map_err(|e| BrokerError::Refused(format!("service {service:?}: {e}")))?;
    Ok(rpc_subject(broker.prefix(), service))
}

#[async_trait]
impl RequestTransport for NatsBroker {
    /// A core NATS request with the tenant, name, correlation id,
    /// traceparent and actor in headers. `NoResponders` when no instance
    /// subscribes (the server says so at once), `Timeout` when none replies
    /// in time, `Broker(Unavailable)` at once while the connection is down.
    async fn request(
        &self,
        service: &str,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let subject = service_subject(self, service)?;
        let headers = request_headers(&request)?;
        self.check_connected()?;
        let outgoing = async_nats::Request::new()
            .headers(headers)
            .payload(request.body)
            .timeout(Some(timeout));
        // The client bounds the wait itself; this also bounds handing the
        // request to the connection.
        let sent = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.client().send_request(subject, outgoing),
        )
        .await;
        let timed_out = || RpcError::Timeout {
            service: service.to_owned(),
            timeout,
        };
        match sent {
            Err(_) => Err(timed_out()),
            Ok(Ok(reply)) => Ok(reply.payload),
            Ok(Err(e)) => match e.kind() {
                RequestErrorKind::TimedOut => Err(timed_out()),
                RequestErrorKind::NoResponders => Err(RpcError::NoResponders {
                    service: service.to_owned(),
                }),
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => Err(
                    RpcError::Broker(BrokerError::Refused(format!("request to {service}: {e}"))),
                ),
                RequestErrorKind::Other => Err(RpcError::Broker(BrokerError::Unavailable(
                    format!("request to {service}: {e}"),
                ))),
            },
        }
    }

    /// Subscribes to `<prefix>.rpc.<service>` in the queue group
    /// `<prefix>.rpc.<service>` (so instances share requests) and answers each
    /// request from its own task. A request without a valid tenant or name
    /// header is dropped with a warning (the requester times out).
    /// Dropping the [`Serving`] unsubscribes before it returns; requests
    /// already being handled still get their reply.
    async fn serve(
        &self,
        service: &str,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<Serving, BrokerError> {
        let subject = service_subject(self, service)?;
        self.check_connected()?;
        let subscriber = self
            .client()
            .queue_subscribe(subject.clone(), subject.clone())
            .await
            .map_err(|e| BrokerError::Unavailable(format!("subscribing to {subject}: {e}")))?;
        // Flushed so that a request sent right after `serve` returns finds
        // the subscription on the server.
        tokio::time::timeout(self.options().request_timeout, self.client().flush())
            .await
            .map_err(|_| BrokerError::Timeout(format!("subscribing to {subject}")))?
            .map_err(|e| BrokerError::Unavailable(format!("subscribing to {subject}: {e}")))?;
        let shared = Arc::new(Mutex::new(Some(subscriber)));
        let client = self.client().clone();
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            let service = service.to_owned();
            async move {
                while let Some(message) = next_request(&shared).await {
                    let Some(reply) = message.reply.clone() else {
                        continue;
                    };
                    let request = match parse_request(&message) {
                        Ok(request) => request,
                        Err(why) => {
                            tracing::warn!(service, why, "dropping a malformed request");
                            continue;
                        }
                    };
                    let (handler, client) = (Arc::clone(&handler), client.clone());
                    tokio::spawn(async move {
                        let body = handler.handle(request).await;
                        if let Err(e) = client.publish(reply, body).await {
                            tracing::warn!(error = %e, "could not send a reply");
                        }
                    });
                }
            }
        });
        Ok(Serving::new(move || {
            // Dropping the subscriber queues the unsubscribe right now, ahead
            // of anything this process sends next.
            drop(shared.lock().unwrap_or_else(PoisonError::into_inner).take());
            task.abort();
        }))
    }
}

/// The next request, or `None` once serving stopped.
async fn next_request(shared: &Mutex<Option<Subscriber>>) -> Option<Message> {
    futures_util::future::poll_fn(|cx| {
        match shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(subscriber) => subscriber.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    })
    .await
}
