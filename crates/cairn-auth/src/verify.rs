//! Validation for resource servers: a [`Verifier`] trusts several issuers
//! (Cairn's own realms and external OIDC issuers such as Keycloak realms),
//! finds each token's key in its issuer's JWKS (cached, fetched again when
//! a token names a `kid` it has not seen), and checks, in order:
//!
//! 1. the token's shape and size;
//! 2. `iss` names a trusted issuer (read before the signature only to pick
//!    the issuer, never trusted on its own);
//! 3. the header's `alg` is on that issuer's allow-list (asymmetric only by
//!    default: `none` and the HMAC algorithms can never be enabled by a
//!    token, so "HS256 signed with the public key" fails here);
//! 4. the signature, with the key named by `kid`;
//! 5. `exp` and `nbf` with a small leeway, `iss`, `aud`;
//! 6. the token's `tenant` claim, when present, is the issuer's tenant;
//! 7. its `jti` is not revoked (when a [`Revocations`] is installed).
//!
//! A refused token gets a [`Rejection`] saying why. The HTTP edge answers
//! each with a 401 whose code and detail say why (an unknown issuer names
//! the issuers trusted for the token's tenant), never more: which part of
//! a signature failed, or anything about users, is not told.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use cairn_core::TenantId;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};

use crate::{AccessClaims, AuthError, Principal, Rejection, RoleMap};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where an issuer's public keys come from.
#[async_trait]
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The current JWKS of `issuer` (the token's `iss`).
    async fn jwks(&self, issuer: &str) -> Result<JwkSet, AuthError>;
}

/// A fixed key set (configuration, tests).
#[derive(Debug, Clone)]
pub struct StaticKeys(pub JwkSet);

#[async_trait]
impl KeySource for StaticKeys {
    async fn jwks(&self, _issuer: &str) -> Result<JwkSet, AuthError> {
        Ok(self.0.clone())
    }
}

/// Keys fetched over HTTP: from a fixed JWKS URL, from the `jwks_uri` of
/// the issuer's `/.well-known/openid-configuration` (OIDC discovery), or
/// from a Cairn identity service's realm endpoints.
#[derive(Debug, Clone)]
pub struct RemoteJwks {
    from: JwksFrom,
    client: reqwest::Client,
}

#[derive(Debug, Clone)]
enum JwksFrom {
    Url(String),
    Discovery,
    Realms {
        issuer_base: String,
        fetch_base: String,
    },
}

