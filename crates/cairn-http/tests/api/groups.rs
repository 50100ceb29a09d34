//! Cross-tenant reads through `X-Cairn-Tenant` behind bearer tokens: a
//! super-tenant caller reads anything, a tenant-group member only the
//! resources its token says the other tenant shares, only with GET, and
//! every such read is recorded first.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, routing::get};
use cairn_auth::{
    AUDIENCE, AccessClaims, Audience, JwkSet, RoleMap, SigningKey, StaticKeys, TrustedIssuer,
    Verifier, now_secs,
};
use cairn_http::{
    AuthOptions, Context, CrossTenantAudit, CrossTenantRead, HttpOptions, app, serve,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "http://id.test";

#[derive(Debug, Default)]
struct Recorded(Mutex<Vec<CrossTenantRead>>);

impl CrossTenantAudit for Recorded {
    fn record(
        &self,
        read: CrossTenantRead,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        self.0.lock().unwrap().push(read);
        Box::pin(async { Ok(()) })
    }
}

struct Fixture {
    base: String,
    key: SigningKey,
    recorded: Arc<Recorded>,
}

async fn start(audit: bool) -> Fixture {
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
    let recorded = Arc::new(Recorded::default());
    let audit_hook: Option<Arc<dyn CrossTenantAudit>> = audit.then(|| recorded.clone() as _);
    let options = HttpOptions {
        auth: Some(
            AuthOptions::new(verifier, audit_hook)
                .share("/api/flights", "flights")
                .share("/api/passengers/", "passengers"),
        ),
        ..HttpOptions::default()
    };
    let tenant = |ctx: Context| async move { Json(json!({"tenant": ctx.0.tenant.as_str()})) };
    let api = Router::new()
        .route("/api/flights", get(tenant).post(tenant))
        .route("/api/flights/{id}", get(tenant))
        .route("/api/flightsx", get(tenant))
        .route("/api/passengers", get(tenant))
        .route("/api/audit", get(tenant));
    let router = app(api, Router::new(), &options, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, router, std::future::pending()));
    Fixture {
        base,
        key,
        recorded,
    }
}

impl Fixture {
    fn token(&self, tenant: &str, roles: &[&str], shared: &[(&str, &[&str])]) -> String {
        let now = now_secs();
        let claims = AccessClaims {
            iss: format!("{ISSUER}/realms/{tenant}"),
            sub: format!("{tenant}-user"),
            aud: Some(Audience::One(AUDIENCE.into())),
            exp: now + 300,
            nbf: Some(now),
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            tenant: Some(tenant.into()),
            preferred_username: Some("someone".into()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            realm_access: None,
            scope: None,
            azp: Some("cairn".into()),
            shared: shared
                .iter()
                .map(|(t, r)| ((*t).to_owned(), r.iter().map(|r| (*r).to_owned()).collect()))
                .collect::<BTreeMap<_, _>>(),
        };
        self.key.sign(&claims).unwrap()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        tenant: &str,
    ) -> (StatusCode, Value) {
        let r = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("x-cairn-tenant", tenant)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_group_member_reads_only_what_the_other_tenant_shares() {
    let f = start(true).await;
    let acme = f.token("acme", &["operator"], &[("globex", &["flights"])]);

    let (status, body) = f.call("GET", "/api/flights", &acme, "globex").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["tenant"], "globex",
        "the read runs in the sharing tenant"
    );
    let (status, _) = f.call("GET", "/api/flights/f1", &acme, "globex").await;
    assert_eq!(status, StatusCode::OK);
    {
        let recorded = f.recorded.0.lock().unwrap();
        assert_eq!(recorded.len(), 2, "every read recorded");
        assert_eq!(recorded[0].tenant.as_str(), "globex");
        assert_eq!(recorded[0].actor_tenant.as_str(), "acme");
        assert_eq!(recorded[0].shared.as_deref(), Some("flights"));
        assert_eq!(recorded[0].target, "/api/flights");
    }

    // Not shared, not a read, not that tenant, not under the prefix.
    for (method, path, tenant) in [
        ("GET", "/api/passengers", "globex"),
        ("GET", "/api/audit", "globex"),
        ("POST", "/api/flights", "globex"),
        ("GET", "/api/flights", "initech"),
        ("GET", "/api/flightsx", "globex"),
    ] {
        let (status, body) = f.call(method, path, &acme, tenant).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} as {tenant}: {body}"
        );
        assert_eq!(body["code"], "forbidden");
    }
    assert_eq!(
        f.recorded.0.lock().unwrap().len(),
        2,
        "refusals record nothing"
    );

    // The own tenant needs no sharing.
    let (status, body) = f.call("GET", "/api/passengers", &acme, "acme").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tenant"], "acme");

