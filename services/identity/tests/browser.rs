//! The web console's sign-in over HTTP: the refresh token in a cookie, the
//! access token in the body, CSRF checks, rotation, logout and lockout. On
//! an in-memory store, served on 127.0.0.1:0.

use std::sync::Arc;

use axum::Router;
use cairn_auth::{MasterKey, PasswordHasher};
use cairn_core::TenantId;
use cairn_http::{AuthOptions, HttpOptions, app, serve};
use cairn_identity::{Identity, IdentityOptions, http};
use cairn_service_db::ServiceDb;
use cairn_store::MemoryStore;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Server {
    base: String,
    client: reqwest::Client,
    demo_password: String,
    identity: Identity,
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut options = IdentityOptions::new(&base);
    options.hasher = PasswordHasher::new(1024, 1, 1).unwrap();
    let identity = Identity::open(
        Arc::new(MemoryStore::new()),
        ServiceDb::ephemeral().await.unwrap(),
        MasterKey::generate().unwrap(),
        options,
    )
    .await
    .unwrap();
    let made = identity.bootstrap(&["platform", "demo"]).await.unwrap();
    let demo_password = made
        .iter()
        .find(|u| u.tenant.as_str() == "demo")
        .unwrap()
        .password
        .to_string();
    let http_options = HttpOptions {
        auth: Some(AuthOptions::new(identity.verifier(Vec::new()), None)),
        ..HttpOptions::default()
    };
    let router = app(
        http::admin_router(identity.clone()),
        Router::new().merge(http::realm_router(identity.clone())),
        &http_options,
        None,
    );
    tokio::spawn(serve(listener, router, std::future::pending()));
    Server {
        base,
        client: reqwest::Client::new(),
        demo_password,
        identity,
    }
}

/// A `Set-Cookie` header, split into its parts.
#[derive(Debug)]
struct SetCookie {
    name: String,
    value: String,
    attributes: Vec<String>,
}

impl SetCookie {
    fn has(&self, attribute: &str) -> bool {
        self.attributes.iter().any(|a| a == attribute)
    }
}

/// The one `Set-Cookie` of a response.
fn set_cookie(r: &reqwest::Response) -> SetCookie {
    let all: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(all.len(), 1, "one Set-Cookie: {all:?}");
    let mut parts = all[0].to_str().unwrap().split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    SetCookie {
        name: name.to_owned(),
        value: value.to_owned(),
        attributes: parts.map(str::to_owned).collect(),
    }
}

fn assert_session_cookie(cookie: &SetCookie, tenant: &str) {
    assert_eq!(cookie.name, "cairn_refresh");
    assert!(cookie.value.len() >= 43, "a 32-byte token");
    assert!(cookie.has("HttpOnly"), "{cookie:?}");
    assert!(cookie.has("Secure"), "{cookie:?}");
    assert!(cookie.has("SameSite=Strict"), "{cookie:?}");
    assert!(
        cookie.has(&format!("Path=/realms/{tenant}/browser")),
        "{cookie:?}"
    );
    assert!(
        cookie.has("Max-Age=43200"),
        "the refresh lifetime: {cookie:?}"
    );
}

fn assert_cleared(cookie: &SetCookie, tenant: &str) {
    assert_eq!(cookie.name, "cairn_refresh");
    assert_eq!(cookie.value, "");
    assert!(cookie.has("Max-Age=0"), "{cookie:?}");
    assert!(
        cookie.has(&format!("Path=/realms/{tenant}/browser")),
        "{cookie:?}"
    );
}

async fn problem(r: reqwest::Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "{r:?}"
    );
    r.json().await.unwrap()
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to a browser route with the CSRF header, as the console
    /// sends it.
    fn browser(&self, tenant: &str, action: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(&format!("/realms/{tenant}/browser/{action}")))
            .header("X-Requested-With", "cairn")
    }

    async fn login(&self, tenant: &str, username: &str, password: &str) -> reqwest::Response {
        self.browser(tenant, "login")
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    async fn refresh(&self, tenant: &str, cookie: &str) -> reqwest::Response {
        self.browser(tenant, "refresh")
            .header("cookie", format!("cairn_refresh={cookie}"))
            .send()
            .await
            .unwrap()
    }

    /// Signs demo's admin in; the cookie's value.
    async fn signed_in(&self) -> String {
        let r = self.login("demo", "admin", &self.demo_password).await;
        assert_eq!(r.status(), StatusCode::OK);
        set_cookie(&r).value
    }
}

