//! The identity routes.
//!
//! [`realm_router`] (no token needed; mount it with the public routes):
//! ```text
//! GET  /realms/{tenant}/.well-known/openid-configuration
//! GET  /realms/{tenant}/protocol/openid-connect/certs        JWKS
//! POST /realms/{tenant}/protocol/openid-connect/token        password | client_credentials | refresh_token
//! POST /realms/{tenant}/protocol/openid-connect/revoke
//! GET  /realms/{tenant}/protocol/openid-connect/userinfo     (bearer token)
//! POST /realms/{tenant}/browser/{login,refresh,logout}       the web console's cookie flow, see [`crate::browser`]
//! ```
//! [`admin_router`] (behind bearer authentication, see
//! [`cairn_http::bearer_auth`]):
//! ```text
//! POST /api/admin/tenants                     {"id","name"}                      super-admin
//! GET  /api/admin/tenants                                                        super-admin
//! POST /api/admin/tenants/{tenant}/users      {"username","password","roles"}    tenant admin or super-admin
//! GET  /api/admin/tenants/{tenant}/users                                         tenant admin or super-admin
//! POST /api/admin/tenants/{tenant}/clients    {"clientId","roles"}               tenant admin or super-admin
//! POST /api/admin/tenants/{tenant}/keys       rotate the signing key             tenant admin or super-admin
//! POST /api/admin/groups                      {"id","name","tenants","shared"}   super-admin
//! GET  /api/admin/groups                                                         super-admin
//! GET  /api/admin/groups/{id}                                                    super-admin
//! PUT  /api/admin/groups/{id}                 {"tenants","shared"}               super-admin
//! DELETE /api/admin/groups/{id}                                                  super-admin
//! ```
//! A tenant group lets each member read what it shares of every other
//! member: tokens carry it in their `shared` claim, taken from the groups
//! when the realm is loaded (see [`crate::IdentityOptions::realm_ttl`]).
//! The token endpoints answer errors the OAuth way (`{"error",
//! "error_description"}`, RFC 6749 §5.2); everything else in problem+json.
//! [`IdentityOpenApi`] describes all of these routes.

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use cairn_auth::{AuthError, permissions};
use cairn_core::{ErrorCode, TenantId};
use cairn_http::{ApiError, ApiJson, Caller, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Identity, IdentityError, PUBLIC_CLIENT, TenantGroup};

pub(crate) fn api_error(e: IdentityError) -> ApiError {
    match e {
        IdentityError::Invalid(errors) => ApiError::validation(
            "some fields are invalid",
            errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.reason))
                .collect(),
        ),
        IdentityError::Unavailable(detail) => {
            tracing::error!(%detail, "identity store failed");
            ApiError::new(ErrorCode::Unavailable, "the identity store is unavailable")
        }
        other => ApiError::new(other.code(), other.to_string()),
    }
}

pub(crate) fn tenant_param(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::new(raw).map_err(|_| ApiError::not_found(format!("realm {raw} does not exist")))
}

// ---- realms -----------------------------------------------------------------

/// The OIDC routes of every realm.
pub fn realm_router(identity: Identity) -> Router {
    Router::new()
        .route(
            "/realms/{tenant}/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/realms/{tenant}/protocol/openid-connect/certs", get(certs))
        .route(
            "/realms/{tenant}/protocol/openid-connect/token",
            post(token),
        )
        .route(
            "/realms/{tenant}/protocol/openid-connect/revoke",
            post(revoke),
        )
        .route(
            "/realms/{tenant}/protocol/openid-connect/userinfo",
            get(userinfo).post(userinfo),
        )
        .with_state(identity.clone())
        .merge(crate::browser::router(identity))
}

pub(crate) async fn existing_realm(identity: &Identity, raw: &str) -> Result<TenantId, ApiError> {
    let tenant = tenant_param(raw)?;
    if identity.realm_exists(&tenant).await.map_err(api_error)? {
        Ok(tenant)
    } else {
        Err(ApiError::not_found(format!("realm {raw} does not exist")))
    }
}