impl RemoteJwks {
    /// Keys at `url`.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            from: JwksFrom::Url(url.into()),
            client: client(),
        }
    }

    /// Keys found through OIDC discovery on the token's issuer.
    pub fn discovery() -> Self {
        Self {
            from: JwksFrom::Discovery,
            client: client(),
        }
    }

    /// The realms of a Cairn identity service whose tokens name
    /// `issuer_base/realms/{tenant}` as issuer, with keys fetched from
    /// `fetch_base/realms/{tenant}/protocol/openid-connect/certs`: the
    /// same URL, or the service's address inside the deployment when the
    /// public one is a gateway's.
    pub fn realms(issuer_base: impl Into<String>, fetch_base: impl Into<String>) -> Self {
        Self {
            from: JwksFrom::Realms {
                issuer_base: issuer_base.into().trim_end_matches('/').to_owned(),
                fetch_base: fetch_base.into().trim_end_matches('/').to_owned(),
            },
            client: client(),
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client without TLS settings builds")
}

#[async_trait]
impl KeySource for RemoteJwks {
    async fn jwks(&self, issuer: &str) -> Result<JwkSet, AuthError> {
        let unavailable = |reason: String| AuthError::KeysUnavailable {
            issuer: issuer.to_owned(),
            reason,
        };
        let url = match &self.from {
            JwksFrom::Url(url) => url.clone(),
            JwksFrom::Realms {
                issuer_base,
                fetch_base,
            } => {
                let Some(realm) = issuer
                    .strip_prefix(issuer_base.as_str())
                    .and_then(|rest| rest.strip_prefix("/realms/"))
                    .filter(|realm| TenantId::new(realm).is_ok())
                else {
                    return Err(unavailable(format!("not a realm of {issuer_base}")));
                };
                let url = format!("{fetch_base}/realms/{realm}/protocol/openid-connect/certs");
                // The identity service answers a realm it does not have
                // with a problem 404: the token's tenant does not exist (a
                // fact its public discovery document tells anyone).
                return fetch_json(&self.client, &url).await.map_err(|e| {
                    if e.no_such_realm {
                        AuthError::Rejected(Rejection::UnknownTenant)
                    } else {
                        unavailable(e.reason)
                    }
                });
            }
            JwksFrom::Discovery => {
                #[derive(serde::Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: Discovery = fetch_json(&self.client, &url)
                    .await
                    .map_err(|e| unavailable(e.reason))?;
                if doc.issuer != issuer {
                    return Err(unavailable(format!(
                        "discovery names issuer {} instead",
                        doc.issuer
                    )));
                }
                doc.jwks_uri
            }
        };
        fetch_json(&self.client, &url)
            .await
            .map_err(|e| unavailable(e.reason))
    }
}

/// Why keys could not be fetched.
struct FetchError {
    reason: String,
    /// A 404 problem: the server has no such resource (rather than being
    /// down or not the expected server).
    no_such_realm: bool,
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<T, FetchError> {
    let failed = |reason: String| FetchError {
        reason,
        no_such_realm: false,
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(format!("GET {url}: {e}")))?;
    if !response.status().is_success() {
        let problem = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        return Err(FetchError {
            reason: format!("GET {url}: {}", response.status()),
            no_such_realm: problem && response.status() == reqwest::StatusCode::NOT_FOUND,
        });
    }
    response
        .json()
        .await
        .map_err(|e| failed(format!("GET {url}: {e}")))
}

/// Which `iss` values an issuer entry covers, and the tenant of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerMatch {
    /// Exactly this `iss`, whose tokens belong to `tenant` (an external
    /// realm mapped to a Cairn tenant).
    Exact { issuer: String, tenant: TenantId },
    /// Cairn's realms: `iss` = `{base}/realms/{tenant}`.
    Realms { base: String },
}

impl IssuerMatch {
    /// The issuer this entry trusts for `tenant`'s tokens, if any; with no
    /// tenant known, the pattern of Cairn's realms.
    fn expected_for(&self, tenant: Option<&TenantId>) -> Option<String> {
        match (self, tenant) {
            (Self::Exact { issuer, tenant: t }, Some(tenant)) => {
                (t == tenant).then(|| issuer.clone())
            }
            (Self::Exact { .. }, None) => None,
            (Self::Realms { base }, Some(tenant)) => Some(format!("{base}/realms/{tenant}")),
            (Self::Realms { base }, None) => Some(format!("{base}/realms/<tenant>")),
        }
    }

    fn tenant_of(&self, iss: &str) -> Option<TenantId> {
        match self {
            Self::Exact { issuer, tenant } => (iss == issuer).then(|| tenant.clone()),
            Self::Realms { base } => {
                let realm = iss
                    .strip_prefix(base.trim_end_matches('/'))?
                    .strip_prefix("/realms/")?;
                if realm.contains('/') {
                    return None;
                }
                TenantId::new(realm).ok()
            }
        }
    }
}

/// One trusted issuer (or family of realms).
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub matcher: IssuerMatch,
    pub keys: Arc<dyn KeySource>,
    /// Allowed signature algorithms. Default: EdDSA, RS256, ES256.
    pub algorithms: Vec<Algorithm>,
    /// Accepted audiences; a token must name one of them. Empty: `aud` is
    /// not checked (some issuers, like Keycloak's default clients, write
    /// audiences a resource server cannot predict).
    pub audiences: Vec<String>,
}

impl TrustedIssuer {
    /// Cairn's own issuer: every realm under `base` (its public URL), keys
    /// from `keys`, audience `cairn`.
    pub fn cairn(base: impl Into<String>, keys: Arc<dyn KeySource>) -> Self {
        Self {
            matcher: IssuerMatch::Realms {
                base: base.into().trim_end_matches('/').to_owned(),
            },
            keys,
            algorithms: vec![Algorithm::EdDSA],
            audiences: vec![crate::AUDIENCE.to_owned()],
        }
    }

    /// An external issuer whose tokens belong to `tenant`, keys by discovery.
    pub fn external(issuer: impl Into<String>, tenant: TenantId) -> Self {
        Self {
            matcher: IssuerMatch::Exact {
                issuer: issuer.into(),
                tenant,
            },
            keys: Arc::new(RemoteJwks::discovery()),
            algorithms: vec![Algorithm::EdDSA, Algorithm::RS256, Algorithm::ES256],
            audiences: Vec::new(),
        }
    }

    pub fn with_keys(mut self, keys: Arc<dyn KeySource>) -> Self {
        self.keys = keys;
        self
    }

