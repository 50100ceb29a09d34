//! Revocation across processes: the identity service records a revoked
//! access token as an event; its relay publishes it; another service's
//! consumer writes it into that service's database, and every verifier
//! reading that database refuses the token. Here over the in-memory
//! broker (the end-to-end tests of `cairn run` do it over NATS and
//! RabbitMQ).

use std::{sync::Arc, time::Duration};

use cairn_auth::{
    MasterKey, PasswordHasher, RoleMap, StaticKeys, TrustedIssuer, Verifier, VerifierOptions,
};
use cairn_core::TenantId;
use cairn_identity::{
    Identity, IdentityOptions,
    revocations::{self, RevokedTokens},
};
use cairn_messaging::{Broker, ConsumerSpec, MemoryBroker, RelayOptions, start_relay};
use cairn_service_db::ServiceDb;
use cairn_store::{AllFilter, EventStore, MemoryStore};

#[tokio::test]
async fn a_revoked_token_is_refused_by_another_service_after_the_event_arrives() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let mut options = IdentityOptions::new("http://id.test");
    options.hasher = PasswordHasher::new(1024, 1, 1).unwrap();
    let identity_db = ServiceDb::ephemeral().await.unwrap();
    let identity = Identity::open(
        store.clone(),
        identity_db.clone(),
        MasterKey::generate().unwrap(),
        options,
    )
    .await
    .unwrap();
    identity.bootstrap(&["demo"]).await.unwrap();
    let demo = TenantId::new("demo").unwrap();

    let broker = MemoryBroker::new();
    let broker: Arc<dyn Broker> = Arc::new(broker);
    // The other service's group exists before anything is published.
    broker
        .declare(&ConsumerSpec::new(
            revocations::group("flights"),
            "identity",
        ))
        .await
        .unwrap();
    let relay = start_relay(
        revocations::public_events().unwrap(),
        store.clone(),
        identity_db,
        broker.clone(),
        RelayOptions::default(),
    )
    .await
    .unwrap();

    // The other service: its own database, its revoked set (no polling
    // here: the test reloads), and a verifier with the realm's keys.
    let flights_db = ServiceDb::ephemeral().await.unwrap();
    let revoked = RevokedTokens::open(flights_db.clone()).await.unwrap();
    // A second instance of that service, on the same database: it does not
    // handle the event, and learns of it by reading the table again.
    let other = RevokedTokens::open(flights_db.clone()).await.unwrap();
    let fresh = other.keep_fresh(Duration::from_millis(50));
    let consumer = revoked
        .consumer("flights", broker.clone())
        .start()
        .await
        .unwrap();
    let keys = identity.jwks(&demo).await.unwrap();
    let verifier = Verifier::with_options(
        vec![TrustedIssuer::cairn(
            "http://id.test",
            Arc::new(StaticKeys(keys)),
        )],
        RoleMap::default(),
        VerifierOptions::default(),
        Some(Arc::new(revoked.clone())),
    );

    let token = identity.token_for(&demo, "admin", 300).await.unwrap();
    let kept = identity.token_for(&demo, "admin", 300).await.unwrap();
    assert!(verifier.verify(&token).await.is_ok());
    identity
        .revoke(&demo, cairn_identity::PUBLIC_CLIENT, None, &token)
        .await
        .unwrap();
    // The identity service refuses it at once.
    assert!(identity.verifier(Vec::new()).verify(&token).await.is_err());
    // The event is in the log, in the token's tenant.
    let all = store
        .read_all(0, &AllFilter::all_tenants(), 1000)
        .await
        .unwrap();
    let event = all
        .iter()
        .find(|e| e.event_type == revocations::ACCESS_TOKEN_REVOKED)
        .expect("an AccessTokenRevoked event");
    assert_eq!(event.tenant, demo);
    assert!(event.stream.as_str().starts_with("revocation-"));
    assert!(event.data["expiresAt"].as_i64().unwrap() > 0);
    assert!(
        !event.data.to_string().contains(&token),
        "the token itself is never recorded"
    );

    // The consumer also hears the identity service's other events (the
    // tenant's creation, its key, its admin), which it skips: wait for the
    // revocation itself. The set is never read again from the table here
    // (no polling): the instance that handles the event refuses the token
    // at once.
    let mut refused = false;
    for _ in 0..50 {
        if let Err(e) = verifier.verify(&token).await {
            assert_eq!(e.rejection(), Some(&cairn_auth::Rejection::Revoked));
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "the revocation reached the other service and is refused there too"
    );
    assert!(consumer.status().handled >= 1);
    assert!(verifier.verify(&kept).await.is_ok(), "other tokens are not");

    // A restart of the other service still knows it: the set is read from
    // its database.
    use cairn_auth::Revocations as _;
    let jti = event.data["jti"].as_str().unwrap();
    let mut heard = false;
    for _ in 0..100 {
        if other.is_revoked(&demo, jti).await.unwrap() {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heard, "the other instance reads it from the table");
    assert!(fresh.status().reloads >= 1);
    assert_eq!(fresh.status().last_error, None);
    fresh.shutdown().await;

    let reopened = RevokedTokens::open(flights_db).await.unwrap();
    assert!(reopened.is_revoked(&demo, jti).await.unwrap());
    assert!(
        !reopened
            .is_revoked(&TenantId::new("globex").unwrap(), jti)
            .await
            .unwrap(),
        "a revocation belongs to its tenant"
    );
    consumer.shutdown().await;
    relay.shutdown().await;
}

/// What the identity service publishes: its tenants, users, clients,
/// signing keys, groups and revocations, the credential categories without
/// their data, so no password hash or sealed key ever reaches a broker.
#[tokio::test]
async fn credentials_never_leave_the_identity_service() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let mut options = IdentityOptions::new("http://id.test");
    options.hasher = PasswordHasher::new(1024, 1, 1).unwrap();
    let identity = Identity::open(
        store.clone(),
        ServiceDb::ephemeral().await.unwrap(),
        MasterKey::generate().unwrap(),
        options,
    )
    .await
    .unwrap();
    identity.bootstrap(&["platform", "demo"]).await.unwrap();
    let demo = TenantId::new("demo").unwrap();
    identity
        .create_client("test", &demo, "billing", &["viewer".to_owned()])
        .await
        .unwrap();
    let public = revocations::public_events().unwrap();
    let all = store
        .read_all(0, &AllFilter::all_tenants(), 1000)
        .await
        .unwrap();
    let mut published = Vec::new();
    for event in &all {
        let category = event.stream.category().as_str().to_owned();
        if public.categories.contains(&category) && public.types.contains(&event.event_type) {
            published.push((category, public.integration_event(event, None)));
        }
    }
    let types: Vec<&str> = published
        .iter()
        .map(|(_, e)| e.event_type.as_str())
        .collect();
    for expected in [
        "TenantCreated",
        "SigningKeyAdded",
        "UserCreated",
        "ClientCreated",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} not published: {types:?}"
        );
    }
    for (category, event) in &published {
        if cairn_identity::CREDENTIAL_CATEGORIES.contains(&category.as_str()) {
            assert_eq!(
                event.data,
                serde_json::json!({"redacted": true}),
                "{category}"
            );
        } else {
            assert_ne!(
                event.data,
                serde_json::json!({"redacted": true}),
                "{category}"
            );
        }
        let text = String::from_utf8(event.to_json()).unwrap();
        for secret in ["argon2", "sealed", "passwordHash", "secretHash"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    // The data stays in the store itself.
    let user = all.iter().find(|e| e.event_type == "UserCreated").unwrap();
    assert!(user.data.to_string().contains("argon2"), "{}", user.data);
}