/// The realm's OpenID Connect discovery document.
#[utoipa::path(get, path = "/realms/{tenant}/.well-known/openid-configuration", tag = "realms",
    params(("tenant" = String, Path, description = "The realm (tenant)")),
    responses(
        (status = 200, description = "OpenID Provider Metadata (issuer, endpoints, grant types, EdDSA)", body = Object),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
    ))]
async fn discovery(
    State(identity): State<Identity>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = existing_realm(&identity, &raw).await?;
    let issuer = identity.issuer(&tenant);
    let oidc = format!("{issuer}/protocol/openid-connect");
    Ok(Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{oidc}/token"),
        "jwks_uri": format!("{oidc}/certs"),
        "userinfo_endpoint": format!("{oidc}/userinfo"),
        "revocation_endpoint": format!("{oidc}/revoke"),
        "grant_types_supported": ["password", "client_credentials", "refresh_token"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tenant", "preferred_username", "roles", "realm_access", "shared"],
    }))
    .into_response())
}

/// The realm's signing keys (JWKS): the active Ed25519 key and recently
/// replaced ones.
#[utoipa::path(get, path = "/realms/{tenant}/protocol/openid-connect/certs", tag = "realms",
    params(("tenant" = String, Path, description = "The realm (tenant)")),
    responses(
        (status = 200, description = "A JWK set (`kty` OKP, `crv` Ed25519, `alg` EdDSA)", body = Object),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
    ))]
async fn certs(
    State(identity): State<Identity>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant_param(&raw)?;
    let jwks = identity.jwks(&tenant).await.map_err(api_error)?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=60")], Json(jwks)).into_response())
}

/// An OAuth error response (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="cairn""#),
        );
    }
    response
}

fn oauth_failure(e: IdentityError) -> Response {
    match e {
        IdentityError::InvalidGrant(d) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &d),
        IdentityError::InvalidClient => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ),
        IdentityError::InvalidRequest(d) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &d)
        }
        IdentityError::UnsupportedGrant(g) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant type {g} is not supported"),
        ),
        IdentityError::Locked(seconds) => {
            let mut r = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_grant",
                "too many failed logins; try again later",
            );
            if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        other => api_error(other).into_response(),
    }
}

/// The form of a token request (RFC 6749 §4.3, §4.4, §6), as the OpenAPI
/// document describes it. [`token`] reads the form itself
/// ([`oauth_request`]) so that a repeated parameter is refused.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "describes the form; never built")]
pub(crate) struct TokenRequest {
    /// `password`, `client_credentials` or `refresh_token`.
    grant_type: String,
    /// `password` grant.
    username: Option<String>,
    /// `password` grant.
    password: Option<String>,
    /// `refresh_token` grant.
    refresh_token: Option<String>,
    /// Default `openid`.
    scope: Option<String>,
    /// Default `cairn`, the public client; or HTTP Basic.
    client_id: Option<String>,
    /// A confidential client's secret, unless sent with HTTP Basic.
    client_secret: Option<String>,
}

/// The form of a revocation request (RFC 7009).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "describes the form; never built")]
pub(crate) struct RevocationRequest {
    /// A refresh token (its whole session is revoked) or an access token.
    token: String,
    /// Default `cairn`, the public client; or HTTP Basic.
    client_id: Option<String>,
    /// A confidential client's secret, unless sent with HTTP Basic.
    client_secret: Option<String>,
}

/// The form of a token or revocation request, and the client's credentials
/// from HTTP Basic or the form.
struct OAuthRequest {
    form: std::collections::HashMap<String, String>,
    client_id: String,
    client_secret: Option<String>,
}

