//! The live API: the RES-Client protocol (`cairn-res`) over WebSocket at
//! `/ws`.
//!
//! A [`Live`] endpoint serves the resources of every service that gave it
//! a [`Resources`] (by the first part of a resource id: `flights.…` to
//! Flights) and pushes each [`Change`] a service publishes, after its
//! commit, to the connections that hold the resource in that tenant.
//!
//! Who a connection is comes from a bearer token, given at the upgrade
//! (`Authorization`, or the cookie [`TOKEN_COOKIE`] from a page of the
//! same origin) or later with the request
//! `auth.identity.session.token` (`{"token": "…"}`), and turned into a
//! [`RequestContext`] by an [`Authenticate`]. Without one, every request on
//! a resource is `system.accessDenied`; resources are read and called as
//! the connection's context, so a tenant sees its own only.
//!
//! Bounded per connection ([`LiveOptions`]): the frame size, the resources
//! held, the frames waiting to be sent (a client that stops reading is
//! closed with 1008, the others go on), and the time without a frame or a
//! pong (closed with 1001). A frame that is not a request is answered with
//! a RES error; the connection goes on.

mod connection;
pub mod nats;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use axum::{Router, routing::get};
use cairn_core::{RequestContext, TenantId};
use cairn_res::{Event, ResError, Resource, Rid};
use serde_json::Value as Json;
use tokio::sync::broadcast;

/// The request that authenticates a connection with a bearer token.
pub const AUTH_RID: &str = "identity.session";
/// Its method.
pub const AUTH_METHOD: &str = "token";

/// The cookie a token may come in at the upgrade. Taken only when the
/// upgrade's `Origin` is absent or names the host it was sent to: a page
/// of another site cannot open a connection as the cookie's owner.
pub const TOKEN_COOKIE: &str = "cairn_token";

/// Limits and timings of every connection.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Largest frame a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Most resources one connection may hold.
    pub max_resources: usize,
    /// Frames waiting to be sent to one connection; past it, the client is
    /// too slow and is closed.
    pub send_queue: usize,
    /// How long one frame may take to be written before the client is
    /// taken as gone.
    pub write_timeout: Duration,
    /// A ping this often.
    pub heartbeat: Duration,
    /// Closed after this long without a frame or a pong.
    pub idle_timeout: Duration,
    /// How long a service may take to answer a get or a call.
    pub request_timeout: Duration,
    /// Changes kept for connections that are behind; one that falls further
    /// behind is closed (1013) to reconnect and read afresh.
    pub change_buffer: usize,
    /// How often a connection's token is checked again (revoked or
    /// expired: its subscriptions end).
    pub session_check: Duration,
    /// Connections run on a runtime of their own with this many threads,
    /// so that pushing a change to thousands of them never queues the
    /// rest of the process (the commands, the projections, the HTTP API)
    /// behind it; the operating system shares the cores between the two.
    /// 0 runs them on the runtime that accepted them.
    pub threads: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_resources: cairn_res::DEFAULT_LIMIT,
            send_queue: 256,
            write_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            request_timeout: Duration::from_secs(10),
            change_buffer: 4096,
            session_check: Duration::from_millis(500),
            threads: 2,
        }
    }
}

/// What a call answers: a payload, or a resource the caller then holds.
#[derive(Debug, Clone, PartialEq)]
pub enum CallAnswer {
    Payload(Json),
    Resource(Rid),
}

/// A service's resources, read and called as a connection's context.
#[async_trait]
pub trait Resources: Send + Sync + 'static {
    /// The resource `rid` as `ctx` may see it (`system.notFound` for one
    /// of another tenant). It depends on the tenant and the permissions,
    /// not on the actor: a read again after a change is shared by the
    /// connections that read alike (see `design/live.md`, Costs).
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError>;

    /// Calls `method` on `rid` with `params`.
    async fn call(
        &self,
        ctx: &RequestContext,
        rid: &Rid,
        method: &str,
        params: Json,
    ) -> Result<CallAnswer, ResError> {
        let _ = (ctx, rid, method, params);
        Err(ResError::method_not_found())
    }

    /// The permissions its reads check themselves, beyond those of the
    /// queries its service declares: a read that carries no caller (a
    /// RES-Service `get`, whose access was answered already) runs with
    /// these and the queries' ([`nats::ServiceSide::reader`]).
    fn read_permissions(&self) -> Vec<String> {
        Vec::new()
    }

    /// [`get`](Self::get) as `session`: what the endpoint calls. Resources
    /// answered elsewhere (over the messaging system, [`nats`]) need the
    /// session's token, not only its context.
    async fn get_as(&self, session: &Session, rid: &Rid) -> Result<Resource, ResError> {
        self.get(&session.context, rid).await
    }

    /// [`call`](Self::call) as `session`; see [`get_as`](Self::get_as).
    async fn call_as(
        &self,
        session: &Session,
        rid: &Rid,
        method: &str,
        params: Json,
    ) -> Result<CallAnswer, ResError> {
        self.call(&session.context, rid, method, params).await
    }
}

