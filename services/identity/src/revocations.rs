//! Revoked access tokens, known to every process that verifies tokens.
//!
//! An access token is a signed statement valid until it expires; revoking
//! one means telling every resource server to refuse its `jti`. The
//! identity service records each revocation as an `AccessTokenRevoked`
//! event in the token's tenant (stream `revocation-{jti}`), which its relay
//! publishes like any public event (the log is the outbox; see
//! [`public_events`] for the rest of what it publishes). Every other
//! service consumes them into its own database, in the consumer's
//! transaction, so a revocation survives restarts and redeliveries have no
//! second effect.
//!
//! Instances of a service compete for its consumer's messages, so one
//! instance writes each revocation. That instance refuses the token as soon
//! as the message is handled (its handler also puts it into the set tokens
//! are checked against); every other instance reads the table again each
//! [`RevokedTokens::keep_fresh`] interval (a second by default). Rows are dropped
//! once the token has expired: the verifier refuses it then anyway.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use async_trait::async_trait;
use cairn_auth::{AuthError, Revocations, now_secs};
use cairn_core::TenantId;
use cairn_messaging::{
    Broker, Consumer, EventHandler, HandlerError, IntegrationEvent, MessagingError, PublicEvents,
};
use cairn_runtime::{Controls, Running, Stage};
use cairn_service_db::ServiceDb;
use serde::{Deserialize, Serialize};
use sqlx::{Any, Transaction};

/// The identity service's name on the broker.
pub const SERVICE: &str = "identity";
/// The stream category of revocations (`revocation-{jti}`).
pub const CATEGORY: &str = "revocation";
/// The event type of a revoked access token.
pub const ACCESS_TOKEN_REVOKED: &str = "AccessTokenRevoked";
/// How often the revoked set is read again from the database.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How often expired revocations are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The data of an `AccessTokenRevoked` event (its tenant is the event's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenRevoked {
    /// The token's `jti`.
    pub jti: String,
    /// When the token expires (seconds since the epoch): after that the
    /// revocation can be forgotten.
    pub expires_at: i64,
}

/// The identity service's public events: revocations, which every other
/// service acts on, and what happened to tenants, users, clients, signing
/// keys and tenant groups, for the audit log. Events of the credential
/// categories ([`crate::CREDENTIAL_CATEGORIES`]: users, clients, signing
/// keys) leave without their data.
pub fn public_events() -> Result<PublicEvents, MessagingError> {
    Ok(PublicEvents::new(
        SERVICE,
        [CATEGORY, "tenant", "user", "client", "realmkeys", "group"],
        [
            ACCESS_TOKEN_REVOKED,
            "TenantCreated",
            "SigningKeyAdded",
            "UserCreated",
            "PasswordChanged",
            "ClientCreated",
            "GroupCreated",
            "GroupChanged",
            "GroupDissolved",
        ],
    )?
    .with_redacted(crate::CREDENTIAL_CATEGORIES))
}

/// The consumer group through which `service` hears revocations.
pub fn group(service: &str) -> String {
    format!("{service}-revocations")
}

/// Creates the revocation table if missing (tenant-protected on
/// PostgreSQL like every table with a `tenant_id`).
pub async fn create_table(db: &ServiceDb) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS identity_revoked_tokens (
            tenant_id TEXT NOT NULL,
            jti TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, jti))",
    )
    .execute(db.pool())
    .await?;
    let mut conn = db.pool().acquire().await?;
    cairn_service_db::protect_tenant_tables(&mut conn).await
}

type Set = RwLock<HashSet<(String, String)>>;

/// The revoked, unexpired access tokens of every tenant, kept from a
/// database table and read again periodically; a [`Revocations`] for the
/// verifier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RevokedTokens {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: ServiceDb,
    set: Set,
}

/// What the component that keeps a [`RevokedTokens`] fresh has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Times the table was read again.
    pub reloads: u64,
    /// The last failure to read it (the last set is kept meanwhile).
    pub last_error: Option<String>,
}

impl RevokedTokens {
    /// Opens the table in `db` (creating it) and reads it.
    pub async fn open(db: ServiceDb) -> Result<Self, sqlx::Error> {
        create_table(&db).await?;
        prune(&db).await?;
        let set = RwLock::new(load(&db).await?);
        Ok(Self {
            inner: Arc::new(Inner { db, set }),
        })
    }

    /// Reads the table again every `poll` (what other instances of the
    /// service recorded), dropping expired rows now and then, until the
    /// returned component is shut down or every clone of this list is gone.
    pub fn keep_fresh(&self, poll: Duration) -> Running<Freshness> {
        let weak = Arc::downgrade(&self.inner);
        Running::start(
            "revoked-token list",
            Stage::Support,
            Freshness::default(),
            |c| vec![tokio::spawn(refresh(weak, poll, c))],
        )
    }

