//! One WebSocket connection: requests in, responses and events out.
//!
//! The reading side runs the protocol; a writer task owns the socket's
//! sending half and takes frames from a bounded queue. A full queue means
//! the client stopped reading: it is closed (1008) instead of being
//! buffered for without end.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code},
    },
    http::{
        HeaderMap,
        header::{AUTHORIZATION, COOKIE, HOST, ORIGIN},
    },
    response::Response,
};
use cairn_res::{
    Event, Request, RequestKind, ResError, Resource, ResourceSet, Rid, Subscriptions,
    check_version, diff,
};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use serde_json::{Value as Json, json};
use tokio::{
    sync::{broadcast, mpsc},
    time::{Instant, MissedTickBehavior, timeout},
};

use crate::{
    AUTH_METHOD, AUTH_RID, CallAnswer, Change, Inner, Live, Published, Session, TOKEN_COOKIE,
};

pub(crate) async fn upgrade(
    State(live): State<Live>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .or_else(|| cookie_token(&headers));
    let max = live.inner.options.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(crate::READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            match live.inner.runtime.handle().cloned() {
                Some(runtime) => {
                    let _ = runtime.spawn(run(live, socket, token)).await;
                }
                None => run(live, socket, token).await,
            }
        })
}

/// The token in the cookie [`TOKEN_COOKIE`], when the upgrade comes from
/// a page of the same origin or from no page (see [`TOKEN_COOKIE`]).
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST)?.to_str().ok()?;
        let origin = origin.to_str().ok()?;
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))?;
        if !origin_host.eq_ignore_ascii_case(host) {
            return None;
        }
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|token| !token.is_empty())
}

/// Counts the connection while it lives.
struct Counted(Arc<Inner>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(LIVE_CONNECTIONS).decrement(1.0);
    }
}

/// `cairn_telemetry::names::LIVE_CONNECTIONS` (described in Cairn's
/// metrics catalogue).
const LIVE_CONNECTIONS: &str = "cairn_live_connections";
/// `cairn_telemetry::names::LIVE_CLOSED_TOTAL`.
const LIVE_CLOSED_TOTAL: &str = "cairn_live_closed_total";

