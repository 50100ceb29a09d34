//! A refused token at the gateway's edge is answered as a service answers
//! it: the same status, code, detail and challenge, for every reason, and
//! nothing reaches the service.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use async_trait::async_trait;
use axum::{Router, routing::get};
use cairn_auth::{
    AUDIENCE, AccessClaims, Audience, AuthError, JwkSet, Revocations, RoleMap, SigningKey,
    StaticKeys, TrustedIssuer, Verifier, VerifierOptions, now_secs,
};
use cairn_core::TenantId;
use cairn_gateway::{Gateway, GatewayOptions, Route};
use cairn_http::{AuthOptions, HttpOptions, app};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const ISSUER: &str = "http://id.test";

/// Token ids listed here are revoked.
#[derive(Debug)]
struct RevokedIds(Vec<String>);

#[async_trait]
impl Revocations for RevokedIds {
    async fn is_revoked(&self, _tenant: &TenantId, token_id: &str) -> Result<bool, AuthError> {
        Ok(self.0.iter().any(|id| id == token_id))
    }
}

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::with_options(
        vec![TrustedIssuer::cairn(
            ISSUER,
            Arc::new(StaticKeys(JwkSet {
                keys: vec![key.public_jwk()],
            })),
        )],
        RoleMap::default(),
        VerifierOptions::default(),
        Some(Arc::new(RevokedIds(vec!["revoked-id".into()]))),
    )
}

fn claims(tenant: &str) -> AccessClaims {
    let now = now_secs();
    AccessClaims {
        iss: format!("{ISSUER}/realms/{tenant}"),
        sub: format!("{tenant}-user"),
        aud: Some(Audience::One(AUDIENCE.into())),
        exp: now + 300,
        nbf: Some(now),
        iat: Some(now),
        jti: Some("kept-id".into()),
        tenant: Some(tenant.into()),
        preferred_username: None,
        roles: vec!["operator".into()],
        realm_access: None,
        scope: None,
        azp: None,
        shared: BTreeMap::new(),
    }
}

/// A service with `cairn-http`'s bearer layer; returns its base URL and
/// how many requests reached its handler.
async fn service(verifier: Verifier) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let api = Router::new().route(
        "/api/flights",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "flights" }
        }),
    );
    let options = HttpOptions {
        auth: Some(AuthOptions::new(verifier, None)),
        ..HttpOptions::default()
    };
    let router = app(api, Router::new(), &options, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cairn_http::serve(listener, router, std::future::pending()));
    (base, hits)
}

async fn gateway(upstream: &str, verifier: Verifier) -> String {
    let mut options = GatewayOptions::new(vec![
        Route::new("/api", vec![upstream.parse().unwrap()]).unwrap(),
    ]);
    options.verifier = Some(verifier);
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

/// Status, challenge and body (without what differs per request).
async fn answer(base: &str, token: Option<&str>) -> (StatusCode, String, Value) {
    let mut request = Client::new().get(format!("{base}/api/flights"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut body: Value = r.json().await.unwrap_or(Value::Null);
    if let Some(o) = body.as_object_mut() {
        o.retain(|k, _| k != "correlationId" && k != "instance" && k != "traceId");
    }
    (status, challenge, body)
}

#[tokio::test]
async fn the_edge_refuses_each_token_as_the_services_do() {
    let key = SigningKey::generate(now_secs()).unwrap();
    let (service, hits) = service(verifier(&key)).await;
    let gateway = gateway(&service, verifier(&key)).await;
    let now = now_secs();
    let sign = |change: &dyn Fn(&mut AccessClaims)| {
        let mut c = claims("demo");
        change(&mut c);
        key.sign(&c).unwrap()
    };
    let good = sign(&|_| {});
    let (unsigned, _) = good.rsplit_once('.').unwrap();
    let stranger = SigningKey::generate(now).unwrap();
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing_token"),
        (Some("not-a-token".into()), "malformed_token"),
        (Some(format!("{unsigned}.AAAA")), "invalid_signature"),
        (Some(stranger.sign(&claims("demo")).unwrap()), "unknown_key"),
        (
            Some(sign(&|c| {
                c.iss = "http://localhost:8080/realms/demo".into()
            })),
            "issuer_mismatch",
        ),
        (
            Some(sign(&|c| c.aud = Some(Audience::One("billing".into())))),
            "audience_mismatch",
        ),
        (
            Some(sign(&|c| c.tenant = Some("globex".into()))),
            "tenant_mismatch",
        ),
        (Some(sign(&|c| c.exp = now - 120)), "expired"),
        (Some(sign(&|c| c.nbf = Some(now + 120))), "not_yet_valid"),
        (
            Some(sign(&|c| c.jti = Some("revoked-id".into()))),
            "revoked",
        ),
    ];
    for (token, code) in &cases {
        let at_the_edge = answer(&gateway, token.as_deref()).await;
        let from_the_service = answer(&service, token.as_deref()).await;
        assert_eq!(at_the_edge.0, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(at_the_edge.2["code"], *code, "{:?}", at_the_edge.2);
        assert_eq!(at_the_edge, from_the_service, "{code}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "only the service's own checks were asked directly, and refused"
    );
    // The issuer that was expected is named at the edge too.
    let (_, challenge, body) = answer(&gateway, cases[4].0.as_deref()).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("http://localhost:8080/realms/demo")
            && detail.contains("http://id.test/realms/demo"),
        "{detail}"
    );
    assert!(
        challenge.ends_with(&format!(r#"error_description="{detail}""#)),
        "{challenge}"
    );
    // A valid token passes both.
    assert_eq!(answer(&gateway, Some(&good)).await.0, StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
