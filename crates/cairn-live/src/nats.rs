//! The live API with the services run apart: the RES-Service protocol
//! (`cairn_res::service`) over NATS, both ends.
//!
//! - [`serve`]: a service answers `access`, `get` and `call` requests for
//!   its resources and publishes their changes as `system.reset` events.
//! - [`Remote`] and [`hear`]: a gateway's [`crate::Live`] asks the
//!   services for every resource it does not serve itself (no code per
//!   service) and passes the changes it hears on to its connections.
//!
//! On the wire a resource name carries its tenant second
//! (`flights.acme.flight.7`, [`cairn_res::service::to_wire`]); a client of
//! the gateway never sees it. Subjects start with the deployment's
//! prefix, as every subject of a deployment does (`cairn.get.flights.…`);
//! Resgate, which sends unprefixed subjects, reaches the services through
//! a NATS subject mapping (`get.>` to `cairn.get.>`, and so on).
//!
//! Who may read: an `access` request carries the caller's token
//! (`{"token": "<bearer>"}`); the service checks it as it checks any
//! request ([`crate::Authenticate`]), in the tenant the name gives, and
//! reads the resource as the caller, so its permissions and its tenant
//! decide (a super-admin's read of another tenant is recorded there, by
//! the service that holds the data). A `get` carries no token (RES lets a
//! gateway share what it got among the callers it gave access): the
//! service reads as its reader, in the name's tenant, with the
//! permissions its queries declare and nothing else. A `call` carries the
//! token and runs as the caller through the same command bus as HTTP.
//! Behind a RES gateway that does not check Cairn tokens itself
//! (Resgate), the token reaches it through `auth.<service>.token`: with
//! `{"token": "<bearer>"}` as the client's parameters, or with the
//! connection's `Authorization` header or token cookie (Resgate's header
//! authentication); the service checks it and sends `conn.<cid>.token`
//! with `{"token": "<bearer>"}` (and the token's id as `tid`), which the
//! gateway then sends with each `access` and `call`.
//! NATS is the trust boundary, as with Resgate: whoever may publish
//! `get.…` on it may read.
//!
//! Changes: every change a service publishes goes out as `system.reset`
//! of the resource names it touched, and the gateway has each connection
//! holding one read it again (so a change still reaches a client only
//! once the read model shows it). Events on a resource
//! (`event.<name>.<event>`) from another RES service are heard as a reset
//! of that resource, and a reset's patterns (`flights.*.flight.>`) as
//! resets of what they match, in the pattern's tenant or, when its tenant
//! part is a wildcard, in every tenant. A service that missed some of its
//! own changes (its buffer overflowed) resets `<service>.>`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use async_nats::{Client, Message};
use async_trait::async_trait;
use cairn_core::{RequestContext, TenantId};
use cairn_res::{
    ResError, Resource, Rid,
    service::{
        Access, AccessRequest, AuthRequest, CallRequest, GetRequest, GetResult, ServiceRequestKind,
        ServiceResponse, ServiceSubject, SystemEvent, from_wire, from_wire_in, parse_payload,
        rename_references, to_wire,
    },
};
use cairn_runtime::{Controls, Running, Stage};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;

use crate::{Authenticate, Bearer, CallAnswer, Change, Publisher, Resources, Session};

/// The header of a reply naming the service that sent it (a gateway
/// putting answers of several services together knows whom it heard).
pub const SERVICE_HEADER: &str = "Cairn-Service";

/// What a service serving its resources over NATS has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeStatus {
    /// Requests answered (errors included).
    pub answered: u64,
    /// `system.reset` events published.
    pub resets: u64,
    pub last_error: Option<String>,
}

/// One service's live resources, as it serves them over NATS.
pub struct ServiceSide {
    /// The deployment's subject prefix.
    pub prefix: String,
    /// The first part of the names it serves: the service's own name, or
    /// `ops` for the operations resources every service serves a part of.
    pub service: String,
    /// Who answers, in the queue group's name and in each reply's
    /// [`SERVICE_HEADER`]: the service's name. Its instances share the
    /// requests; other services asked the same (`ops.…`) answer as well.
    pub group: String,
    pub resources: Arc<dyn Resources>,
    /// Checks the tokens of `access` and `call` requests.
    pub auth: Arc<dyn Authenticate>,
    /// The permissions a `get` reads with: those the service's queries
    /// declare.
    pub reader: BTreeSet<String>,
}