/// A bearer token kept to be passed on, never shown (its `Debug` hides
/// it).
#[derive(Clone, PartialEq, Eq)]
pub struct Bearer(pub String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(…)")
    }
}

/// Who a connection is, from its token, for as long as the token holds.
#[derive(Debug, Clone)]
pub struct Session {
    /// What its requests run as.
    pub context: RequestContext,
    /// When the token expires: its subscriptions end then.
    pub expires_at: Option<SystemTime>,
    /// The token's tenant and id, for [`Authenticate::still_valid`] to
    /// look up (a revoked token's subscriptions end).
    pub token_id: Option<(TenantId, String)>,
    /// Another tenant than the token's, read by a caller allowed to read
    /// any (a super-admin): it reads only, and each read is recorded
    /// first ([`Authenticate::record_read`]).
    pub cross_tenant: bool,
    /// The token it came from, for resources answered by services
    /// elsewhere, which check it themselves.
    pub bearer: Option<Bearer>,
}

impl Session {
    /// A session that holds until the connection ends.
    pub fn new(context: RequestContext) -> Self {
        Self {
            context,
            expires_at: None,
            token_id: None,
            cross_tenant: false,
            bearer: None,
        }
    }
}

/// Turns a bearer token into who the connection is, and says when that
/// ends.
#[async_trait]
pub trait Authenticate: Send + Sync + 'static {
    /// The session of `token`; in `tenant`, when given and not the
    /// token's own (refused unless the token may read any tenant).
    async fn session(&self, token: &str, tenant: Option<&str>) -> Result<Session, ResError>;

    /// Whether `session` still holds, asked every
    /// [`LiveOptions::session_check`]; its expiry is checked apart. An
    /// error ends the session's subscriptions with that error. Must be
    /// cheap: it runs for every connection.
    async fn still_valid(&self, session: &Session) -> Result<(), ResError> {
        let _ = session;
        Ok(())
    }

    /// Records a cross-tenant session's read of `rid` before it is
    /// answered (no record, no read).
    async fn record_read(&self, session: &Session, rid: &Rid) -> Result<(), ResError> {
        let _ = (session, rid);
        Err(ResError::access_denied())
    }
}

/// A change, committed, for the connections of `tenant` that hold the
/// resource.
#[derive(Debug, Clone)]
pub enum Change {
    /// An event as it is to be sent.
    Event { tenant: TenantId, event: Event },
    /// These resources (by name, whatever their query) may read otherwise
    /// now: each connection holding one reads it again, as itself, and is
    /// sent what changed (a model's changed properties, a collection's
    /// removes and adds; `delete` for one that is gone).
    Reset {
        tenant: TenantId,
        names: Vec<String>,
    },
    /// [`Change::Reset`] in every tenant: for resources of the whole
    /// process (its operations), read by each connection as itself.
    ResetAll { names: Vec<String> },
}

impl Change {
    /// Whether a connection of `tenant` is concerned.
    pub fn concerns(&self, tenant: &TenantId) -> bool {
        match self {
            Change::Event { tenant: t, .. } | Change::Reset { tenant: t, .. } => t == tenant,
            Change::ResetAll { .. } => true,
        }
    }
}

/// The read buffer of each connection's WebSocket. The stack's default
/// (128 KiB) is zeroed in full before each read from the socket: that is
/// both 128 KiB resident per connection and a 128 KiB `memset` per read.
/// Frames larger than this still arrive (the buffer grows for them, up to
/// [`LiveOptions::max_frame_bytes`]).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Where services publish their changes, before and after the endpoint
/// exists. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    changes: broadcast::Sender<Published>,
    /// The number of the last change sent; taken and sent under the lock,
    /// so that changes go out in the order of their numbers.
    seq: Arc<std::sync::Mutex<u64>>,
}

/// A change with its number in its publisher's order: a read that began
/// after change `n` was sent shows at least what every change up to `n`
/// committed.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) seq: u64,
    pub(crate) change: Change,
}

impl Publisher {
    /// Keeps up to `buffer` changes for connections that are behind.
    pub fn new(buffer: usize) -> Self {
        let (changes, _) = broadcast::channel(buffer.max(1));
        Self {
            changes,
            seq: Arc::default(),
        }
    }

    /// Pushes `change` to the connections holding its resources in its
    /// tenant. Call it after the change committed and the resources read
    /// as changed.
    pub fn publish(&self, change: Change) {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        // No receiver means no connection: nothing to tell.
        let _ = self.changes.send(Published { seq: *seq, change });
    }