    pub fn with_audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, aud: I) -> Self {
        self.audiences = aud.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the allow-list. HMAC algorithms and `none` are dropped:
    /// a resource server never shares a secret with an issuer here.
    pub fn with_algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms
            .into_iter()
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        self
    }
}

/// Tells whether a token id was revoked.
#[async_trait]
pub trait Revocations: Send + Sync + fmt::Debug {
    async fn is_revoked(&self, tenant: &TenantId, token_id: &str) -> Result<bool, AuthError>;
}

/// How a [`Verifier`] caches keys and judges time.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// Allowed clock difference for `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
    /// Keys older than this are fetched again. Default 5 min.
    pub keys_ttl: Duration,
    /// A token with an unknown `kid` fetches the keys again, at most once
    /// per this interval per issuer. Default 10 s.
    pub refetch_interval: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(30),
            keys_ttl: Duration::from_secs(300),
            refetch_interval: Duration::from_secs(10),
        }
    }
}

struct CachedKeys {
    keys: Vec<(Option<String>, Jwk)>,
    fetched: Instant,
}

/// Validates access tokens; see the module documentation.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<TrustedIssuer>,
    roles: RoleMap,
    options: VerifierOptions,
    revocations: Option<Arc<dyn Revocations>>,
    cache: RwLock<HashMap<String, Arc<CachedKeys>>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.inner.issuers)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(issuers: Vec<TrustedIssuer>, roles: RoleMap) -> Self {
        Self::with_options(issuers, roles, VerifierOptions::default(), None)
    }

    pub fn with_options(
        issuers: Vec<TrustedIssuer>,
        roles: RoleMap,
        options: VerifierOptions,
        revocations: Option<Arc<dyn Revocations>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                issuers,
                roles,
                options,
                revocations,
                cache: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The role map in use.
    pub fn roles(&self) -> &RoleMap {
        &self.inner.roles
    }

    /// Whether the token `token_id` of `tenant` has been revoked since it
    /// was verified (false when this verifier knows no revocations). For
    /// long-lived sessions, such as a live connection, that check again
    /// without verifying the whole token.
    pub async fn is_revoked(&self, tenant: &TenantId, token_id: &str) -> Result<bool, AuthError> {
        match &self.inner.revocations {
            Some(revocations) => revocations.is_revoked(tenant, token_id).await,
            None => Ok(false),
        }
    }

    /// Validates `token` (without `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let reject = |r: Rejection| Err(AuthError::Rejected(r));
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return reject(Rejection::Malformed);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return reject(Rejection::Malformed);
        };
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: String,
            #[serde(default)]
            tenant: Option<serde_json::Value>,
        }
        let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token) else {
            return reject(Rejection::Malformed);
        };
        let iss = unverified.iss;
        let Some((issuer, tenant)) = self
            .inner
            .issuers
            .iter()
            .find_map(|i| i.matcher.tenant_of(&iss).map(|t| (i, t)))
        else {
            let claimed = unverified.tenant.as_ref().and_then(|t| t.as_str());
            return reject(self.unknown_issuer(&iss, claimed));
        };
        if !issuer.algorithms.contains(&header.alg) {
            return reject(Rejection::AlgorithmNotAllowed);
        }
        let key = self.key_for(issuer, &iss, &header).await?;

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.inner.options.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&iss]);
        let mut required = vec!["exp", "iss", "sub"];
        if issuer.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&issuer.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let claims = match jsonwebtoken::decode::<AccessClaims>(token, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                return reject(match e.kind() {
                    ErrorKind::ExpiredSignature => Rejection::Expired,
                    ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                    ErrorKind::InvalidAudience => Rejection::WrongAudience {
                        expected: issuer.audiences.clone(),
                    },
                    ErrorKind::InvalidIssuer => self.unknown_issuer(&iss, Some(tenant.as_str())),
                    ErrorKind::InvalidSignature => Rejection::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        Rejection::AlgorithmNotAllowed
                    }
                    _ => Rejection::Malformed,
                });
            }
        };
        if claims
            .tenant
            .as_deref()
            .is_some_and(|t| t != tenant.as_str())
        {
            return reject(Rejection::WrongTenant);
        }
        if let (Some(revocations), Some(jti)) = (&self.inner.revocations, &claims.jti)
            && revocations.is_revoked(&tenant, jti).await?
        {
            return reject(Rejection::Revoked);
        }
        let roles = claims.all_roles();
        let permissions = self
            .inner
            .roles
            .permissions(&tenant, roles.iter().map(String::as_str));
        // Only Cairn's issuer knows the tenant groups; a claim from an
        // external issuer could name any tenant and is ignored.
        let shared = match issuer.matcher {
            IssuerMatch::Realms { .. } => claims
                .shared
                .iter()
                .filter_map(|(t, resources)| {
                    let t = TenantId::new(t).ok().filter(|t| *t != tenant)?;
                    Some((t, resources.iter().cloned().collect()))
                })
                .collect(),
            IssuerMatch::Exact { .. } => std::collections::BTreeMap::new(),
        };
        Ok(Principal {
            tenant,
            subject: claims.sub,
            username: claims.preferred_username,
            roles,
            permissions,
            issuer: iss,
            token_id: claims.jti,
            expires_at: claims.exp,
            client_id: claims.azp,
            shared,
        })
    }

    /// The rejection of a token whose `iss` no entry trusts, naming the
    /// issuers trusted for the token's tenant: its `tenant` claim, or else
    /// the realm its `iss` names (`…/realms/{tenant}`).
    fn unknown_issuer(&self, iss: &str, claimed_tenant: Option<&str>) -> Rejection {
        let tenant = claimed_tenant
            .or_else(|| iss.rsplit_once("/realms/").map(|(_, realm)| realm))
            .and_then(|t| TenantId::new(t).ok());
        let mut expected: Vec<String> = self
            .inner
            .issuers
            .iter()
            .filter_map(|i| i.matcher.expected_for(tenant.as_ref()))
            .collect();
        expected.dedup();
        Rejection::UnknownIssuer {
            issuer: shown(iss),
            expected,
        }
    }

    async fn key_for(
        &self,
        issuer: &TrustedIssuer,
        iss: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<DecodingKey, AuthError> {
        let options = &self.inner.options;
        let cached = self.inner.cache.read().expect("lock").get(iss).cloned();
        let cached = match cached {
            Some(c) if c.fetched.elapsed() < options.keys_ttl => c,
            _ => self.fetch(issuer, iss).await?,
        };
        if let Some(key) = pick(&cached, header)? {
            return Ok(key);
        }
        if cached.fetched.elapsed() < options.refetch_interval {
            return Err(AuthError::Rejected(Rejection::UnknownKey));
        }
        let fresh = self.fetch(issuer, iss).await?;
        pick(&fresh, header)?.ok_or(AuthError::Rejected(Rejection::UnknownKey))
    }

    async fn fetch(&self, issuer: &TrustedIssuer, iss: &str) -> Result<Arc<CachedKeys>, AuthError> {
        let set = issuer.keys.jwks(iss).await?;
        let keys = set
            .keys
            .into_iter()
            .map(|k| (k.common.key_id.clone(), k))
            .collect();
        let cached = Arc::new(CachedKeys {
            keys,
            fetched: Instant::now(),
        });
        self.inner
            .cache
            .write()
            .expect("lock")
            .insert(iss.to_owned(), cached.clone());
        Ok(cached)
    }
}

