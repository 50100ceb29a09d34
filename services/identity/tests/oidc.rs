//! The identity service over HTTP: the realms' OIDC endpoints and the admin
//! API, on an in-memory store, served on 127.0.0.1:0.

use std::{sync::Arc, time::Duration};

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
    platform_password: String,
    demo_password: String,
    identity: Identity,
}

async fn start() -> Server {
    start_with(|_| {}).await
}

async fn start_with(tune: impl FnOnce(&mut IdentityOptions)) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut options = IdentityOptions::new(&base);
    options.hasher = PasswordHasher::new(1024, 1, 1).unwrap();
    tune(&mut options);
    let identity = Identity::open(
        Arc::new(MemoryStore::new()),
        ServiceDb::ephemeral().await.unwrap(),
        MasterKey::generate().unwrap(),
        options,
    )
    .await
    .unwrap();
    let made = identity.bootstrap(&["platform", "demo"]).await.unwrap();
    assert_eq!(made.len(), 2);
    assert!(
        identity
            .bootstrap(&["platform", "demo"])
            .await
            .unwrap()
            .is_empty()
    );
    let password = |t: &str| {
        made.iter()
            .find(|u| u.tenant.as_str() == t)
            .unwrap()
            .password
            .to_string()
    };
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
        platform_password: password("platform"),
        demo_password: password("demo"),
        identity,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn token_request(&self, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(&format!("/realms/{tenant}/protocol/openid-connect/token")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status == StatusCode::OK {
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, tenant: &str, user: &str, password: &str) -> Value {
        let (status, body) = self
            .token_request(
                tenant,
                &[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", password),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn admin(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let request = match method {
            "POST" => self.client.post(self.url(path)).json(&body),
            _ => self.client.get(self.url(path)),
        };
        let r = request.bearer_auth(token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn discovery_and_jwks_have_keycloak_shape() {
    let s = start().await;
    let doc: Value = s
        .client
        .get(s.url("/realms/demo/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = format!("{}/realms/demo", s.base);
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(
        doc["jwks_uri"],
        format!("{issuer}/protocol/openid-connect/certs")
    );
    assert_eq!(
        doc["token_endpoint"],
        format!("{issuer}/protocol/openid-connect/token")
    );
    let jwks: Value = s
        .client
        .get(doc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "no private part: {key}");
    // Realms have their own keys.
    let other: Value = s
        .client
        .get(s.url("/realms/platform/protocol/openid-connect/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other["keys"][0]["kid"], key["kid"]);
    // An unknown realm is 404 everywhere.
    for path in [
        "/realms/nowhere/.well-known/openid-configuration",
        "/realms/nowhere/protocol/openid-connect/certs",
        "/realms/NOT%20VALID/protocol/openid-connect/certs",
    ] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = s
        .token_request("nowhere", &[("grant_type", "password")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn password_grant_issues_tokens_the_admin_api_accepts() {
    let s = start().await;
    let tokens = s.login("platform", "admin", &s.platform_password).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    assert!(tokens["refresh_token"].as_str().unwrap().len() >= 43);
    let token = access(&tokens);

    // The super-admin creates a tenant, then its admin, who logs in there.
    let (status, body) = s
        .admin(
            &token,
            "POST",
            "/api/admin/tenants",
            json!({"id": "globex", "name": "Globex"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["issuer"], format!("{}/realms/globex", s.base));
    let (status, body) = s
        .admin(
            &token,
            "POST",
            "/api/admin/tenants/globex/users",
            json!({"username": "eve", "password": "correct horse", "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let eve = access(&s.login("globex", "eve", "correct horse").await);
    let (status, body) = s
        .admin(&eve, "GET", "/api/admin/tenants/globex/users", json!(null))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1);
    assert_eq!(body["items"][0]["username"], "eve");
    assert!(!body.to_string().contains("argon2"), "no hashes: {body}");

    // Userinfo answers for the token's own realm only.
    let info: Value = s
        .client
        .get(s.url("/realms/globex/protocol/openid-connect/userinfo"))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["preferred_username"], "eve");
    assert_eq!(info["tenant"], "globex");
    let r = s
        .client
        .get(s.url("/realms/demo/protocol/openid-connect/userinfo"))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A tenant admin does not see other tenants, nor manage tenants.
    let (status, _) = s
        .admin(&eve, "GET", "/api/admin/tenants/demo/users", json!(null))
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .admin(
            &eve,
            "POST",
            "/api/admin/tenants",
            json!({"id": "evil", "name": "Evil"}),
        )
        .await;
    assert_eq!(status, 403);
    // A viewer manages nothing.
    let (status, _) = s
        .admin(
            &eve,
            "POST",
            "/api/admin/tenants/globex/users",
            json!({"username": "vic", "password": "viewer pass", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, 201);
    let vic = access(&s.login("globex", "vic", "viewer pass").await);
    let (status, _) = s
        .admin(&vic, "GET", "/api/admin/tenants/globex/users", json!(null))
        .await;
    assert_eq!(status, 403);
    // No token, or a bad one: 401.
    let r = s
        .client
        .get(s.url("/api/admin/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let (status, _) = s
        .admin("x.y.z", "GET", "/api/admin/tenants", json!(null))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_admin_input_is_refused_with_field_errors() {
    let s = start().await;
    let token = access(&s.login("platform", "admin", &s.platform_password).await);
    let cases = [
        (
            "/api/admin/tenants",
            json!({"id": "Not Valid", "name": "x"}),
            422,
            "id",
        ),
        (
            "/api/admin/tenants",
            json!({"id": "demo", "name": "Again"}),
            409,
            "",
        ),
        (
            "/api/admin/tenants/demo/users",
            json!({"username": "bob", "password": "short", "roles": []}),
            422,
            "password",
        ),
        (
            "/api/admin/tenants/demo/users",
            json!({"username": "Bob!", "password": "long enough", "roles": []}),
            422,
            "username",
        ),
        (
            "/api/admin/tenants/demo/users",
            json!({"username": "bob", "password": "long enough", "roles": ["wizard"]}),
            422,
            "roles",
        ),
        (
            "/api/admin/tenants/demo/users",
            json!({"username": "bob", "password": "long enough", "roles": ["super-admin"]}),
            422,
            "roles",
        ),
        (
            "/api/admin/tenants/demo/users",
            json!({"username": "admin", "password": "long enough", "roles": []}),
            409,
            "",
        ),
        (
            "/api/admin/tenants/nowhere/users",
            json!({"username": "bob", "password": "long enough", "roles": []}),
            404,
            "",
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, problem) = s.admin(&token, "POST", path, body.clone()).await;
        assert_eq!(got, status, "{path} {body}: {problem}");
        if !field.is_empty() {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    // Nothing was half-written: the demo tenant still has only its admin.
    let (_, users) = s
        .admin(&token, "GET", "/api/admin/tenants/demo/users", json!(null))
        .await;
    assert_eq!(users["total"], 1, "{users}");
}

#[tokio::test]
async fn bad_token_requests_get_oauth_errors() {
    let s = start().await;
    let demo = &s.demo_password;
    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (
            vec![("grant_type", "authorization_code")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "password"), ("username", "admin")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("username", "nobody"),
                ("password", "whatever1"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", demo),
                ("client_id", "unknown-client"),
                ("client_secret", "x"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "made-up"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("grant_type", "client_credentials")],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
    ];
    for (form, status, error) in cases {
        let (got, body) = s.token_request("demo", &form).await;
        assert_eq!(got, status, "{form:?}: {body}");
        assert_eq!(body["error"], error, "{form:?}: {body}");
    }
    // A JSON body is not a token request.
    let r = s
        .client
        .post(s.url("/realms/demo/protocol/openid-connect/token"))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The right password in the wrong realm is wrong.
    let (got, _) = s
        .token_request(
            "platform",
            &[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", demo),
            ],
        )
        .await;
    assert_eq!(got, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_user() {
    let s = start_with(|o| {
        o.max_failed_logins = 3;
        o.lockout = Duration::from_secs(60);
    })
    .await;
    let wrong = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", "wrong-password"),
    ];
    for _ in 0..3 {
        assert_eq!(
            s.token_request("demo", &wrong).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    let right = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", s.demo_password.as_str()),
    ];
    let r = s
        .client
        .post(s.url("/realms/demo/protocol/openid-connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(right).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    // Another user of the tenant is not locked.
    s.login("platform", "admin", &s.platform_password).await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    let s = start().await;
    let first = s.login("demo", "admin", &s.demo_password).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String| {
        let s = &s;
        async move {
            s.token_request(
                "demo",
                &[("grant_type", "refresh_token"), ("refresh_token", &token)],
            )
            .await
        }
    };
    let (status, second) = refresh(r1.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    // The new access token works.
    let (status, _) = s
        .admin(
            &access(&second),
            "GET",
            "/api/admin/tenants/demo/users",
            json!(null),
        )
        .await;
    assert_eq!(status, 200);
    // r1 again: reuse. It fails, and so does r2 from then on.
    let (status, body) = refresh(r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = refresh(r2).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A refresh token of one realm is no good in another.
    let other = s.login("demo", "admin", &s.demo_password).await;
    let (status, _) = s
        .token_request(
            "platform",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", other["refresh_token"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn revocation_refuses_access_and_refresh_tokens() {
    let s = start().await;
    let tokens = s.login("demo", "admin", &s.demo_password).await;
    let token = access(&tokens);
    let revoke = |t: String| {
        let s = &s;
        async move {
            s.client
                .post(s.url("/realms/demo/protocol/openid-connect/revoke"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string([("token", t.as_str())]).unwrap())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        s.admin(&token, "GET", "/api/admin/tenants/demo/users", json!(null))
            .await
            .0,
        200
    );
    assert_eq!(revoke(token.clone()).await, StatusCode::OK);
    assert_eq!(
        s.admin(&token, "GET", "/api/admin/tenants/demo/users", json!(null))
            .await
            .0,
        401
    );
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(revoke(refresh.clone()).await, StatusCode::OK);
    let (status, _) = s
        .token_request(
            "demo",
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown tokens are accepted and ignored (RFC 7009).
    assert_eq!(revoke("nonsense".into()).await, StatusCode::OK);
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
    let s = start().await;
    let admin = access(&s.login("demo", "admin", &s.demo_password).await);
    let kid = |t: &str| jsonwebtoken_kid(t);
    let old_kid = kid(&admin);
    let (status, body) = s
        .admin(&admin, "POST", "/api/admin/tenants/demo/keys", json!(null))
        .await;
    assert_eq!(status, 201, "{body}");
    let new_kid = body["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    let fresh = access(&s.login("demo", "admin", &s.demo_password).await);
    assert_eq!(kid(&fresh), new_kid);
    for t in [&admin, &fresh] {
        assert_eq!(
            s.admin(t, "GET", "/api/admin/tenants/demo/users", json!(null))
                .await
                .0,
            200
        );
    }
    let jwks: Value = s
        .client
        .get(s.url("/realms/demo/protocol/openid-connect/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![new_kid.as_str(), old_kid.as_str()]);
}

#[tokio::test]
async fn client_credentials_give_the_clients_roles() {
    let s = start().await;
    let admin = access(&s.login("demo", "admin", &s.demo_password).await);
    let (status, client) = s
        .admin(
            &admin,
            "POST",
            "/api/admin/tenants/demo/clients",
            json!({"clientId": "billing", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, 201, "{client}");
    let secret = client["clientSecret"].as_str().unwrap().to_owned();
    // HTTP Basic.
    let r = s
        .client
        .post(s.url("/realms/demo/protocol/openid-connect/token"))
        .basic_auth("billing", Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    assert!(tokens.get("refresh_token").is_none());
    let who = s
        .identity
        .verifier(Vec::new())
        .verify(tokens["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.subject, "service-account-billing");
    assert!(who.has_permission(cairn_auth::permissions::FLIGHTS_READ));
    assert!(!who.has_permission(cairn_auth::permissions::FLIGHTS_WRITE));
    assert_eq!(who.tenant, TenantId::new("demo").unwrap());
    // A wrong secret, in the form this time.
    let (status, body) = s
        .token_request(
            "demo",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "billing"),
                ("client_secret", "wrong"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");
}

fn jsonwebtoken_kid(token: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}
