//! Commands and queries across process boundaries, over any
//! [`RequestTransport`].
//!
//! The serving side wraps its local buses in an [`RpcServer`]: a request
//! names a registered command or query, carries its JSON and the caller's
//! tenant, correlation id, trace context and actor; the reply is
//! `{"ok": <output>}` or `{"error": {"code", "message", "details"}}`, so a
//! typed [`BusError`] crosses the wire with its stable code.
//!
//! The calling side registers a forwarding handler on its own bus with
//! [`forward_command`] / [`forward_query`]: application code keeps calling
//! `bus.send(..)` and does not know whether the handler is in the process or
//! behind a broker. A timeout is [`ErrorCode::Timeout`], nobody serving is
//! [`ErrorCode::Unavailable`].

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::{ErrorCode, RequestContext};
use cairn_domain::bus::{
    Access, BusError, Command, CommandBus, DuplicateHandler, MessageInfo, MessageKind, Query,
    QueryBus,
};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{RequestHandler, RequestTransport, RpcError, RpcRequest};

/// The wire shape of a reply.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reply {
    Ok(Value),
    Error(WireError),
}

#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    code: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

fn ok_reply(value: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&Reply::Ok(value)).expect("a JSON value serializes"))
}

fn error_reply(error: &BusError) -> Bytes {
    let wire = match error {
        BusError::Handler {
            code,
            message,
            details,
        } => WireError {
            code: code.as_str().to_owned(),
            message: message.clone(),
            details: details.clone(),
        },
        other => WireError {
            code: other.code().as_str().to_owned(),
            message: other.to_string(),
            details: other.details(),
        },
    };
    Bytes::from(serde_json::to_vec(&Reply::Error(wire)).expect("an error serializes"))
}

/// Decodes a reply body into the output or the typed error it carries.
fn decode_reply<T: DeserializeOwned>(body: &[u8]) -> Result<T, BusError> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| BusError::internal(format!("malformed reply: {e}")))?;
    match reply {
        Reply::Ok(value) => serde_json::from_value(value)
            .map_err(|e| BusError::internal(format!("reply does not fit the output type: {e}"))),
        Reply::Error(wire) => {
            // Field errors come back as a handler error with the same code
            // and details (field names cannot be `&'static str` here).
            let code = ErrorCode::parse(&wire.code).unwrap_or(ErrorCode::Internal);
            Err(BusError::Handler {
                code,
                message: wire.message,
                details: wire.details,
            })
        }
    }
}

fn context_of(request: &RpcRequest) -> RequestContext {
    let mut ctx = RequestContext::new(request.tenant.clone());
    if let Some(id) = &request.correlation_id {
        ctx = ctx.with_correlation_id(id.clone());
    }
    if let Some(tp) = &request.traceparent {
        ctx = ctx.with_traceparent(tp.clone());
    }
    if let Some(actor) = &request.actor {
        ctx = ctx.with_actor(actor.clone());
    }
    if let Some(service) = &request.service {
        ctx = ctx.as_service(service.clone());
    }
    ctx
}

type Endpoint = Arc<dyn Fn(RequestContext, Bytes) -> BoxFuture<'static, Bytes> + Send + Sync>;

/// Answers requests by dispatching them to local buses.
#[derive(Clone, Default)]
pub struct RpcServer {
    endpoints: HashMap<&'static str, Endpoint>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.endpoints.keys().collect();
        names.sort();
        f.debug_struct("RpcServer").field("serves", &names).finish()
    }
}

impl RpcServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves command `C` (by its `NAME`) with `bus`.
    pub fn command<C>(mut self, bus: CommandBus) -> Result<Self, DuplicateHandler>
    where
        C: Command + DeserializeOwned,
        C::Output: Serialize,
    {
        self.add(
            MessageKind::Command,
            C::NAME,
            C::ACCESS,
            Arc::new(move |ctx, body| {
                let bus = bus.clone();
                Box::pin(async move {
                    let command: C = match serde_json::from_slice(&body) {
                        Ok(c) => c,
                        Err(e) => return malformed(C::NAME, e),
                    };
                    match bus.send(&ctx, command).await {
                        Ok(out) => encode_output(&out),
                        Err(e) => error_reply(&e),
                    }
                })
            }),
        )?;
        Ok(self)
    }

    /// Serves query `Q` (by its `NAME`) with `bus`.
    pub fn query<Q>(mut self, bus: QueryBus) -> Result<Self, DuplicateHandler>
    where
        Q: Query + DeserializeOwned,
        Q::Output: Serialize,
    {
        self.add(
            MessageKind::Query,
            Q::NAME,
            Q::ACCESS,
            Arc::new(move |ctx, body| {
                let bus = bus.clone();
                Box::pin(async move {
                    let query: Q = match serde_json::from_slice(&body) {
                        Ok(q) => q,
                        Err(e) => return malformed(Q::NAME, e),
                    };
                    match bus.query(&ctx, query).await {
                        Ok(out) => encode_output(&out),
                        Err(e) => error_reply(&e),
                    }
                })
            }),
        )?;
        Ok(self)
    }

    fn add(
        &mut self,
        kind: MessageKind,
        name: &'static str,
        access: Access,
        endpoint: Endpoint,
    ) -> Result<(), DuplicateHandler> {
        if self.endpoints.contains_key(name) {
            return Err(DuplicateHandler(MessageInfo { kind, name, access }));
        }
        self.endpoints.insert(name, endpoint);
        Ok(())
    }

    /// Starts serving on `transport` as `service`.
    pub async fn serve(
        self,
        transport: &dyn RequestTransport,
        service: &str,
    ) -> Result<crate::Serving, crate::BrokerError> {
        transport.serve(service, Arc::new(self)).await
    }
}

