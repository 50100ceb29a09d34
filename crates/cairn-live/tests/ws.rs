//! The live endpoint over a real WebSocket (tokio-tungstenite as the
//! client), with a small service of items per tenant: the protocol's
//! requests, tokens and tenants, changes pushed to who holds a resource,
//! bad frames, and every limit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use cairn_core::{RequestContext, TenantId};
use cairn_live::{Authenticate, CallAnswer, Change, Live, LiveOptions, Resources, Session};
use cairn_res::{Event, ResError, Resource, ResourceSet, Rid, Value};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

const PATIENCE: Duration = Duration::from_secs(5);

/// Items by tenant: `toy.items` lists them, `toy.item.<n>` is one.
#[derive(Clone, Default)]
struct Toy {
    items: Arc<Mutex<HashMap<TenantId, Vec<String>>>>,
    /// Reads by `<tenant> <rid>`.
    reads: Arc<Mutex<HashMap<String, usize>>>,
    /// Resource names nobody may read any more.
    denied: Arc<Mutex<Vec<String>>>,
}

impl Toy {
    fn set(&self, tenant: &TenantId, items: Vec<String>) {
        self.items.lock().unwrap().insert(tenant.clone(), items);
    }

    fn reads_of(&self, tenant: &str, rid: &str) -> usize {
        let reads = self.reads.lock().unwrap();
        reads.get(&format!("{tenant} {rid}")).copied().unwrap_or(0)
    }
}

fn rid(text: &str) -> Rid {
    Rid::parse(text).unwrap()
}

#[async_trait]
impl Resources for Toy {
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        *self
            .reads
            .lock()
            .unwrap()
            .entry(format!("{} {rid}", ctx.tenant.as_str()))
            .or_default() += 1;
        if self.denied.lock().unwrap().iter().any(|d| d == rid.name()) {
            return Err(ResError::access_denied().with_data(json!({"code": "forbidden"})));
        }
        let items = self.items.lock().unwrap();
        let mine = items.get(&ctx.tenant).cloned().unwrap_or_default();
        let parts: Vec<&str> = rid.parts().collect();
        match parts.as_slice() {
            ["toy", "items"] => Ok(Resource::Collection(
                (0..mine.len())
                    .map(|n| Value::reference(Rid::parse(&format!("toy.item.{n}")).unwrap()))
                    .collect(),
            )),
            ["toy", "item", n] => {
                let name = n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| mine.get(n))
                    .ok_or_else(ResError::not_found)?;
                Ok(Resource::model_from_json(
                    json!({ "name": name }).as_object().unwrap().clone(),
                ))
            }
            _ => Err(ResError::not_found()),
        }
    }

    async fn call(
        &self,
        ctx: &RequestContext,
        rid: &Rid,
        method: &str,
        params: Json,
    ) -> Result<CallAnswer, ResError> {
        match (rid.name(), method) {
            ("toy.items", "add") => {
                let name = params["name"]
                    .as_str()
                    .ok_or_else(|| ResError::invalid_params("name is a string"))?;
                let mut items = self.items.lock().unwrap();
                let mine = items.entry(ctx.tenant.clone()).or_default();
                mine.push(name.to_owned());
                Ok(CallAnswer::Payload(json!({ "idx": mine.len() - 1 })))
            }
            ("toy.items", "open") => Ok(CallAnswer::Resource(rid.clone())),
            _ => Err(ResError::method_not_found()),
        }
    }
}

/// `acme` and `globex` tokens, `acme-auditor-token` (acme, with a
/// permission the others lack), `acme-brief-token` (expires a second after
/// it is used) and `root-token` (may read any tenant); anything else is
/// refused. A token in `REVOKED` no longer holds.
struct Tokens;

static REVOKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static RECORDED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