type Closing = (u16, &'static str);

async fn run(live: Live, socket: WebSocket, token: Option<String>) {
    let inner = live.inner.clone();
    inner.connections.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(LIVE_CONNECTIONS).increment(1.0);
    let _counted = Counted(inner.clone());
    let options = inner.options.clone();
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(options.send_queue.max(1));
    let (close_tx, close_rx) = mpsc::channel(1);
    let writer = tokio::spawn(write(sink, rx, close_rx, options.write_timeout));
    let mut conn = Conn {
        inner: inner.clone(),
        session: None,
        subs: Subscriptions::with_limit(options.max_resources),
        tx,
        close: close_tx,
        seen: 0,
        reader: None,
    };
    if let Some(token) = token {
        // A token refused at the upgrade leaves the connection anonymous;
        // its requests then say why they are refused.
        conn.session = inner.auth.session(&token, None).await.ok().map(Arc::new);
    }
    let (changes, seen) = inner.publisher.subscribe_numbered();
    conn.seen = seen;
    read(&mut conn, stream, changes, &options).await;
    drop(conn);
    let _ = writer.await;
}

async fn read(
    conn: &mut Conn,
    mut stream: SplitStream<WebSocket>,
    mut changes: broadcast::Receiver<Published>,
    options: &crate::LiveOptions,
) {
    let mut heartbeat = tokio::time::interval(options.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut session_check = tokio::time::interval(options.session_check);
    session_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { return };
                last_heard = Instant::now();
                let go_on = match frame {
                    Message::Text(text) => conn.handle(text.as_bytes()).await,
                    Message::Binary(bytes) => conn.handle(&bytes).await,
                    Message::Ping(_) | Message::Pong(_) => true,
                    Message::Close(_) => false,
                };
                if !go_on {
                    return;
                }
            }
            change = changes.recv() => match change {
                Ok(Published { seq, change }) => {
                    conn.seen = seq;
                    if !conn.on_change(seq, change).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Events were missed: the client's resources may be
                    // stale. It reconnects and reads them afresh.
                    conn.close_with(close_code::AGAIN, "missed changes: reconnect");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = session_check.tick() => {
                if !conn.check_session().await {
                    return;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= options.idle_timeout {
                    conn.close_with(close_code::AWAY, "idle");
                    return;
                }
                if !conn.push(Message::Ping(Default::default())) {
                    return;
                }
            }
        }
    }
}

/// The most frames written before one flush.
const WRITE_BURST: usize = 64;

async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Message>,
    mut close: mpsc::Receiver<Closing>,
    write_timeout: std::time::Duration,
) {
    let mut closing = None;
    let mut close_open = true;
    loop {
        tokio::select! {
            biased;
            asked = close.recv(), if close_open => match asked {
                Some(frame) => {
                    closing = Some(frame);
                    break;
                }
                None => close_open = false,
            },
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                // What else is queued goes in the same write: one flush
                // (one system call) for a burst, not one per frame.
                let burst = async {
                    sink.feed(frame).await?;
                    for _ in 1..WRITE_BURST {
                        let Ok(frame) = frames.try_recv() else { break };
                        sink.feed(frame).await?;
                    }
                    sink.flush().await
                };
                match timeout(write_timeout, burst).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        }
    }
    if let Some((code, reason)) = closing {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = timeout(write_timeout, sink.send(frame)).await;
    }
    let _ = timeout(write_timeout, sink.close()).await;
}

struct Conn {
    inner: Arc<Inner>,
    session: Option<Arc<Session>>,
    subs: Subscriptions,
    tx: mpsc::Sender<Message>,
    close: mpsc::Sender<Closing>,
    /// The number of the last change taken from the publisher (or sent
    /// before this connection began): a shared read begun after it shows
    /// all this connection has not been told of yet ([`SharedReads`]).
    seen: u64,
    /// The session last read as, and who that is to [`SharedReads`].
    reader: Option<(Arc<Session>, Arc<Reader>)>,
}

impl Conn {
    /// Who `session` is to [`SharedReads`].
    fn reader(&mut self, session: &Arc<Session>) -> Arc<Reader> {
        if let Some((last, reader)) = &self.reader
            && Arc::ptr_eq(last, session)
        {
            return reader.clone();
        }
        let reader = Arc::new(Reader::of(session));
        self.reader = Some((session.clone(), reader.clone()));
        reader
    }

    /// Queues a frame; false (and the connection closing) when the client
    /// has not read what was queued before.
    fn push(&self, frame: Message) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_with(close_code::POLICY, "too slow: frames were not read");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn send(&self, text: String) -> bool {
        self.push(Message::Text(text.into()))
    }

    fn close_with(&self, code: u16, reason: &'static str) {
        if self.close.try_send((code, reason)).is_ok() {
            let outcome = match code {
                close_code::POLICY => "slow",
                close_code::AWAY => "idle",
                close_code::AGAIN => "missed",
                _ => "other",
            };
            metrics::counter!(LIVE_CLOSED_TOTAL, "outcome" => outcome).increment(1);
        }
    }

    /// Answers one frame; false when the connection is to end.
    async fn handle(&mut self, frame: &[u8]) -> bool {
        let request = match Request::parse(frame) {
            Ok(request) => request,
            Err((id, error)) => {
                return self.send(cairn_res::Response::error(id, error).to_json());
            }
        };
        let id = request.id.clone();
        let response = match self.answer(request.kind).await {
            Ok(response) => response(id),
            Err(error) => cairn_res::Response::error(id, error),
        };
        self.send(response.to_json())
    }

    async fn answer(
        &mut self,
        kind: RequestKind,
    ) -> Result<Box<dyn FnOnce(Json) -> cairn_res::Response + Send>, ResError> {
        match kind {
            RequestKind::Version { protocol } => {
                let protocol = check_version(protocol.as_deref())?;
                Ok(Box::new(move |id| {
                    cairn_res::Response::result(id, json!({ "protocol": protocol }))
                }))
            }
            RequestKind::Subscribe { rid } => {
                let session = self.reading(&rid).await?;
                let (inner, seen, reader) = (self.inner.clone(), self.seen, self.reader(&session));
                let set = self
                    .subs
                    .subscribe(&rid, move |r| {
                        shared_fetch(inner.clone(), session.clone(), reader.clone(), r, seen)
                    })
                    .await?;
                Ok(Box::new(move |id| cairn_res::Response::resources(id, &set)))
            }
            RequestKind::Get { rid } => {
                let session = self.reading(&rid).await?;
                let (inner, seen, reader) = (self.inner.clone(), self.seen, self.reader(&session));
                let limit = self.inner.options.max_resources;
                let set = Subscriptions::get(&rid, limit, move |r| {
                    shared_fetch(inner.clone(), session.clone(), reader.clone(), r, seen)
                })
                .await?;
                Ok(Box::new(move |id| cairn_res::Response::resources(id, &set)))
            }
            RequestKind::Unsubscribe { rid, count } => {
                self.subs.unsubscribe(&rid, count)?;
                Ok(Box::new(|id| cairn_res::Response::result(id, Json::Null)))
            }
            RequestKind::Call {
                rid,
                method,
                params,
            } => {
                let session = self.session()?;
                if session.cross_tenant {
                    return Err(ResError::access_denied().with_data(json!({
                        "code": "forbidden",
                        "detail": "another tenant's resources are read only",
                    })));
                }
                let service = self.service(&rid)?;
                let answer = timeout(
                    self.inner.options.request_timeout,
                    service.call_as(&session, &rid, &method, params),
                )
                .await
                .map_err(|_| ResError::timeout())??;
                match answer {
                    CallAnswer::Payload(payload) => Ok(Box::new(move |id| {
                        cairn_res::Response::payload(id, payload)
                    })),
                    CallAnswer::Resource(target) => {
                        // The call may have changed it: read afresh.
                        let inner = self.inner.clone();
                        let set = self
                            .subs
                            .subscribe(&target, move |r| fetch(inner.clone(), session.clone(), r))
                            .await?;
                        Ok(Box::new(move |id| {
                            cairn_res::Response::resource(id, &target, &set)
                        }))
                    }
                }
            }
            RequestKind::Auth {
                rid,
                method,
                params,
            } => {
                if rid.to_string() != AUTH_RID || method != AUTH_METHOD {
                    return Err(ResError::method_not_found());
                }
                let token = params
                    .get("token")
                    .and_then(Json::as_str)
                    .ok_or_else(|| ResError::invalid_params("token is a string"))?;
                let tenant = match params.get("tenant") {
                    None | Some(Json::Null) => None,
                    Some(Json::String(tenant)) => Some(tenant.as_str()),
                    Some(_) => return Err(ResError::invalid_params("tenant is a string")),
                };
                let session = Arc::new(self.inner.auth.session(token, tenant).await?);
                let payload = json!({
                    "tenant": session.context.tenant.as_str(),
                    "actor": session.context.actor,
                    "crossTenant": session.cross_tenant,
                });
                self.reaccess(session).await;
                Ok(Box::new(move |id| {
                    cairn_res::Response::payload(id, payload)
                }))
            }
        }
    }

    fn session(&self) -> Result<Arc<Session>, ResError> {
        self.session
            .clone()
            .ok_or_else(|| ResError::access_denied().with_data(json!({ "code": "missing_token" })))
    }

    /// The session to read `rid` as; a cross-tenant session's read is
    /// recorded first.
    async fn reading(&self, rid: &Rid) -> Result<Arc<Session>, ResError> {
        let session = self.session()?;
        if session.cross_tenant {
            self.inner.auth.record_read(&session, rid).await?;
        }
        Ok(session)
    }

    /// Ends the session if its token expired or no longer holds. False
    /// when the connection is to end.
    async fn check_session(&mut self) -> bool {
        let Some(session) = &self.session else {
            return true;
        };
        let expired = session
            .expires_at
            .is_some_and(|at| std::time::SystemTime::now() >= at);
        let error = if expired {
            ResError::access_denied().with_data(json!({ "code": "expired" }))
        } else {
            match self.inner.auth.still_valid(session).await {
                Ok(()) => return true,
                Err(error) => error,
            }
        };
        self.session = None;
        for rid in self.subs.directly_held() {
            self.subs.revoke(&rid);
            if !self.send(Event::unsubscribe(rid, error.clone()).to_json()) {
                return false;
            }
        }
        true
    }

    fn service(&self, rid: &Rid) -> Result<Arc<dyn crate::Resources>, ResError> {
        self.inner
            .resources(rid.service())
            .ok_or_else(ResError::not_found)
    }

    /// A new identity: what it may no longer read is unsubscribed, with
    /// the reason.
    async fn reaccess(&mut self, session: Arc<Session>) {
        let ctx = &session.context;
        let same = self.session.as_ref().is_some_and(|old| {
            old.context.tenant == ctx.tenant
                && old.context.actor == ctx.actor
                && old.cross_tenant == session.cross_tenant
        });
        self.session = Some(session.clone());
        if same {
            return;
        }
        for rid in self.subs.directly_held() {
            if fetch(self.inner.clone(), session.clone(), rid.clone())
                .await
                .is_err()
            {
                self.subs.revoke(&rid);
                self.send(Event::unsubscribe(rid, ResError::access_denied()).to_json());
            }
        }
    }

    /// Passes a change on to this connection, if it concerns what it holds
    /// in its tenant. False when the connection is to end.
    async fn on_change(&mut self, seq: u64, change: Change) -> bool {
        let Ok(session) = self.session() else {
            return true;
        };
        if !change.concerns(&session.context.tenant) {
            return true;
        }
        match change {
            Change::Event { event, .. } => self.on_event(session, event).await,
            Change::Reset { names, .. } | Change::ResetAll { names } => {
                for name in names {
                    for rid in self.subs.held_named(&name) {
                        if !self.reread(&session, rid, seq).await {
                            return false;
                        }
                    }
                }
                true
            }
        }
    }

    /// An event for a resource held: passed on, bringing along what it
    /// references.
    async fn on_event(&mut self, session: Arc<Session>, mut event: Event) -> bool {
        if !self.subs.holds(&event.rid) {
            return true;
        }
        let inner = self.inner.clone();
        let (set, _dropped) = self
            .subs
            .apply(&event, move |r| fetch(inner.clone(), session.clone(), r))
            .await;
        merge(&mut event, &set);
        self.send(event.to_json())
    }

    /// Reads a held resource again after change `seq` and sends what
    /// changed since it was last sent. False when the connection is to
    /// end.
    async fn reread(&mut self, session: &Arc<Session>, rid: Rid, seq: u64) -> bool {
        let inner = self.inner.clone();
        let reader = self.reader(session);
        let shared = shared_read(&inner, &reader, &rid, seq);
        let resource = match shared.get(&inner, session, &rid).await {
            Ok(resource) => resource,
            Err(error) if error.code == "system.notFound" => {
                return self.send(Event::delete(rid).to_json());
            }
            Err(error) if error.code == "system.accessDenied" => {
                // Access was taken away (a service's `reaccess`, a role
                // changed): a direct subscription ends, with the reason.
                if self.subs.direct(&rid) == 0 {
                    return true;
                }
                self.subs.revoke(&rid);
                return self.send(Event::unsubscribe(rid, error).to_json());
            }
            Err(error) => {
                tracing::debug!(%rid, %error, "a reset resource cannot be read again");
                return true;
            }
        };
        let old = self.subs.resource_shared(&rid);
        if old.as_ref().is_some_and(|old| Arc::ptr_eq(old, &resource)) {
            // Read for an earlier change and sent already.
            return true;
        }
        let session = session.clone();
        let (set, _dropped) = self
            .subs
            .replace(&rid, resource.clone(), move |r| {
                shared_fetch(inner.clone(), session.clone(), reader.clone(), r, seq)
            })
            .await;
        // It was an error before: nothing a client can apply; it reads it
        // again when it subscribes again.
        let Some(old) = old else { return true };
        let frames = if set.is_empty() {
            // The same for every connection that held `old`: made once.
            shared.frames(&rid, &old, &resource)
        } else {
            encode(change_events(&rid, &old, &resource, set))
        };
        frames
            .iter()
            .all(|frame| self.push(Message::Text(frame.clone())))
    }
}

/// The events that take a client from `old` to `new`, the first carrying
/// `set` (what the new content references that the client did not hold).
fn change_events(rid: &Rid, old: &Resource, new: &Resource, set: ResourceSet) -> Vec<Event> {
    let mut events = Vec::new();
    match (old, new) {
        (Resource::Model(old), Resource::Model(new)) => {
            let values = diff::diff_model(old, new);
            if !values.is_empty() {
                events.push(Event::change(rid.clone(), values, &set));
            }
        }
        (Resource::Collection(old), Resource::Collection(new)) => {
            let mut set = Some(set);
            for edit in diff::diff_collection(old, new) {
                events.push(match edit {
                    diff::Edit::Remove { idx } => Event::remove(rid.clone(), idx),
                    diff::Edit::Add { idx, value } => {
                        Event::add(rid.clone(), idx, value, &set.take().unwrap_or_default())
                    }
                });
            }
        }
        // It changed kind: nothing a client can apply; it reads it again
        // when it subscribes again.
        _ => {}
    }
    events
}

type Frames = Arc<[Utf8Bytes]>;

fn encode(events: Vec<Event>) -> Frames {
    events
        .into_iter()
        .map(|event| Utf8Bytes::from(event.to_json()))
        .collect()
}

/// Adds the resources a change brings to its event's data.
fn merge(event: &mut Event, set: &ResourceSet) {
    if set.is_empty() {
        return;
    }
    let Some(Json::Object(data)) = event.data.as_mut() else {
        return;
    };
    if let Ok(Json::Object(fields)) = serde_json::to_value(set) {
        data.extend(fields);
    }
}

/// Reads of resources, shared: when many connections hold one resource
/// and a change resets it, it is read once for all those that read it
/// alike (same tenant, same permissions, both cross-tenant or neither; a
/// service's [`crate::Resources::get_as`] answers alike for them), not
/// once per connection; so are the reads of connections subscribing at
/// about the same time. Connections keep the one copy read
/// ([`Subscriptions`] holds it shared), so a thousand connections holding
/// one resource hold it once.
///
/// An entry is labelled with the number of the last change sent before
/// its read began: it shows all that changes up to that number committed.
/// It serves a connection whose last change taken is numbered no higher
/// ([`Conn::seen`]): whatever the entry does not show was sent after its
/// label, and so is still ahead of that connection, which reads again
/// when it comes. An entry serves for [`SHARED_READ_AGE`] at most (a read
/// model rebuilt without a change sent is seen again soon); an error is
/// not served to later readers, only to those waiting on the read. At
/// most [`SHARED_READS_MAX`] entries are kept.
#[derive(Default)]
pub(crate) struct SharedReads {
    entries: std::sync::Mutex<std::collections::HashMap<ShareKey, SharedRead>>,
}

#[derive(PartialEq, Eq, Hash)]
struct ShareKey {
    rid: Rid,
    reader: Arc<Reader>,
}

/// Who reads, as far as what a read answers goes: made once per session,
/// hashed once.
pub(crate) struct Reader {
    tenant: cairn_core::TenantId,
    permissions: std::collections::BTreeSet<String>,
    cross_tenant: bool,
    hash: u64,
}

impl Reader {
    fn of(session: &Session) -> Self {
        use std::hash::{Hash, Hasher};
        let ctx = &session.context;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&ctx.tenant, &ctx.permissions, session.cross_tenant).hash(&mut hasher);
        Self {
            tenant: ctx.tenant.clone(),
            permissions: ctx.permissions.clone(),
            cross_tenant: session.cross_tenant,
            hash: hasher.finish(),
        }
    }
}