fn oauth_request(headers: &HeaderMap, body: &[u8]) -> Result<OAuthRequest, IdentityError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(IdentityError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| IdentityError::InvalidRequest("the form cannot be read".into()))?;
    let mut form = std::collections::HashMap::new();
    for (k, v) in pairs {
        if form.insert(k.clone(), v).is_some() {
            return Err(IdentityError::InvalidRequest(format!(
                "parameter {k} is repeated"
            )));
        }
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, creds)| {
            let decoded = STANDARD
                .decode(creds.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(IdentityError::InvalidClient)?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or(IdentityError::InvalidClient)?;
            let unescape = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Ok::<_, IdentityError>((unescape(id), unescape(secret)))
        })
        .transpose()?;
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => {
            if form.get("client_id").is_some_and(|f| *f != id) {
                return Err(IdentityError::InvalidClient);
            }
            (id, Some(secret))
        }
        None => (
            form.get("client_id")
                .cloned()
                .unwrap_or_else(|| PUBLIC_CLIENT.to_owned()),
            form.get("client_secret").cloned(),
        ),
    };
    Ok(OAuthRequest {
        form,
        client_id,
        client_secret,
    })
}

fn required<'a>(request: &'a OAuthRequest, name: &str) -> Result<&'a str, IdentityError> {
    request
        .form
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| IdentityError::InvalidRequest(format!("{name} is required")))
}

/// The token endpoint: `password`, `client_credentials` and
/// `refresh_token` grants. Refresh tokens rotate; a used one presented again
/// revokes its session.
#[utoipa::path(post, path = "/realms/{tenant}/protocol/openid-connect/token", tag = "realms",
    params(("tenant" = String, Path, description = "The realm (tenant)")),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`{access_token, token_type, expires_in, refresh_token?, refresh_expires_in?, scope}` (RFC 6749 §5.1)", body = Object),
        (status = 400, description = "OAuth error `invalid_request`, `invalid_grant` or `unsupported_grant_type` (RFC 6749 §5.2)", body = Object),
        (status = 401, description = "OAuth error `invalid_client`", body = Object),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins (`Retry-After`)", body = Object),
    ))]
async fn token(
    State(identity): State<Identity>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = match existing_realm(&identity, &raw).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let request = oauth_request(&headers, &body)?;
        let secret = request.client_secret.as_deref();
        let scope = request.form.get("scope").map(String::as_str);
        match required(&request, "grant_type")? {
            "password" => {
                identity
                    .password_grant(
                        &tenant,
                        &request.client_id,
                        secret,
                        required(&request, "username")?,
                        required(&request, "password")?,
                        scope,
                    )
                    .await
            }
            "refresh_token" => {
                identity
                    .refresh_grant(
                        &tenant,
                        &request.client_id,
                        secret,
                        required(&request, "refresh_token")?,
                    )
                    .await
            }
            "client_credentials" => {
                identity
                    .client_credentials_grant(&tenant, &request.client_id, secret, scope)
                    .await
            }
            other => Err(IdentityError::UnsupportedGrant(other.to_owned())),
        }
    }
    .await;
    match result {
        Ok(tokens) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            Json(tokens),
        )
            .into_response(),
        Err(e) => oauth_failure(e),
    }
}

/// Token revocation (RFC 7009): a refresh token revokes its session, an
/// access token is refused until it expires; unknown tokens are ignored.
#[utoipa::path(post, path = "/realms/{tenant}/protocol/openid-connect/revoke", tag = "realms",
    params(("tenant" = String, Path, description = "The realm (tenant)")),
    request_body(content = RevocationRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or not a token of this realm"),
        (status = 400, description = "OAuth error `invalid_request`", body = Object),
        (status = 401, description = "OAuth error `invalid_client`", body = Object),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
    ))]
async fn revoke(
    State(identity): State<Identity>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = match existing_realm(&identity, &raw).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let request = oauth_request(&headers, &body)?;
        let token = required(&request, "token")?;
        identity
            .revoke(
                &tenant,
                &request.client_id,
                request.client_secret.as_deref(),
                token,
            )
            .await
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => oauth_failure(e),
    }
}