#[async_trait]
impl Authenticate for Tokens {
    async fn session(&self, token: &str, tenant: Option<&str>) -> Result<Session, ResError> {
        let refused = || ResError::access_denied().with_data(json!({"code": "invalid_signature"}));
        let (own, expires_at) = match token {
            "acme-token" | "acme-revocable-token" | "acme-auditor-token" => ("acme", None),
            "globex-token" => ("globex", None),
            "root-token" => ("root", None),
            "acme-brief-token" => ("acme", Some(SystemTime::now() + Duration::from_secs(1))),
            _ => return Err(refused()),
        };
        if REVOKED.lock().unwrap().iter().any(|t| t == token) {
            return Err(refused());
        }
        let cross_tenant = tenant.is_some_and(|t| t != own);
        if cross_tenant && own != "root" {
            return Err(ResError::access_denied().with_data(json!({"code": "forbidden"})));
        }
        let tenant = TenantId::new(tenant.unwrap_or(own)).unwrap();
        let permissions: &[&str] = if token == "acme-auditor-token" {
            &["items:audit"]
        } else {
            &[]
        };
        Ok(Session {
            context: RequestContext::new(tenant)
                .with_actor(format!("{own}-admin"))
                .with_permissions(permissions.iter().copied()),
            expires_at,
            token_id: Some((TenantId::new(own).unwrap(), token.to_owned())),
            cross_tenant,
            bearer: Some(cairn_live::Bearer(token.to_owned())),
        })
    }

    async fn still_valid(&self, session: &Session) -> Result<(), ResError> {
        let (_, id) = session.token_id.as_ref().unwrap();
        if REVOKED.lock().unwrap().contains(id) {
            return Err(ResError::access_denied().with_data(json!({"code": "revoked"})));
        }
        Ok(())
    }

    async fn record_read(&self, session: &Session, rid: &Rid) -> Result<(), ResError> {
        RECORDED
            .lock()
            .unwrap()
            .push((session.context.tenant.as_str().to_owned(), rid.to_string()));
        Ok(())
    }
}

async fn start(options: LiveOptions) -> (Live, Toy, String) {
    let toy = Toy::default();
    let live = Live::builder(Tokens)
        .serve("toy", toy.clone())
        .options(options)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let router = live.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (live, toy, url)
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Socket,
    next_id: u64,
    events: Vec<Json>,
}