    /// The changes published from now on (for passing them elsewhere, as
    /// [`nats::serve`] does).
    pub fn subscribe(&self) -> Changes {
        Changes(self.changes.subscribe())
    }

    /// The changes from now on, with the number of the last one sent
    /// before them.
    pub(crate) fn subscribe_numbered(&self) -> (broadcast::Receiver<Published>, u64) {
        let seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        (self.changes.subscribe(), *seq)
    }

    /// The number of the last change sent.
    pub(crate) fn last(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The changes of a [`Publisher`], from when it was subscribed to.
#[derive(Debug)]
pub struct Changes(broadcast::Receiver<Published>);

impl Changes {
    /// The next change; [`broadcast::error::RecvError::Lagged`] when this
    /// receiver fell more than the publisher's buffer behind.
    pub async fn recv(&mut self) -> Result<Change, broadcast::error::RecvError> {
        self.0.recv().await.map(|p| p.change)
    }
}

/// The live endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    services: HashMap<String, Arc<dyn Resources>>,
    /// The resources of every service not in `services`.
    fallback: Option<Arc<dyn Resources>>,
    auth: Arc<dyn Authenticate>,
    publisher: Publisher,
    /// Reads of resources again after a change, shared by the connections
    /// that read them alike.
    shared: connection::SharedReads,
    options: LiveOptions,
    connections: AtomicUsize,
    /// Where connections run ([`LiveOptions::threads`]).
    runtime: ConnectionRuntime,
}

/// The connections' own runtime, if any; let go of without waiting when
/// the endpoint goes (its connections end with it).
struct ConnectionRuntime(Option<tokio::runtime::Runtime>);

impl ConnectionRuntime {
    fn new(threads: usize) -> Self {
        if threads == 0 {
            return Self(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("cairn-live")
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => Self(Some(runtime)),
            Err(error) => {
                tracing::warn!(%error, "no runtime of their own for live connections: they share the caller's");
                Self(None)
            }
        }
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for ConnectionRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Inner {
    /// Who serves `service`'s resources.
    fn resources(&self, service: &str) -> Option<Arc<dyn Resources>> {
        self.services
            .get(service)
            .or(self.fallback.as_ref())
            .cloned()
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut services: Vec<_> = self.inner.services.keys().collect();
        services.sort();
        f.debug_struct("Live")
            .field("services", &services)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Live`].
pub struct LiveBuilder {
    services: HashMap<String, Arc<dyn Resources>>,
    fallback: Option<Arc<dyn Resources>>,
    auth: Arc<dyn Authenticate>,
    options: LiveOptions,
    publisher: Option<Publisher>,
}

impl std::fmt::Debug for LiveBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl LiveBuilder {
    /// Serves the resources whose ids start with `service.`.
    pub fn serve(mut self, service: &str, resources: impl Resources) -> Self {
        self.services
            .insert(service.to_owned(), Arc::new(resources));
        self
    }

    /// [`serve`](Self::serve) for resources already shared.
    pub fn serve_shared(mut self, service: &str, resources: Arc<dyn Resources>) -> Self {
        self.services.insert(service.to_owned(), resources);
        self
    }

    /// Serves the resources of every service not named with
    /// [`serve`](Self::serve) from `resources` (a gateway asking the
    /// services over the messaging system: [`nats::Remote`]).
    pub fn fallback(mut self, resources: Arc<dyn Resources>) -> Self {
        self.fallback = Some(resources);
        self
    }

    pub fn options(mut self, options: LiveOptions) -> Self {
        self.options = options;
        self
    }

    /// Takes its changes from `publisher` (made before the services
    /// started, so they could be given it).
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    pub fn build(self) -> Live {
        let publisher = self
            .publisher
            .unwrap_or_else(|| Publisher::new(self.options.change_buffer));
        let runtime = ConnectionRuntime::new(self.options.threads);
        Live {
            inner: Arc::new(Inner {
                services: self.services,
                fallback: self.fallback,
                auth: self.auth,
                publisher,
                shared: connection::SharedReads::default(),
                options: self.options,
                connections: AtomicUsize::new(0),
                runtime,
            }),
        }
    }
}

impl Live {
    /// An endpoint whose connections are authenticated by `auth`.
    pub fn builder(auth: impl Authenticate) -> LiveBuilder {
        LiveBuilder {
            services: HashMap::new(),
            fallback: None,
            auth: Arc::new(auth),
            options: LiveOptions::default(),
            publisher: None,
        }
    }

    /// Pushes `change`; see [`Publisher::publish`].
    pub fn publish(&self, change: Change) {
        self.publisher().publish(change);
    }

    /// Where to publish changes.
    pub fn publisher(&self) -> Publisher {
        self.inner.publisher.clone()
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// `GET /ws`, the WebSocket upgrade.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(connection::upgrade))
            .with_state(self.clone())
    }
}