impl std::hash::Hash for Reader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Reader {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.cross_tenant == other.cross_tenant
            && self.tenant == other.tenant
            && self.permissions == other.permissions
    }
}

impl Eq for Reader {}

type SharedCell = Arc<Shared>;

/// One shared read, and the frames made from it for the connections that
/// held the same content before.
#[derive(Default)]
struct Shared {
    read: tokio::sync::OnceCell<Result<Arc<Resource>, ResError>>,
    /// By what the connections held before (kept, so that its address
    /// names it): the frames that take it to this read.
    frames: std::sync::Mutex<Vec<(Arc<Resource>, Frames)>>,
}

/// The most distinct earlier contents an entry keeps frames for; a
/// connection holding yet another makes its own.
const SHARED_FRAMES_MAX: usize = 8;

impl Shared {
    /// The read, made by the first to ask.
    async fn get(
        &self,
        inner: &Arc<Inner>,
        session: &Arc<Session>,
        rid: &Rid,
    ) -> Result<Arc<Resource>, ResError> {
        self.read
            .get_or_init(|| async {
                fetch(inner.clone(), session.clone(), rid.clone())
                    .await
                    .map(Arc::new)
            })
            .await
            .clone()
    }

    /// The frames from `old` to `new` (this read), when they carry no
    /// resources of their own: made once for every connection that held
    /// `old`.
    fn frames(&self, rid: &Rid, old: &Arc<Resource>, new: &Resource) -> Frames {
        let mut made = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, frames)) = made.iter().find(|(o, _)| Arc::ptr_eq(o, old)) {
            return frames.clone();
        }
        let frames = encode(change_events(rid, old, new, ResourceSet::default()));
        if made.len() < SHARED_FRAMES_MAX {
            made.push((old.clone(), frames.clone()));
        }
        frames
    }
}