/// Who the bearer token's user is, for a token of this realm.
#[utoipa::path(method(get, post), path = "/realms/{tenant}/protocol/openid-connect/userinfo", tag = "realms",
    params(("tenant" = String, Path, description = "The realm (tenant)")),
    responses(
        (status = 200, description = "`{sub, preferred_username, tenant, roles}`", body = Object),
        (status = 401, description = "No token, or not a valid token of this realm", body = Object),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn userinfo(
    State(identity): State<Identity>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let challenge = |error: &'static str| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, error)],
            Json(json!({"error": "invalid_token", "error_description": "the access token is missing or not valid"})),
        )
            .into_response()
    };
    let Ok(tenant) = tenant_param(&raw) else {
        return ApiError::not_found(format!("realm {raw} does not exist")).into_response();
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let Some(token) = token else {
        return challenge(r#"Bearer realm="cairn""#);
    };
    match identity.verifier(Vec::new()).verify(&token).await {
        Ok(p) if p.tenant == tenant => Json(json!({
            "sub": p.subject,
            "preferred_username": p.username,
            "tenant": p.tenant.as_str(),
            "roles": p.roles,
        }))
        .into_response(),
        Ok(_) | Err(AuthError::Rejected(_)) => {
            challenge(r#"Bearer realm="cairn", error="invalid_token""#)
        }
        Err(e) => {
            tracing::warn!(error = %e, "userinfo cannot validate a token");
            ApiError::new(
                ErrorCode::Unavailable,
                "tokens cannot be validated right now",
            )
            .into_response()
        }
    }
}

// ---- admin ------------------------------------------------------------------

/// The admin API; needs [`cairn_http::bearer_auth`] in front of it.
pub fn admin_router(identity: Identity) -> Router {
    Router::new()
        .route("/api/admin/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/api/admin/tenants/{tenant}/users",
            post(create_user).get(list_users),
        )
        .route("/api/admin/tenants/{tenant}/clients", post(create_client))
        .route("/api/admin/tenants/{tenant}/keys", post(rotate_keys))
        .route("/api/admin/groups", post(create_group).get(list_groups))
        .route(
            "/api/admin/groups/{id}",
            get(get_group).put(update_group).delete(dissolve_group),
        )
        .with_state(identity)
}

fn require_super(caller: &Caller) -> Result<(), ApiError> {
    if caller.0.has_permission(permissions::TENANTS_ADMIN) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "managing tenants needs the super-admin role of the platform tenant",
        ))
    }
}

/// A tenant admin may manage their own tenant; a super-admin any tenant.
/// Anyone else, or a tenant admin naming another tenant, is refused as if
/// the tenant did not exist.
fn require_admin_of(caller: &Caller, raw: &str) -> Result<TenantId, ApiError> {
    let tenant = tenant_param(raw)?;
    let p = &caller.0;
    if p.has_permission(permissions::TENANTS_ADMIN) {
        return Ok(tenant);
    }
    if p.tenant != tenant {
        return Err(ApiError::not_found(format!("tenant {raw} does not exist")));
    }
    if p.has_permission(permissions::USERS_ADMIN) {
        Ok(tenant)
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "managing users needs the admin role",
        ))
    }
}

/// `POST /api/admin/tenants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    /// The tenant id: a-z, 0-9, `-` and `_`, starting with a letter or digit.
    id: String,
    /// A display name, 1-200 characters.
    name: String,
}

/// A tenant and its realm.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TenantView {
    id: String,
    name: String,
    /// The realm's issuer URL (`…/realms/{id}`).
    issuer: String,
}

/// Every tenant, on one page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TenantList {
    items: Vec<TenantView>,
    total: usize,
    /// Always `null`: the list is one page.
    next: Option<String>,
}

