//! Tenant groups: the admin API that manages them, and the `shared` claim
//! they put in their members' tokens. Over HTTP, on an in-memory store,
//! served on 127.0.0.1:0.

use std::{sync::Arc, time::Duration};

use axum::Router;
use cairn_auth::{MasterKey, PasswordHasher, Principal};
use cairn_core::TenantId;
use cairn_http::{AuthOptions, HttpOptions, app, serve};
use cairn_identity::{Identity, IdentityOptions, http};
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, MemoryStore};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Server {
    base: String,
    client: reqwest::Client,
    platform_password: String,
    demo_password: String,
    identity: Identity,
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

    async fn login(&self, tenant: &str, user: &str, password: &str) -> String {
        let r = self
            .client
            .post(self.url(&format!("/realms/{tenant}/protocol/openid-connect/token")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", password),
                ])
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let tokens: Value = r.json().await.unwrap();
        tokens["access_token"].as_str().unwrap().to_owned()
    }

    /// An admin call with `token`, or without any token.
    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let request = match method {
            "POST" => self.client.post(self.url(path)).json(&body),
            "PUT" => self.client.put(self.url(path)).json(&body),
            "DELETE" => self.client.delete(self.url(path)),
            _ => self.client.get(self.url(path)),
        };
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(Some(token), method, path, body).await
    }

    /// The super-admin's token, with tenants acme, globex and initech, each
    /// with a viewer `eve`.
    async fn three_tenants(&self) -> String {
        let token = self
            .login("platform", "admin", &self.platform_password)
            .await;
        for tenant in ["acme", "globex", "initech"] {
            let (status, body) = self
                .admin(
                    &token,
                    "POST",
                    "/api/admin/tenants",
                    json!({"id": tenant, "name": tenant}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            let (status, body) = self
                .admin(
                    &token,
                    "POST",
                    &format!("/api/admin/tenants/{tenant}/users"),
                    json!({"username": "eve", "password": "correct horse", "roles": ["viewer"]}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        token
    }

    /// The principal of a fresh token of `tenant`'s `eve`, and the token.
    async fn eve_of(&self, tenant: &str) -> (Principal, String) {
        let token = self.login(tenant, "eve", "correct horse").await;
        let principal = self
            .identity
            .verifier(Vec::new())
            .verify(&token)
            .await
            .unwrap();
        (principal, token)
    }
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// The `shared` claim as the token carries it.
fn shared_claim(token: &str) -> Value {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    claims.get("shared").cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_group_shares_its_resources_with_its_members_tokens() {
    let s = start_with(|o| o.realm_ttl = Duration::ZERO).await;
    let token = s.three_tenants().await;

    let r = s
        .client
        .post(s.url("/api/admin/groups"))
        .bearer_auth(&token)
        .json(&json!({
            "id": "alliance",
            "name": "Alliance",
            "tenants": ["globex", "acme"],
            "shared": ["flights"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/api/admin/groups/alliance");
    let created: Value = r.json().await.unwrap();
    let alliance = json!({
        "id": "alliance",
        "name": "Alliance",
        "tenants": ["acme", "globex"],
        "shared": ["flights"],
    });
    assert_eq!(created, alliance);
    let (status, body) = s
        .admin(&token, "GET", "/api/admin/groups/alliance", json!(null))
        .await;
    assert_eq!((status, &body), (200, &alliance));
    let (status, body) = s
        .admin(&token, "GET", "/api/admin/groups", json!(null))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!([alliance]));
    assert_eq!(body["total"], 1);

    // Acme's token says what globex shares with it, and nothing else.
    let (acme, acme_token) = s.eve_of("acme").await;
    assert!(acme.shares(&tenant("globex"), "flights"));
    assert!(!acme.shares(&tenant("globex"), "passengers"));
    assert!(!acme.shares(&tenant("initech"), "flights"));
    assert!(!acme.shared.contains_key(&tenant("acme")));
    assert_eq!(shared_claim(&acme_token), json!({"globex": ["flights"]}));
    // And the other way round.
    let (globex, _) = s.eve_of("globex").await;
    assert!(globex.shares(&tenant("acme"), "flights"));
    assert!(!globex.shared.contains_key(&tenant("globex")));
    // Outside the group, nothing is shared.
    let (initech, initech_token) = s.eve_of("initech").await;
    assert!(initech.shared.is_empty());
    assert_eq!(shared_claim(&initech_token), Value::Null);

    // Globex leaves; initech joins; passengers are shared too.
    let (status, body) = s
        .admin(
            &token,
            "PUT",
            "/api/admin/groups/alliance",
            json!({"tenants": ["acme", "initech"], "shared": ["passengers", "flights"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenants"], json!(["acme", "initech"]));
    assert_eq!(body["shared"], json!(["flights", "passengers"]));
    let (acme, acme_token) = s.eve_of("acme").await;
    assert!(!acme.shares(&tenant("globex"), "flights"));
    assert!(acme.shares(&tenant("initech"), "passengers"));
    assert_eq!(
        shared_claim(&acme_token),
        json!({"initech": ["flights", "passengers"]})
    );
    let (globex, _) = s.eve_of("globex").await;
    assert!(globex.shared.is_empty());
    let (initech, _) = s.eve_of("initech").await;
    assert!(initech.shares(&tenant("acme"), "flights"));
}

#[tokio::test]
async fn the_claim_is_the_union_of_every_group_of_the_tenant() {
    let s = start_with(|o| o.realm_ttl = Duration::ZERO).await;
    let token = s.three_tenants().await;
    for (id, tenants, shared) in [
        ("alliance", json!(["acme", "globex"]), json!(["flights"])),
        (
            "partners",
            json!(["acme", "globex", "initech"]),
            json!(["audit"]),
        ),
        ("quiet", json!(["acme", "initech"]), json!([])),
    ] {
        let (status, body) = s
            .admin(
                &token,
                "POST",
                "/api/admin/groups",
                json!({"id": id, "name": id, "tenants": tenants, "shared": shared}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, acme) = s.eve_of("acme").await;
    assert_eq!(
        shared_claim(&acme),
        json!({"globex": ["audit", "flights"], "initech": ["audit"]})
    );
    let (_, initech) = s.eve_of("initech").await;
    assert_eq!(
        shared_claim(&initech),
        json!({"acme": ["audit"], "globex": ["audit"]})
    );
}

#[tokio::test]
async fn another_instance_sees_a_change_once_its_realm_expires() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let master = MasterKey::generate().unwrap();
    let open = |realm_ttl: Duration| {
        let store = store.clone();
        let master = master.clone();
        async move {
            let mut options = IdentityOptions::new("http://id.test");
            options.hasher = PasswordHasher::new(1024, 1, 1).unwrap();
            options.realm_ttl = realm_ttl;
            Identity::open(
                store,
                ServiceDb::ephemeral().await.unwrap(),
                master,
                options,
            )
            .await
            .unwrap()
        }
    };
    let admin = open(Duration::from_secs(30)).await;
    let other = open(Duration::from_secs(2)).await;
    admin.bootstrap(&["platform"]).await.unwrap();
    for id in ["acme", "globex"] {
        admin.create_tenant("test", &tenant(id), id).await.unwrap();
        admin
            .create_user("test", &tenant(id), "eve", "correct horse", &[])
            .await
            .unwrap();
    }
    let members = ["acme".to_owned(), "globex".to_owned()];
    let flights = ["flights".to_owned()];
    admin
        .create_group("test", "alliance", "Alliance", &members, &flights)
        .await
        .unwrap();
    let shares = |identity: &Identity| {
        let identity = identity.clone();
        async move {
            let token = identity
                .token_for(&tenant("acme"), "eve", 300)
                .await
                .unwrap();
            let principal = identity.verifier(Vec::new()).verify(&token).await.unwrap();
            principal.shares(&tenant("globex"), "flights")
        }
    };
    assert!(shares(&admin).await);
    assert!(shares(&other).await);

    admin
        .update_group("test", "alliance", &members[..1], &flights)
        .await
        .unwrap();
    // The instance that made the change issues by it at once; the other
    // one still has the realm it loaded, until that expires.
    assert!(!shares(&admin).await);
    assert!(shares(&other).await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!shares(&other).await);
}

#[tokio::test]
async fn bad_group_calls_are_refused_and_nothing_is_half_written() {
    let s = start_with(|_| {}).await;
    let token = s.three_tenants().await;
    let alliance = json!({
        "id": "alliance",
        "name": "Alliance",
        "tenants": ["acme", "globex"],
        "shared": ["flights"],
    });
    let (status, body) = s
        .admin(&token, "POST", "/api/admin/groups", alliance.clone())
        .await;
    assert_eq!(status, 201, "{body}");

    let group = |id: &str, tenants: Value, shared: Value| json!({"id": id, "name": "Club", "tenants": tenants, "shared": shared});
    let change = |tenants: Value, shared: Value| json!({"tenants": tenants, "shared": shared});
    let cases = [
        (
            "POST",
            "/api/admin/groups",
            group("club", json!(["acme", "nowhere"]), json!(["flights"])),
            422,
            "tenants",
        ),
        (
            "POST",
            "/api/admin/groups",
            group("club", json!(["acme", "platform"]), json!(["flights"])),
            422,
            "tenants",
        ),
        (
            "POST",
            "/api/admin/groups",
            group("club", json!(["acme", "Not Valid"]), json!([])),
            422,
            "tenants",
        ),
        (
            "POST",
            "/api/admin/groups",
            group("club", json!([]), json!(["flights"])),
            422,
            "tenants",
        ),
        (
            "POST",
            "/api/admin/groups",
            group("club", json!(["acme"]), json!(["Flights!"])),
            422,
            "shared",
        ),
        (
            "POST",
            "/api/admin/groups",
            group("Not Valid", json!(["acme"]), json!([])),
            422,
            "id",
        ),
        (
            "POST",
            "/api/admin/groups",
            json!({"id": "club", "name": " ", "tenants": ["acme"]}),
            422,
            "name",
        ),
        (
            "POST",
            "/api/admin/groups",
            group("alliance", json!(["initech"]), json!([])),
            409,
            "",
        ),
        (
            "PUT",
            "/api/admin/groups/alliance",
            change(json!(["acme", "nowhere"]), json!([])),
            422,
            "tenants",
        ),
        (
            "PUT",
            "/api/admin/groups/alliance",
            change(json!(["platform"]), json!([])),
            422,
            "tenants",
        ),
        (
            "PUT",
            "/api/admin/groups/alliance",
            change(json!([]), json!(["flights"])),
            422,
            "tenants",
        ),
        (
            "PUT",
            "/api/admin/groups/alliance",
            change(json!(["acme"]), json!(["audit", "a b"])),
            422,
            "shared",
        ),
        (
            "PUT",
            "/api/admin/groups/nowhere",
            change(json!(["acme"]), json!([])),
            404,
            "",
        ),
        (
            "PUT",
            "/api/admin/groups/Not%20Valid",
            change(json!(["acme"]), json!([])),
            404,
            "",
        ),
        ("GET", "/api/admin/groups/nowhere", json!(null), 404, ""),
        ("GET", "/api/admin/groups/club", json!(null), 404, ""),
    ];
    for (method, path, body, status, field) in cases {
        let (got, problem) = s.admin(&token, method, path, body.clone()).await;
        assert_eq!(got, status, "{method} {path} {body}: {problem}");
        if !field.is_empty() {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    // Every unknown tenant is named.
    let (_, problem) = s
        .admin(
            &token,
            "POST",
            "/api/admin/groups",
            group("club", json!(["elsewhere", "acme", "nowhere"]), json!([])),
        )
        .await;
    let reasons = problem["errors"].to_string();
    assert!(
        reasons.contains("elsewhere") && reasons.contains("nowhere"),
        "{problem}"
    );

    // Only the super-admin manages groups; without a token, nobody does.
    let tenant_admin = s.login("demo", "admin", &s.demo_password).await;
    let calls = [
        (
            "POST",
            "/api/admin/groups",
            group("club", json!(["demo"]), json!([])),
        ),
        ("GET", "/api/admin/groups", json!(null)),
        ("GET", "/api/admin/groups/alliance", json!(null)),
        (
            "PUT",
            "/api/admin/groups/alliance",
            change(json!(["demo", "acme"]), json!(["flights"])),
        ),
    ];
    for (method, path, body) in calls {
        let (got, problem) = s
            .call(Some(&tenant_admin), method, path, body.clone())
            .await;
        assert_eq!(got, 403, "{method} {path}: {problem}");
        let (got, problem) = s.call(None, method, path, body).await;
        assert_eq!(got, 401, "{method} {path}: {problem}");
    }

    // Nothing was written: the one group is as it was made.
    let (status, groups) = s
        .admin(&token, "GET", "/api/admin/groups", json!(null))
        .await;
    assert_eq!(status, 200);
    assert_eq!(groups["items"], json!([alliance]), "{groups}");
    let (acme, _) = s.eve_of("acme").await;
    assert!(acme.shares(&tenant("globex"), "flights"));
    assert!(!acme.shares(&tenant("demo"), "flights"));
}

#[tokio::test]
async fn a_dissolved_group_shares_nothing_and_its_id_is_not_used_again() {
    let s = start_with(|o| o.realm_ttl = std::time::Duration::ZERO).await;
    let root = s.three_tenants().await;
    let (status, body) = s
        .admin(
            &root,
            "POST",
            "/api/admin/groups",
            json!({"id": "alliance", "name": "Alliance", "tenants": ["acme", "globex"], "shared": ["flights"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (acme, _) = s.eve_of("acme").await;
    assert!(acme.shares(&tenant("globex"), "flights"));

    // A tenant's admin may not dissolve it; nobody unauthenticated either.
    let acme_admin = {
        let (status, body) = s
            .admin(
                &root,
                "POST",
                "/api/admin/tenants/acme/users",
                json!({"username": "ada", "password": "correct horse", "roles": ["admin"]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        s.login("acme", "ada", "correct horse").await
    };
    let (status, _) = s
        .admin(
            &acme_admin,
            "DELETE",
            "/api/admin/groups/alliance",
            Value::Null,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .call(None, "DELETE", "/api/admin/groups/alliance", Value::Null)
        .await;
    assert_eq!(status, 401);

    let (status, body) = s
        .admin(&root, "DELETE", "/api/admin/groups/alliance", Value::Null)
        .await;
    assert_eq!(status, 204, "{body}");
    // Gone from the API and from new tokens.
    let (status, _) = s
        .admin(&root, "GET", "/api/admin/groups/alliance", Value::Null)
        .await;
    assert_eq!(status, 404);
    let (_, list) = s
        .admin(&root, "GET", "/api/admin/groups", Value::Null)
        .await;
    assert_eq!(list["items"], json!([]), "{list}");
    let (acme, token) = s.eve_of("acme").await;
    assert!(acme.shared.is_empty(), "{:?}", acme.shared);
    assert_eq!(shared_claim(&token), Value::Null);
    // Twice, or changed after: 404. Made again under the same id: 409.
    let (status, _) = s
        .admin(&root, "DELETE", "/api/admin/groups/alliance", Value::Null)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .admin(
            &root,
            "PUT",
            "/api/admin/groups/alliance",
            json!({"tenants": ["acme", "globex"], "shared": ["flights"]}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .admin(
            &root,
            "POST",
            "/api/admin/groups",
            json!({"id": "alliance", "name": "Again", "tenants": ["acme"], "shared": []}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = s
        .admin(&root, "DELETE", "/api/admin/groups/never", Value::Null)
        .await;
    assert_eq!(status, 404);
}