impl std::fmt::Debug for ServiceSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSide")
            .field("prefix", &self.prefix)
            .field("service", &self.service)
            .field("group", &self.group)
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

/// Serves `side`'s resources on NATS (a queue group per service and
/// group, so the instances of a service share the requests) and publishes
/// what `changes` carries, until stopped.
pub async fn serve(
    client: Client,
    side: ServiceSide,
    changes: &Publisher,
) -> Result<Running<ServeStatus>, async_nats::Error> {
    let side = Arc::new(side);
    let mut subscribers = Vec::new();
    // `auth` is a service's own (not of a part every service serves).
    let kinds: &[&str] = if side.group == side.service {
        &["access", "get", "call", "auth"]
    } else {
        &["access", "get", "call"]
    };
    for kind in kinds {
        let subject = format!("{}.{kind}.{}.>", side.prefix, side.service);
        let group = format!("{}.res.{}.{}", side.prefix, side.service, side.group);
        subscribers.push(client.queue_subscribe(subject, group).await?);
    }
    // So that a request sent right after this returns finds the service.
    client.flush().await?;
    let changes = changes.subscribe();
    let name = format!("live {} (RES-Service)", side.service);
    Ok(Running::start(
        name,
        Stage::Support,
        ServeStatus::default(),
        move |controls| {
            let requests = futures_util::stream::select_all(subscribers);
            vec![tokio::spawn(run(client, side, requests, changes, controls))]
        },
    ))
}