    // A super-tenant caller reads any path of any tenant, recorded without
    // a shared resource; still never writes.
    let root = f.token("platform", &["super-admin"], &[]);
    let (status, body) = f.call("GET", "/api/audit", &root, "globex").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tenant"], "globex");
    assert_eq!(f.recorded.0.lock().unwrap().last().unwrap().shared, None);
    let (status, _) = f.call("POST", "/api/flights", &root, "globex").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_record_there_is_no_shared_read() {
    let f = start(false).await;
    let acme = f.token("acme", &["operator"], &[("globex", &["flights"])]);
    let (status, _) = f.call("GET", "/api/flights", &acme, "globex").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Every refused token gets a 401 whose code says why, with the same
/// sentence as `detail` and as the challenge's `error_description`; the
/// answer never carries the token, and signature failures all read the
/// same.
#[tokio::test]
async fn every_refused_token_says_why_and_no_more() {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let f = start(true).await;
    let good = f.token("acme", &["operator"], &[]);
    let (status, _) = f.call("GET", "/api/flights", &good, "acme").await;
    assert_eq!(status, StatusCode::OK);
    let parts: Vec<&str> = good.split('.').collect();
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let with = |change: &dyn Fn(&mut AccessClaims)| {
        let mut claims: AccessClaims = serde_json::from_value(payload.clone()).unwrap();
        change(&mut claims);
        f.key.sign(&claims).unwrap()
    };
    let now = now_secs();
    let public_x = match &f.key.public_jwk().algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => p.x.clone(),
        _ => unreachable!(),
    };
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(f.key.kid().to_owned());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();
    let mut tampered = payload.clone();
    tampered["roles"] = json!(["admin"]);
    let other_key = SigningKey::generate(now).unwrap();
    let refused = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
            "malformed_token",
        ),
        ("HS256 with the public key", hs256, "invalid_signature"),
        ("expired", with(&|c| c.exp = now - 120), "expired"),
        (
            "not yet valid",
            with(&|c| c.nbf = Some(now + 120)),
            "not_yet_valid",
        ),
        (
            "wrong audience",
            with(&|c| c.aud = Some(Audience::One("billing".into()))),
            "audience_mismatch",
        ),
        (
            "unknown issuer",
            with(&|c| c.iss = "http://evil.test/realms/acme".into()),
            "issuer_mismatch",
        ),
        (
            "wrong tenant",
            with(&|c| c.tenant = Some("globex".into())),
            "tenant_mismatch",
        ),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
            "invalid_signature",
        ),
        (
            "another key",
            other_key.sign(&payload).unwrap(),
            "unknown_key",
        ),
        ("garbage", "not.a.token".to_owned(), "malformed_token"),
    ];
    let mut bodies = Vec::new();
    for (what, token, code) in refused {
        let r = reqwest::Client::new()
            .get(format!("{}/api/flights", f.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        let text = r.text().await.unwrap();
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !text.contains(&token) && (signature.len() < 8 || !text.contains(signature)),
            "{what}: the token is echoed: {text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["code"], code, "{what}: {body}");
        assert_eq!(body["status"], 401, "{what}");
        assert_eq!(
            body["type"],
            format!("https://cairn.dev/problems/{code}"),
            "{what}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert_eq!(
            challenge,
            format!(r#"Bearer realm="cairn", error="invalid_token", error_description="{detail}""#),
            "{what}"
        );
        bodies.push((what, code, body));
    }
    let said = |what: &str| {
        bodies
            .iter()
            .find(|(w, _, _)| *w == what)
            .map(|(_, _, b)| b.clone())
            .unwrap()
    };
    // The issuer that was expected for the token's tenant, and the token's.
    assert_eq!(
        said("unknown issuer")["detail"],
        "the token's issuer (iss) is http://evil.test/realms/acme, but tokens for its tenant \
         must be issued by http://id.test/realms/acme"
    );
    assert_eq!(
        said("wrong audience")["detail"],
        "the token is not meant for this API: its audience (aud) must name cairn"
    );
    // Which part of a signature failed is not told.
    for (what, code, body) in &bodies {
        if *code == "invalid_signature" {
            assert_eq!(body, &said("tampered payload"), "{what}");
        }
    }
}

/// No bearer token at all (no header, another scheme, `Bearer` alone):
/// `missing_token`, with a challenge without an error, as RFC 6750 asks.
#[tokio::test]
async fn a_request_without_a_bearer_token_is_told_one_is_needed() {
    let f = start(true).await;
    for authorization in [
        None,
        Some("Basic YWRtaW46YWRtaW4="),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let mut request = reqwest::Client::new().get(format!("{}/api/flights", f.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer realm="cairn""#,
            "{authorization:?}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "missing_token", "{authorization:?}");
        assert_eq!(
            body["detail"],
            "an access token is required (Authorization: Bearer <token>)"
        );
    }
}