/// Create a tenant, its realm and its first signing key.
#[utoipa::path(post, path = "/api/admin/tenants", tag = "identity", request_body = NewTenant,
    responses(
        (status = 201, description = "Created", body = TenantView, headers(
            ("Location" = String, description = "Where the tenant is"))),
        cairn_http::ProblemResponses,
    ),
    security(("bearer" = [])))]
async fn create_tenant(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<Response, ApiError> {
    require_super(&caller)?;
    let tenant = TenantId::new(&body.id).map_err(|e| {
        ApiError::validation(
            "some fields are invalid",
            vec![FieldError::new("id", e.reason)],
        )
    })?;
    identity
        .create_tenant(&caller.0.subject, &tenant, &body.name)
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/admin/tenants/{tenant}"))],
        Json(TenantView {
            id: tenant.to_string(),
            name: body.name.trim().to_owned(),
            issuer: identity.issuer(&tenant),
        }),
    )
        .into_response())
}

/// List every tenant (super-admin).
#[utoipa::path(get, path = "/api/admin/tenants", tag = "identity",
    responses((status = 200, description = "Every tenant", body = TenantList), cairn_http::QueryProblems),
    security(("bearer" = [])))]
async fn list_tenants(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<TenantList>, ApiError> {
    require_super(&caller)?;
    let items: Vec<_> = identity
        .tenants()
        .await
        .map_err(api_error)?
        .into_iter()
        .filter_map(|(id, name)| {
            let issuer = identity.issuer(&TenantId::new(&id).ok()?);
            Some(TenantView { id, name, issuer })
        })
        .collect();
    Ok(Json(TenantList {
        total: items.len(),
        items,
        next: None,
    }))
}

/// `POST /api/admin/tenants/{tenant}/users`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    /// The login name; also the user's stream id.
    username: String,
    /// 8 to 1024 characters; stored as an argon2id hash.
    password: String,
    /// Any of `admin`, `operator`, `viewer` (`super-admin` in the platform
    /// tenant only). Default none.
    #[serde(default)]
    roles: Vec<String>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// A user of a tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserView {
    /// The tokens' `sub`.
    id: String,
    username: String,
    roles: Vec<String>,
    tenant: String,
}

/// The users of a tenant, on one page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UserList {
    items: Vec<UserView>,
    total: usize,
    /// Always `null`: the list is one page.
    next: Option<String>,
}

/// Create a user of the tenant (its admin, or a super-admin).
#[utoipa::path(post, path = "/api/admin/tenants/{tenant}/users", tag = "identity", request_body = NewUser,
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 201, description = "Created", body = UserView),
        cairn_http::ProblemResponses,
    ),
    security(("bearer" = [])))]
async fn create_user(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    let tenant = require_admin_of(&caller, &raw)?;
    let id = identity
        .create_user(
            &caller.0.subject,
            &tenant,
            &body.username,
            &body.password,
            &body.roles,
        )
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id,
            username: body.username,
            roles: body.roles,
            tenant: tenant.to_string(),
        }),
    )
        .into_response())
}

/// List the users of the tenant (its admin, or a super-admin).
#[utoipa::path(get, path = "/api/admin/tenants/{tenant}/users", tag = "identity",
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The tenant's users; no password hashes", body = UserList),
        cairn_http::QueryProblems,
        (status = 404, description = "No such tenant, or another tenant than the caller's", body = cairn_http::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_users(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<UserList>, ApiError> {
    let tenant = require_admin_of(&caller, &raw)?;
    let items: Vec<_> = identity
        .users(&tenant)
        .await
        .map_err(api_error)?
        .into_iter()
        .map(|(id, username, roles)| UserView {
            id,
            username,
            roles,
            tenant: tenant.to_string(),
        })
        .collect();
    Ok(Json(UserList {
        total: items.len(),
        items,
        next: None,
    }))
}

/// `POST /api/admin/tenants/{tenant}/clients`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NewOAuthClient {
    /// The client id (`cairn` is reserved for the public client).
    client_id: String,
    /// The roles of the tokens it gets with `client_credentials`. Default
    /// none.
    #[serde(default)]
    roles: Vec<String>,
}

/// A confidential client just created. Its secret is shown here only.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientCreated {
    client_id: String,
    /// Shown once; only its hash is stored.
    client_secret: String,
    roles: Vec<String>,
}