/// Longest issuer echoed back to a caller, in characters.
const MAX_SHOWN_ISSUER: usize = 200;

/// A token's `iss` as it may be echoed back: printable ASCII only (anything
/// else, quotes and backslashes included, becomes `?`, so it fits a
/// `WWW-Authenticate` quoted string as it is), and at most
/// [`MAX_SHOWN_ISSUER`] characters.
fn shown(iss: &str) -> String {
    let mut shown: String = iss
        .chars()
        .take(MAX_SHOWN_ISSUER)
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect();
    if iss.chars().nth(MAX_SHOWN_ISSUER).is_some() {
        shown.push_str("...");
    }
    shown
}

/// The key the header asks for: by `kid`, or the only key when the token
/// names none. A JWK that declares an algorithm must match the header's.
fn pick(
    cached: &CachedKeys,
    header: &jsonwebtoken::Header,
) -> Result<Option<DecodingKey>, AuthError> {
    let candidates: Vec<&Jwk> = match &header.kid {
        Some(kid) => cached
            .keys
            .iter()
            .filter(|(k, _)| k.as_deref() == Some(kid.as_str()))
            .map(|(_, jwk)| jwk)
            .collect(),
        None if cached.keys.len() == 1 => vec![&cached.keys[0].1],
        None => Vec::new(),
    };
    let Some(jwk) = candidates.first() else {
        return Ok(None);
    };
    if let Some(declared) = jwk.common.key_algorithm
        && declared.to_string() != format!("{:?}", header.alg)
    {
        return Err(AuthError::Rejected(Rejection::AlgorithmNotAllowed));
    }
    DecodingKey::from_jwk(jwk)
        .map(Some)
        .map_err(|_| AuthError::Rejected(Rejection::UnknownKey))
}