struct SharedRead {
    label: u64,
    at: Instant,
    read: SharedCell,
}

/// Entries kept at most; past it, those too old to serve go, and if that
/// is not enough, all.
const SHARED_READS_MAX: usize = 1024;
/// How long an entry serves.
const SHARED_READ_AGE: std::time::Duration = std::time::Duration::from_secs(1);

impl SharedReads {
    /// A read of `key` that shows every change up to `seen`: one begun
    /// already, or a new one labelled `label` (the last change sent, now).
    fn entry(&self, key: ShareKey, seen: u64, label: u64) -> SharedCell {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(entry) = entries.get(&key)
            && entry.label >= seen
            && now.duration_since(entry.at) < SHARED_READ_AGE
            && !matches!(entry.read.read.get(), Some(Err(_)))
        {
            return entry.read.clone();
        }
        if entries.len() >= SHARED_READS_MAX {
            entries.retain(|_, e| now.duration_since(e.at) < SHARED_READ_AGE);
            if entries.len() >= SHARED_READS_MAX {
                entries.clear();
            }
        }
        let read = SharedCell::default();
        entries.insert(
            key,
            SharedRead {
                label,
                at: now,
                read: read.clone(),
            },
        );
        read
    }
}

/// The shared read of `rid` for a connection that has taken changes up
/// to `seen` ([`SharedReads`]).
fn shared_read(inner: &Arc<Inner>, reader: &Arc<Reader>, rid: &Rid, seen: u64) -> SharedCell {
    let key = ShareKey {
        rid: rid.clone(),
        reader: reader.clone(),
    };
    // Taken before the read can begin: the read shows at least this.
    let label = inner.publisher.last();
    inner.shared.entry(key, seen, label)
}

/// [`fetch`], shared ([`shared_read`]).
async fn shared_fetch(
    inner: Arc<Inner>,
    session: Arc<Session>,
    reader: Arc<Reader>,
    rid: Rid,
    seen: u64,
) -> Result<Arc<Resource>, ResError> {
    shared_read(&inner, &reader, &rid, seen)
        .get(&inner, &session, &rid)
        .await
}

/// Reads one resource from its service, as `session`, within the time
/// allowed.
async fn fetch(inner: Arc<Inner>, session: Arc<Session>, rid: Rid) -> Result<Resource, ResError> {
    let Some(service) = inner.resources(rid.service()) else {
        return Err(ResError::not_found());
    };
    timeout(
        inner.options.request_timeout,
        service.get_as(&session, &rid),
    )
    .await
    .map_err(|_| ResError::timeout())?
}
