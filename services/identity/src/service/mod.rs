//! The identity application: one cheap-to-clone [`Identity`] handle over
//! the service's aggregates, its own database and the loaded realms. Its
//! operations are split by resource, each module adding an `impl Identity`
//! block:
//!
//! - [`tenants`]: creating and listing tenants;
//! - [`keys`]: each realm's signing keys, the loaded realms and the JWKS;
//! - [`users`]: the users of a tenant;
//! - [`clients`]: confidential OAuth clients;
//! - [`grants`]: the token endpoint's grants, lockout and revocation;
//! - [`groups`]: tenant groups and the `shared` claim they make.
//!
//! What more than one of them needs lives here: the options, the error
//! type and its mappings, role checks and secret hashing.

mod clients;
mod grants;
mod groups;
mod keys;
mod tenants;
mod users;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
    time::Duration,
};

use cairn_auth::{
    MasterKey, PasswordHasher, RoleMap, TrustedIssuer, Verifier, VerifierOptions, roles,
};
use cairn_core::{ErrorCode, RequestContext, TenantId, ValidationError};
use cairn_domain::{AggregateStore, CommandError};
use cairn_runtime::Running;
use cairn_service_db::ServiceDb;
use cairn_store::EventStore;
use zeroize::Zeroizing;

pub use clients::NewClient;
pub use grants::{LocalRevocations, TokenResponse};
pub use groups::TenantGroup;
pub use keys::LocalKeys;

use crate::{
    PLATFORM_TENANT,
    domain::{Client, Group, IdentityRule, RealmKeys, Tenant, User},
    revocations::{Freshness, RevokedTokens},
    tokens,
};
use keys::Realm;

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
    db: ServiceDb,
    master: MasterKey,
    options: IdentityOptions,
    realms: RwLock<HashMap<TenantId, Arc<Realm>>>,
    revoked: RevokedTokens,
    /// Keeps `revoked` fresh; stops when the service is dropped.
    _fresh: Running<Freshness>,
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
        db: ServiceDb,
        master: MasterKey,
        options: IdentityOptions,
    ) -> Result<Self, IdentityError> {
        tokens::create_tables(&db).await.map_err(store_error)?;
        let revoked = RevokedTokens::open(db.clone()).await.map_err(store_error)?;
        // Other instances of the service record revocations too.
        let fresh = revoked.keep_fresh(crate::revocations::DEFAULT_POLL);
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
                _fresh: fresh,
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
}
