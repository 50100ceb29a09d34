//! The gateway in front of real upstream servers on loopback: routing,
//! round robin, streaming, headers, failures as problems, tokens at the
//! edge, and WebSocket tunnels.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{
        DefaultBodyLimit, Request, State,
        ws::{self, WebSocketUpgrade},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cairn_auth::{
    AUDIENCE, AccessClaims, Audience, JwkSet, RoleMap, SigningKey, StaticKeys, TrustedIssuer,
    Verifier, now_secs,
};
use cairn_gateway::{Gateway, GatewayOptions, Route};
use cairn_telemetry::Metrics;
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Notify,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        self, Message, client::IntoClientRequest as _, handshake::client::Request as WsRequest,
    },
};
use tower::ServiceExt as _;

const ISSUER: &str = "http://id.test";

/// An upstream server that says who it is and what it received.
#[derive(Clone)]
struct Up {
    name: &'static str,
    base: String,
    /// Requests that reached a handler (health probes not counted).
    hits: Arc<AtomicUsize>,
    /// `/drip` sends its second chunk once this is notified.
    release: Arc<Notify>,
    /// `/upload` notifies this when the first chunk of its body arrives.
    got_first: Arc<Notify>,
    /// The request head of the last upgrade `/ws` accepted.
    upgraded: Arc<Mutex<Option<HeaderMap>>>,
    /// `/ws` notifies this when its socket ends: a close frame came, or
    /// the connection closed.
    ws_ended: Arc<Notify>,
}

impl Up {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn upstream(name: &'static str) -> Up {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Up {
        name,
        base: format!("http://{}", listener.local_addr().unwrap()),
        hits: Arc::default(),
        release: Arc::default(),
        got_first: Arc::default(),
        upgraded: Arc::default(),
        ws_ended: Arc::default(),
    };
    let app = Router::new()
        .route("/health/live", get(|| async { "live" }))
        .route("/echo", post(echo))
        .route("/upload", post(upload))
        .route("/drip", get(drip))
        .route("/slow", get(slow))
        .route("/hops", get(hops))
        .route("/ws", get(ws_echo))
        .route("/counted/ws", get(ws_echo))
        .route(
            "/ws/refused",
            get(|| async { (StatusCode::BAD_REQUEST, "no upgrade here") }),
        )
        .fallback(describe)
        .layer(DefaultBodyLimit::disable())
        .with_state(up.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    up
}

async fn describe(State(up): State<Up>, req: Request) -> Json<Value> {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let mut headers = BTreeMap::new();
    for name in req.headers().keys() {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect();
        headers.insert(name.to_string(), values.join(", "));
    }
    Json(json!({
        "upstream": up.name,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "headers": headers,
    }))
}

async fn echo(State(up): State<Up>, body: Bytes) -> Bytes {
    up.hits.fetch_add(1, Ordering::SeqCst);
    body
}

async fn upload(State(up): State<Up>, req: Request) -> String {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let mut body = req.into_body().into_data_stream();
    let mut total = 0;
    let mut first = true;
    while let Some(chunk) = body.next().await {
        total += chunk.unwrap().len();
        if first {
            up.got_first.notify_one();
            first = false;
        }
    }
    format!("received {total} bytes")
}

async fn drip(State(up): State<Up>) -> Body {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let release = up.release.clone();
    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("first")) });
    let second = futures_util::stream::once(async move {
        release.notified().await;
        Ok(Bytes::from("second"))
    });
    Body::from_stream(first.chain(second))
}

async fn slow(State(up): State<Up>) -> &'static str {
    up.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn hops(State(up): State<Up>) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    (
        [
            ("connection", "x-upstream-hop"),
            ("x-upstream-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("x-upstream-plain", "kept"),
        ],
        "hops",
    )
        .into_response()
}

/// A WebSocket echo: each text or binary message comes back as it was
/// sent; offers the subprotocol `cairn.echo`.
async fn ws_echo(State(up): State<Up>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    *up.upgraded.lock().unwrap() = Some(headers);
    upgrade
        .protocols(["cairn.echo"])
        .on_upgrade(move |mut socket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                match message {
                    ws::Message::Text(_) | ws::Message::Binary(_) => {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                    ws::Message::Close(_) => break,
                    ws::Message::Ping(_) | ws::Message::Pong(_) => {}
                }
            }
            up.ws_ended.notify_one();
        })
}

fn route(prefix: &str, upstreams: &[&Up]) -> Route {
    Route::new(
        prefix,
        upstreams.iter().map(|u| u.base.parse().unwrap()).collect(),
    )
    .unwrap()
}

/// A gateway serving on loopback; returns its base URL.
async fn serve(options: GatewayOptions) -> String {
    let gateway = Gateway::new(options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cairn_http::serve(
        listener,
        gateway.router(),
        std::future::pending(),
    ));
    base
}

