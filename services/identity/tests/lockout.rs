//! Failed logins are counted in the identity service's database, so a
//! lock holds across restarts and across instances sharing that database.

use std::{sync::Arc, time::Duration};

use cairn_auth::{MasterKey, PasswordHasher};
use cairn_core::TenantId;
use cairn_identity::{Identity, IdentityError, IdentityOptions, PUBLIC_CLIENT};
use cairn_service_db::ServiceDb;
use cairn_store::{EventStore, MemoryStore};

async fn open(store: Arc<dyn EventStore>, db: ServiceDb, master: &MasterKey) -> Identity {
    let mut options = IdentityOptions::new("http://id.test");
    options.hasher = PasswordHasher::new(1024, 1, 1).unwrap();
    options.lockout = Duration::from_secs(60);
    Identity::open(
        store,
        db,
        MasterKey::from_text(&master.to_text()).unwrap(),
        options,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_lock_holds_across_instances_and_restarts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("identity.db").display());
    a_lock_holds_across_instances_and_restarts(&url).await;
}

#[tokio::test]
async fn a_lock_holds_across_instances_and_restarts_on_postgres() {
    let base = std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Err(e) = sqlx::PgPool::connect(&base).await {
        cairn_store::testkit::service_absent::<()>("PostgreSQL", e);
        return;
    }
    let schema = format!("cairn_test_lockout_{}", uuid::Uuid::new_v4().simple());
    a_lock_holds_across_instances_and_restarts(&format!("{base}?schema={schema}")).await;
}

async fn a_lock_holds_across_instances_and_restarts(url: &str) {
    let path = url;
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let master = MasterKey::generate().unwrap();
    let first = open(store.clone(), ServiceDb::open(path).await.unwrap(), &master).await;
    let made = first.bootstrap(&["demo"]).await.unwrap();
    let password = made[0].password.to_string();
    let demo = TenantId::new("demo").unwrap();
    let login = |identity: Identity, password: String| {
        let demo = demo.clone();
        async move {
            identity
                .password_grant(&demo, PUBLIC_CLIENT, None, "admin", &password, None)
                .await
        }
    };

    // Four failures, then a success: the count starts again.
    for _ in 0..4 {
        let e = login(first.clone(), "wrong".into()).await.unwrap_err();
        assert!(matches!(e, IdentityError::InvalidGrant(_)), "{e:?}");
    }
    login(first.clone(), password.clone()).await.unwrap();
    for _ in 0..4 {
        login(first.clone(), "wrong".into()).await.unwrap_err();
    }
    // A second instance on the same database takes the fifth failure...
    let second = open(store.clone(), ServiceDb::open(path).await.unwrap(), &master).await;
    login(second.clone(), "wrong".into()).await.unwrap_err();
    // ... and both are locked now, even for the right password.
    for identity in [first.clone(), second.clone()] {
        match login(identity, password.clone()).await {
            Err(IdentityError::Locked(secs)) => assert!((1..=60).contains(&secs), "{secs}"),
            other => panic!("expected a lock, got {other:?}"),
        }
    }
    drop((first, second));
    // A restart remembers it.
    let restarted = open(store, ServiceDb::open(path).await.unwrap(), &master).await;
    assert!(matches!(
        login(restarted.clone(), password.clone()).await,
        Err(IdentityError::Locked(_))
    ));
    // Another user of the tenant is not locked.
    let e = restarted
        .password_grant(&demo, PUBLIC_CLIENT, None, "nobody", "x", None)
        .await
        .unwrap_err();
    assert!(matches!(e, IdentityError::InvalidGrant(_)), "{e:?}");
}