#[tokio::test]
async fn login_sets_the_refresh_cookie_and_answers_the_access_token_only() {
    let s = start().await;
    let r = s.login("demo", "admin", &s.demo_password).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookie = set_cookie(&r);
    assert_session_cookie(&cookie, "demo");
    let body: Value = r.json().await.unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in", "token_type"], "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert!(!body.to_string().contains(&cookie.value));

    let who = s
        .identity
        .verifier(vec![])
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.username.as_deref(), Some("admin"));
    assert_eq!(who.tenant, TenantId::new("demo").unwrap());
}

#[tokio::test]
async fn refresh_rotates_the_cookie_and_a_reused_one_ends_the_session() {
    let s = start().await;
    let first = s.signed_in().await;

    let r = s.refresh("demo", &first).await;
    assert_eq!(r.status(), StatusCode::OK);
    let second = set_cookie(&r);
    assert_session_cookie(&second, "demo");
    assert_ne!(second.value, first);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    s.identity
        .verifier(vec![])
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();

    // The first cookie again: it leaked. Refused and cleared, and the
    // whole session with it.
    let r = s.refresh("demo", &first).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_cleared(&set_cookie(&r), "demo");
    assert_eq!(problem(r).await["code"], "unauthenticated");
    let r = s.refresh("demo", &second.value).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_cleared(&set_cookie(&r), "demo");
}

#[tokio::test]
async fn refresh_without_a_valid_cookie_is_refused_and_clears_it() {
    let s = start().await;
    let r = s.browser("demo", "refresh").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_cleared(&set_cookie(&r), "demo");
    assert_eq!(problem(r).await["code"], "unauthenticated");

    let r = s.refresh("demo", "made-up").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_cleared(&set_cookie(&r), "demo");

    // A session of one realm is no good in another.
    let cookie = s.signed_in().await;
    let r = s.refresh("platform", &cookie).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_revokes_the_session_and_clears_the_cookie() {
    let s = start().await;
    let cookie = s.signed_in().await;
    let r = s
        .browser("demo", "logout")
        .header("cookie", format!("cairn_refresh={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_cleared(&set_cookie(&r), "demo");
    let r = s.refresh("demo", &cookie).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Signing out without a session is fine; in no realm it is not.
    let r = s.browser("demo", "logout").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.browser("nowhere", "logout").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_without_the_csrf_header_are_forbidden() {
    let s = start().await;
    let cookie = s.signed_in().await;
    for action in ["login", "refresh", "logout"] {
        for header in [None, Some("XMLHttpRequest")] {
            let mut request = s
                .client
                .post(s.url(&format!("/realms/demo/browser/{action}")))
                .header("cookie", format!("cairn_refresh={cookie}"))
                .json(&json!({"username": "admin", "password": s.demo_password}));
            if let Some(value) = header {
                request = request.header("X-Requested-With", value);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{action} {header:?}");
            assert!(r.headers().get("set-cookie").is_none(), "{action}");
            assert_eq!(problem(r).await["code"], "forbidden");
        }
    }
    // Nothing was used up or revoked by the refused requests.
    assert_eq!(s.refresh("demo", &cookie).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_from_another_origin_are_forbidden() {
    let s = start().await;
    let cookie = s.signed_in().await;
    for origin in ["https://evil.example", "null", "http://localhost:1"] {
        for action in ["login", "refresh", "logout"] {
            let r = s
                .browser("demo", action)
                .header("origin", origin)
                .header("cookie", format!("cairn_refresh={cookie}"))
                .json(&json!({"username": "admin", "password": s.demo_password}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin} {action}");
            assert_eq!(problem(r).await["code"], "forbidden");
        }
    }
    // The issuer's own origin is welcome.
    let r = s
        .browser("demo", "refresh")
        .header("origin", &s.base)
        .header("cookie", format!("cairn_refresh={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_lock_the_user_after_five() {
    let s = start().await;
    for attempt in 1..=5 {
        let r = s.login("demo", "admin", "wrong-password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert!(r.headers().get("set-cookie").is_none());
        assert_eq!(problem(r).await["code"], "unauthenticated");
    }
    // Locked: even the right password is refused for a while.
    let r = s.login("demo", "admin", &s.demo_password).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("set-cookie").is_none());
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(problem(r).await["code"], "rate_limited");
    // The token endpoint shares the lock: it is the same user.
    let r = s
        .client
        .post(s.url("/realms/demo/protocol/openid-connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", s.demo_password.as_str()),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn bad_login_bodies_and_unknown_realms_are_problems() {
    let s = start().await;
    let r = s.login("demo", "", "").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = problem(r).await;
    assert_eq!(body["errors"][0]["field"], "username", "{body}");
    assert_eq!(body["errors"][1]["field"], "password", "{body}");
    let r = s
        .browser("demo", "login")
        .json(&json!({"username": "admin", "password": "x", "client_id": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = s.login("nowhere", "admin", "whatever1").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    problem(r).await;
}