    /// Records a revocation here and now (the identity service itself,
    /// which must refuse the token at once).
    pub async fn insert(
        &self,
        tenant: &TenantId,
        jti: &str,
        expires_at: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.inner.db.pool().begin().await?;
        record(&mut tx, tenant.as_str(), jti, expires_at).await?;
        tx.commit().await?;
        self.inner
            .set
            .write()
            .expect("lock")
            .insert((tenant.to_string(), jti.to_owned()));
        Ok(())
    }

    /// Reads the table again now.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let fresh = load(&self.inner.db).await?;
        *self.inner.set.write().expect("lock") = fresh;
        Ok(())
    }

    /// The consumer that writes `identity`'s revocations into this
    /// table, as `service`'s group, and into this set at once.
    pub fn consumer(&self, service: &str, broker: Arc<dyn Broker>) -> Consumer {
        Consumer::new(group(service), SERVICE, self.inner.db.clone(), broker).on(
            ACCESS_TOKEN_REVOKED,
            RecordRevocation {
                set: Arc::downgrade(&self.inner),
            },
        )
    }

    fn contains(&self, tenant: &TenantId, jti: &str) -> bool {
        self.inner
            .set
            .read()
            .expect("lock")
            .contains(&(tenant.to_string(), jti.to_owned()))
    }
}

#[async_trait]
impl Revocations for RevokedTokens {
    async fn is_revoked(&self, tenant: &TenantId, token_id: &str) -> Result<bool, AuthError> {
        Ok(self.contains(tenant, token_id))
    }
}

async fn refresh(weak: Weak<Inner>, poll: Duration, mut controls: Controls<Freshness>) {
    let mut since_prune = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = controls.stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = weak.upgrade() else { return };
        // Expired rows are dropped now and then, not at every read: the
        // read skips them anyway.
        since_prune += poll;
        if since_prune >= PRUNE_EVERY {
            since_prune = Duration::ZERO;
            if let Err(e) = prune(&inner.db).await {
                tracing::warn!(error = %e, "cannot drop expired revocations");
            }
        }
        match load(&inner.db).await {
            Ok(fresh) => {
                *inner.set.write().expect("lock") = fresh;
                controls.status.send_modify(|s| {
                    s.reloads += 1;
                    s.last_error = None;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the revoked tokens; keeping the last set");
                controls
                    .status
                    .send_modify(|s| s.last_error = Some(e.to_string()));
            }
        }
    }
}

/// Drops the rows of tokens that have expired.
async fn prune(db: &ServiceDb) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM identity_revoked_tokens WHERE expires_at < $1")
        .bind(now_secs())
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The revoked tokens that have not expired yet.
async fn load(db: &ServiceDb) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let now = now_secs();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, jti FROM identity_revoked_tokens WHERE expires_at >= $1")
            .bind(now)
            .fetch_all(db.pool())
            .await?;
    Ok(rows.into_iter().collect())
}

async fn record(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    jti: &str,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO identity_revoked_tokens (tenant_id, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, jti) DO NOTHING",
    )
    .bind(tenant)
    .bind(jti)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes an `AccessTokenRevoked` into the table, in the consumer's
/// transaction, and into the set at once: waiting for the next read of the
/// table would let the token pass for up to a poll interval more. Adding it
/// before the commit is safe: the event is a revocation the identity
/// service has committed, whatever becomes of this transaction (if it
/// rolls back, the message comes again). A read of the table that began
/// before the commit may drop the entry again until the next read: no worse
/// than without it.
#[derive(Debug, Clone)]
struct RecordRevocation {
    set: Weak<Inner>,
}

#[async_trait]
impl EventHandler for RecordRevocation {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        let revoked: AccessTokenRevoked = serde_json::from_value(event.data.clone())
            .map_err(|e| HandlerError::Reject(format!("not an AccessTokenRevoked: {e}")))?;
        if revoked.jti.is_empty() || revoked.jti.len() > 256 {
            return Err(HandlerError::Reject("jti must be 1-256 characters".into()));
        }
        record(
            tx,
            event.tenantid.as_str(),
            &revoked.jti,
            revoked.expires_at,
        )
        .await
        .map_err(|e| HandlerError::Retry(e.to_string()))?;
        if let Some(inner) = self.set.upgrade()
            && revoked.expires_at >= now_secs()
        {
            inner
                .set
                .write()
                .expect("lock")
                .insert((event.tenantid.to_string(), revoked.jti));
        }
        Ok(())
    }
}