impl std::fmt::Debug for ClientCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCreated")
            .field("client_id", &self.client_id)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Create a confidential client of the tenant (its admin, or a super-admin).
#[utoipa::path(post, path = "/api/admin/tenants/{tenant}/clients", tag = "identity", request_body = NewOAuthClient,
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 201, description = "Created; the secret is in this answer only", body = ClientCreated),
        cairn_http::ProblemResponses,
    ),
    security(("bearer" = [])))]
async fn create_client(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<NewOAuthClient>,
) -> Result<Response, ApiError> {
    let tenant = require_admin_of(&caller, &raw)?;
    let client = identity
        .create_client(&caller.0.subject, &tenant, &body.client_id, &body.roles)
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(ClientCreated {
            client_id: client.client_id,
            client_secret: client.client_secret,
            roles: client.roles,
        }),
    )
        .into_response())
}

/// The signing key that replaced the previous one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct KeyRotated {
    /// The new key's id, in the tokens' header from now on.
    kid: String,
}

/// Rotate the tenant's signing key; the old one stays in the JWKS for a
/// while, so tokens it signed stay valid until they expire.
#[utoipa::path(post, path = "/api/admin/tenants/{tenant}/keys", tag = "identity",
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 201, description = "Rotated", body = KeyRotated),
        cairn_http::ProblemResponses,
    ),
    security(("bearer" = [])))]
async fn rotate_keys(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = require_admin_of(&caller, &raw)?;
    let kid = identity
        .rotate_keys(&caller.0.subject, &tenant)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(KeyRotated { kid })).into_response())
}

/// `POST /api/admin/groups`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGroup {
    /// The group id, with the tenant-id rules.
    id: String,
    /// A display name, 1-200 characters.
    name: String,
    /// 1-100 existing tenants, not `platform`.
    tenants: Vec<String>,
    /// Up to 32 resources (`flights`, `passengers`, `audit`, …) each member
    /// may read of the others. Default none.
    #[serde(default)]
    shared: Vec<String>,
}

/// `PUT /api/admin/groups/{id}`: the new members and shared resources,
/// replacing the old ones.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupChange {
    /// 1-100 existing tenants, not `platform`.
    tenants: Vec<String>,
    /// Up to 32 resources; `[]` shares nothing.
    shared: Vec<String>,
}

/// A tenant group: each member may read (GET only) what the group shares of
/// every other member.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct GroupView {
    id: String,
    name: String,
    /// The member tenants, sorted.
    tenants: Vec<String>,
    /// The shared resources, sorted.
    shared: Vec<String>,
}

impl From<TenantGroup> for GroupView {
    fn from(group: TenantGroup) -> Self {
        Self {
            id: group.id,
            name: group.name,
            tenants: group.tenants,
            shared: group.shared,
        }
    }
}

/// Every tenant group, on one page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct GroupList {
    items: Vec<GroupView>,
    total: usize,
    /// Always `null`: the list is one page.
    next: Option<String>,
}

/// Create a tenant group (super-admin). Its members' new tokens carry what
/// it shares.
#[utoipa::path(post, path = "/api/admin/groups", tag = "identity", request_body = NewGroup,
    responses(
        (status = 201, description = "Created", body = GroupView, headers(
            ("Location" = String, description = "Where the group is"))),
        cairn_http::ProblemResponses,
    ),
    security(("bearer" = [])))]
async fn create_group(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<NewGroup>,
) -> Result<Response, ApiError> {
    require_super(&caller)?;
    let group = identity
        .create_group(
            &caller.0.subject,
            &body.id,
            &body.name,
            &body.tenants,
            &body.shared,
        )
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/admin/groups/{}", group.id))],
        Json(GroupView::from(group)),
    )
        .into_response())
}

