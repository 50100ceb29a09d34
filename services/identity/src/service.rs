//! The identity application: see the crate documentation.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use cairn_auth::{
    AUDIENCE, AccessClaims, Audience, AuthError, JwkSet, KeySource, MasterKey, PasswordHasher,
    RealmAccess, Revocations, RoleMap, SigningKey, TrustedIssuer, Verifier, VerifierOptions,
    now_secs, roles,
};
use cairn_core::{
    ErrorCode, EventId, Metadata, NewEvent, RequestContext, StreamId, TenantId, ValidationError,
};
use cairn_domain::{AggregateStore, CommandError};
use cairn_projection::ReadDb;
use cairn_store::{EventStore, ExpectedVersion};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::{
    PLATFORM_TENANT, PUBLIC_CLIENT,
    domain::{
        Client, ClientCommand, Group, GroupCommand, IdentityRule, RealmKeys, RealmKeysCommand,
        Tenant, TenantCommand, User, UserCommand, group_sets, validate_client_id,
        validate_group_id, validate_username,
    },
    revocations::{AccessTokenRevoked, RevokedTokens},
    tokens::{self, Presented, RefreshRecord},
};

/// The id of the realm-keys aggregate in every tenant.
const KEYS_ID: &str = "signing";

/// How the identity service issues.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// The public base URL; realm `t` issues as `{base}/realms/t`.
    pub issuer_base: String,
    /// Access-token lifetime, seconds. Default 300.
    pub access_ttl: i64,
    /// Refresh-token lifetime, seconds. Default 12 h.
    pub refresh_ttl: i64,
    /// How long a replaced signing key stays in the JWKS, seconds. Default
    /// 15 min (longer than an access token lives).
    pub key_overlap: i64,
    pub hasher: PasswordHasher,
    /// Consecutive failed logins of one user before it is locked. Default 5.
    pub max_failed_logins: u32,
    /// The first lock's length; each further failure doubles it, up to 15
    /// minutes. Default 30 s.
    pub lockout: Duration,
    pub roles: RoleMap,
    /// How long a loaded realm (its signing keys and what its tenant groups
    /// share with it) is used before it is loaded again. A change of a
    /// group made elsewhere reaches new tokens within this time. Default
    /// 30 s.
    pub realm_ttl: Duration,
}

impl IdentityOptions {
    pub fn new(issuer_base: impl Into<String>) -> Self {
        Self {
            issuer_base: issuer_base.into().trim_end_matches('/').to_owned(),
            access_ttl: 300,
            refresh_ttl: 12 * 3600,
            key_overlap: 900,
            hasher: PasswordHasher::default(),
            max_failed_logins: 5,
            lockout: Duration::from_secs(30),
            roles: RoleMap::default(),
            realm_ttl: Duration::from_secs(30),
        }
    }
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    NotFound(String),
    #[error("invalid fields")]
    Invalid(Vec<ValidationError>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// OAuth `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// OAuth `invalid_grant`: bad credentials or refresh token.
    #[error("{0}")]
    InvalidGrant(String),
    /// OAuth `invalid_client`.
    #[error("client authentication failed")]
    InvalidClient,
    /// OAuth `unsupported_grant_type`.
    #[error("grant type {0} is not supported")]
    UnsupportedGrant(String),
    /// Too many failed logins; try again after this many seconds.
    #[error("too many failed logins; try again in {0} s")]
    Locked(u64),
    #[error("{0}")]
    Unavailable(String),
}

impl IdentityError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Invalid(_) => ErrorCode::ValidationFailed,
            Self::Conflict(_) => ErrorCode::RuleViolation,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::InvalidRequest(_) | Self::UnsupportedGrant(_) => ErrorCode::InvalidInput,
            Self::InvalidGrant(_) | Self::InvalidClient => ErrorCode::Unauthenticated,
            Self::Locked(_) => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

fn store_error<E: fmt::Display>(e: E) -> IdentityError {
    IdentityError::Unavailable(format!("identity store: {e}"))
}

fn group_missing(id: &str) -> IdentityError {
    IdentityError::NotFound(format!("group {id} does not exist"))
}

fn command_error(e: CommandError<IdentityRule>) -> IdentityError {
    match e {
        CommandError::Domain(IdentityRule::AlreadyExists(what)) => {
            IdentityError::Conflict(format!("{what} already exists"))
        }
        CommandError::Domain(IdentityRule::Missing(what)) => {
            IdentityError::NotFound(format!("{what} does not exist"))
        }
        other => store_error(other),
    }
}

/// A credential made at first start, shown once.
#[derive(Debug, Clone)]
pub struct BootstrapUser {
    pub tenant: TenantId,
    pub username: String,
    pub password: Zeroizing<String>,
}

/// A confidential client just created: its secret is shown once.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewClient {
    pub client_id: String,
    pub client_secret: String,
    pub roles: Vec<String>,
}

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