impl Client {
    async fn connect(url: &str, token: Option<&str>) -> Self {
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (ws, _) = connect_async(request).await.unwrap();
        Self {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// A connection whose upgrade carries `headers` (a cookie, an origin).
    async fn connect_with(url: &str, headers: &[(&'static str, String)]) -> Self {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (ws, _) = connect_async(request).await.unwrap();
        Self {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON frame.
    async fn frame(&mut self) -> Json {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends a request and waits for its response, keeping the events that
    /// come before it.
    async fn request(&mut self, method: &str, params: Json) -> Json {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "id": id, "method": method });
        if !params.is_null() {
            request["params"] = params;
        }
        self.send_text(&request.to_string()).await;
        self.response(json!(id)).await
    }

    async fn response(&mut self, id: Json) -> Json {
        loop {
            let frame = self.frame().await;
            if frame.get("event").is_some() {
                self.events.push(frame);
            } else {
                assert_eq!(frame["id"], id, "{frame}");
                return frame;
            }
        }
    }

    async fn event(&mut self) -> Json {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        let frame = self.frame().await;
        assert!(frame.get("event").is_some(), "{frame}");
        frame
    }

    /// How the server ended the connection: its close code, if it sent one.
    async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

fn error_code(response: &Json) -> &str {
    response["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error: {response}"))
}

#[tokio::test]
async fn version_is_answered_and_other_majors_are_refused() {
    let (_live, _toy, url) = start(LiveOptions::default()).await;
    let mut client = Client::connect(&url, None).await;
    let r = client
        .request("version", json!({"protocol": "1.2.1"}))
        .await;
    assert_eq!(r["result"]["protocol"], cairn_res::PROTOCOL);
    let r = client
        .request("version", json!({"protocol": "2.0.0"}))
        .await;
    assert_eq!(error_code(&r), "system.unsupportedProtocol");
}

#[tokio::test]
async fn without_a_token_resources_are_refused_and_auth_opens_them() {
    let (_live, toy, url) = start(LiveOptions::default()).await;
    toy.items
        .lock()
        .unwrap()
        .insert(TenantId::new("acme").unwrap(), vec!["anvil".into()]);
    let mut client = Client::connect(&url, None).await;
    let r = client.request("subscribe.toy.items", Json::Null).await;
    assert_eq!(error_code(&r), "system.accessDenied");
    assert_eq!(r["error"]["data"]["code"], "missing_token");
    let r = client
        .request("auth.identity.session.token", json!({"token": "forged"}))
        .await;
    assert_eq!(error_code(&r), "system.accessDenied");
    let r = client
        .request("auth.identity.session.token", json!({}))
        .await;
    assert_eq!(error_code(&r), "system.invalidParams");
    let r = client
        .request("auth.identity.session.other", json!({}))
        .await;
    assert_eq!(error_code(&r), "system.methodNotFound");
    let r = client
        .request(
            "auth.identity.session.token",
            json!({"token": "acme-token"}),
        )
        .await;
    assert_eq!(
        r["result"]["payload"],
        json!({"tenant": "acme", "actor": "acme-admin", "crossTenant": false})
    );
    let r = client.request("subscribe.toy.items", Json::Null).await;
    assert_eq!(
        r["result"],
        json!({
            "collections": {"toy.items": [{"rid": "toy.item.0"}]},
            "models": {"toy.item.0": {"name": "anvil"}}
        })
    );
    // A token at the upgrade works the same; a forged one leaves the
    // connection anonymous.
    let mut upgraded = Client::connect(&url, Some("acme-token")).await;
    let r = upgraded.request("get.toy.item.0", Json::Null).await;
    assert_eq!(r["result"]["models"]["toy.item.0"]["name"], "anvil");
    let mut forged = Client::connect(&url, Some("forged")).await;
    let r = forged.request("get.toy.item.0", Json::Null).await;
    assert_eq!(error_code(&r), "system.accessDenied");
}

#[tokio::test]
async fn a_token_cookie_counts_from_the_same_origin_only() {
    let (_live, toy, url) = start(LiveOptions::default()).await;
    toy.items
        .lock()
        .unwrap()
        .insert(TenantId::new("acme").unwrap(), vec!["anvil".into()]);
    let host = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let cookie = ("cookie", "theme=dark; cairn_token=acme-token".to_owned());
    // No page (a program), or a page of this very origin: the cookie is
    // the connection's token.
    for headers in [
        vec![cookie.clone()],
        vec![cookie.clone(), ("origin", format!("http://{host}"))],
    ] {
        let mut client = Client::connect_with(&url, &headers).await;
        let r = client.request("subscribe.toy.items", Json::Null).await;
        assert!(r.get("result").is_some(), "{headers:?}: {r}");
    }
    // A page of another site cannot use the cookie its browser sends.
    let mut client = Client::connect_with(
        &url,
        &[cookie.clone(), ("origin", "http://evil.example".to_owned())],
    )
    .await;
    let r = client.request("subscribe.toy.items", Json::Null).await;
    assert_eq!(error_code(&r), "system.accessDenied", "{r}");
    // Another cookie is not a token, and a forged token is refused.
    for value in ["cairn_tokens=acme-token", "cairn_token=forged"] {
        let mut client = Client::connect_with(&url, &[("cookie", value.to_owned())]).await;
        let r = client.request("subscribe.toy.items", Json::Null).await;
        assert_eq!(error_code(&r), "system.accessDenied", "{value}: {r}");
    }
}

#[tokio::test]
async fn requests_answer_as_the_protocol_says() {
    let (_live, _toy, url) = start(LiveOptions::default()).await;
    let mut client = Client::connect(&url, Some("acme-token")).await;
    let r = client
        .request("call.toy.items.add", json!({"name": "anvil"}))
        .await;
    assert_eq!(r["result"], json!({"payload": {"idx": 0}}));
    let r = client.request("call.toy.items.add", json!({})).await;
    assert_eq!(error_code(&r), "system.invalidParams");
    let r = client.request("call.toy.items.melt", Json::Null).await;
    assert_eq!(error_code(&r), "system.methodNotFound");
    let r = client.request("call.nowhere.items.add", Json::Null).await;
    assert_eq!(error_code(&r), "system.notFound");
    let r = client.request("get.toy.item.7", Json::Null).await;
    assert_eq!(error_code(&r), "system.notFound");
    // A call that answers a resource subscribes to it.
    let r = client.request("call.toy.items.open", Json::Null).await;
    assert_eq!(r["result"]["rid"], "toy.items");
    assert_eq!(r["result"]["models"]["toy.item.0"]["name"], "anvil");
    let r = client.request("unsubscribe.toy.items", Json::Null).await;
    assert_eq!(r["result"], Json::Null);
    let r = client.request("unsubscribe.toy.items", Json::Null).await;
    assert_eq!(error_code(&r), "system.noSubscription");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_goes_on() {
    let (_live, _toy, url) = start(LiveOptions::default()).await;
    let mut client = Client::connect(&url, Some("acme-token")).await;
    for frame in [
        "not json",
        "[1,2]",
        r#"{"method":"version"}"#,
        r#"{"id":true,"method":"version"}"#,
    ] {
        client.send_text(frame).await;
        let r = client.response(Json::Null).await;
        assert_eq!(error_code(&r), "system.invalidRequest", "{frame}");
    }
    for (frame, code) in [
        (
            r#"{"id":9,"method":"subscribe.a..b"}"#,
            "system.invalidRequest",
        ),
        (
            r#"{"id":9,"method":"publish.toy.items"}"#,
            "system.invalidRequest",
        ),
        (
            r#"{"id":9,"method":"unsubscribe.toy.items","params":{"count":0}}"#,
            "system.invalidParams",
        ),
    ] {
        client.send_text(frame).await;
        let r = client.response(json!(9)).await;
        assert_eq!(error_code(&r), code, "{frame}");
    }
    client
        .ws
        .send(Message::binary(b"\xff\xfe".to_vec()))
        .await
        .unwrap();
    let r = client.response(Json::Null).await;
    assert_eq!(error_code(&r), "system.invalidRequest");
    let r = client.request("version", Json::Null).await;
    assert_eq!(r["result"]["protocol"], cairn_res::PROTOCOL);
}

#[tokio::test]
async fn a_change_reaches_who_holds_it_in_its_tenant_only() {
    let (live, _toy, url) = start(LiveOptions::default()).await;
    let mut acme = Client::connect(&url, Some("acme-token")).await;
    let mut globex = Client::connect(&url, Some("globex-token")).await;
    let mut idle = Client::connect(&url, Some("acme-token")).await;
    for client in [&mut acme, &mut globex] {
        let r = client.request("subscribe.toy.items", Json::Null).await;
        assert_eq!(r["result"]["collections"]["toy.items"], json!([]));
    }
    let r = acme
        .request("call.toy.items.add", json!({"name": "anvil"}))
        .await;
    assert_eq!(r["result"]["payload"]["idx"], 0);
    // After the commit, the service publishes what changed.
    live.publish(Change::Event {
        tenant: TenantId::new("acme").unwrap(),
        event: Event::add(
            rid("toy.items"),
            0,
            Value::reference(rid("toy.item.0")),
            &ResourceSet::default(),
        ),
    });
    let event = acme.event().await;
    assert_eq!(
        event,
        json!({"event": "toy.items.add", "data": {
            "idx": 0,
            "value": {"rid": "toy.item.0"},
            "models": {"toy.item.0": {"name": "anvil"}}
        }})
    );
    // The held item changes too.
    live.publish(Change::Event {
        tenant: TenantId::new("acme").unwrap(),
        event: Event::custom(rid("toy.item.0"), "polished", json!({"by": "alice"})).unwrap(),
    });
    assert_eq!(acme.event().await["event"], "toy.item.0.polished");
    // Globex holds toy.items too, in its own tenant; the idle acme client
    // holds nothing: neither hears a thing.
    for client in [&mut globex, &mut idle] {
        let r = client.request("version", Json::Null).await;
        assert!(r.get("result").is_some());
        assert!(client.events.is_empty(), "{:?}", client.events);
    }
}

#[tokio::test]
async fn a_reset_sends_what_changed_since_the_client_last_read() {
    let (live, toy, url) = start(LiveOptions::default()).await;
    let acme_tenant = TenantId::new("acme").unwrap();
    toy.set(&acme_tenant, vec!["anvil".into()]);
    let mut acme = Client::connect(&url, Some("acme-token")).await;
    let mut globex = Client::connect(&url, Some("globex-token")).await;
    acme.request("subscribe.toy.items", Json::Null).await;
    globex.request("subscribe.toy.items", Json::Null).await;

    // A new item, and the first one renamed, then one reset naming both.
    toy.set(&acme_tenant, vec!["hammer".into(), "tongs".into()]);
    live.publish(Change::Reset {
        tenant: acme_tenant.clone(),
        names: vec!["toy.items".into(), "toy.item.0".into()],
    });
    assert_eq!(
        acme.event().await,
        json!({"event": "toy.items.add", "data": {
            "idx": 1, "value": {"rid": "toy.item.1"},
            "models": {"toy.item.1": {"name": "tongs"}}
        }})
    );
    assert_eq!(
        acme.event().await,
        json!({"event": "toy.item.0.change", "data": {"values": {"name": "hammer"}}})
    );
    // The second item goes: removed from the list, and no longer held.
    toy.set(&acme_tenant, vec!["hammer".into()]);
    live.publish(Change::Reset {
        tenant: acme_tenant.clone(),
        names: vec!["toy.items".into(), "toy.item.1".into()],
    });
    assert_eq!(
        acme.event().await,
        json!({"event": "toy.items.remove", "data": {"idx": 1}})
    );
    // Nothing that did not change is sent; a held model gone is deleted.
    let r = acme.request("subscribe.toy.item.0", Json::Null).await;
    assert!(r.get("result").is_some());
    toy.set(&acme_tenant, vec![]);
    live.publish(Change::Reset {
        tenant: acme_tenant,
        names: vec!["toy.item.0".into()],
    });
    assert_eq!(acme.event().await, json!({"event": "toy.item.0.delete"}));
    let r = acme.request("version", Json::Null).await;
    assert!(r.get("result").is_some());
    assert!(acme.events.is_empty(), "{:?}", acme.events);
    // Globex holds toy.items in its own tenant: nothing reached it.
    globex.request("version", Json::Null).await;
    assert!(globex.events.is_empty(), "{:?}", globex.events);
}

#[tokio::test]
async fn a_pattern_reset_reads_again_what_it_matches() {
    let (live, toy, url) = start(LiveOptions::default()).await;
    let (acme_tenant, globex_tenant) = (
        TenantId::new("acme").unwrap(),
        TenantId::new("globex").unwrap(),
    );
    for tenant in [&acme_tenant, &globex_tenant] {
        toy.set(tenant, vec!["anvil".into()]);
    }
    let mut acme = Client::connect(&url, Some("acme-token")).await;
    let mut globex = Client::connect(&url, Some("globex-token")).await;
    for client in [&mut acme, &mut globex] {
        client.request("subscribe.toy.items", Json::Null).await;
    }
    for tenant in [&acme_tenant, &globex_tenant] {
        toy.set(tenant, vec!["hammer".into()]);
    }
    // `toy.item.*` in acme: its item, not its list, nor globex's.
    live.publish(Change::Reset {
        tenant: acme_tenant.clone(),
        names: vec!["toy.item.*".into()],
    });
    assert_eq!(
        acme.event().await,
        json!({"event": "toy.item.0.change", "data": {"values": {"name": "hammer"}}})
    );
    // `toy.>` in every tenant: globex's item (acme's read the same again).
    live.publish(Change::ResetAll {
        names: vec!["toy.>".into()],
    });
    assert_eq!(
        globex.event().await,
        json!({"event": "toy.item.0.change", "data": {"values": {"name": "hammer"}}})
    );
    for client in [&mut acme, &mut globex] {
        client.request("version", Json::Null).await;
        assert!(client.events.is_empty(), "{:?}", client.events);
    }
}

#[tokio::test]
async fn a_reset_is_read_once_for_the_connections_that_read_alike() {
    let (live, toy, url) = start(LiveOptions::default()).await;
    let acme_tenant = TenantId::new("acme").unwrap();
    toy.set(&acme_tenant, vec!["anvil".into()]);
    // Eight connections of one kind, two with another permission.
    let mut clients = Vec::new();
    for token in ["acme-token"; 8]
        .into_iter()
        .chain(["acme-auditor-token"; 2])
    {
        let mut client = Client::connect(&url, Some(token)).await;
        client.request("subscribe.toy.items", Json::Null).await;
        clients.push(client);
    }
    for round in 1..=2usize {
        let before = (
            toy.reads_of("acme", "toy.items"),
            toy.reads_of("acme", &format!("toy.item.{round}")),
        );
        toy.items
            .lock()
            .unwrap()
            .get_mut(&acme_tenant)
            .unwrap()
            .push(format!("tongs {round}"));
        live.publish(Change::Reset {
            tenant: acme_tenant.clone(),
            names: vec!["toy.items".into()],
        });
        // Every connection gets this round's item, not an earlier read.
        for client in &mut clients {
            assert_eq!(
                client.event().await,
                json!({"event": "toy.items.add", "data": {
                    "idx": round, "value": {"rid": format!("toy.item.{round}")},
                    "models": {format!("toy.item.{round}"): {"name": format!("tongs {round}")}}
                }})
            );
        }
        // The list read once per permission set, and so the new item it
        // brings: two reads each, not ten.
        assert_eq!(
            toy.reads_of("acme", "toy.items") - before.0,
            2,
            "round {round}"
        );
        assert_eq!(
            toy.reads_of("acme", &format!("toy.item.{round}")) - before.1,
            2,
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_shared_read_is_never_older_than_a_change_the_connection_took() {
    let (live, toy, url) = start(LiveOptions::default()).await;
    let acme_tenant = TenantId::new("acme").unwrap();
    toy.set(&acme_tenant, vec!["anvil".into()]);
    let mut early = Client::connect(&url, Some("acme-token")).await;
    // One connection reads the list and lets it go: its read is kept.
    let mut first = Client::connect(&url, Some("acme-token")).await;
    first.request("subscribe.toy.items", Json::Null).await;
    first.request("unsubscribe.toy.items", Json::Null).await;
    let reads = toy.reads_of("acme", "toy.items");
    // A second connection subscribing now shares that read.
    let mut second = Client::connect(&url, Some("acme-token")).await;
    let r = second.request("subscribe.toy.items", Json::Null).await;
    assert_eq!(
        r["result"]["collections"]["toy.items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(toy.reads_of("acme", "toy.items"), reads, "{r}");
    // The list changes; nobody holds it, so nobody reads it again.
    second.request("unsubscribe.toy.items", Json::Null).await;
    toy.items
        .lock()
        .unwrap()
        .get_mut(&acme_tenant)
        .unwrap()
        .push("tongs".into());
    live.publish(Change::Reset {
        tenant: acme_tenant.clone(),
        names: vec!["toy.items".into()],
    });
    // A connection that took the change, and one that began after it,
    // both read the list afresh.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut late = Client::connect(&url, Some("acme-token")).await;
    for client in [&mut early, &mut late] {
        let r = client.request("subscribe.toy.items", Json::Null).await;
        assert_eq!(
            r["result"]["collections"]["toy.items"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "{r}"
        );
    }
}

#[tokio::test]
async fn access_taken_away_ends_the_subscription_at_the_next_reset() {
    let (live, toy, url) = start(LiveOptions::default()).await;
    let acme_tenant = TenantId::new("acme").unwrap();
    toy.set(&acme_tenant, vec!["anvil".into()]);
    let mut client = Client::connect(&url, Some("acme-token")).await;
    client.request("subscribe.toy.items", Json::Null).await;
    client.request("subscribe.toy.item.0", Json::Null).await;
    toy.denied.lock().unwrap().push("toy.items".into());
    live.publish(Change::Reset {
        tenant: acme_tenant.clone(),
        names: vec!["toy.items".into(), "toy.item.0".into()],
    });
    assert_eq!(
        client.event().await,
        json!({"event": "toy.items.unsubscribe", "data": {"reason": {
            "code": "system.accessDenied", "message": "Access denied",
            "data": {"code": "forbidden"}
        }}})
    );
    // It is no longer held: a later change sends nothing on it; what may
    // still be read goes on.
    let r = client.request("version", Json::Null).await;
    assert!(r.get("result").is_some());
    assert!(client.events.is_empty(), "{:?}", client.events);
    let r = client.request("unsubscribe.toy.items", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.noSubscription", "{r}");
    let r = client.request("unsubscribe.toy.item.0", Json::Null).await;
    assert!(r.get("result").is_some(), "{r}");
}

#[tokio::test]
async fn the_resource_limit_refuses_more() {
    let (_live, toy, url) = start(LiveOptions {
        max_resources: 2,
        ..LiveOptions::default()
    })
    .await;
    toy.items.lock().unwrap().insert(
        TenantId::new("acme").unwrap(),
        vec!["a".into(), "b".into(), "c".into()],
    );
    let mut client = Client::connect(&url, Some("acme-token")).await;
    let r = client.request("subscribe.toy.items", Json::Null).await;
    assert_eq!(error_code(&r), "cairn.subscription_limit");
    assert!(client.request("subscribe.toy.item.0", Json::Null).await["result"].is_object());
    assert!(client.request("subscribe.toy.item.1", Json::Null).await["result"].is_object());
    let r = client.request("subscribe.toy.item.2", Json::Null).await;
    assert_eq!(error_code(&r), "cairn.subscription_limit");
    client.request("unsubscribe.toy.item.0", Json::Null).await;
    assert!(client.request("subscribe.toy.item.2", Json::Null).await["result"].is_object());
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_that_connection_only() {
    let (live, _toy, url) = start(LiveOptions {
        max_frame_bytes: 1024,
        ..LiveOptions::default()
    })
    .await;
    let mut big = Client::connect(&url, Some("acme-token")).await;
    let mut other = Client::connect(&url, Some("acme-token")).await;
    let frame = json!({"id": 1, "method": "version", "params": {"pad": "x".repeat(2000)}});
    let _ = big.ws.send(Message::text(frame.to_string())).await;
    let code = big.closed().await;
    assert!(
        code.is_none() || code == Some(CloseCode::Size),
        "closed for its size: {code:?}"
    );
    let r = other.request("version", Json::Null).await;
    assert!(r.get("result").is_some());
    wait_for_connections(&live, 1).await;
}

#[tokio::test]
async fn a_frame_larger_than_the_read_buffer_and_within_the_limit_is_read() {
    let (_live, toy, url) = start(LiveOptions::default()).await;
    let mut client = Client::connect(&url, Some("acme-token")).await;
    let name = "x".repeat(8 * cairn_live::READ_BUFFER_BYTES);
    let r = client
        .request("call.toy.items.add", json!({ "name": name }))
        .await;
    assert_eq!(r["result"]["payload"]["idx"], 0, "{r}");
    let items = toy.items.lock().unwrap();
    assert_eq!(items[&TenantId::new("acme").unwrap()], vec![name]);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_the_others_go_on() {
    let (live, _toy, url) = start(LiveOptions {
        send_queue: 4,
        write_timeout: Duration::from_millis(300),
        ..LiveOptions::default()
    })
    .await;
    let mut slow = Client::connect(&url, Some("acme-token")).await;
    slow.request("subscribe.toy.items", Json::Null).await;
    let mut reader = Client::connect(&url, Some("acme-token")).await;
    // Far more than socket buffers hold, to the slow client, which reads
    // nothing more.
    let pad = "x".repeat(16 * 1024);
    for n in 0..4000 {
        live.publish(Change::Event {
            tenant: TenantId::new("acme").unwrap(),
            event: Event::custom(rid("toy.items"), "tick", json!({"n": n, "pad": pad})).unwrap(),
        });
        if n % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_for_connections(&live, 1).await;
    let r = reader.request("version", Json::Null).await;
    assert!(r.get("result").is_some(), "the other connection goes on");
    drop(slow);
}

#[tokio::test]
async fn an_idle_connection_is_pinged_then_closed_and_a_busy_one_is_not() {
    let (live, _toy, url) = start(LiveOptions {
        heartbeat: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..LiveOptions::default()
    })
    .await;
    let mut busy = Client::connect(&url, None).await;
    let mut idle = Client::connect(&url, None).await;
    wait_for_connections(&live, 2).await;
    // The idle client reads nothing, so answers no ping; the busy one
    // talks every 100 ms.
    for _ in 0..8 {
        let r = busy.request("version", Json::Null).await;
        assert!(r.get("result").is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_connections(&live, 1).await;
    // What the idle client finds: the pings, then the close (or, once its
    // own pong cannot be written, the broken connection).
    let mut pings = 0;
    let mut code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(PATIENCE, idle.ws.next()).await {
        match message {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => {
                code = frame.map(|f| f.code);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(pings >= 1, "pinged before being closed");
    assert!(code.is_none() || code == Some(CloseCode::Away), "{code:?}");
}

async fn wait_for_connections(live: &Live, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while live.connections() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} connections, not {n}",
            live.connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the `unsubscribe` event of `rid`, answering how long it took.
async fn unsubscribed(client: &mut Client, rid: &str) -> (Duration, Json) {
    let started = Instant::now();
    loop {
        let event = client.event().await;
        if event["event"] == format!("{rid}.unsubscribe") {
            return (started.elapsed(), event["data"]["reason"].clone());
        }
    }
}

#[tokio::test]
async fn a_revoked_token_loses_its_subscriptions_and_its_reads() {
    let options = LiveOptions {
        session_check: Duration::from_millis(200),
        ..LiveOptions::default()
    };
    let (_live, _toy, url) = start(options).await;
    let mut client = Client::connect(&url, Some("acme-revocable-token")).await;
    let mut other = Client::connect(&url, Some("acme-token")).await;
    assert!(
        client
            .request("subscribe.toy.items", Json::Null)
            .await
            .get("result")
            .is_some()
    );
    assert!(
        other
            .request("subscribe.toy.items", Json::Null)
            .await
            .get("result")
            .is_some()
    );
    REVOKED.lock().unwrap().push("acme-revocable-token".into());
    let (_, reason) = unsubscribed(&mut client, "toy.items").await;
    assert_eq!(reason["code"], "system.accessDenied");
    assert_eq!(reason["data"]["code"], "revoked");
    // Nothing more is read as it, and the token cannot come back.
    let r = client.request("subscribe.toy.items", Json::Null).await;
    assert_eq!(error_code(&r), "system.accessDenied");
    let r = client
        .request(
            "auth.identity.session.token",
            json!({"token": "acme-revocable-token"}),
        )
        .await;
    assert_eq!(error_code(&r), "system.accessDenied");
    // Another connection of the same tenant goes on.
    let r = other.request("get.toy.items", Json::Null).await;
    assert!(r.get("result").is_some(), "{r}");
}

#[tokio::test]
async fn an_expired_token_loses_its_subscriptions() {
    let options = LiveOptions {
        session_check: Duration::from_millis(100),
        ..LiveOptions::default()
    };
    let (_live, _toy, url) = start(options).await;
    let mut client = Client::connect(&url, None).await;
    let r = client
        .request(
            "auth.identity.session.token",
            json!({"token": "acme-brief-token"}),
        )
        .await;
    assert_eq!(r["result"]["payload"]["tenant"], "acme", "{r}");
    assert!(
        client
            .request("subscribe.toy.items", Json::Null)
            .await
            .get("result")
            .is_some()
    );
    let (after, reason) = unsubscribed(&mut client, "toy.items").await;
    assert_eq!(reason["data"]["code"], "expired");
    assert!(
        after <= Duration::from_secs(3),
        "ended {after:?} after subscribing"
    );
    let r = client.request("get.toy.items", Json::Null).await;
    assert_eq!(error_code(&r), "system.accessDenied");
}

#[tokio::test]
async fn another_tenant_is_read_only_by_who_may_read_any_and_each_read_is_recorded() {
    let (_live, toy, url) = start(LiveOptions::default()).await;
    toy.items
        .lock()
        .unwrap()
        .insert(TenantId::new("globex").unwrap(), vec!["globex's".into()]);
    // A tenant's token cannot name another tenant.
    let mut acme = Client::connect(&url, None).await;
    let r = acme
        .request(
            "auth.identity.session.token",
            json!({"token": "acme-token", "tenant": "globex"}),
        )
        .await;
    assert_eq!(error_code(&r), "system.accessDenied");
    let r = acme
        .request(
            "auth.identity.session.token",
            json!({"token": "acme-token", "tenant": 7}),
        )
        .await;
    assert_eq!(error_code(&r), "system.invalidParams");
    // Root reads globex's, recorded first; it cannot call.
    let mut root = Client::connect(&url, None).await;
    let r = root
        .request(
            "auth.identity.session.token",
            json!({"token": "root-token", "tenant": "globex"}),
        )
        .await;
    assert_eq!(r["result"]["payload"]["crossTenant"], true, "{r}");
    let r = root.request("subscribe.toy.item.0", Json::Null).await;
    assert_eq!(
        r["result"]["models"]["toy.item.0"]["name"], "globex's",
        "{r}"
    );
    assert!(
        RECORDED
            .lock()
            .unwrap()
            .contains(&("globex".to_owned(), "toy.item.0".to_owned()))
    );
    let r = root
        .request("call.toy.items.add", json!({"name": "root's"}))
        .await;
    assert_eq!(error_code(&r), "system.accessDenied");
    assert_eq!(
        toy.items.lock().unwrap()[&TenantId::new("globex").unwrap()].len(),
        1
    );
}