/// Answers requests, each in a task of its own, and publishes changes,
/// until stopped.
async fn run(
    client: Client,
    side: Arc<ServiceSide>,
    mut requests: futures_util::stream::SelectAll<async_nats::Subscriber>,
    changes: crate::Changes,
    controls: Controls<ServeStatus>,
) {
    let Controls { status, mut stop } = controls;
    let mut changes = Some(changes);
    let status = Arc::new(status);
    loop {
        tokio::select! {
            message = requests.next() => {
                let Some(message) = message else { return };
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                let (client, side, status) = (client.clone(), side.clone(), status.clone());
                tokio::spawn(async move {
                    let response = match answer(&client, &side, &message).await {
                        Ok(response) => response,
                        Err(error) => ServiceResponse::Error(error),
                    };
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(SERVICE_HEADER, side.group.as_str());
                    if let Err(e) = client
                        .publish_with_headers(reply, headers, response.to_json().into())
                        .await
                    {
                        status.send_modify(|s| s.last_error = Some(format!("replying: {e}")));
                    }
                    status.send_modify(|s| s.answered += 1);
                });
            }
            change = async {
                match &mut changes {
                    Some(changes) => changes.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // No change can come any more: the requests are still
                // answered.
                if !publish(&client, &side, change, &status).await {
                    changes = None;
                }
            }
            // The guard it answers must not live on across the awaits above.
            () = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
        }
    }
}

/// The answer to one request.
async fn answer(
    client: &Client,
    side: &ServiceSide,
    message: &Message,
) -> Result<ServiceResponse, ResError> {
    let subject = message
        .subject
        .as_str()
        .strip_prefix(&side.prefix)
        .and_then(|s| s.strip_prefix('.'))
        .ok_or_else(|| ResError::invalid_request("not a request of this deployment"))?;
    let subject = ServiceSubject::parse(subject)?;
    let payload = &message.payload;
    match subject.kind {
        ServiceRequestKind::Access => {
            let request: AccessRequest = parse_payload(payload)?;
            let (tenant, rid) = local(&subject.name, request.query.as_deref())?;
            let session = caller(side, request.token.as_ref(), &tenant).await?;
            if session.cross_tenant {
                side.auth.record_read(&session, &rid).await?;
            }
            side.resources.get(&session.context, &rid).await?;
            let access = Access {
                get: true,
                call: (!session.cross_tenant).then(|| "*".to_owned()),
            };
            Ok(ServiceResponse::Result(
                serde_json::to_value(access).map_err(|_| ResError::internal_error())?,
            ))
        }
        ServiceRequestKind::Get => {
            let request: GetRequest = parse_payload(payload)?;
            let (tenant, rid) = local(&subject.name, request.query.as_deref())?;
            let tenant = TenantId::new(&tenant).map_err(|_| ResError::not_found())?;
            let mut reader = RequestContext::new(tenant.clone())
                .with_actor(format!("{} live reader", side.service));
            reader.permissions = side.reader.clone();
            let resource = side.resources.get(&reader, &rid).await?;
            let resource = rename_references(resource, |r| to_wire(r, tenant.as_str()))?;
            Ok(ServiceResponse::Result(
                GetResult {
                    resource,
                    query: request.query,
                }
                .to_json(),
            ))
        }
        ServiceRequestKind::Call => {
            let request: CallRequest = parse_payload(payload)?;
            let (tenant, rid) = local(&subject.name, request.query.as_deref())?;
            let session = caller(side, request.token.as_ref(), &tenant).await?;
            if session.cross_tenant {
                return Err(ResError::access_denied().with_data(json!({
                    "code": "forbidden",
                    "detail": "another tenant's resources are read only",
                })));
            }
            let method = subject.method.unwrap_or_default();
            let params = request.params.unwrap_or(Json::Null);
            match side
                .resources
                .call(&session.context, &rid, &method, params)
                .await?
            {
                CallAnswer::Payload(payload) => Ok(ServiceResponse::Result(payload)),
                CallAnswer::Resource(target) => {
                    Ok(ServiceResponse::Resource(to_wire(&target, &tenant)?))
                }
            }
        }
        ServiceRequestKind::Auth => {
            if subject.name != side.service || subject.method.as_deref() != Some(AUTH_METHOD) {
                return Err(ResError::method_not_found());
            }
            let request: AuthRequest = parse_payload(payload)?;
            let bearer = auth_bearer(&request)?;
            let session = side.auth.session(&bearer, None).await?;
            // The gateway keeps it as the connection's token and sends it
            // with every access and call (`caller`).
            let (subject, event) = SystemEvent::Token {
                cid: request.cid.clone(),
                token: Some(json!({ "token": bearer })),
                tid: session.token_id.as_ref().map(|(_, id)| id.clone()),
            }
            .to_message();
            client
                .publish(format!("{}.{subject}", side.prefix), event.into())
                .await
                .map_err(unavailable)?;
            Ok(ServiceResponse::Result(json!({
                "tenant": session.context.tenant.as_str(),
                "actor": session.context.actor,
            })))
        }
    }
}

/// The method of `auth.<service>.<method>` that takes a token: a gateway
/// speaking RES-Service (Resgate) sends it when a client calls
/// `auth.<service>.token`, or at each connection with its HTTP headers
/// (Resgate's `headerAuth`).
pub const AUTH_METHOD: &str = "token";

/// The bearer token of an `auth` request: `params.token`, else the
/// upgrade's `Authorization: Bearer` header, else the token cookie of an
/// upgrade from a page of the same origin or from no page.
fn auth_bearer(request: &AuthRequest) -> Result<String, ResError> {
    if let Some(params) = &request.params {
        return match params.get("token") {
            Some(Json::String(token)) if !token.is_empty() => Ok(token.clone()),
            _ => Err(ResError::invalid_params("token is a string")),
        };
    }
    let header = |name: &'static str| {
        request
            .header
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .flat_map(|(_, values)| values.iter())
            .map(String::as_str)
    };
    if let Some(token) = header("authorization")
        .find_map(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(token.to_owned());
    }
    let same_origin = match header("origin").next() {
        None => true,
        Some(origin) => {
            let host = header("host").next().or(request.host.as_deref());
            let origin = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            matches!((origin, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
        }
    };
    header("cookie")
        .filter(|_| same_origin)
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == crate::TOKEN_COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ResError::access_denied().with_data(json!({ "code": "missing_token" })))
}

/// The tenant and the resource of a request's name and query.
fn local(name: &str, query: Option<&str>) -> Result<(String, Rid), ResError> {
    let wire = match query {
        Some(query) => Rid::parse(&format!("{name}?{query}"))?,
        None => Rid::parse(name)?,
    };
    from_wire(&wire)
}

/// The caller of a request, from its token, in `tenant`.
async fn caller(
    side: &ServiceSide,
    token: Option<&Json>,
    tenant: &str,
) -> Result<Session, ResError> {
    let bearer = token
        .and_then(|t| t.get("token"))
        .and_then(Json::as_str)
        .ok_or_else(|| ResError::access_denied().with_data(json!({ "code": "missing_token" })))?;
    side.auth.session(bearer, Some(tenant)).await
}

/// Publishes a change as a reset of the names it touched. False once no
/// change can come any more.
async fn publish(
    client: &Client,
    side: &ServiceSide,
    change: Result<Change, broadcast::error::RecvError>,
    status: &tokio::sync::watch::Sender<ServeStatus>,
) -> bool {
    let (tenant, names) = match change {
        Ok(Change::Reset { tenant, names }) => (tenant, names),
        Ok(Change::Event { tenant, event }) => (tenant, vec![event.rid.name().to_owned()]),
        // The process's own resources (its operations) are not served
        // over NATS.
        Ok(Change::ResetAll { .. }) => return true,
        Err(broadcast::error::RecvError::Lagged(missed)) => {
            // Which resources they touched is not known: every connection
            // holding one of the service's reads it again.
            tracing::warn!(
                service = side.service,
                missed,
                "live changes were missed; all of the service's resources are reset"
            );
            status.send_modify(|s| s.last_error = Some(format!("{missed} changes missed")));
            let (subject, payload) = SystemEvent::Reset {
                resources: vec![format!("{}.>", side.service)],
                access: Vec::new(),
            }
            .to_message();
            let subject = format!("{}.{subject}", side.prefix);
            if let Err(e) = client.publish(subject, payload.into()).await {
                status.send_modify(|s| s.last_error = Some(format!("publishing a reset: {e}")));
            }
            return true;
        }
        Err(broadcast::error::RecvError::Closed) => return false,
    };
    let resources: Vec<String> = names
        .iter()
        .filter_map(|name| Rid::parse(name).ok())
        .filter_map(|rid| to_wire(&rid, tenant.as_str()).ok())
        .map(|rid| rid.name().to_owned())
        .collect();
    if resources.is_empty() {
        return true;
    }
    let (subject, payload) = SystemEvent::Reset {
        resources,
        access: Vec::new(),
    }
    .to_message();
    let subject = format!("{}.{subject}", side.prefix);
    match client.publish(subject, payload.into()).await {
        Ok(()) => status.send_modify(|s| s.resets += 1),
        Err(e) => status.send_modify(|s| s.last_error = Some(format!("publishing a reset: {e}"))),
    }
    true
}

/// A gateway's way to the services' resources: every request goes over
/// NATS to the service the resource's name starts with.
pub struct Remote {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Asks the services of the deployment `prefix`, each answer waited
    /// for up to `timeout` (longer when a service asks for more with a
    /// pre-response).
    pub fn new(client: Client, prefix: impl Into<String>, timeout: Duration) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            timeout,
        }
    }

    /// Sends a request and waits for its response, following
    /// pre-responses.
    async fn request(
        &self,
        subject: ServiceSubject,
        payload: Json,
    ) -> Result<ServiceResponse, ResError> {
        let subject = format!("{}.{}", self.prefix, subject.to_subject());
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(unavailable)?;
        self.client
            .publish_with_reply(subject, inbox, payload.to_string().into())
            .await
            .map_err(unavailable)?;
        let mut wait = self.timeout;
        loop {
            let message = tokio::time::timeout(wait, replies.next())
                .await
                .map_err(|_| ResError::timeout())?
                .ok_or_else(|| unavailable("the connection to NATS closed"))?;
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(ResError::not_found());
            }
            match ServiceResponse::parse(&message.payload) {
                ServiceResponse::PreResponse { timeout_ms } => {
                    wait = Duration::from_millis(timeout_ms);
                }
                response => return Ok(response),
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ResError {
    tracing::warn!(error = %e, "a live request cannot reach NATS");
    ResError::from_code(
        cairn_core::ErrorCode::Unavailable,
        "the services cannot be reached right now",
    )
}

/// The token a service checks, from the session's bearer.
fn token(session: &Session) -> Result<Json, ResError> {
    let Some(Bearer(bearer)) = &session.bearer else {
        return Err(ResError::access_denied().with_data(json!({ "code": "missing_token" })));
    };
    Ok(json!({ "token": bearer }))
}

/// An `access` request's payload: the caller's token, the query.
fn access_payload(session: &Session, rid: &Rid) -> Result<Json, ResError> {
    let access = AccessRequest {
        cid: session.context.correlation_id.clone(),
        token: Some(token(session)?),
        query: rid.query().map(str::to_owned),
        is_http: false,
    };
    serde_json::to_value(access).map_err(|_| ResError::internal_error())
}

/// A `get` request's payload: the query only.
fn get_payload(rid: &Rid) -> Result<Json, ResError> {
    let get = GetRequest {
        query: rid.query().map(str::to_owned),
    };
    serde_json::to_value(get).map_err(|_| ResError::internal_error())
}

/// A `call` request's payload: the caller's token, the query, the params.
fn call_payload(session: &Session, rid: &Rid, params: Json) -> Result<Json, ResError> {
    let call = CallRequest {
        cid: session.context.correlation_id.clone(),
        token: Some(token(session)?),
        query: rid.query().map(str::to_owned),
        params: Some(params),
        is_http: false,
    };
    serde_json::to_value(call).map_err(|_| ResError::internal_error())
}

#[async_trait]
impl Resources for Remote {
    /// Only as a session: the services need the caller's token.
    async fn get(&self, _ctx: &RequestContext, _rid: &Rid) -> Result<Resource, ResError> {
        Err(ResError::access_denied())
    }

    async fn get_as(&self, session: &Session, rid: &Rid) -> Result<Resource, ResError> {
        let tenant = session.context.tenant.as_str();
        let wire = to_wire(rid, tenant)?;
        let payload = access_payload(session, rid)?;
        let access: Access = match self.request(ServiceSubject::access(&wire), payload).await? {
            ServiceResponse::Result(result) => {
                serde_json::from_value(result).map_err(|_| ResError::internal_error())?
            }
            ServiceResponse::Error(error) => return Err(error),
            _ => return Err(ResError::internal_error()),
        };
        if !access.get {
            return Err(ResError::access_denied());
        }
        let payload = get_payload(rid)?;
        let result = match self.request(ServiceSubject::get(&wire), payload).await? {
            ServiceResponse::Result(result) => GetResult::parse(result)?,
            ServiceResponse::Error(error) => return Err(error),
            _ => return Err(ResError::internal_error()),
        };
        rename_references(result.resource, |r| from_wire_in(r, tenant))
    }

    async fn call_as(
        &self,
        session: &Session,
        rid: &Rid,
        method: &str,
        params: Json,
    ) -> Result<CallAnswer, ResError> {
        let tenant = session.context.tenant.as_str();
        let wire = to_wire(rid, tenant)?;
        let payload = call_payload(session, rid, params)?;
        match self
            .request(ServiceSubject::call(&wire, method), payload)
            .await?
        {
            ServiceResponse::Result(payload) => Ok(CallAnswer::Payload(payload)),
            ServiceResponse::Resource(target) => {
                Ok(CallAnswer::Resource(from_wire_in(&target, tenant)?))
            }
            ServiceResponse::Error(error) => Err(error),
            ServiceResponse::PreResponse { .. } => Err(ResError::internal_error()),
        }
    }
}

/// How long a service that stopped answering is still waited for.
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// How long after the last awaited answer another (a service not heard
/// before) is still taken.
const GRACE: Duration = Duration::from_millis(25);
/// The most names [`Gathered`] reads again at each tick.
const MAX_GATHERED_NAMES: usize = 4096;

/// A gateway's way to the resources every service serves a part of (the
/// operations, `ops.…`): each request goes to all of them at once and
/// their answers are put together.
///
/// - `access`: granted when one service grants it (each checks the token
///   and whether the caller may read it).
/// - `get`: the collections the services answer, one after the other in
///   the order of their names, each value once; the models, field by
///   field, numbers added (`ops.store`'s head and rate are the sums of the
///   services' stores) and anything else the first service's, a model
///   whose `id` an earlier one had left out (services sharing one store
///   count it once). A resource one
///   service owns (`ops.projection.<name>`) is its answer; the others say
///   `system.notFound`.
/// - `call`: the first service's answer that is no error (the others say
///   `system.notFound`), else the first error that is not
///   `system.notFound`.
///
/// It waits for every service heard in the last 30 s and a moment after
/// the last of them for one not heard before, never past `window`; the
/// first request after a start waits the window, or a moment after the
/// first answer. The services' own resets of these are not heard:
/// [`Gathered::tick`] has each holding connection read them again.
pub struct Gathered {
    client: Client,
    prefix: String,
    window: Duration,
    /// The services that answered, and when they last did.
    known: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The names read with success, for [`Gathered::tick`].
    read: std::sync::Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Gathered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gathered")
            .field("prefix", &self.prefix)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Gathered {
    /// Asks the services of the deployment `prefix`, each request waiting
    /// at most `window` for their answers.
    pub fn new(client: Client, prefix: impl Into<String>, window: Duration) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            window,
            known: std::sync::Mutex::default(),
            read: std::sync::Mutex::default(),
        }
    }

    /// Has every connection holding one of the resources read so far read
    /// it again, every `every`, until stopped.
    pub fn tick(self: &Arc<Self>, publisher: Publisher, every: Duration) -> Running<()> {
        let gathered = self.clone();
        Running::start(
            "live gathered resets",
            Stage::Support,
            (),
            move |mut controls| {
                vec![tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            _ = controls.stop.wait_for(|stop| *stop) => return,
                        }
                        let names: Vec<String> = gathered
                            .read
                            .lock()
                            .expect("names")
                            .iter()
                            .cloned()
                            .collect();
                        if !names.is_empty() {
                            publisher.publish(Change::ResetAll { names });
                        }
                    }
                })]
            },
        )
    }

    /// The services' answers to one request, by service name.
    async fn scatter(
        &self,
        subject: ServiceSubject,
        payload: Json,
    ) -> Result<BTreeMap<String, ServiceResponse>, ResError> {
        let subject = format!("{}.{}", self.prefix, subject.to_subject());
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(unavailable)?;
        self.client
            .publish_with_reply(subject, inbox, payload.to_string().into())
            .await
            .map_err(unavailable)?;
        let started = tokio::time::Instant::now();
        let expected: BTreeSet<String> = {
            let mut known = self.known.lock().expect("known");
            known.retain(|_, seen| seen.elapsed() < FORGET_AFTER);
            known.keys().cloned().collect()
        };
        let end = started + self.window;
        let mut until = end;
        let mut answers = BTreeMap::new();
        loop {
            let message = match tokio::time::timeout_at(until, replies.next()).await {
                Err(_) => break,
                Ok(None) => return Err(unavailable("the connection to NATS closed")),
                Ok(Some(message)) => message,
            };
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                break;
            }
            let service = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SERVICE_HEADER))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            match ServiceResponse::parse(&message.payload) {
                // A service asking for more time gets it, within the window.
                ServiceResponse::PreResponse { .. } => continue,
                response => {
                    answers.entry(service).or_insert(response);
                }
            }
            if expected.iter().all(|s| answers.contains_key(s)) {
                until = until.min(tokio::time::Instant::now() + GRACE);
            }
        }
        let mut known = self.known.lock().expect("known");
        let now = std::time::Instant::now();
        for service in answers.keys() {
            known.insert(service.clone(), now);
        }
        if answers.is_empty() && tokio::time::Instant::now() >= end {
            return Err(ResError::timeout());
        }
        Ok(answers)
    }

    fn remember(&self, rid: &Rid) {
        let mut read = self.read.lock().expect("names");
        if read.len() < MAX_GATHERED_NAMES {
            read.insert(rid.name().to_owned());
        }
    }
}