struct Realm {
    history: cairn_auth::KeyHistory,
    active: SigningKey,
    loaded: Instant,
    /// What the tenant's groups share with it, per other tenant: the
    /// `shared` claim of its tokens.
    shared: BTreeMap<String, Vec<String>>,
}

/// The identity service; a cheap-to-clone handle.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: AggregateStore<Tenant>,
    keys: AggregateStore<RealmKeys>,
    users: AggregateStore<User>,
    clients: AggregateStore<Client>,
    groups: AggregateStore<Group>,
    db: ReadDb,
    master: MasterKey,
    options: IdentityOptions,
    realms: RwLock<HashMap<TenantId, Arc<Realm>>>,
    revoked: RevokedTokens,
    store: Arc<dyn EventStore>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("issuer_base", &self.inner.options.issuer_base)
            .finish_non_exhaustive()
    }
}

fn system(tenant: &TenantId) -> RequestContext {
    RequestContext::new(tenant.clone()).with_actor("identity")
}

fn platform() -> TenantId {
    TenantId::new(PLATFORM_TENANT).expect("valid tenant")
}

impl Identity {
    /// Opens the service on `store` (its events) and `db` (refresh tokens,
    /// revocations), creating its tables.
    pub async fn open(
        store: Arc<dyn EventStore>,
        db: ReadDb,
        master: MasterKey,
        options: IdentityOptions,
    ) -> Result<Self, IdentityError> {
        tokens::create_tables(&db).await.map_err(store_error)?;
        let revoked = RevokedTokens::open(db.clone(), crate::revocations::DEFAULT_POLL)
            .await
            .map_err(store_error)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tenants: AggregateStore::new(store.clone()),
                keys: AggregateStore::new(store.clone()),
                users: AggregateStore::new(store.clone()),
                clients: AggregateStore::new(store.clone()),
                groups: AggregateStore::new(store.clone()),
                store,
                db,
                master,
                options,
                realms: RwLock::new(HashMap::new()),
                revoked,
            }),
        })
    }

    pub fn options(&self) -> &IdentityOptions {
        &self.inner.options
    }

    /// The issuer URL of `tenant`.
    pub fn issuer(&self, tenant: &TenantId) -> String {
        format!("{}/realms/{tenant}", self.inner.options.issuer_base)
    }

    /// A verifier that trusts this service's realms, with its keys and
    /// revocations read in process, plus `extra` issuers.
    pub fn verifier(&self, extra: Vec<TrustedIssuer>) -> Verifier {
        let mut issuers = vec![TrustedIssuer::cairn(
            self.inner.options.issuer_base.clone(),
            Arc::new(LocalKeys(self.clone())),
        )];
        issuers.extend(extra);
        Verifier::with_options(
            issuers,
            self.inner.options.roles.clone(),
            VerifierOptions {
                // In process, fetching keys is a map lookup: a rotation is
                // seen at once.
                refetch_interval: Duration::ZERO,
                ..VerifierOptions::default()
            },
            Some(Arc::new(LocalRevocations(self.clone()))),
        )
    }

    /// Creates each tenant that does not exist yet, with an `admin` user
    /// whose generated password is returned (once). The platform tenant's
    /// admin is a super-admin; the others are tenant admins.
    pub async fn bootstrap(&self, tenants: &[&str]) -> Result<Vec<BootstrapUser>, IdentityError> {
        let mut made = Vec::new();
        for id in tenants {
            let tenant = TenantId::new(id).map_err(|e| IdentityError::Invalid(vec![e]))?;
            if self.tenant_exists(&tenant).await? {
                continue;
            }
            let name = if tenant.as_str() == PLATFORM_TENANT {
                "Platform".to_owned()
            } else {
                tenant.as_str().to_owned()
            };
            match self.create_tenant("bootstrap", &tenant, &name).await {
                Ok(()) => {}
                // Another process got there first.
                Err(IdentityError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
            let password = cairn_auth::generate_password(20).map_err(store_error)?;
            let role = if tenant.as_str() == PLATFORM_TENANT {
                roles::SUPER_ADMIN
            } else {
                roles::ADMIN
            };
            self.create_user("bootstrap", &tenant, "admin", &password, &[role.to_owned()])
                .await?;
            made.push(BootstrapUser {
                tenant,
                username: "admin".into(),
                password,
            });
        }
        Ok(made)
    }

    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, IdentityError> {
        Ok(self
            .inner
            .tenants
            .load(&system(&platform()), tenant)
            .await
            .map_err(command_error)?
            .is_some())
    }

    /// Creates a tenant and its first signing key.
    pub async fn create_tenant(
        &self,
        actor: &str,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), IdentityError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(IdentityError::Invalid(vec![ValidationError::new(
                "name",
                "must be 1-200 characters",
            )]));
        }
        let ctx = system(&platform()).with_actor(actor);
        self.inner
            .tenants
            .execute(
                &ctx,
                tenant,
                None,
                &TenantCommand::Create {
                    id: tenant.to_string(),
                    name: name.to_owned(),
                },
            )
            .await
            .map_err(command_error)?;
        self.ensure_keys(tenant).await?;
        Ok(())
    }

    /// Every tenant: `(id, name)`.
    pub async fn tenants(&self) -> Result<Vec<(String, String)>, IdentityError> {
        let ctx = system(&platform());
        let mut out = Vec::new();
        for id in self.ids_of::<Tenant>(&platform()).await? {
            if let Some(t) = self
                .inner
                .tenants
                .load(&ctx, &id)
                .await
                .map_err(command_error)?
            {
                out.push((id, t.state.name));
            }
        }
        Ok(out)
    }

    /// The ids of every aggregate of type `A` in `tenant`.
    async fn ids_of<A: cairn_domain::Aggregate>(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<String>, IdentityError> {
        let store = self.inner.tenants.event_store();
        let prefix = format!("{}-", A::CATEGORY);
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_streams(tenant, after.as_ref(), 500)
                .await
                .map_err(store_error)?;
            let Some(last) = page.last() else { break };
            after = Some(last.stream.clone());
            ids.extend(
                page.iter()
                    .filter(|s| !s.deleted)
                    .filter_map(|s| s.stream.as_str().strip_prefix(&prefix))
                    .map(str::to_owned),
            );
            if page.len() < 500 {
                break;
            }
        }
        Ok(ids)
    }

    async fn ensure_keys(&self, tenant: &TenantId) -> Result<(), IdentityError> {
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
    /// [`IdentityOptions::key_overlap`]. Returns the new `kid`.
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

    async fn require_tenant(&self, tenant: &TenantId) -> Result<(), IdentityError> {
        if self.tenant_exists(tenant).await? {
            Ok(())
        } else {
            Err(IdentityError::NotFound(format!(
                "tenant {tenant} does not exist"
            )))
        }
    }

    /// The tenant's keys and what its groups share with it, loaded (and
    /// cached for [`IdentityOptions::realm_ttl`]); `None` for a tenant that
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

    async fn realm_or_404(&self, tenant: &TenantId) -> Result<Arc<Realm>, IdentityError> {
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

    fn check_roles(&self, tenant: &TenantId, roles: &[String]) -> Result<(), IdentityError> {
        let known = [
            roles::SUPER_ADMIN,
            roles::ADMIN,
            roles::OPERATOR,
            roles::VIEWER,
        ];
        let mut errors = Vec::new();
        for role in roles {
            if !known.contains(&role.as_str()) {
                errors.push(ValidationError::new(
                    "roles",
                    format!("unknown role {role}; known: {}", known.join(", ")),
                ));
            } else if role == roles::SUPER_ADMIN && tenant.as_str() != PLATFORM_TENANT {
                errors.push(ValidationError::new(
                    "roles",
                    format!(
                        "{} exists only in the {PLATFORM_TENANT} tenant",
                        roles::SUPER_ADMIN
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(IdentityError::Invalid(errors))
        }
    }

    async fn hash(&self, secret: &str) -> Result<String, IdentityError> {
        let hasher = self.inner.options.hasher.clone();
        let secret = Zeroizing::new(secret.to_owned());
        tokio::task::spawn_blocking(move || hasher.hash(&secret))
            .await
            .map_err(store_error)?
            .map_err(store_error)
    }

    async fn verify_secret(&self, secret: &str, hash: Option<String>) -> bool {
        let hasher = self.inner.options.hasher.clone();
        let secret = Zeroizing::new(secret.to_owned());
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => hasher.verify(&secret, &hash),
            None => hasher.verify_unknown(&secret),
        })
        .await
        .unwrap_or(false)
    }

    /// Creates a user of `tenant`. Returns its id (the tokens' `sub`).
    pub async fn create_user(
        &self,
        actor: &str,
        tenant: &TenantId,
        username: &str,
        password: &str,
        roles: &[String],
    ) -> Result<String, IdentityError> {
        let mut errors = Vec::new();
        if let Err(e) = validate_username(username) {
            errors.push(e);
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            errors.push(ValidationError::new(
                "password",
                "must be 8 to 1024 characters",
            ));
        }
        if let Err(IdentityError::Invalid(more)) = self.check_roles(tenant, roles) {
            errors.extend(more);
        }
        if !errors.is_empty() {
            return Err(IdentityError::Invalid(errors));
        }
        self.require_tenant(tenant).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let password_hash = self.hash(password).await?;
        self.inner
            .users
            .execute(
                &system(tenant).with_actor(actor),
                username,
                None,
                &UserCommand::Create {
                    id: id.clone(),
                    username: username.to_owned(),
                    password_hash,
                    roles: roles.to_vec(),
                },
            )
            .await
            .map_err(command_error)?;
        Ok(id)
    }

    /// The users of `tenant`: `(id, username, roles)`.
    pub async fn users(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, String, Vec<String>)>, IdentityError> {
        self.require_tenant(tenant).await?;
        let ctx = system(tenant);
        let mut out = Vec::new();
        for name in self.ids_of::<User>(tenant).await? {
            if let Some(u) = self
                .inner
                .users
                .load(&ctx, &name)
                .await
                .map_err(command_error)?
                && let Some(id) = u.state.id
            {
                out.push((id, u.state.username, u.state.roles));
            }
        }
        Ok(out)
    }

    /// Creates a confidential client; its secret is in the answer only.
    pub async fn create_client(
        &self,
        actor: &str,
        tenant: &TenantId,
        client_id: &str,
        roles: &[String],
    ) -> Result<NewClient, IdentityError> {
        let mut errors = Vec::new();
        if let Err(e) = validate_client_id(client_id) {
            errors.push(e);
        } else if client_id == PUBLIC_CLIENT {
            errors.push(ValidationError::new("clientId", "is reserved"));
        }
        if let Err(IdentityError::Invalid(more)) = self.check_roles(tenant, roles) {
            errors.extend(more);
        }
        if !errors.is_empty() {
            return Err(IdentityError::Invalid(errors));
        }
        self.require_tenant(tenant).await?;
        let secret = cairn_auth::random_token().map_err(store_error)?;
        let secret_hash = self.hash(&secret).await?;
        self.inner
            .clients
            .execute(
                &system(tenant).with_actor(actor),
                client_id,
                None,
                &ClientCommand::Create {
                    client_id: client_id.to_owned(),
                    secret_hash,
                    roles: roles.to_vec(),
                },
            )
            .await
            .map_err(command_error)?;
        Ok(NewClient {
            client_id: client_id.to_owned(),
            client_secret: secret.to_string(),
            roles: roles.to_vec(),
        })
    }

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

/// A tenant group: each member tenant may read what the group shares of
/// every other member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantGroup {
    pub id: String,
    pub name: String,
    /// The member tenants, sorted.
    pub tenants: Vec<String>,
    /// The shared resources (read models, stream categories), sorted.
    pub shared: Vec<String>,
}

impl TenantGroup {
    fn of(group: Group) -> Option<Self> {
        if group.dissolved {
            return None;
        }
        Some(Self {
            id: group.id?,
            name: group.name,
            tenants: group.tenants,
            shared: group.shared,
        })
    }
}

/// Tenant groups. The groups live in the platform tenant; what they share
/// reaches tokens through the realms: loading a realm derives its tenant's
/// `shared` claim from every group the tenant belongs to.
impl Identity {
    /// Creates a tenant group of existing tenants.
    pub async fn create_group(
        &self,
        actor: &str,
        id: &str,
        name: &str,
        tenants: &[String],
        shared: &[String],
    ) -> Result<TenantGroup, IdentityError> {
        let name = name.trim();
        let mut errors = Vec::new();
        if let Err(e) = validate_group_id(id) {
            errors.push(e);
        }
        if name.is_empty() || name.len() > 200 {
            errors.push(ValidationError::new("name", "must be 1-200 characters"));
        }
        let sets = match group_sets(tenants, shared) {
            Ok(sets) => Some(sets),
            Err(more) => {
                errors.extend(more);
                None
            }
        };
        let Some((tenants, shared)) = sets.filter(|_| errors.is_empty()) else {
            return Err(IdentityError::Invalid(errors));
        };
        self.require_members(&tenants).await?;
        let done = self
            .inner
            .groups
            .execute(
                &system(&platform()).with_actor(actor),
                id,
                None,
                &GroupCommand::Create {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    tenants,
                    shared,
                },
            )
            .await
            .map_err(command_error)?;
        self.forget_realms();
        TenantGroup::of(done.state).ok_or_else(|| store_error("a created group has no id"))
    }

    /// Replaces the members and the shared resources of a group.
    pub async fn update_group(
        &self,
        actor: &str,
        id: &str,
        tenants: &[String],
        shared: &[String],
    ) -> Result<TenantGroup, IdentityError> {
        validate_group_id(id).map_err(|_| group_missing(id))?;
        let (tenants, shared) = group_sets(tenants, shared).map_err(IdentityError::Invalid)?;
        self.require_members(&tenants).await?;
        self.change_group(actor, id, &GroupCommand::Update { tenants, shared })
            .await?
            .ok_or_else(|| group_missing(id))
    }

    /// Dissolves a group: its members stop sharing through it (new tokens
    /// at once here, within `realm_ttl` elsewhere; tokens already issued
    /// keep their claim until they expire). Its id is not used again.
    pub async fn dissolve_group(&self, actor: &str, id: &str) -> Result<(), IdentityError> {
        validate_group_id(id).map_err(|_| group_missing(id))?;
        self.change_group(actor, id, &GroupCommand::Dissolve)
            .await
            .map(drop)
    }

    /// Runs `command` on the existing group `id` (not found if there is
    /// none), then forgets the cached realms; the group as it now stands.
    async fn change_group(
        &self,
        actor: &str,
        id: &str,
        command: &GroupCommand,
    ) -> Result<Option<TenantGroup>, IdentityError> {
        let done = self
            .inner
            .groups
            .execute(&system(&platform()).with_actor(actor), id, None, command)
            .await
            .map_err(|e| match command_error(e) {
                IdentityError::NotFound(_) => group_missing(id),
                other => other,
            })?;
        self.forget_realms();
        Ok(TenantGroup::of(done.state))
    }

    /// Every tenant group.
    pub async fn groups(&self) -> Result<Vec<TenantGroup>, IdentityError> {
        let mut out = Vec::new();
        for id in self.ids_of::<Group>(&platform()).await? {
            out.extend(self.load_group(&id).await?);
        }
        Ok(out)
    }

    /// One tenant group.
    pub async fn group(&self, id: &str) -> Result<TenantGroup, IdentityError> {
        let missing = || IdentityError::NotFound(format!("group {id} does not exist"));
        validate_group_id(id).map_err(|_| missing())?;
        self.load_group(id).await?.ok_or_else(missing)
    }

    async fn load_group(&self, id: &str) -> Result<Option<TenantGroup>, IdentityError> {
        Ok(self
            .inner
            .groups
            .load(&system(&platform()), id)
            .await
            .map_err(command_error)?
            .and_then(|l| TenantGroup::of(l.state)))
    }

    /// Refuses, naming each, members that are not existing tenants.
    async fn require_members(&self, tenants: &[String]) -> Result<(), IdentityError> {
        let mut errors = Vec::new();
        for tenant in tenants {
            let id = TenantId::new(tenant).map_err(|e| IdentityError::Invalid(vec![e]))?;
            if !self.tenant_exists(&id).await? {
                errors.push(ValidationError::new(
                    "tenants",
                    format!("tenant {tenant} does not exist"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(IdentityError::Invalid(errors))
        }
    }

    /// The `shared` claim of `tenant`'s tokens: for each other member of
    /// each of its groups, the resources that group shares; never the
    /// tenant itself.
    async fn shared_with(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<String, Vec<String>>, IdentityError> {
        let mut shared: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for group in self.groups().await? {
            if group.shared.is_empty() || !group.tenants.iter().any(|t| t == tenant.as_str()) {
                continue;
            }
            for member in group.tenants.iter().filter(|t| *t != tenant.as_str()) {
                shared
                    .entry(member.clone())
                    .or_default()
                    .extend(group.shared.iter().cloned());
            }
        }
        Ok(shared
            .into_iter()
            .map(|(member, resources)| (member, resources.into_iter().collect()))
            .collect())
    }

    /// Drops every loaded realm, so that tokens issued here from now on
    /// carry the groups as they are; other processes see a change once
    /// their realms expire ([`IdentityOptions::realm_ttl`]).
    fn forget_realms(&self) {
        self.inner.realms.write().expect("lock").clear();
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