async fn body(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

async fn problem(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

/// Writes `request` on a fresh connection and reads until the gateway
/// closes it (requests say `Connection: close`): status, head, body.
async fn raw(base: &str, request: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

async fn read_response(mut stream: TcpStream) -> (u16, String, Vec<u8>) {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), out[split + 4..].to_vec())
}

struct Issuer {
    key: SigningKey,
}

impl Issuer {
    fn new() -> Self {
        Self {
            key: SigningKey::generate(now_secs()).unwrap(),
        }
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(
            vec![TrustedIssuer::cairn(
                ISSUER,
                Arc::new(StaticKeys(JwkSet {
                    keys: vec![self.key.public_jwk()],
                })),
            )],
            RoleMap::default(),
        )
    }

    fn token(&self, tenant: &str) -> String {
        let now = now_secs();
        self.key
            .sign(&AccessClaims {
                iss: format!("{ISSUER}/realms/{tenant}"),
                sub: format!("{tenant}-user"),
                aud: Some(Audience::One(AUDIENCE.into())),
                exp: now + 300,
                nbf: Some(now),
                iat: Some(now),
                jti: None,
                tenant: Some(tenant.into()),
                preferred_username: None,
                roles: vec!["operator".into()],
                realm_access: None,
                scope: None,
                azp: None,
                shared: BTreeMap::new(),
            })
            .unwrap()
    }
}

#[tokio::test]
async fn each_path_goes_to_the_longest_matching_prefix() {
    let (api, flights, root) = (
        upstream("api").await,
        upstream("flights").await,
        upstream("root").await,
    );
    let gw = serve(GatewayOptions::new(vec![
        route("/api", &[&api]),
        route("/api/flights", &[&flights]),
    ]))
    .await;
    let client = Client::new();
    let get = |path: &str| client.get(format!("{gw}{path}")).send();
    let r = body(get("/api/flights/7?limit=2&x=%20y").await.unwrap()).await;
    assert_eq!(r["upstream"], "flights");
    assert_eq!(
        r["target"], "/api/flights/7?limit=2&x=%20y",
        "path and query unchanged"
    );
    assert_eq!(
        body(get("/api/flights").await.unwrap()).await["upstream"],
        "flights"
    );
    assert_eq!(
        body(get("/api/flightsx").await.unwrap()).await["upstream"],
        "api"
    );
    assert_eq!(body(get("/api").await.unwrap()).await["upstream"], "api");
    let r = client
        .delete(format!("{gw}/api/flights/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["method"], "DELETE");

    // No route: a problem, and no upstream hears of it.
    let before = api.hits() + flights.hits();
    problem(
        get("/apix").await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    problem(get("/").await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(api.hits() + flights.hits(), before);

    // `/` catches what nothing longer does.
    let gw = serve(GatewayOptions::new(vec![
        route("/", &[&root]),
        route("/api", &[&api]),
    ]))
    .await;
    let r = body(client.get(format!("{gw}/other")).send().await.unwrap()).await;
    assert_eq!(r["upstream"], "root");
    let r = body(client.get(format!("{gw}/api/x")).send().await.unwrap()).await;
    assert_eq!(r["upstream"], "api");
}

#[tokio::test]
async fn a_route_takes_its_upstreams_in_turn() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let gw = serve(GatewayOptions::new(vec![route("/api", &[&a, &b])])).await;
    let client = Client::new();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = body(client.get(format!("{gw}/api/x")).send().await.unwrap()).await;
        seen.push(r["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!((a.hits(), b.hits()), (3, 3));
}

#[tokio::test]
async fn large_bodies_stream_through_both_ways() {
    let up = upstream("echo").await;
    let gw = serve(GatewayOptions::new(vec![route("/", &[&up])])).await;
    let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = Client::new()
        .post(format!("{gw}/echo"))
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got[..] == sent[..], "the body came back changed");
}

#[tokio::test]
async fn bodies_are_forwarded_as_they_arrive_not_buffered() {
    let up = upstream("stream").await;
    let gw = serve(GatewayOptions::new(vec![route("/", &[&up])])).await;

    // Response: the upstream sends its second chunk only after the client
    // has received the first through the gateway.
    let mut r = Client::new()
        .get(format!("{gw}/drip"))
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the first chunk arrives before the response is complete")
        .unwrap()
        .unwrap();
    assert_eq!(first, "first");
    up.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");

    // Request: the client sends the rest of its body only after the
    // upstream has received the first chunk through the gateway.
    let mut stream = TcpStream::connect(gw.trim_start_matches("http://"))
        .await
        .unwrap();
    let chunk = "x".repeat(1000);
    stream
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n",
                chunk.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), up.got_first.notified())
        .await
        .expect("the first chunk reaches the upstream before the body is complete");
    stream
        .write_all(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    let (status, _, body) = read_response(stream).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("received 2000 bytes"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn hop_by_hop_headers_stay_behind_and_forwarding_headers_are_set() {
    let up = upstream("headers").await;
    let gw = serve(GatewayOptions::new(vec![route("/", &[&up])])).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, head, answer) = raw(
        &gw,
        &format!(
            "GET /api/x?q=1 HTTP/1.1\r\n\
             Host: public.example\r\n\
             Connection: close, X-Hop\r\n\
             X-Hop: secret\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Authorization: Basic eDp5\r\n\
             TE: trailers\r\n\
             Trailer: x-checksum\r\n\
             Upgrade: websocket\r\n\
             X-Forwarded-For: 203.0.113.9\r\n\
             Authorization: Bearer opaque\r\n\
             traceparent: {traceparent}\r\n\
             X-Cairn-Tenant: demo\r\n\
             X-Correlation-Id: corr-7\r\n\
             \r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-correlation-id: corr-7"), "{head}");
    let seen: Value = serde_json::from_slice(&answer).unwrap();
    let headers = seen["headers"].as_object().unwrap();
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!headers.contains_key(gone), "{gone} was forwarded: {seen}");
    }
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "public.example");
    assert_eq!(headers["host"], up.base.trim_start_matches("http://"));
    assert_eq!(headers["authorization"], "Bearer opaque");
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(headers["x-cairn-tenant"], "demo");
    assert_eq!(headers["x-correlation-id"], "corr-7");
    assert_eq!(seen["target"], "/api/x?q=1");

    // Without a correlation id, the upstream and the caller get the same
    // fresh one.
    let r = Client::new()
        .get(format!("{gw}/api/x"))
        .send()
        .await
        .unwrap();
    let given = r.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    let seen = body(r).await;
    assert_eq!(seen["headers"]["x-correlation-id"], given.as_str());
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");

    // The response side too.
    let r = Client::new()
        .get(format!("{gw}/hops"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!r.headers().contains_key(gone), "{gone} came back");
    }
    assert_eq!(r.headers()["x-upstream-plain"], "kept");
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let gw = serve(GatewayOptions::new(vec![
        Route::new("/api", vec![closed.parse().unwrap()]).unwrap(),
    ]))
    .await;
    let r = Client::new()
        .get(format!("{gw}/api/flights"))
        .header("x-correlation-id", "dead-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], "dead-1");
    let body = problem(r, StatusCode::BAD_GATEWAY, "unavailable").await;
    assert!(
        !body["detail"].as_str().unwrap().contains("127.0.0.1"),
        "a 5xx says nothing of the inside: {body}"
    );
}

#[tokio::test]
async fn a_slow_upstream_is_504_after_the_timeout() {
    let up = upstream("slow").await;
    let mut options = GatewayOptions::new(vec![route("/", &[&up])]);
    options.upstream_timeout = Duration::from_millis(300);
    let gw = serve(options).await;
    let started = Instant::now();
    let r = Client::new()
        .get(format!("{gw}/slow"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let up = upstream("limit").await;
    let mut options = GatewayOptions::new(vec![route("/", &[&up])]);
    options.body_limit_bytes = 1024;
    let gateway = Gateway::new(options.clone()).unwrap();
    let gw = serve(options).await;

    // Declared too large: refused before anything is forwarded.
    let (status, head, body) = raw(
        &gw,
        "POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{head}");
    assert!(head.contains("content-type: application/problem+json"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "payload_too_large");
    assert_eq!(up.hits(), 0);

    // Exactly the limit passes.
    let r = Client::new()
        .post(format!("{gw}/echo"))
        .body(vec![7u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 1024);

    // A streamed body without a length is cut off where it passes the
    // limit; the caller gets 413, not the upstream's failure.
    let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 512])));
    let request = axum::http::Request::post("/echo")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let response = gateway.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn without_a_valid_token_nothing_reaches_an_upstream() {
    let issuer = Issuer::new();
    let up = upstream("guarded").await;
    let mut options = GatewayOptions::new(vec![route("/api", &[&up])]);
    options.verifier = Some(issuer.verifier());
    let gw = serve(options).await;
    let client = Client::new();

    let r = client
        .get(format!("{gw}/api/flights"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="cairn""#);
    problem(r, StatusCode::UNAUTHORIZED, "missing_token").await;
    let token = issuer.token("demo");
    let (unsigned, _) = token.rsplit_once('.').unwrap();
    for bad in [
        format!("Bearer {unsigned}.AAAA"),
        format!("Basic {token}"),
        "Bearer".to_owned(),
        format!("Bearer {}", Issuer::new().token("demo")),
    ] {
        let r = client
            .post(format!("{gw}/api/flights"))
            .header("authorization", &bad)
            .header("x-cairn-tenant", "demo")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
        if bad.starts_with("Bearer ") {
            let challenge = r.headers()["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.starts_with(r#"Bearer realm="cairn", error="invalid_token", "#),
                "{challenge}"
            );
        }
    }
    // An unknown path is no way to learn what is routed.
    let r = client.get(format!("{gw}/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(up.hits(), 0, "no refused request reached the upstream");

    // A valid token passes, untouched; another tenant's header goes along
    // for the service to judge.
    let r = client
        .get(format!("{gw}/api/flights"))
        .bearer_auth(&token)
        .header("x-cairn-tenant", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = body(r).await;
    assert_eq!(seen["headers"]["authorization"], format!("Bearer {token}"));
    assert_eq!(seen["headers"]["x-cairn-tenant"], "globex");
    assert_eq!(up.hits(), 1);
    // With a token, an unknown path is 404.
    let r = client
        .get(format!("{gw}/nothing"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn public_paths_need_no_token() {
    let issuer = Issuer::new();
    let (identity, root) = (upstream("identity").await, upstream("root").await);
    let mut options =
        GatewayOptions::new(vec![route("/realms", &[&identity]), route("/", &[&root])]);
    options.verifier = Some(issuer.verifier());
    let gw = serve(options).await;
    let client = Client::new();
    let get = |path: &str| client.get(format!("{gw}{path}")).send();
    let r = get("/realms/demo/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(body(r).await["upstream"], "identity");
    let r = client
        .post(format!("{gw}/realms/demo/protocol/openid-connect/token"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["upstream"], "identity");
    // The gateway's own document, without a token (this root upstream
    // has none to give).
    problem(
        get("/openapi.json").await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert_eq!(get("/health/live").await.unwrap().status(), StatusCode::OK);
    // Public on a segment boundary only.
    assert_eq!(
        get("/realmsx").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/api/flights").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // No climbing out of a public prefix (sent raw: a URL library would
    // resolve the dots before sending).
    for path in ["/realms/../api/flights", "/realms/%2E%2e/api/flights"] {
        let (status, head, _) = raw(
            &gw,
            &format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {head}");
    }
    assert_eq!(
        root.hits(),
        1,
        "only the gateway's own ask for /openapi.json reached the root route"
    );
}

#[tokio::test]
async fn health_and_metrics_are_the_gateways_own() {
    let metrics = Metrics::install();
    let (a, b) = (upstream("a").await, upstream("b").await);
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut options = GatewayOptions::new(vec![
        route("/api/flights", &[&a]),
        // One of two upstreams down: still ready.
        Route::new(
            "/api/passengers",
            vec![closed.parse().unwrap(), b.base.parse().unwrap()],
        )
        .unwrap(),
    ]);
    options.metrics = Some(metrics);
    let gw = serve(options.clone()).await;
    let client = Client::new();
    let r = client
        .get(format!("{gw}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["status"], "live");
    let r = client
        .get(format!("{gw}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ready = body(r).await;
    assert_eq!(ready["checks"]["/api/flights"]["status"], "up", "{ready}");
    assert_eq!(
        ready["checks"]["/api/passengers"]["status"], "up",
        "{ready}"
    );
    assert_eq!(a.hits() + b.hits(), 0, "health probes are not requests");

    // A route none of whose upstreams answers makes the gateway unready.
    options
        .routes
        .push(Route::new("/api/audit", vec![closed.parse().unwrap()]).unwrap());
    let unready = serve(options).await;
    let r = client
        .get(format!("{unready}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report = body(r).await;
    assert_eq!(report["checks"]["/api/audit"]["status"], "down", "{report}");

    // RED metrics by route prefix, never by path.
    let r = client
        .get(format!("{gw}/api/flights/0190b3f0-secret-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    client.get(format!("{gw}/unrouted/x")).send().await.unwrap();
    let text = client
        .get(format!("{gw}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"cairn_http_requests_total{method="GET",route="/api/flights",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"cairn_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/health/ready""#), "{text}");
    assert!(!text.contains("secret-id"), "{text}");
    assert!(!text.contains("/unrouted"), "{text}");
}

/// A service as the gateway sees one: its own OpenAPI document (paths under
/// its prefixes, one path the gateway does not route, and the projections
/// API) and the projections admin API over the projections it runs, with
/// opaque tokens (`Bearer admin` may, `Bearer viewer` is 403, anything
/// else 401).
#[derive(Clone)]
struct Service {
    name: &'static str,
    base: String,
    prefixes: Vec<&'static str>,
    projections: Vec<&'static str>,
    /// Requests under `/api/projections` that reached it.
    hits: Arc<AtomicUsize>,
    /// `GET /openapi.json` asked of it.
    documents: Arc<AtomicUsize>,
    /// Headers of the last request under `/api/projections`.
    last_headers: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
}

impl Service {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn documents(&self) -> usize {
        self.documents.load(Ordering::SeqCst)
    }

    fn last_header(&self, name: &str) -> Option<String> {
        self.last_headers.lock().unwrap().get(name).cloned()
    }
}

async fn service(
    name: &'static str,
    prefixes: &[&'static str],
    projections: &[&'static str],
) -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = Service {
        name,
        base: format!("http://{}", listener.local_addr().unwrap()),
        prefixes: prefixes.to_vec(),
        projections: projections.to_vec(),
        hits: Arc::default(),
        documents: Arc::default(),
        last_headers: Arc::default(),
    };
    let app = Router::new()
        .route("/health/live", get(|| async { "live" }))
        .route("/openapi.json", get(document))
        .route("/api/projections", get(projection_list))
        .route("/api/projections/{name}", get(projection_status))
        .route(
            "/api/projections/{name}/{*rest}",
            axum::routing::any(projection_action),
        )
        .with_state(svc.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    svc
}

async fn document(State(svc): State<Service>) -> Json<Value> {
    svc.documents.fetch_add(1, Ordering::SeqCst);
    let mut paths = serde_json::Map::new();
    let op = |what: &str| json!({"get": {"responses": {"200": {"description": what}}}});
    for prefix in &svc.prefixes {
        paths.insert((*prefix).to_owned(), op(svc.name));
        paths.insert(format!("{prefix}/{{id}}"), op(svc.name));
    }
    paths.insert("/internal/debug".into(), op("not routed"));
    paths.insert("/health/live".into(), op("the service's own"));
    paths.insert("/api/projections".into(), op("projections"));
    paths.insert("/api/projections/{name}".into(), op("one projection"));
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": svc.name, "version": "1"},
        "paths": paths,
        "components": {"schemas": {format!("{}Thing", svc.name): {"type": "object"}}},
    }))
}

/// The admin API's token rule, on the contract's terms.
fn refused(svc: &Service, headers: &axum::http::HeaderMap) -> Option<Response> {
    svc.hits.fetch_add(1, Ordering::SeqCst);
    let mut seen = BTreeMap::new();
    for (name, value) in headers {
        seen.insert(name.to_string(), value.to_str().unwrap_or("?").to_owned());
    }
    *svc.last_headers.lock().unwrap() = seen;
    let problem = |status: u16, code: &str| {
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/problem+json")],
            json!({"status": status, "code": code, "from": svc.name}).to_string(),
        )
            .into_response()
    };
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer admin") => None,
        Some("Bearer viewer") => Some(problem(403, "forbidden")),
        _ => {
            let mut r = problem(401, "unauthenticated");
            r.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static(r#"Bearer realm="cairn""#),
            );
            Some(r)
        }
    }
}

fn unknown_projection(svc: &Service) -> Response {
    (
        axum::http::StatusCode::NOT_FOUND,
        [("content-type", "application/problem+json")],
        json!({"status": 404, "code": "not_found", "from": svc.name}).to_string(),
    )
        .into_response()
}

async fn projection_list(State(svc): State<Service>, headers: axum::http::HeaderMap) -> Response {
    if let Some(refusal) = refused(&svc, &headers) {
        return refusal;
    }
    if svc.projections.is_empty() {
        // A service without projections mounts no admin API.
        return unknown_projection(&svc);
    }
    let list: Vec<Value> = svc
        .projections
        .iter()
        .map(|p| json!({"name": p, "state": "running", "reportedBy": svc.name}))
        .collect();
    Json(list).into_response()
}

async fn projection_status(
    State(svc): State<Service>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(refusal) = refused(&svc, &headers) {
        return refusal;
    }
    if !svc.projections.contains(&name.as_str()) {
        return unknown_projection(&svc);
    }
    Json(json!({"name": name, "state": "failed", "reportedBy": svc.name})).into_response()
}

async fn projection_action(
    State(svc): State<Service>,
    axum::extract::Path((name, rest)): axum::extract::Path<(String, String)>,
    req: Request,
) -> Response {
    if let Some(refusal) = refused(&svc, req.headers()) {
        return refusal;
    }
    if !svc.projections.contains(&name.as_str()) {
        return unknown_projection(&svc);
    }
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let body = axum::body::to_bytes(req.into_body(), 1024).await.unwrap();
    let status = if rest == "rebuild" {
        axum::http::StatusCode::ACCEPTED
    } else {
        axum::http::StatusCode::OK
    };
    (
        status,
        Json(json!({
            "upstream": svc.name,
            "method": method,
            "target": target,
            "body": String::from_utf8_lossy(&body),
        })),
    )
        .into_response()
}

fn svc_route(prefix: &str, services: &[&Service]) -> Route {
    Route::new(
        prefix,
        services.iter().map(|s| s.base.parse().unwrap()).collect(),
    )
    .unwrap()
}

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn the_gateway_serves_one_document_merged_from_its_routes() {
    let flights = service("flights", &["/api/flights"], &["flights"]).await;
    // One upstream behind two routes (as the identity service is): asked once.
    let shared = service("shared", &["/api/passengers", "/api/audit"], &[]).await;
    let not_openapi = upstream("plain").await;
    let gw = serve(GatewayOptions::new(vec![
        // A dead upstream first: the next one of the route is asked.
        Route::new(
            "/api/flights",
            vec![
                closed_port().parse().unwrap(),
                flights.base.parse().unwrap(),
            ],
        )
        .unwrap(),
        svc_route("/api/passengers", &[&shared]),
        svc_route("/api/audit", &[&shared]),
        // Answers JSON that is no OpenAPI document: left out.
        route("/api/other", &[&not_openapi]),
    ]))
    .await;
    let client = Client::new();
    let r = client
        .get(format!("{gw}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc = body(r).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for routed in [
        "/api/flights",
        "/api/flights/{id}",
        "/api/passengers",
        "/api/passengers/{id}",
        "/api/audit",
        "/api/audit/{id}",
        "/api/projections",
        "/api/projections/{name}",
        "/health/live",
        "/health/ready",
    ] {
        assert!(paths.contains(&routed), "{routed} missing: {paths:?}");
    }
    assert!(
        !paths.contains(&"/internal/debug"),
        "a path the gateway does not route is not advertised: {paths:?}"
    );
    assert_eq!(
        doc["paths"]["/health/live"]["get"]["responses"]["200"]["description"]
            .as_str()
            .map(|d| d != "the service's own"),
        Some(true),
        "health is the gateway's own: {}",
        doc["paths"]["/health/live"]
    );
    assert_eq!(
        doc["paths"]["/api/flights"]["get"]["responses"]["200"]["description"],
        "flights"
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in ["flightsThing", "sharedThing", "Problem"] {
        assert!(schemas.contains_key(schema), "{schema}: {schemas:?}");
    }
    assert_eq!(
        shared.documents(),
        1,
        "an upstream of two routes is asked once"
    );
    assert_eq!(flights.documents(), 1);

    // Kept for a while: a burst of requests asks the upstreams once.
    for _ in 0..5 {
        let r = client
            .get(format!("{gw}/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!((flights.documents(), shared.documents()), (1, 1));
}

#[tokio::test]
async fn without_any_upstream_document_openapi_is_503() {
    let plain = upstream("plain").await;
    let gw = serve(GatewayOptions::new(vec![
        Route::new("/api/flights", vec![closed_port().parse().unwrap()]).unwrap(),
        route("/api/other", &[&plain]),
    ]))
    .await;
    let r = Client::new()
        .get(format!("{gw}/openapi.json"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

#[tokio::test]
async fn the_projections_list_is_every_services_list() {
    let flights = service("flights", &["/api/flights"], &["flights"]).await;
    let replica = service("flights-2", &["/api/flights"], &["flights"]).await;
    let passengers = service("passengers", &["/api/passengers"], &["passengers"]).await;
    let audit = service("audit", &["/api/audit"], &[]).await;
    let gw = serve(GatewayOptions::new(vec![
        svc_route("/api/flights", &[&flights, &replica]),
        svc_route("/api/passengers", &[&passengers]),
        svc_route("/api/audit", &[&audit]),
    ]))
    .await;
    let client = Client::new();
    let list = |token: &'static str| {
        client
            .get(format!("{gw}/api/projections"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-correlation-id", "list-1")
            .send()
    };

    let r = list("admin").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-correlation-id"], "list-1");
    let items = body(r).await;
    let mut names: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["flights", "passengers"],
        "replicas listed once: {items}"
    );
    for svc in [&flights, &replica, &passengers, &audit] {
        assert_eq!(svc.hits(), 1, "{} asked once", svc.name);
        assert_eq!(
            svc.last_header("authorization").as_deref(),
            Some("Bearer admin")
        );
        assert_eq!(
            svc.last_header("x-correlation-id").as_deref(),
            Some("list-1")
        );
    }

    // No upstream answers 200: its refusal is passed through as it came.
    let r = list("viewer").await.unwrap();
    let refusal = problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(refusal["from"].is_string(), "the upstream's own: {refusal}");
    let r = client
        .get(format!("{gw}/api/projections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="cairn""#);
    problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;

    // The list is read-only.
    let r = client
        .post(format!("{gw}/api/projections"))
        .header("authorization", "Bearer admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn an_unreachable_or_empty_backend_for_projections() {
    let audit = service("audit", &["/api/audit"], &[]).await;
    // Only services without projections: an empty list, not an error.
    let gw = serve(GatewayOptions::new(vec![svc_route(
        "/api/audit",
        &[&audit],
    )]))
    .await;
    let client = Client::new();
    let r = client
        .get(format!("{gw}/api/projections"))
        .header("authorization", "Bearer admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await, json!([]));
    let r = client
        .get(format!("{gw}/api/projections/flights"))
        .header("authorization", "Bearer admin")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND, "not_found").await;

    // Nobody reachable: the gateway's own 502, not an empty list.
    let gw = serve(GatewayOptions::new(vec![
        Route::new("/api/flights", vec![closed_port().parse().unwrap()]).unwrap(),
    ]))
    .await;
    for path in ["/api/projections", "/api/projections/flights/retry"] {
        let r = client
            .post(format!("{gw}{path}"))
            .header("authorization", "Bearer admin")
            .send()
            .await
            .unwrap();
        if path == "/api/projections" {
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
            continue;
        }
        problem(r, StatusCode::BAD_GATEWAY, "unavailable").await;
    }
    let r = client
        .get(format!("{gw}/api/projections"))
        .header("authorization", "Bearer admin")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_GATEWAY, "unavailable").await;
}

#[tokio::test]
async fn a_projections_requests_go_to_the_service_that_owns_it() {
    let flights = service("flights", &["/api/flights"], &["flights"]).await;
    let passengers = service("passengers", &["/api/passengers"], &["passengers"]).await;
    let gw = serve(GatewayOptions::new(vec![
        svc_route("/api/flights", &[&flights]),
        svc_route("/api/passengers", &[&passengers]),
    ]))
    .await;
    let client = Client::new();
    let admin = "Bearer admin";

    let r = client
        .get(format!("{gw}/api/projections/passengers"))
        .header("authorization", admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["reportedBy"], "passengers");

    let r = client
        .post(format!("{gw}/api/projections/passengers/skip"))
        .header("authorization", admin)
        .header("x-correlation-id", "skip-1")
        .json(&json!({"position": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = body(r).await;
    assert_eq!(seen["upstream"], "passengers");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], r#"{"position":42}"#);
    assert_eq!(
        passengers.last_header("x-correlation-id").as_deref(),
        Some("skip-1")
    );

    let r = client
        .post(format!("{gw}/api/projections/flights/rebuild"))
        .header("authorization", admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "the owner's status, unchanged"
    );
    assert_eq!(body(r).await["upstream"], "flights");

    let r = client
        .get(format!(
            "{gw}/api/projections/flights/dead-letters?after=3&limit=2"
        ))
        .header("authorization", admin)
        .send()
        .await
        .unwrap();
    let seen = body(r).await;
    assert_eq!(seen["upstream"], "flights");
    assert_eq!(
        seen["target"],
        "/api/projections/flights/dead-letters?after=3&limit=2"
    );

    // Unknown everywhere: 404, and nothing was done anywhere.
    let before = flights.hits() + passengers.hits();
    let r = client
        .post(format!("{gw}/api/projections/nope/retry"))
        .header("authorization", admin)
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::NOT_FOUND, "not_found").await;
    assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
    assert_eq!(
        flights.hits() + passengers.hits(),
        before + 2,
        "only the two status lookups"
    );

    // A caller the owner refuses gets the owner's refusal.
    let r = client
        .post(format!("{gw}/api/projections/flights/retry"))
        .header("authorization", "Bearer viewer")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn tokens_are_checked_and_preflights_answered_at_the_edge() {
    let issuer = Issuer::new();
    let up = upstream("api").await;
    let flights = service("flights", &["/api/flights"], &["flights"]).await;
    let console = "https://console.example";
    let mut options = GatewayOptions::new(vec![
        route("/api/passengers", &[&up]),
        svc_route("/api/flights", &[&flights]),
    ]);
    options.verifier = Some(issuer.verifier());
    options.cors = cairn_http::CorsOptions::new([console], true).unwrap();
    let gw = serve(options).await;
    let client = Client::new();

    // The composed projections need a token like any API path.
    let r = client
        .get(format!("{gw}/api/projections"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED, "missing_token").await;
    assert_eq!(flights.hits(), 0, "refused at the edge");
    // The document does not.
    let r = client
        .get(format!("{gw}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Preflights: answered here on any path, without a token, never
    // forwarded; only the allowed origin is allowed.
    let before = up.hits();
    for path in ["/api/passengers/7", "/api/projections", "/nowhere"] {
        let r = client
            .request(reqwest::Method::OPTIONS, format!("{gw}{path}"))
            .header("origin", console)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, if-match")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], console);
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        let refused = client
            .request(reqwest::Method::OPTIONS, format!("{gw}{path}"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(
            !refused
                .headers()
                .contains_key("access-control-allow-origin"),
            "{path}"
        );
    }
    assert_eq!(up.hits(), before, "no preflight was forwarded");

    // An actual request: the upstream's answer, with the edge's CORS headers.
    let r = client
        .get(format!("{gw}/api/passengers/7"))
        .header("origin", console)
        .bearer_auth(issuer.token("demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], console);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["location", "etag", "x-cairn-position", "x-correlation-id"] {
        assert!(exposed.contains(h), "{h}: {exposed}");
    }
    assert_eq!(body(r).await["upstream"], "api");
    // Refused at the edge, a page can still read why.
    let r = client
        .get(format!("{gw}/api/passengers/7"))
        .header("origin", console)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["access-control-allow-origin"], console);
}

/// A WebSocket request for `path` through the gateway at `gw`, with
/// `headers` added to the handshake.
fn ws_request(gw: &str, path: &str, headers: &[(&'static str, &str)]) -> WsRequest {
    let mut request = format!("{}{path}", gw.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    request
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sends `message` and returns what comes back.
async fn round_trip(ws: &mut Ws, message: Message) -> Message {
    ws.send(message).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo in time")
        .expect("the tunnel is open")
        .unwrap()
}

/// The status of a handshake the gateway did not switch.
async fn handshake_refused(request: WsRequest) -> StatusCode {
    match connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => response.status(),
        other => panic!("expected a refused handshake: {other:?}"),
    }
}

#[tokio::test]
async fn a_websocket_is_tunnelled_to_the_upstream() {
    let up = upstream("ws").await;
    // A route of its own, so that its tunnels alone are counted under it.
    let mut options = GatewayOptions::new(vec![route("/counted", &[&up])]);
    // Neither bounds the tunnel: the timeout is for the 101 head, the
    // limit for request bodies.
    options.upstream_timeout = Duration::from_millis(300);
    options.body_limit_bytes = 1024;
    options.metrics = Some(Metrics::install());
    let gw = serve(options).await;

    let (mut ws, response) = connect_async(ws_request(
        &gw,
        "/counted/ws?room=7",
        &[
            ("sec-websocket-protocol", "cairn.echo"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-correlation-id", "ws-1"),
            ("proxy-authorization", "Basic eDp5"),
            ("x-cairn-tenant", "demo"),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let h = response.headers();
    assert!(
        h["upgrade"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    assert!(
        h["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
    assert!(h.contains_key("sec-websocket-accept"), "{h:?}");
    assert_eq!(h["sec-websocket-protocol"], "cairn.echo");
    assert_eq!(h["x-correlation-id"], "ws-1");

    // What the upstream was asked: the upgrade kept, the rest as for any
    // request.
    let seen = up.upgraded.lock().unwrap().clone().expect("an upgrade");
    assert!(
        seen["upgrade"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    assert_eq!(seen["connection"], "upgrade");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], gw.trim_start_matches("http://"));
    assert_eq!(seen["host"], up.base.trim_start_matches("http://"));
    assert_eq!(seen["x-correlation-id"], "ws-1");
    assert_eq!(seen["x-cairn-tenant"], "demo");
    assert_eq!(seen["sec-websocket-protocol"], "cairn.echo");
    assert!(seen.contains_key("sec-websocket-key"));
    assert!(!seen.contains_key("proxy-authorization"));

    for text in ["hello", "second", "third"] {
        assert_eq!(
            round_trip(&mut ws, Message::text(text)).await,
            Message::text(text)
        );
    }
    // Past the upstream timeout, and larger than the body limit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let large: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        round_trip(&mut ws, Message::binary(large.clone())).await,
        Message::binary(large)
    );

    // Open tunnels are counted by route.
    let tunnels = r#"cairn_gateway_tunnels{route="/counted"}"#;
    assert_eq!(sample(&gw, tunnels).await, Some(1.0));

    // The caller closes: the upstream sees it, and the tunnel is gone.
    ws.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), up.ws_ended.notified())
        .await
        .expect("the upstream's socket ends");
    assert_eq!(up.hits(), 1);
    // Its side ends when the client lets go of its connection too.
    drop(ws);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(&gw, tunnels).await != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the tunnel is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the series `series` (name and labels, as exposed) on the
/// gateway's `/metrics`.
async fn sample(gw: &str, series: &str) -> Option<f64> {
    let text = Client::new()
        .get(format!("{gw}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn a_caller_that_goes_away_closes_the_upstream_side() {
    let up = upstream("ws").await;
    let gw = serve(GatewayOptions::new(vec![route("/", &[&up])])).await;
    let (mut ws, _) = connect_async(ws_request(&gw, "/ws", &[])).await.unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("hi")).await,
        Message::text("hi")
    );
    // No close frame: the connection just goes.
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), up.ws_ended.notified())
        .await
        .expect("the upstream's socket ends when the caller's connection does");
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_is_answered_as_it_came() {
    let up = upstream("ws").await;
    let gw = serve(GatewayOptions::new(vec![route("/", &[&up])])).await;
    assert_eq!(
        handshake_refused(ws_request(&gw, "/ws/refused", &[])).await,
        StatusCode::BAD_REQUEST
    );
    // A plain route: the upstream's 200, passed on, switches nothing.
    assert_eq!(
        handshake_refused(ws_request(&gw, "/api/x", &[])).await,
        StatusCode::OK
    );

    // Only WebSocket is passed: another upgrade goes on as a plain
    // request, without its upgrade headers.
    let (status, head, answer) = raw(
        &gw,
        "GET /api/x HTTP/1.1\r\n\
         Host: gw\r\n\
         Connection: Upgrade, HTTP2-Settings, close\r\n\
         Upgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\
         \r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let seen: Value = serde_json::from_slice(&answer).unwrap();
    let headers = seen["headers"].as_object().unwrap();
    for gone in ["connection", "upgrade", "http2-settings"] {
        assert!(!headers.contains_key(gone), "{gone} was forwarded: {seen}");
    }
    assert!(up.upgraded.lock().unwrap().is_none());

    // An upstream that switches to what was not asked: the gateway's 502,
    // no tunnel.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let odd = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await.unwrap();
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let gw = serve(GatewayOptions::new(vec![
        Route::new("/", vec![odd.parse().unwrap()]).unwrap(),
    ]))
    .await;
    assert_eq!(
        handshake_refused(ws_request(&gw, "/ws", &[])).await,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn a_websocket_needs_a_token_like_any_request() {
    let issuer = Issuer::new();
    let up = upstream("ws").await;
    let mut options = GatewayOptions::new(vec![route("/ws", &[&up])]);
    options.verifier = Some(issuer.verifier());
    let gw = serve(options).await;

    assert_eq!(
        handshake_refused(ws_request(&gw, "/ws", &[])).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        handshake_refused(ws_request(
            &gw,
            "/ws",
            &[("authorization", "Bearer not-a-token")]
        ))
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(up.hits(), 0, "no refused upgrade reached the upstream");

    let token = format!("Bearer {}", issuer.token("demo"));
    let (mut ws, _) = connect_async(ws_request(&gw, "/ws", &[("authorization", &token)]))
        .await
        .unwrap();
    assert_eq!(
        round_trip(&mut ws, Message::text("with a token")).await,
        Message::text("with a token")
    );
    let seen = up.upgraded.lock().unwrap().clone().unwrap();
    assert_eq!(seen["authorization"], token.as_str(), "forwarded untouched");
}
