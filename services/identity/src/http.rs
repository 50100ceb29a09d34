//! The identity routes.
//!
//! [`realm_router`] (no token needed; mount it with the public routes):
//! ```text
//! GET  /realms/{tenant}/.well-known/openid-configuration
//! GET  /realms/{tenant}/protocol/openid-connect/certs        JWKS
//! POST /realms/{tenant}/protocol/openid-connect/token        password | client_credentials | refresh_token
//! POST /realms/{tenant}/protocol/openid-connect/revoke
//! GET  /realms/{tenant}/protocol/openid-connect/userinfo     (bearer token)
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
//! ```
//! The token endpoints answer errors the OAuth way (`{"error",
//! "error_description"}`, RFC 6749 §5.2); everything else in problem+json.

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
use serde::Deserialize;
use serde_json::json;

use crate::{Identity, IdentityError, PUBLIC_CLIENT};

fn api_error(e: IdentityError) -> ApiError {
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

fn tenant_param(raw: &str) -> Result<TenantId, ApiError> {
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
        .with_state(identity)
}

async fn existing_realm(identity: &Identity, raw: &str) -> Result<TenantId, ApiError> {
    let tenant = tenant_param(raw)?;
    if identity.realm_exists(&tenant).await.map_err(api_error)? {
        Ok(tenant)
    } else {
        Err(ApiError::not_found(format!("realm {raw} does not exist")))
    }
}

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
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tenant", "preferred_username", "roles", "realm_access"],
    }))
    .into_response())
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    name: String,
}

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
        Json(json!({"id": tenant.as_str(), "name": body.name.trim(), "issuer": identity.issuer(&tenant)})),
    )
        .into_response())
}

async fn list_tenants(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require_super(&caller)?;
    let items: Vec<_> = identity
        .tenants()
        .await
        .map_err(api_error)?
        .into_iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    let total = items.len();
    Ok(Json(json!({"items": items, "total": total, "next": null})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    roles: Vec<String>,
}

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
        Json(json!({"id": id, "username": body.username, "roles": body.roles, "tenant": tenant.as_str()})),
    )
        .into_response())
}

async fn list_users(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = require_admin_of(&caller, &raw)?;
    let items: Vec<_> = identity
        .users(&tenant)
        .await
        .map_err(api_error)?
        .into_iter()
        .map(|(id, username, roles)| json!({"id": id, "username": username, "roles": roles}))
        .collect();
    let total = items.len();
    Ok(Json(json!({"items": items, "total": total, "next": null})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewClientBody {
    client_id: String,
    #[serde(default)]
    roles: Vec<String>,
}

async fn create_client(
    State(identity): State<Identity>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<NewClientBody>,
) -> Result<Response, ApiError> {
    let tenant = require_admin_of(&caller, &raw)?;
    let client = identity
        .create_client(&caller.0.subject, &tenant, &body.client_id, &body.roles)
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(client),
    )
        .into_response())
}

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
    Ok((StatusCode::CREATED, Json(json!({"kid": kid}))).into_response())
}