/// The error to answer when no service answered with success: the first
/// that is not `system.notFound`, else `system.notFound`.
fn first_error(answers: impl IntoIterator<Item = ServiceResponse>) -> ResError {
    answers
        .into_iter()
        .filter_map(|a| match a {
            ServiceResponse::Error(e) if e.code != ResError::not_found().code => Some(e),
            _ => None,
        })
        .next()
        .unwrap_or_else(ResError::not_found)
}

/// Several services' answers for one resource, put together (see
/// [`Gathered`]).
fn compose(resources: Vec<Resource>) -> Option<Resource> {
    let mut resources = resources.into_iter();
    let mut whole = resources.next()?;
    let mut ids: Vec<cairn_res::Value> = id_of(&whole).into_iter().collect();
    for part in resources {
        // One thing several services share (a store), counted once.
        if let Some(id) = id_of(&part) {
            if ids.contains(&id) {
                continue;
            }
            ids.push(id);
        }
        match (&mut whole, part) {
            (Resource::Collection(values), Resource::Collection(more)) => {
                for value in more {
                    if !values.contains(&value) {
                        values.push(value);
                    }
                }
            }
            (Resource::Model(fields), Resource::Model(more)) => {
                for (key, value) in more {
                    match (fields.get_mut(&key), value) {
                        (None, value) => {
                            fields.insert(key, value);
                        }
                        (Some(cairn_res::Value::Primitive(a)), cairn_res::Value::Primitive(b)) => {
                            if let Some(sum) = add(a, &b) {
                                *a = sum;
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(whole)
}

/// A model's `id`, when it has one.
fn id_of(resource: &Resource) -> Option<cairn_res::Value> {
    match resource {
        Resource::Model(fields) => fields.get("id").cloned(),
        Resource::Collection(_) => None,
    }
}

/// `a + b` when both are numbers.
fn add(a: &Json, b: &Json) -> Option<Json> {
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return Some(Json::from(a.saturating_add(b)));
    }
    let sum = a.as_f64()? + b.as_f64()?;
    serde_json::Number::from_f64(sum).map(Json::Number)
}

#[async_trait]
impl Resources for Gathered {
    /// Only as a session: the services need the caller's token.
    async fn get(&self, _ctx: &RequestContext, _rid: &Rid) -> Result<Resource, ResError> {
        Err(ResError::access_denied())
    }

    async fn get_as(&self, session: &Session, rid: &Rid) -> Result<Resource, ResError> {
        let tenant = session.context.tenant.as_str();
        let wire = to_wire(rid, tenant)?;
        let payload = access_payload(session, rid)?;
        let answers = self.scatter(ServiceSubject::access(&wire), payload).await?;
        let granted = answers.values().any(|a| match a {
            ServiceResponse::Result(result) => {
                serde_json::from_value::<Access>(result.clone()).is_ok_and(|a| a.get)
            }
            _ => false,
        });
        if !granted {
            return Err(first_error(answers.into_values()));
        }
        let payload = get_payload(rid)?;
        let answers = self.scatter(ServiceSubject::get(&wire), payload).await?;
        let mut found = Vec::new();
        let mut refused = Vec::new();
        for answer in answers.into_values() {
            match answer {
                ServiceResponse::Result(result) => {
                    let result = GetResult::parse(result)?;
                    found.push(rename_references(result.resource, |r| {
                        from_wire_in(r, tenant)
                    })?);
                }
                other => refused.push(other),
            }
        }
        let whole = compose(found).ok_or_else(|| first_error(refused))?;
        self.remember(rid);
        if let Resource::Collection(values) = &whole {
            for value in values {
                if let cairn_res::Value::Reference { rid, .. } = value {
                    self.remember(rid);
                }
            }
        }
        Ok(whole)
    }

    async fn call_as(
        &self,
        session: &Session,
        rid: &Rid,
        method: &str,
        params: Json,
    ) -> Result<CallAnswer, ResError> {
        let tenant = session.context.tenant.as_str();
        let wire = to_wire(rid, tenant)?;
        let payload = call_payload(session, rid, params)?;
        let answers = self
            .scatter(ServiceSubject::call(&wire, method), payload)
            .await?;
        let mut refused = Vec::new();
        for answer in answers.into_values() {
            match answer {
                ServiceResponse::Result(payload) => return Ok(CallAnswer::Payload(payload)),
                ServiceResponse::Resource(target) => {
                    return Ok(CallAnswer::Resource(from_wire_in(&target, tenant)?));
                }
                other => refused.push(other),
            }
        }
        Err(first_error(refused))
    }
}

/// Hears the services' changes on NATS (`system.reset`, `event.…`) and
/// publishes them to `publisher` as resets for the connections holding
/// them, until stopped.
pub async fn hear(
    client: Client,
    prefix: &str,
    publisher: Publisher,
) -> Result<Running<u64>, async_nats::Error> {
    let resets = client.subscribe(format!("{prefix}.system.reset")).await?;
    let events = client.subscribe(format!("{prefix}.event.>")).await?;
    client.flush().await?;
    let prefix = prefix.to_owned();
    Ok(Running::start(
        "live changes (RES-Service)",
        Stage::Support,
        0,
        move |mut controls| {
            vec![tokio::spawn(async move {
                let mut messages = futures_util::stream::select(resets, events);
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = controls.stop.wait_for(|stop| *stop) => return,
                    };
                    let Some(message) = message else { return };
                    for change in changes_of(&prefix, &message) {
                        publisher.publish(change);
                        controls.status.send_modify(|n| *n += 1);
                    }
                }
            })]
        },
    ))
}

/// The resets a message from the services asks for, per tenant.
fn changes_of(prefix: &str, message: &Message) -> Vec<Change> {
    let Some(subject) = message
        .subject
        .as_str()
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix('.'))
    else {
        return Vec::new();
    };
    let names: Vec<String> = if let Some(rest) = subject.strip_prefix("event.") {
        // `event.<name>.<event>`: the name is all but the last part.
        match rest.rsplit_once('.') {
            Some((name, _event)) => vec![name.to_owned()],
            None => return Vec::new(),
        }
    } else {
        match SystemEvent::parse(subject, &message.payload) {
            Some(Ok(SystemEvent::Reset { resources, access })) => {
                resources.into_iter().chain(access).collect()
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "an unreadable system.reset");
                return Vec::new();
            }
            _ => return Vec::new(),
        }
    };
    let mut per_tenant: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut every_tenant = Vec::new();
    for name in names {
        if cairn_res::is_pattern(&name) {
            // A pattern: the connections holding what it matches read it
            // again, in its tenant or in all.
            match cairn_res::service::pattern_from_wire(&name) {
                Some((Some(tenant), local)) => per_tenant.entry(tenant).or_default().push(local),
                Some((None, local)) => every_tenant.push(local),
                None => tracing::debug!(pattern = name, "a reset pattern is not followed"),
            }
            continue;
        }
        let Ok(wire) = Rid::parse(&name) else {
            continue;
        };
        if let Ok((tenant, rid)) = from_wire(&wire) {
            per_tenant
                .entry(tenant)
                .or_default()
                .push(rid.name().to_owned());
        }
    }
    let mut changes: Vec<Change> = per_tenant
        .into_iter()
        .filter_map(|(tenant, names)| {
            TenantId::new(&tenant)
                .ok()
                .map(|tenant| Change::Reset { tenant, names })
        })
        .collect();
    if !every_tenant.is_empty() {
        changes.push(Change::ResetAll {
            names: every_tenant,
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(prefix: &str, resources: &[&str]) -> Message {
        let (subject, payload) = SystemEvent::Reset {
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            access: Vec::new(),
        }
        .to_message();
        Message {
            subject: format!("{prefix}.{subject}").into(),
            reply: None,
            payload: payload.into(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    fn tenant(t: &str) -> TenantId {
        TenantId::new(t).unwrap()
    }

    #[test]
    fn resets_are_heard_per_tenant_patterns_included() {
        let changes = changes_of(
            "cairn",
            &reset(
                "cairn",
                &[
                    "flights.acme.flight.7",
                    "flights.acme.flight.*",
                    "flights.globex.flights",
                    "flights.*.flights",
                    "flights.>",
                    "*.acme.flight.7",
                ],
            ),
        );
        let mut seen = Vec::new();
        for change in changes {
            match change {
                Change::Reset { tenant, names } => seen.push((Some(tenant), names)),
                Change::ResetAll { names } => seen.push((None, names)),
                Change::Event { .. } => panic!("no events"),
            }
        }
        assert_eq!(
            seen,
            [
                (
                    Some(tenant("acme")),
                    vec!["flights.flight.7".to_owned(), "flights.flight.*".to_owned()]
                ),
                (Some(tenant("globex")), vec!["flights.flights".to_owned()]),
                (
                    None,
                    vec!["flights.flights".to_owned(), "flights.>".to_owned()]
                ),
            ]
        );
        // Another deployment's reset is not heard.
        assert!(changes_of("cairn", &reset("other", &["flights.acme.x"])).is_empty());
    }
}