fn encode_output<T: Serialize>(out: &T) -> Bytes {
    match serde_json::to_value(out) {
        Ok(v) => ok_reply(v),
        Err(e) => error_reply(&BusError::internal(format!("reply not serializable: {e}"))),
    }
}

fn malformed(name: &str, e: serde_json::Error) -> Bytes {
    error_reply(&BusError::handler(
        ErrorCode::MalformedRequest,
        format!("{name}: request body does not fit: {e}"),
    ))
}

#[async_trait]
impl RequestHandler for RpcServer {
    async fn handle(&self, request: RpcRequest) -> Bytes {
        match self.endpoints.get(request.name.as_str()) {
            Some(endpoint) => endpoint(context_of(&request), request.body.clone()).await,
            None => error_reply(&BusError::handler(
                ErrorCode::NotFound,
                format!("this service does not answer {}", request.name),
            )),
        }
    }
}

/// Where forwarded messages go.
#[derive(Clone)]
pub struct Remote {
    pub transport: Arc<dyn RequestTransport>,
    /// The service that answers.
    pub service: String,
    /// Longest wait for a reply.
    pub timeout: Duration,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub fn new(transport: Arc<dyn RequestTransport>, service: impl Into<String>) -> Self {
        Self {
            transport,
            service: service.into(),
            timeout: Duration::from_secs(5),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends message `name` with `body` and decodes the reply.
    pub async fn call<T: DeserializeOwned>(
        &self,
        ctx: &RequestContext,
        name: &str,
        body: &impl Serialize,
    ) -> Result<T, BusError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| BusError::internal(format!("{name}: not serializable: {e}")))?;
        let request = RpcRequest {
            name: name.to_owned(),
            tenant: ctx.tenant.clone(),
            correlation_id: Some(ctx.correlation_id.clone()),
            traceparent: ctx.traceparent.clone(),
            actor: ctx.actor.clone(),
            service: ctx.service.clone(),
            body: Bytes::from(body),
        };
        match self
            .transport
            .request(&self.service, request, self.timeout)
            .await
        {
            Ok(reply) => decode_reply(&reply),
            Err(RpcError::Timeout { service, timeout }) => Err(BusError::handler(
                ErrorCode::Timeout,
                format!("{service} did not answer {name} within {timeout:?}"),
            )),
            Err(RpcError::NoResponders { service }) => Err(BusError::handler(
                ErrorCode::Unavailable,
                format!("no instance of {service} is answering {name}"),
            )),
            Err(RpcError::Broker(e)) => Err(BusError::handler(
                ErrorCode::Unavailable,
                format!("{name} could not be sent: {e}"),
            )),
        }
    }
}

/// Registers on `bus` a handler for `C` that forwards it to `remote`.
pub fn forward_command<C>(bus: &CommandBus, remote: Remote) -> Result<(), DuplicateHandler>
where
    C: Command + Serialize,
    C::Output: DeserializeOwned,
{
    let remote = Arc::new(remote);
    bus.register_fn::<C, _, _>(move |ctx, command| {
        let remote = remote.clone();
        async move { remote.call::<C::Output>(&ctx, C::NAME, &command).await }
    })
}

/// Registers on `bus` a handler for `Q` that forwards it to `remote`.
pub fn forward_query<Q>(bus: &QueryBus, remote: Remote) -> Result<(), DuplicateHandler>
where
    Q: Query + Serialize,
    Q::Output: DeserializeOwned,
{
    let remote = Arc::new(remote);
    bus.register_fn::<Q, _, _>(move |ctx, query| {
        let remote = remote.clone();
        async move { remote.call::<Q::Output>(&ctx, Q::NAME, &query).await }
    })
}
