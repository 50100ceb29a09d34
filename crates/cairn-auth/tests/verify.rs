//! The verifier against well-formed and hostile tokens.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use cairn_auth::{
    AUDIENCE, AccessClaims, Audience, AuthError, JwkSet, KeySource, MasterKey, Rejection,
    RemoteJwks, Revocations, RoleMap, SigningKey, TrustedIssuer, Verifier, VerifierOptions,
    now_secs, permissions,
};
use cairn_core::{ErrorCode, TenantId};

const BASE: &str = "http://id.test";

#[derive(Debug, Default)]
struct Keys {
    set: Mutex<Vec<SigningKey>>,
    fetches: Mutex<u32>,
}

#[async_trait]
impl KeySource for Keys {
    async fn jwks(&self, _issuer: &str) -> Result<JwkSet, AuthError> {
        *self.fetches.lock().unwrap() += 1;
        Ok(JwkSet {
            keys: self
                .set
                .lock()
                .unwrap()
                .iter()
                .map(SigningKey::public_jwk)
                .collect(),
        })
    }
}

#[derive(Debug, Default)]
struct Revoked(Mutex<Vec<String>>);

#[async_trait]
impl Revocations for Revoked {
    async fn is_revoked(&self, _tenant: &TenantId, id: &str) -> Result<bool, AuthError> {
        Ok(self.0.lock().unwrap().iter().any(|r| r == id))
    }
}

struct Fixture {
    key: SigningKey,
    keys: Arc<Keys>,
    revoked: Arc<Revoked>,
    verifier: Verifier,
}

fn fixture(refetch: Duration) -> Fixture {
    let key = SigningKey::generate(now_secs()).unwrap();
    let keys = Arc::new(Keys::default());
    keys.set.lock().unwrap().push(key.clone());
    let revoked = Arc::new(Revoked::default());
    let verifier = Verifier::with_options(
        vec![TrustedIssuer::cairn(BASE, keys.clone())],
        RoleMap::default(),
        VerifierOptions {
            refetch_interval: refetch,
            ..VerifierOptions::default()
        },
        Some(revoked.clone()),
    );
    Fixture {
        key,
        keys,
        revoked,
        verifier,
    }
}

fn claims(tenant: &str) -> AccessClaims {
    let now = now_secs();
    AccessClaims {
        iss: format!("{BASE}/realms/{tenant}"),
        sub: "user-1".into(),
        aud: Some(Audience::One(AUDIENCE.into())),
        exp: now + 300,
        nbf: Some(now),
        iat: Some(now),
        jti: Some("jti-1".into()),
        tenant: Some(tenant.into()),
        preferred_username: Some("ada".into()),
        roles: vec!["operator".into()],
        realm_access: None,
        scope: None,
        azp: Some("cairn".into()),
        shared: Default::default(),
    }
}