/// List every tenant group (super-admin).
#[utoipa::path(get, path = "/api/admin/groups", tag = "identity",
    responses((status = 200, description = "Every tenant group", body = GroupList), cairn_http::QueryProblems),
    security(("bearer" = [])))]
async fn list_groups(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<GroupList>, ApiError> {
    require_super(&caller)?;
    let items: Vec<GroupView> = identity
        .groups()
        .await
        .map_err(api_error)?
        .into_iter()
        .map(GroupView::from)
        .collect();
    Ok(Json(GroupList {
        total: items.len(),
        items,
        next: None,
    }))
}

/// One tenant group (super-admin).
#[utoipa::path(get, path = "/api/admin/groups/{id}", tag = "identity",
    params(("id" = String, Path, description = "The group")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        cairn_http::QueryProblems,
        (status = 404, description = "No such group", body = cairn_http::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_group(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    require_super(&caller)?;
    let group = identity.group(&id).await.map_err(api_error)?;
    Ok(Json(group.into()))
}

/// Replace a tenant group's members and shared resources (super-admin).
/// New tokens carry the change; tokens already issued keep what they say
/// until they expire.
#[utoipa::path(put, path = "/api/admin/groups/{id}", tag = "identity", request_body = GroupChange,
    params(("id" = String, Path, description = "The group")),
    responses(
        (status = 200, description = "Changed", body = GroupView),
        cairn_http::ProblemResponses,
    ),
    security(("bearer" = [])))]
async fn update_group(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GroupChange>,
) -> Result<Json<GroupView>, ApiError> {
    require_super(&caller)?;
    let group = identity
        .update_group(&caller.0.subject, &id, &body.tenants, &body.shared)
        .await
        .map_err(api_error)?;
    Ok(Json(group.into()))
}

/// Dissolve a tenant group (super-admin): its members stop sharing
/// through it; the id is not used again.
#[utoipa::path(delete, path = "/api/admin/groups/{id}", tag = "identity",
    params(("id" = String, Path, description = "The group")),
    responses(
        (status = 204, description = "Dissolved"),
        cairn_http::ProblemResponses,
        (status = 404, description = "No such group", body = cairn_http::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn dissolve_group(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_super(&caller)?;
    identity
        .dissolve_group(&caller.0.subject, &id)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- OpenAPI ------------------------------------------------------------------

/// The OpenAPI description of the identity routes: the realms' OIDC
/// endpoints, the browser sign-in and the admin API.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(
        discovery, certs, token, revoke, userinfo,
        crate::browser::login, crate::browser::refresh, crate::browser::logout,
        create_tenant, list_tenants, create_user, list_users, create_client, rotate_keys,
        create_group, list_groups, get_group, update_group, dissolve_group,
    ),
    components(schemas(
        TokenRequest, RevocationRequest,
        crate::browser::BrowserLogin, crate::browser::BrowserToken,
        NewTenant, TenantView, TenantList, NewUser, UserView, UserList,
        NewOAuthClient, ClientCreated, KeyRotated,
        NewGroup, GroupChange, GroupView, GroupList,
    )),
    tags(
        (name = "realms", description = "OIDC realms, one per tenant, in Keycloak's shape; token errors are OAuth JSON"),
        (name = "browser", description = "The web console's sign-in: refresh token in an HttpOnly cookie, CSRF header required"),
        (name = "identity", description = "Admin API: tenants and tenant groups (super-admin), users, clients and signing keys"),
    )
)]
pub struct IdentityOpenApi;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use utoipa::OpenApi as _;

    fn document() -> Value {
        serde_json::to_value(cairn_http::openapi_document(
            "test",
            "0",
            [IdentityOpenApi::openapi()],
        ))
        .unwrap()
    }

    #[test]
    fn the_admin_routes_are_documented_with_their_request_bodies() {
        let doc = document();
        /// Path, method, body schema, its properties, the required ones.
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: [Case; 6] = [
            (
                "/api/admin/tenants",
                "post",
                "NewTenant",
                &["id", "name"],
                &["id", "name"],
            ),
            (
                "/api/admin/tenants/{tenant}/users",
                "post",
                "NewUser",
                &["username", "password", "roles"],
                &["username", "password"],
            ),
            (
                "/api/admin/tenants/{tenant}/clients",
                "post",
                "NewOAuthClient",
                &["clientId", "roles"],
                &["clientId"],
            ),
            (
                "/realms/{tenant}/browser/login",
                "post",
                "BrowserLogin",
                &["username", "password"],
                &["username", "password"],
            ),
            (
                "/api/admin/groups",
                "post",
                "NewGroup",
                &["id", "name", "tenants", "shared"],
                &["id", "name", "tenants"],
            ),
            (
                "/api/admin/groups/{id}",
                "put",
                "GroupChange",
                &["tenants", "shared"],
                &["tenants", "shared"],
            ),
        ];
        for (path, method, schema, properties, required) in cases {
            let op = &doc["paths"][path][method];
            assert_eq!(
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                format!("#/components/schemas/{schema}"),
                "{method} {path}: {op}"
            );
            let body = &doc["components"]["schemas"][schema];
            for p in properties {
                assert!(body["properties"][p].is_object(), "{schema}.{p}: {body}");
            }
            let mut listed: Vec<&str> = body["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            listed.sort_unstable();
            let mut required = required.to_vec();
            required.sort_unstable();
            assert_eq!(listed, required, "{schema}");
        }
    }

    #[test]
    fn every_identity_route_is_in_the_document() {
        let doc = document();
        let admin = [
            ("/api/admin/tenants", "post", "201"),
            ("/api/admin/tenants", "get", "200"),
            ("/api/admin/tenants/{tenant}/users", "post", "201"),
            ("/api/admin/tenants/{tenant}/users", "get", "200"),
            ("/api/admin/tenants/{tenant}/clients", "post", "201"),
            ("/api/admin/tenants/{tenant}/keys", "post", "201"),
            ("/api/admin/groups", "post", "201"),
            ("/api/admin/groups", "get", "200"),
            ("/api/admin/groups/{id}", "get", "200"),
            ("/api/admin/groups/{id}", "put", "200"),
        ];
        for (path, method, ok) in admin {
            let op = &doc["paths"][path][method];
            assert!(op["responses"][ok].is_object(), "{method} {path}: {op}");
            for refused in ["401", "403"] {
                assert_eq!(
                    op["responses"][refused]["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {refused}"
                );
            }
            assert!(op["security"][0]["bearer"].is_array(), "{method} {path}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for action in ["login", "refresh", "logout"] {
            let op = &doc["paths"][format!("/realms/{{tenant}}/browser/{action}")]["post"];
            assert_eq!(op["tags"][0], "browser", "{action}");
            assert!(op["responses"]["403"].is_object(), "{action}");
        }
        assert!(
            doc["paths"]["/realms/{tenant}/protocol/openid-connect/token"]["post"]["requestBody"]
                ["content"]["application/x-www-form-urlencoded"]
                .is_object()
        );
        for path in [
            "/realms/{tenant}/.well-known/openid-configuration",
            "/realms/{tenant}/protocol/openid-connect/certs",
            "/realms/{tenant}/protocol/openid-connect/userinfo",
        ] {
            assert!(doc["paths"][path]["get"].is_object(), "{path}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let user = NewUser {
            username: "eve".into(),
            password: "correct horse".into(),
            roles: vec![],
        };
        assert!(!format!("{user:?}").contains("horse"));
        let client = ClientCreated {
            client_id: "billing".into(),
            client_secret: "s3cret".into(),
            roles: vec![],
        };
        assert!(!format!("{client:?}").contains("s3cret"));
    }
}
