//! The token endpoint's grants (`password`, `client_credentials`,
//! `refresh_token`), the lockout after repeated failed logins, and
//! revocation (RFC 7009). Refresh tokens rotate; a used one presented again
//! revokes its family.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use cairn_auth::{AUDIENCE, AccessClaims, Audience, AuthError, RealmAccess, Revocations, now_secs};
use cairn_core::{EventId, Metadata, NewEvent, StreamId, TenantId};
use cairn_store::ExpectedVersion;
use serde::Serialize;

use super::{Identity, IdentityError, Realm, command_error, store_error, system};
use crate::{
    PUBLIC_CLIENT,
    domain::{User, validate_client_id, validate_username},
    revocations::AccessTokenRevoked,
    tokens::{self, Presented, RefreshRecord},
};

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_in: Option<i64>,
    pub scope: String,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Refuses a login while the user is locked.
    async fn check_lock(&self, tenant: &TenantId, username: &str) -> Result<(), IdentityError> {
        let until = tokens::locked_until(&self.inner.db, tenant.as_str(), username)
            .await
            .map_err(store_error)?;
        let now = now_millis();
        match until {
            Some(until) if until > now => Err(IdentityError::Locked(
                ((until - now) as u64).div_ceil(1000).max(1),
            )),
            _ => Ok(()),
        }
    }

    /// Counts a failed login; from the `max_failed_logins`-th in a row on,
    /// locks the user, twice as long each time, up to 15 minutes.
    async fn record_failure(&self, tenant: &TenantId, username: &str) -> Result<(), IdentityError> {
        let options = &self.inner.options;
        let count = tokens::count_failure(&self.inner.db, tenant.as_str(), username)
            .await
            .map_err(store_error)?;
        if count >= options.max_failed_logins {
            let doublings = (count - options.max_failed_logins).min(10);
            let lock = (options.lockout * 2u32.pow(doublings)).min(Duration::from_secs(900));
            tokens::lock(
                &self.inner.db,
                tenant.as_str(),
                username,
                now_millis() + lock.as_millis() as i64,
            )
            .await
            .map_err(store_error)?;
            tracing::warn!(
                tenant = %tenant,
                username,
                failures = count,
                lock_seconds = lock.as_secs(),
                "login locked after repeated failures"
            );
        }
        Ok(())
    }

    /// Checks the client of a grant: the public client needs no secret; a
    /// confidential one must present its secret. Returns its roles (`None`
    /// for the public client).
    async fn authenticate_client(
        &self,
        tenant: &TenantId,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<Option<Vec<String>>, IdentityError> {
        if client_id == PUBLIC_CLIENT {
            return Ok(None);
        }
        if validate_client_id(client_id).is_err() {
            return Err(IdentityError::InvalidClient);
        }
        let client = self
            .inner
            .clients
            .load(&system(tenant), client_id)
            .await
            .map_err(command_error)?;
        let hash = client.as_ref().map(|c| c.state.secret_hash.clone());
        let secret = secret.unwrap_or_default();
        if self.verify_secret(secret, hash).await && !secret.is_empty() {
            Ok(Some(client.expect("verified").state.roles))
        } else {
            Err(IdentityError::InvalidClient)
        }
    }

    /// The `password` grant.
    pub async fn password_grant(
        &self,
        tenant: &TenantId,
        client_id: &str,
        client_secret: Option<&str>,
        username: &str,
        password: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, IdentityError> {
        let realm = self.realm_or_404(tenant).await?;
        self.authenticate_client(tenant, client_id, client_secret)
            .await?;
        self.check_lock(tenant, username).await?;
        let user = if validate_username(username).is_ok() {
            self.inner
                .users
                .load(&system(tenant), username)
                .await
                .map_err(command_error)?
                .map(|l| l.state)
        } else {
            None
        };
        let ok = self
            .verify_secret(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await;
        let Some(user) = user.filter(|_| ok) else {
            self.record_failure(tenant, username).await?;
            return Err(IdentityError::InvalidGrant(
                "invalid user credentials".into(),
            ));
        };
        tokens::clear_failures(&self.inner.db, tenant.as_str(), username)
            .await
            .map_err(store_error)?;
        let family = uuid::Uuid::now_v7().to_string();
        self.issue(&realm, tenant, &user, client_id, scope, Some(family))
            .await
    }

    /// Mints an access token for a user without a password (the command
    /// line and `cairn up --dev` do this with the operator's authority),
    /// valid `ttl` seconds.
    pub async fn token_for(
        &self,
        tenant: &TenantId,
        username: &str,
        ttl: i64,
    ) -> Result<String, IdentityError> {
        let realm = self.realm_or_404(tenant).await?;
        let user = self
            .inner
            .users
            .load(&system(tenant), username)
            .await
            .map_err(command_error)?
            .ok_or_else(|| IdentityError::NotFound(format!("user {username} does not exist")))?
            .state;
        self.mint(
            &realm,
            tenant,
            user.id.as_deref().unwrap_or_default(),
            Some(&user.username),
            &user.roles,
            PUBLIC_CLIENT,
            "openid",
            ttl,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn mint(
        &self,
        realm: &Realm,
        tenant: &TenantId,
        subject: &str,
        username: Option<&str>,
        roles: &[String],
        client_id: &str,
        scope: &str,
        ttl: i64,
    ) -> Result<String, IdentityError> {
        let now = now_secs();
        let claims = AccessClaims {
            iss: self.issuer(tenant),
            sub: subject.to_owned(),
            aud: Some(Audience::One(AUDIENCE.to_owned())),
            exp: now + ttl,
            nbf: Some(now),
            iat: Some(now),
            jti: Some(uuid::Uuid::now_v7().to_string()),
            tenant: Some(tenant.to_string()),
            preferred_username: username.map(str::to_owned),
            roles: roles.to_vec(),
            realm_access: Some(RealmAccess {
                roles: roles.to_vec(),
            }),
            scope: Some(scope.to_owned()),
            azp: Some(client_id.to_owned()),
            shared: realm.shared.clone(),
        };
        realm.active.sign(&claims).map_err(store_error)
    }

    async fn issue(
        &self,
        realm: &Realm,
        tenant: &TenantId,
        user: &User,
        client_id: &str,
        scope: Option<&str>,
        family: Option<String>,
    ) -> Result<TokenResponse, IdentityError> {
        let options = &self.inner.options;
        let scope = scope.unwrap_or("openid").to_owned();
        let access_token = self.mint(
            realm,
            tenant,
            user.id.as_deref().unwrap_or_default(),
            Some(&user.username),
            &user.roles,
            client_id,
            &scope,
            options.access_ttl,
        )?;
        let refresh_token = match family {
            Some(family) => {
                let token = cairn_auth::random_token().map_err(store_error)?;
                tokens::insert(
                    &self.inner.db,
                    &token,
                    &RefreshRecord {
                        tenant: tenant.to_string(),
                        family,
                        username: user.username.clone(),
                        client_id: client_id.to_owned(),
                        scope: scope.clone(),
                        expires_at: now_secs() + options.refresh_ttl,
                    },
                )
                .await
                .map_err(store_error)?;
                Some(token.to_string())
            }
            None => None,
        };
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: options.access_ttl,
            refresh_expires_in: refresh_token.as_ref().map(|_| options.refresh_ttl),
            refresh_token,
            scope,
        })
    }

    /// The `refresh_token` grant: rotates the token; a reused one revokes
    /// its family.
    pub async fn refresh_grant(
        &self,
        tenant: &TenantId,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
    ) -> Result<TokenResponse, IdentityError> {
        let realm = self.realm_or_404(tenant).await?;
        self.authenticate_client(tenant, client_id, client_secret)
            .await?;
        let invalid = || IdentityError::InvalidGrant("invalid refresh token".into());
        let record = match tokens::present(&self.inner.db, refresh_token, now_secs())
            .await
            .map_err(store_error)?
        {
            Presented::Fresh(record) => record,
            Presented::Reused => {
                tracing::warn!(tenant = %tenant, "a used refresh token was presented again; its session is revoked");
                return Err(invalid());
            }
            Presented::Invalid => return Err(invalid()),
        };
        if record.tenant != tenant.as_str() || record.client_id != client_id {
            return Err(invalid());
        }
        let user = self
            .inner
            .users
            .load(&system(tenant), &record.username)
            .await
            .map_err(command_error)?
            .ok_or_else(invalid)?
            .state;
        self.issue(
            &realm,
            tenant,
            &user,
            client_id,
            Some(&record.scope),
            Some(record.family),
        )
        .await
    }

    /// The `client_credentials` grant.
    pub async fn client_credentials_grant(
        &self,
        tenant: &TenantId,
        client_id: &str,
        client_secret: Option<&str>,
        scope: Option<&str>,
    ) -> Result<TokenResponse, IdentityError> {
        let realm = self.realm_or_404(tenant).await?;
        let Some(roles) = self
            .authenticate_client(tenant, client_id, client_secret)
            .await?
        else {
            return Err(IdentityError::InvalidClient);
        };
        let user = User {
            id: Some(format!("service-account-{client_id}")),
            username: format!("service-account-{client_id}"),
            password_hash: String::new(),
            roles,
        };
        self.issue(&realm, tenant, &user, client_id, scope, None)
            .await
    }

    /// Revocation (RFC 7009): a refresh token revokes its family; an access
    /// token of this realm is refused from now until it expires. Unknown
    /// tokens are ignored, as the RFC asks.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        client_id: &str,
        client_secret: Option<&str>,
        token: &str,
    ) -> Result<(), IdentityError> {
        self.realm_or_404(tenant).await?;
        self.authenticate_client(tenant, client_id, client_secret)
            .await?;
        if tokens::revoke(&self.inner.db, tenant.as_str(), client_id, token)
            .await
            .map_err(store_error)?
        {
            return Ok(());
        }
        if let Ok(principal) = self.verifier(Vec::new()).verify(token).await
            && principal.tenant == *tenant
            && let Some(jti) = principal.token_id
        {
            // The event first: it is what tells every other service, and
            // the table here is written again by a retry if this fails.
            let stream = StreamId::for_aggregate(crate::revocations::CATEGORY, &jti)
                .map_err(|e| IdentityError::Invalid(vec![e]))?;
            let event = NewEvent::new(
                crate::revocations::ACCESS_TOKEN_REVOKED,
                serde_json::to_value(AccessTokenRevoked {
                    jti: jti.clone(),
                    expires_at: principal.expires_at,
                })
                .map_err(store_error)?,
            )
            .with_id(EventId::new())
            .with_metadata(Metadata {
                actor: Some(principal.subject.clone()),
                ..Metadata::default()
            });
            self.inner
                .store
                .append(tenant, &stream, ExpectedVersion::Any, vec![event])
                .await
                .map_err(store_error)?;
            self.inner
                .revoked
                .insert(tenant, &jti, principal.expires_at)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch: lock times are shared by every
/// instance through the database, so they are wall-clock times.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Revoked access tokens, read in process.
#[derive(Debug, Clone)]
pub struct LocalRevocations(pub Identity);

#[async_trait]
impl Revocations for LocalRevocations {
    async fn is_revoked(&self, tenant: &TenantId, token_id: &str) -> Result<bool, AuthError> {
        self.0.inner.revoked.is_revoked(tenant, token_id).await
    }
}
