//! The OIDC endpoints of every realm, in Keycloak's shape
//! (`/realms/{tenant}/…`): discovery, JWKS, the token endpoint, revocation
//! and userinfo. No token is needed but for userinfo. The token and
//! revocation endpoints answer errors the OAuth way (`{"error",
//! "error_description"}`, RFC 6749 §5.2); a realm that does not exist is a
//! problem+json 404.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use cairn_auth::AuthError;
use cairn_core::ErrorCode;
use cairn_http::ApiError;
use serde_json::json;

use super::common::{api_error, existing_realm, tenant_param};
use crate::{Identity, IdentityError, PUBLIC_CLIENT};

/// The OIDC routes of every realm.
pub(super) fn router(identity: Identity) -> Router {
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
        .with_state(identity)
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