async fn rejection(verifier: &Verifier, token: &str) -> Rejection {
    match verifier.verify(token).await {
        Err(AuthError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn a_valid_token_gives_its_tenant_subject_and_permissions() {
    let f = fixture(Duration::from_secs(10));
    let token = f.key.sign(&claims("acme")).unwrap();
    let who = f.verifier.verify(&token).await.unwrap();
    assert_eq!(who.tenant.as_str(), "acme");
    assert_eq!(who.subject, "user-1");
    assert_eq!(who.username.as_deref(), Some("ada"));
    assert!(who.has_permission(permissions::FLIGHTS_WRITE));
    assert!(!who.has_permission(permissions::USERS_ADMIN));
    let ctx = who.context();
    assert_eq!(ctx.tenant.as_str(), "acme");
    assert_eq!(ctx.actor.as_deref(), Some("user-1"));
}

#[tokio::test]
async fn hostile_and_stale_tokens_are_refused_for_the_right_reason() {
    let f = fixture(Duration::from_secs(10));
    let v = &f.verifier;
    let good = claims("acme");
    let token = f.key.sign(&good).unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    assert!(matches!(
        rejection(v, &none).await,
        Rejection::Malformed | Rejection::AlgorithmNotAllowed
    ));

    // HS256 with the public key as the HMAC secret.
    let public_x = match &f.key.public_jwk().algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => p.x.clone(),
        _ => unreachable!(),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(f.key.kid().to_owned());
    for secret in [
        URL_SAFE_NO_PAD.decode(&public_x).unwrap(),
        public_x.clone().into_bytes(),
    ] {
        let hs = jsonwebtoken::encode(
            &header,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(rejection(v, &hs).await, Rejection::AlgorithmNotAllowed);
    }

    // Expired beyond the leeway; not yet valid beyond the leeway.
    let now = now_secs();
    let expired = f
        .key
        .sign(&AccessClaims {
            exp: now - 120,
            ..good.clone()
        })
        .unwrap();
    assert_eq!(rejection(v, &expired).await, Rejection::Expired);
    let early = f
        .key
        .sign(&AccessClaims {
            nbf: Some(now + 600),
            ..good.clone()
        })
        .unwrap();
    assert_eq!(rejection(v, &early).await, Rejection::NotYetValid);
    // Within the leeway is fine.
    let just_expired = f
        .key
        .sign(&AccessClaims {
            exp: now - 5,
            ..good.clone()
        })
        .unwrap();
    v.verify(&just_expired).await.unwrap();

    // Wrong or missing audience.
    let wrong_aud = f
        .key
        .sign(&AccessClaims {
            aud: Some(Audience::Many(vec!["billing".into()])),
            ..good.clone()
        })
        .unwrap();
    assert_eq!(
        rejection(v, &wrong_aud).await,
        Rejection::WrongAudience {
            expected: vec![AUDIENCE.to_owned()]
        }
    );
    let no_aud = f
        .key
        .sign(&AccessClaims {
            aud: None,
            ..good.clone()
        })
        .unwrap();
    assert!(matches!(
        rejection(v, &no_aud).await,
        Rejection::WrongAudience { .. } | Rejection::Malformed
    ));

    // Unknown issuer (another host; a path that only looks like a realm).
    for iss in [
        "http://evil.test/realms/acme",
        "http://id.test/realms/acme/x",
        "http://id.test/other/acme",
    ] {
        let t = f
            .key
            .sign(&AccessClaims {
                iss: iss.into(),
                ..good.clone()
            })
            .unwrap();
        assert!(
            matches!(rejection(v, &t).await, Rejection::UnknownIssuer { .. }),
            "{iss}"
        );
    }

    // A token of realm acme that claims tenant globex.
    let cross = f
        .key
        .sign(&AccessClaims {
            tenant: Some("globex".into()),
            ..good.clone()
        })
        .unwrap();
    assert_eq!(rejection(v, &cross).await, Rejection::WrongTenant);

    // Tampered payload: roles raised after signing.
    let mut raised = good.clone();
    raised.roles = vec!["super-admin".into()];
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&raised).unwrap()),
        parts[2]
    );
    assert_eq!(rejection(v, &tampered).await, Rejection::BadSignature);
    // Signature of another key under this key's kid.
    let other = SigningKey::generate(now).unwrap();
    let forged: Vec<String> = other
        .sign(&good)
        .unwrap()
        .split('.')
        .map(str::to_owned)
        .collect();
    let forged = format!("{}.{}.{}", parts[0], parts[1], forged[2]);
    assert_eq!(rejection(v, &forged).await, Rejection::BadSignature);

    // Garbage.
    for junk in ["", "abc", "a.b.c", "Bearer x", &"x".repeat(9000)] {
        assert_eq!(rejection(v, junk).await, Rejection::Malformed, "{junk:.20}");
    }

    // Revoked.
    f.revoked.0.lock().unwrap().push("jti-1".into());
    assert_eq!(rejection(v, &token).await, Rejection::Revoked);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_first_sight_and_unknown_kids_are_rate_limited() {
    let f = fixture(Duration::ZERO);
    let first = f.key.sign(&claims("acme")).unwrap();
    f.verifier.verify(&first).await.unwrap();
    assert_eq!(*f.keys.fetches.lock().unwrap(), 1);
    // Rotation: a new key joins the JWKS; its tokens verify at once.
    let next = SigningKey::generate(now_secs()).unwrap();
    f.keys.set.lock().unwrap().push(next.clone());
    let second = next.sign(&claims("acme")).unwrap();
    f.verifier.verify(&second).await.unwrap();
    assert_eq!(*f.keys.fetches.lock().unwrap(), 2);
    f.verifier.verify(&first).await.unwrap();
    assert_eq!(
        *f.keys.fetches.lock().unwrap(),
        2,
        "known kids use the cache"
    );

    // With a refetch interval, unknown kids do not hammer the source.
    let g = fixture(Duration::from_secs(60));
    g.verifier
        .verify(&g.key.sign(&claims("acme")).unwrap())
        .await
        .unwrap();
    let stranger = SigningKey::generate(now_secs()).unwrap();
    for _ in 0..5 {
        let t = stranger.sign(&claims("acme")).unwrap();
        assert_eq!(rejection(&g.verifier, &t).await, Rejection::UnknownKey);
    }
    assert_eq!(*g.keys.fetches.lock().unwrap(), 1);
}

#[tokio::test]
async fn an_external_issuer_maps_to_its_tenant_and_keycloak_roles_count() {
    let key = SigningKey::generate(now_secs()).unwrap();
    let keys = Arc::new(Keys::default());
    keys.set.lock().unwrap().push(key.clone());
    let acme = TenantId::new("acme").unwrap();
    let verifier = Verifier::new(
        vec![
            TrustedIssuer::external("https://kc.test/realms/acme-prod", acme.clone())
                .with_keys(keys.clone())
                .with_audiences(["account"]),
        ],
        RoleMap::default(),
    );
    let mut c = claims("ignored");
    c.iss = "https://kc.test/realms/acme-prod".into();
    c.tenant = None;
    c.aud = Some(Audience::Many(vec!["account".into(), "x".into()]));
    c.roles = Vec::new();
    c.realm_access = Some(cairn_auth::RealmAccess {
        roles: vec!["viewer".into(), "offline_access".into()],
    });
    // An external issuer cannot grant tenant groups' sharing.
    c.shared
        .insert("globex".into(), vec!["flights".into(), "audit".into()]);
    let who = verifier.verify(&key.sign(&c).unwrap()).await.unwrap();
    assert_eq!(who.tenant, acme);
    assert!(who.has_permission(permissions::FLIGHTS_READ));
    assert!(!who.has_permission(permissions::FLIGHTS_WRITE));
    assert!(who.shared.is_empty(), "{:?}", who.shared);
    assert!(!who.shares(&TenantId::new("globex").unwrap(), "flights"));
    // The same token naming another tenant is refused.
    c.tenant = Some("globex".into());
    assert_eq!(
        rejection(&verifier, &key.sign(&c).unwrap()).await,
        Rejection::WrongTenant
    );
    // Cairn's realms are not trusted by this verifier: the refusal names
    // the issuer trusted for the token's tenant.
    assert_eq!(
        rejection(&verifier, &key.sign(&claims("acme")).unwrap()).await,
        Rejection::UnknownIssuer {
            issuer: "http://id.test/realms/acme".into(),
            expected: vec!["https://kc.test/realms/acme-prod".into()],
        }
    );
    // Nothing is said about the issuers of tenants the token is not for.
    assert_eq!(
        rejection(&verifier, &key.sign(&claims("globex")).unwrap()).await,
        Rejection::UnknownIssuer {
            issuer: "http://id.test/realms/globex".into(),
            expected: Vec::new(),
        }
    );
}

#[tokio::test]
async fn keys_sealed_at_rest_sign_after_reopening() {
    let master = MasterKey::generate().unwrap();
    let f = fixture(Duration::ZERO);
    let stored = f.key.seal(&master).unwrap();
    let reopened = SigningKey::open(&stored, &master).unwrap();
    f.verifier
        .verify(&reopened.sign(&claims("acme")).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn tenant_groups_come_from_cairn_realms_only_and_never_name_the_own_tenant() {
    let f = fixture(Duration::ZERO);
    let mut c = claims("acme");
    c.shared.insert("globex".into(), vec!["flights".into()]);
    c.shared.insert("acme".into(), vec!["passengers".into()]);
    c.shared
        .insert("Not A Tenant".into(), vec!["flights".into()]);
    let who = f.verifier.verify(&f.key.sign(&c).unwrap()).await.unwrap();
    let globex = TenantId::new("globex").unwrap();
    assert!(who.shares(&globex, "flights"));
    assert!(!who.shares(&globex, "passengers"));
    assert_eq!(who.shared.len(), 1, "{:?}", who.shared);
}

#[tokio::test]
async fn a_token_of_another_issuer_url_is_told_which_issuer_was_expected() {
    let f = fixture(Duration::ZERO);
    // The same realm under another public URL (localhost instead of the
    // configured host): the usual mistake.
    let moved = f
        .key
        .sign(&AccessClaims {
            iss: "http://localhost:8080/realms/acme".into(),
            ..claims("acme")
        })
        .unwrap();
    let refused = rejection(&f.verifier, &moved).await;
    assert_eq!(
        refused,
        Rejection::UnknownIssuer {
            issuer: "http://localhost:8080/realms/acme".into(),
            expected: vec![format!("{BASE}/realms/acme")],
        }
    );
    assert_eq!(refused.code(), ErrorCode::IssuerMismatch);
    assert_eq!(
        refused.to_string(),
        "the token's issuer (iss) is http://localhost:8080/realms/acme, but tokens for \
         its tenant must be issued by http://id.test/realms/acme"
    );
    // The tenant claim, when there is one, says which tenant it is for.
    let claimed = f
        .key
        .sign(&AccessClaims {
            iss: "https://elsewhere.test/".into(),
            tenant: Some("globex".into()),
            ..claims("acme")
        })
        .unwrap();
    assert_eq!(
        rejection(&f.verifier, &claimed).await,
        Rejection::UnknownIssuer {
            issuer: "https://elsewhere.test/".into(),
            expected: vec![format!("{BASE}/realms/globex")],
        }
    );
    // No tenant known: the pattern of the trusted realms.
    let anonymous = f
        .key
        .sign(&AccessClaims {
            iss: "https://elsewhere.test/".into(),
            tenant: None,
            ..claims("acme")
        })
        .unwrap();
    assert_eq!(
        rejection(&f.verifier, &anonymous).await,
        Rejection::UnknownIssuer {
            issuer: "https://elsewhere.test/".into(),
            expected: vec![format!("{BASE}/realms/<tenant>")],
        }
    );
}

#[tokio::test]
async fn an_issuer_echoed_back_is_short_and_printable() {
    let f = fixture(Duration::ZERO);
    let hostile = format!("http://evil.test/\"\\\r\n\u{e9}{}", "a".repeat(500));
    let t = f
        .key
        .sign(&AccessClaims {
            iss: hostile,
            tenant: None,
            ..claims("acme")
        })
        .unwrap();
    let Rejection::UnknownIssuer { issuer, .. } = rejection(&f.verifier, &t).await else {
        panic!("an unknown issuer");
    };
    assert!(issuer.starts_with("http://evil.test/?????aaa"), "{issuer}");
    assert!(issuer.ends_with("..."), "{issuer}");
    assert!(issuer.len() <= 203, "{}", issuer.len());
    assert!(
        issuer
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\')
    );
}

#[test]
fn every_rejection_has_its_code_and_says_no_more_than_why() {
    let cases = [
        (Rejection::Missing, ErrorCode::MissingToken),
        (Rejection::Malformed, ErrorCode::MalformedToken),
        (
            Rejection::UnknownIssuer {
                issuer: "http://a".into(),
                expected: vec!["http://b/realms/acme".into()],
            },
            ErrorCode::IssuerMismatch,
        ),
        (Rejection::AlgorithmNotAllowed, ErrorCode::InvalidSignature),
        (Rejection::UnknownKey, ErrorCode::UnknownKey),
        (Rejection::BadSignature, ErrorCode::InvalidSignature),
        (Rejection::Expired, ErrorCode::Expired),
        (Rejection::NotYetValid, ErrorCode::NotYetValid),
        (
            Rejection::WrongAudience {
                expected: vec!["cairn".into()],
            },
            ErrorCode::AudienceMismatch,
        ),
        (Rejection::WrongTenant, ErrorCode::TenantMismatch),
        (Rejection::UnknownTenant, ErrorCode::UnknownTenant),
        (Rejection::Revoked, ErrorCode::Revoked),
    ];
    for (rejection, code) in &cases {
        assert_eq!(rejection.code(), *code, "{rejection:?}");
        assert!(!rejection.to_string().is_empty());
    }
    // Which part of a signature failed is never told.
    assert_eq!(
        Rejection::AlgorithmNotAllowed.to_string(),
        Rejection::BadSignature.to_string()
    );
    assert_eq!(
        Rejection::WrongAudience {
            expected: vec!["cairn".into()]
        }
        .to_string(),
        "the token is not meant for this API: its audience (aud) must name cairn"
    );
}

/// Answers every request on a local port with `status` and `content_type`
/// (a JWKS server that does not have the realm asked for, or a stranger).
async fn answering(status: u16, content_type: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let body = r#"{"code":"not_found"}"#;
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_realm_the_identity_service_does_not_have_is_an_unknown_tenant() {
    let key = SigningKey::generate(now_secs()).unwrap();
    let verifier_of = |base: String| {
        Verifier::new(
            vec![TrustedIssuer::cairn(
                base.clone(),
                Arc::new(RemoteJwks::realms(base.clone(), base)),
            )],
            RoleMap::default(),
        )
    };
    let token_of = |base: &str| {
        key.sign(&AccessClaims {
            iss: format!("{base}/realms/gone"),
            ..claims("gone")
        })
        .unwrap()
    };
    // The identity service answers "no such realm" (a problem 404).
    let base = answering(404, "application/problem+json").await;
    let refused = rejection(&verifier_of(base.clone()), &token_of(&base)).await;
    assert_eq!(refused, Rejection::UnknownTenant);
    // Anything else that fails is the keys being unavailable (503), not
    // the token's fault.
    for (status, content_type) in [(404, "text/html"), (500, "application/problem+json")] {
        let base = answering(status, content_type).await;
        match verifier_of(base.clone()).verify(&token_of(&base)).await {
            Err(AuthError::KeysUnavailable { .. }) => {}
            other => panic!("{status} {content_type}: {other:?}"),
        }
    }
}
