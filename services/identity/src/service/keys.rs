//! Each realm's signing keys, sealed with the master key, and the loaded
//! realms: a realm is loaded (keys and the `shared` claim of its groups)
//! once per [`crate::IdentityOptions::realm_ttl`] and dropped at once when
//! this process changes its keys or the groups.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use async_trait::async_trait;
use cairn_auth::{AuthError, JwkSet, KeySource, SigningKey, now_secs};
use cairn_core::TenantId;

use super::{Identity, IdentityError, store_error, system};
use crate::domain::RealmKeysCommand;

/// The id of the realm-keys aggregate in every tenant.
const KEYS_ID: &str = "signing";

/// A tenant's realm as loaded: what signing a token needs.
pub(super) struct Realm {
    history: cairn_auth::KeyHistory,
    pub(super) active: SigningKey,
    loaded: Instant,
    /// What the tenant's groups share with it, per other tenant: the
    /// `shared` claim of its tokens.
    pub(super) shared: BTreeMap<String, Vec<String>>,
}

impl Identity {
    pub(super) async fn ensure_keys(&self, tenant: &TenantId) -> Result<(), IdentityError> {
        let now = now_secs();
        let key = SigningKey::generate(now)
            .and_then(|k| k.seal(&self.inner.master))
            .map_err(store_error)?;
        self.inner
            .keys
            .execute(
                &system(tenant),
                KEYS_ID,
                None,
                &RealmKeysCommand::Ensure { key, at: now },
            )
            .await
            .map_err(store_error)?;
        self.inner.realms.write().expect("lock").remove(tenant);
        Ok(())
    }

    /// Replaces the tenant's signing key; the old one stays in the JWKS for
    /// [`crate::IdentityOptions::key_overlap`]. Returns the new `kid`.
    pub async fn rotate_keys(
        &self,
        actor: &str,
        tenant: &TenantId,
    ) -> Result<String, IdentityError> {
        self.require_tenant(tenant).await?;
        let now = now_secs();
        let key = SigningKey::generate(now).map_err(store_error)?;
        let kid = key.kid().to_owned();
        let stored = key.seal(&self.inner.master).map_err(store_error)?;
        self.inner
            .keys
            .execute(
                &system(tenant).with_actor(actor),
                KEYS_ID,
                None,
                &RealmKeysCommand::Add {
                    key: stored,
                    at: now,
                },
            )
            .await
            .map_err(store_error)?;
        self.inner.realms.write().expect("lock").remove(tenant);
        Ok(kid)
    }

    /// The tenant's keys and what its groups share with it, loaded (and
    /// cached for [`crate::IdentityOptions::realm_ttl`]); `None` for a tenant that
    /// does not exist.
    async fn realm(&self, tenant: &TenantId) -> Result<Option<Arc<Realm>>, IdentityError> {
        if let Some(realm) = self.inner.realms.read().expect("lock").get(tenant)
            && realm.loaded.elapsed() < self.inner.options.realm_ttl
        {
            return Ok(Some(realm.clone()));
        }
        if !self.tenant_exists(tenant).await? {
            return Ok(None);
        }
        let loaded = self
            .inner
            .keys
            .load(&system(tenant), KEYS_ID)
            .await
            .map_err(store_error)?;
        let history = match loaded {
            Some(l) if l.state.history.active().is_some() => l.state.history,
            _ => {
                // The tenant was created but its key was not (a crash in
                // between): make it now.
                self.ensure_keys(tenant).await?;
                return Box::pin(self.realm(tenant)).await;
            }
        };
        let active = SigningKey::open(history.active().expect("checked"), &self.inner.master)
            .map_err(|e| IdentityError::Unavailable(format!("signing key of {tenant}: {e}")))?;
        let shared = self.shared_with(tenant).await?;
        let realm = Arc::new(Realm {
            history,
            active,
            loaded: Instant::now(),
            shared,
        });
        self.inner
            .realms
            .write()
            .expect("lock")
            .insert(tenant.clone(), realm.clone());
        Ok(Some(realm))
    }

    pub(super) async fn realm_or_404(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<Realm>, IdentityError> {
        self.realm(tenant)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("realm {tenant} does not exist")))
    }

    /// The JWKS of `tenant` (the active key and recently replaced ones).
    pub async fn jwks(&self, tenant: &TenantId) -> Result<JwkSet, IdentityError> {
        let realm = self.realm_or_404(tenant).await?;
        Ok(realm
            .history
            .jwks(now_secs(), self.inner.options.key_overlap))
    }

    /// Whether the realm exists.
    pub async fn realm_exists(&self, tenant: &TenantId) -> Result<bool, IdentityError> {
        Ok(self.realm(tenant).await?.is_some())
    }
}

/// The realms' keys, read in process.
#[derive(Debug, Clone)]
pub struct LocalKeys(pub Identity);

#[async_trait]
impl KeySource for LocalKeys {
    async fn jwks(&self, issuer: &str) -> Result<JwkSet, AuthError> {
        let prefix = format!("{}/realms/", self.0.inner.options.issuer_base);
        let Some(tenant) = issuer
            .strip_prefix(&prefix)
            .and_then(|t| TenantId::new(t).ok())
        else {
            return Ok(JwkSet { keys: Vec::new() });
        };
        match self.0.jwks(&tenant).await {
            Ok(set) => Ok(set),
            Err(IdentityError::NotFound(_)) => Ok(JwkSet { keys: Vec::new() }),
            Err(e) => Err(AuthError::KeysUnavailable {
                issuer: issuer.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}
