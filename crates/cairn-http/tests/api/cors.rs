//! CORS through the standard stack: preflights are answered on every path
//! before tokens and methods are looked at, only allowed origins get
//! `Access-Control-Allow-Origin`, actual responses expose Cairn's headers,
//! and with no origin configured nothing changes.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode as AxumStatus, header},
    response::IntoResponse,
    routing::{get, post},
};
use cairn_auth::{
    AUDIENCE, AccessClaims, Audience, JwkSet, RoleMap, SigningKey, StaticKeys, TrustedIssuer,
    Verifier, now_secs,
};
use cairn_http::{AuthOptions, Context, CorsOptions, HttpOptions, app, serve};
use reqwest::{Method, StatusCode};

const ISSUER: &str = "http://id.test";
const CONSOLE: &str = "https://console.example";

struct Fixture {
    base: String,
    key: SigningKey,
}

async fn start(cors: CorsOptions) -> Fixture {
    let key = SigningKey::generate(now_secs()).unwrap();
    let verifier = Verifier::new(
        vec![TrustedIssuer::cairn(
            ISSUER,
            Arc::new(StaticKeys(JwkSet {
                keys: vec![key.public_jwk()],
            })),
        )],
        RoleMap::default(),
    );
    let options = HttpOptions {
        auth: Some(AuthOptions::new(verifier, None)),
        cors,
        ..HttpOptions::default()
    };
    let created = |_: Context| async {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_static("/api/things/1"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"0\""));
        headers.insert("x-cairn-position", HeaderValue::from_static("7"));
        (AxumStatus::CREATED, headers, "{}").into_response()
    };
    let api = Router::new().route("/api/things", post(created));
    let public = Router::new().route("/health/live", get(|| async { "live" }));
    let router = app(api, public, &options, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, router, std::future::pending()));
    Fixture { base, key }
}

impl Fixture {
    fn token(&self) -> String {
        let now = now_secs();
        self.key
            .sign(&AccessClaims {
                iss: format!("{ISSUER}/realms/demo"),
                sub: "demo-user".into(),
                aud: Some(Audience::One(AUDIENCE.into())),
                exp: now + 300,
                nbf: Some(now),
                iat: Some(now),
                jti: None,
                tenant: Some("demo".into()),
                preferred_username: None,
                roles: vec!["operator".into()],
                realm_access: None,
                scope: None,
                azp: None,
                shared: BTreeMap::new(),
            })
            .unwrap()
    }

    async fn preflight(&self, path: &str, origin: &str) -> reqwest::Response {
        reqwest::Client::new()
            .request(Method::OPTIONS, format!("{}{path}", self.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
            .await
            .unwrap()
    }
}

fn allowed(r: &reqwest::Response) -> Option<&str> {
    r.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap())
}

fn listed(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_on_every_path_without_a_token() {
    let cors = CorsOptions::new([CONSOLE, "http://127.0.0.1:3000"], true)
        .unwrap()
        .with_max_age(std::time::Duration::from_secs(120))
        .unwrap();
    let app = start(cors).await;
    // An API path (needs a token), a public one, and one no route serves:
    // never 401, 404 or 405.
    for path in ["/api/things", "/health/live", "/nowhere"] {
        let r = app.preflight(path, CONSOLE).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(allowed(&r), Some(CONSOLE), "{path}");
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        assert_eq!(r.headers()["access-control-max-age"], "120");
        let methods = listed(&r, "access-control-allow-methods");
        for m in ["get", "post", "put", "patch", "delete"] {
            assert!(methods.contains(&m.to_owned()), "{methods:?}");
        }
        let headers = listed(&r, "access-control-allow-headers");
        for h in [
            "authorization",
            "content-type",
            "if-match",
            "idempotency-key",
            "x-correlation-id",
            "x-cairn-tenant",
            "traceparent",
        ] {
            assert!(headers.contains(&h.to_owned()), "{h}: {headers:?}");
        }
        assert!(r.text().await.unwrap().is_empty());
    }
    let other_allowed = app.preflight("/api/things", "http://127.0.0.1:3000").await;
    assert_eq!(allowed(&other_allowed), Some("http://127.0.0.1:3000"));
}

#[tokio::test]
async fn a_preflight_from_another_origin_gets_no_allow_origin() {
    let app = start(CorsOptions::new([CONSOLE], false).unwrap()).await;
    for origin in [
        "https://evil.example",
        "http://console.example",
        "https://console.example:8443",
        "null",
    ] {
        let r = app.preflight("/api/things", origin).await;
        assert!(
            allowed(&r).is_none(),
            "{origin} was allowed: {:?}",
            r.headers()
        );
        assert!(!r.headers().contains_key("access-control-allow-credentials"));
    }
    // The actual request from another origin is answered (the browser
    // withholds it from the page), without an allowed origin either.
    let r = reqwest::Client::new()
        .post(format!("{}/api/things", app.base))
        .header("origin", "https://evil.example")
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(allowed(&r).is_none());
}

#[tokio::test]
async fn actual_responses_allow_the_origin_and_expose_cairns_headers() {
    let app = start(CorsOptions::new([CONSOLE], false).unwrap()).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/things", app.base))
        .header("origin", CONSOLE)
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(allowed(&r), Some(CONSOLE));
    assert!(!r.headers().contains_key("access-control-allow-credentials"));
    let exposed = listed(&r, "access-control-expose-headers");
    for h in [
        "location",
        "etag",
        "x-cairn-position",
        "x-correlation-id",
        "retry-after",
        "ratelimit-remaining",
    ] {
        assert!(exposed.contains(&h.to_owned()), "{h}: {exposed:?}");
    }
    assert!(listed(&r, "vary").contains(&"origin".to_owned()));
    // A refusal is readable by the page too: the 401 carries the headers.
    let r = client
        .post(format!("{}/api/things", app.base))
        .header("origin", CONSOLE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(allowed(&r), Some(CONSOLE));
}

#[tokio::test]
async fn the_wildcard_allows_any_origin_without_credentials() {
    let app = start(CorsOptions::new(["*"], false).unwrap()).await;
    let r = app.preflight("/api/things", "https://anyone.example").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(allowed(&r), Some("*"));
    assert!(!r.headers().contains_key("access-control-allow-credentials"));
}

#[tokio::test]
async fn without_origins_nothing_changes() {
    let app = start(CorsOptions::default()).await;
    let r = app.preflight("/api/things", CONSOLE).await;
    assert!(allowed(&r).is_none());
    assert_ne!(r.status(), StatusCode::OK, "no preflight answer at all");
    let r = reqwest::Client::new()
        .post(format!("{}/api/things", app.base))
        .header("origin", CONSOLE)
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(
        r.headers()
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "{:?}",
        r.headers()
    );
}
