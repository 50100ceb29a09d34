//! The web console's sign-in: the refresh token lives in a cookie the
//! page's scripts cannot read, the access token only in the page's memory.
//!
//! ```text
//! POST /realms/{tenant}/browser/login     {"username","password"}  -> {"access_token","token_type","expires_in"} + cookie
//! POST /realms/{tenant}/browser/refresh   (cookie)                 -> a new access token and a new cookie
//! POST /realms/{tenant}/browser/logout    (cookie)                 -> 204, the session revoked, the cookie cleared
//! ```
//!
//! The refresh token travels only in the [`REFRESH_COOKIE`] cookie:
//! `HttpOnly` (no script reads it), `Secure`, `SameSite=Strict`,
//! `Path=/realms/{tenant}/browser` (only these routes of its own realm
//! receive it) and `Max-Age` the refresh token's lifetime. It never appears
//! in a response body. `Secure` is always set: browsers that count
//! `http://localhost` as a secure context keep secure cookies from it, so
//! local development needs no exception.
//!
//! Cross-site request forgery: a browser attaches the cookie by itself, so
//! the cookie alone proves nothing about who made the request. Every route
//! here requires the header `X-Requested-With: cairn` ([`CSRF_HEADER`],
//! [`CSRF_HEADER_VALUE`]), which an HTML form cannot send and a script
//! of another origin can send only after a CORS preflight that Cairn never
//! grants, and, when the request carries `Origin`, that it is the public
//! origin of the issuer ([`crate::IdentityOptions::issuer_base`]). Either
//! check failing is 403 before anything else runs. `SameSite=Strict` keeps
//! the cookie off cross-site requests as well.
//!
//! The grants are the token endpoint's, for the public client
//! [`crate::PUBLIC_CLIENT`]: a failed login counts towards the same lockout
//! as the `password` grant (429 with `Retry-After`), and a refresh rotates
//! the token with the same reuse detection (a used token presented again
//! revokes its whole session). Unlike the OAuth endpoints, errors here are
//! problem+json; a refresh refused for its token also clears the cookie.
//!
//! Guarantee: tokens and cookie values are never logged.

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
};
use cairn_core::{ErrorCode, TenantId};
use cairn_http::{ApiError, ApiJson, FieldError};
use serde::{Deserialize, Serialize};
use url::{Origin, Url};

use super::common::{api_error, existing_realm, tenant_param};
use crate::{Identity, IdentityError, PUBLIC_CLIENT, TokenResponse};

/// The cookie that holds the refresh token.
pub const REFRESH_COOKIE: &str = "cairn_refresh";
/// The header every browser request must carry, with [`CSRF_HEADER_VALUE`].
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-requested-with");
/// The value of [`CSRF_HEADER`].
pub const CSRF_HEADER_VALUE: &str = "cairn";

#[derive(Debug, Clone)]
struct Browser {
    identity: Identity,
    /// The issuer's origin. `None` when the issuer base has no tuple origin;
    /// then every request that carries `Origin` is refused.
    origin: Option<Origin>,
}

/// The routes; [`super::realm_router`] mounts them with the realms' own.
pub(crate) fn router(identity: Identity) -> Router {
    let origin = Url::parse(&identity.options().issuer_base)
        .ok()
        .map(|url| url.origin())
        .filter(Origin::is_tuple);
    if origin.is_none() {
        tracing::warn!(
            issuer_base = %identity.options().issuer_base,
            "the issuer base is not an http(s) URL: browser requests that carry Origin will be refused"
        );
    }
    let browser = Browser { identity, origin };
    Router::new()
        .route("/realms/{tenant}/browser/login", post(login))
        .route("/realms/{tenant}/browser/refresh", post(refresh))
        .route("/realms/{tenant}/browser/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            browser.clone(),
            same_origin_only,
        ))
        .with_state(browser)
}

/// Refuses (403) a request without the CSRF header, or from another origin.
async fn same_origin_only(
    State(browser): State<Browser>,
    request: Request,
    next: Next,
) -> Response {
    match check_same_origin(browser.origin.as_ref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

fn check_same_origin(origin: Option<&Origin>, headers: &HeaderMap) -> Result<(), ApiError> {
    let mut marks = headers.get_all(CSRF_HEADER).iter();
    if !(marks.next().is_some_and(|v| v == CSRF_HEADER_VALUE) && marks.next().is_none()) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("browser requests need the header {CSRF_HEADER}: {CSRF_HEADER_VALUE}"),
        ));
    }
    let foreign = headers.get_all(header::ORIGIN).iter().any(|value| {
        let sent = value
            .to_str()
            .ok()
            .and_then(|v| Url::parse(v).ok())
            .map(|url| url.origin());
        !matches!((sent, origin), (Some(sent), Some(ours)) if sent == *ours)
    });
    if foreign {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the request comes from another origin",
        ));
    }
    Ok(())
}

/// `POST /realms/{tenant}/browser/login`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BrowserLogin {
    username: String,
    password: String,
}

impl std::fmt::Debug for BrowserLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A browser's access token; its refresh token is in the cookie.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BrowserToken {
    /// Keep it in memory only; ask `refresh` for the next one.
    access_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String, example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
}

impl std::fmt::Debug for BrowserToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

fn cookie_header(tenant: &TenantId, value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
    let mut cookie = HeaderValue::try_from(format!(
        "{REFRESH_COOKIE}={value}; Path=/realms/{tenant}/browser; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
    ))
    .map_err(|_| ApiError::internal("the refresh cookie cannot be written"))?;
    cookie.set_sensitive(true);
    Ok(cookie)
}

/// The `Set-Cookie` value that makes the browser forget the session.
fn cleared_cookie(tenant: &TenantId) -> Result<HeaderValue, ApiError> {
    cookie_header(tenant, "", 0)
}

/// The refresh token from the request's cookies, if any.
fn refresh_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim() == REFRESH_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// A refused grant as a problem: bad credentials or token 401, a locked
/// user 429 with `Retry-After`.
fn refused(e: IdentityError) -> ApiError {
    match e {
        IdentityError::InvalidGrant(detail) => ApiError::new(ErrorCode::Unauthenticated, detail),
        IdentityError::InvalidClient => {
            ApiError::new(ErrorCode::Unauthenticated, "client authentication failed")
        }
        IdentityError::Locked(seconds) => ApiError::new(
            ErrorCode::RateLimited,
            "too many failed logins; try again later",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(seconds)),
        other => api_error(other),
    }
}

/// The access token in the body, the refresh token in the cookie.
fn signed_in(tenant: &TenantId, tokens: TokenResponse) -> Result<Response, ApiError> {
    let (Some(refresh), Some(max_age)) = (tokens.refresh_token, tokens.refresh_expires_in) else {
        return Err(ApiError::internal("the grant issued no refresh token"));
    };
    let cookie = cookie_header(tenant, &refresh, max_age)?;
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        Json(BrowserToken {
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            expires_in: tokens.expires_in,
        }),
    )
        .into_response())
}

/// Sign in with a username and password; the refresh token is set as a cookie.
#[utoipa::path(post, path = "/realms/{tenant}/browser/login", tag = "browser",
    params(
        ("tenant" = String, Path, description = "The realm (tenant)"),
        ("X-Requested-With" = String, Header, description = "Must be `cairn`"),
    ),
    request_body = BrowserLogin,
    responses(
        (status = 200, description = "Signed in. `Set-Cookie: cairn_refresh=…; Path=/realms/{tenant}/browser; HttpOnly; Secure; SameSite=Strict; Max-Age=<refresh lifetime>`",
            body = BrowserToken, headers(("Set-Cookie" = String, description = "The refresh token"))),
        (status = 401, description = "Wrong username or password", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 403, description = "No `X-Requested-With: cairn`, or another origin", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or empty", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins", body = cairn_http::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the user may try again"))),
    ))]
async fn login(
    State(browser): State<Browser>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<BrowserLogin>,
) -> Result<Response, ApiError> {
    let tenant = tenant_param(&raw)?;
    let empty: Vec<_> = [("username", &body.username), ("password", &body.password)]
        .into_iter()
        .filter(|(_, value)| value.is_empty())
        .map(|(field, _)| FieldError::new(field, "must not be empty"))
        .collect();
    if !empty.is_empty() {
        return Err(ApiError::validation("some fields are invalid", empty));
    }
    let tokens = browser
        .identity
        .password_grant(
            &tenant,
            PUBLIC_CLIENT,
            None,
            &body.username,
            &body.password,
            None,
        )
        .await
        .map_err(refused)?;
    signed_in(&tenant, tokens)
}

/// Exchange the cookie's refresh token for a new access token and a new cookie.
#[utoipa::path(post, path = "/realms/{tenant}/browser/refresh", tag = "browser",
    params(
        ("tenant" = String, Path, description = "The realm (tenant)"),
        ("X-Requested-With" = String, Header, description = "Must be `cairn`"),
        ("cairn_refresh" = String, Cookie, description = "The refresh token set by `login` or `refresh`"),
    ),
    responses(
        (status = 200, description = "A new access token; the cookie is replaced (the old refresh token is used up)",
            body = BrowserToken, headers(("Set-Cookie" = String, description = "The next refresh token"))),
        (status = 401, description = "No cookie, or its token is unknown, expired, revoked or already used (which revokes its session); the cookie is cleared",
            body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 403, description = "No `X-Requested-With: cairn`, or another origin", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
    ))]
async fn refresh(
    State(browser): State<Browser>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant_param(&raw)?;
    let signed_out = |problem: ApiError| match cleared_cookie(&tenant) {
        Ok(cookie) => problem.with_header(header::SET_COOKIE, cookie),
        Err(e) => e,
    };
    let Some(token) = refresh_token(&headers) else {
        return Err(signed_out(ApiError::new(
            ErrorCode::Unauthenticated,
            "no session: sign in first",
        )));
    };
    match browser
        .identity
        .refresh_grant(&tenant, PUBLIC_CLIENT, None, token)
        .await
    {
        Ok(tokens) => signed_in(&tenant, tokens),
        Err(e @ IdentityError::InvalidGrant(_)) => Err(signed_out(refused(e))),
        Err(e) => Err(refused(e)),
    }
}

/// Sign out: revoke the cookie's session and clear the cookie.
#[utoipa::path(post, path = "/realms/{tenant}/browser/logout", tag = "browser",
    params(
        ("tenant" = String, Path, description = "The realm (tenant)"),
        ("X-Requested-With" = String, Header, description = "Must be `cairn`"),
        ("cairn_refresh" = Option<String>, Cookie, description = "The refresh token; without it there is nothing to revoke"),
    ),
    responses(
        (status = 204, description = "Signed out; every refresh token of the session is revoked and the cookie cleared",
            headers(("Set-Cookie" = String, description = "Clears the cookie (`Max-Age=0`)"))),
        (status = 403, description = "No `X-Requested-With: cairn`, or another origin", body = cairn_http::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such realm", body = cairn_http::Problem, content_type = "application/problem+json"),
    ))]
async fn logout(
    State(browser): State<Browser>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = existing_realm(&browser.identity, &raw).await?;
    if let Some(token) = refresh_token(&headers) {
        browser
            .identity
            .revoke(&tenant, PUBLIC_CLIENT, None, token)
            .await
            .map_err(api_error)?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [
            (header::SET_COOKIE, cleared_cookie(&tenant)?),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ours() -> Origin {
        Url::parse("https://cairn.example:8443/base")
            .unwrap()
            .origin()
    }

    #[test]
    fn the_csrf_header_is_required_exactly_once() {
        let origin = ours();
        let ok = |pairs: &[(&str, &str)]| check_same_origin(Some(&origin), &headers(pairs)).is_ok();
        assert!(ok(&[("x-requested-with", "cairn")]));
        assert!(!ok(&[]));
        assert!(!ok(&[("x-requested-with", "XMLHttpRequest")]));
        assert!(!ok(&[
            ("x-requested-with", "cairn"),
            ("x-requested-with", "cairn")
        ]));
    }

    #[test]
    fn only_the_issuers_origin_may_send_origin() {
        let origin = ours();
        let ok = |sent: &str| {
            check_same_origin(
                Some(&origin),
                &headers(&[("x-requested-with", "cairn"), ("origin", sent)]),
            )
            .is_ok()
        };
        assert!(ok("https://cairn.example:8443"));
        assert!(ok("https://CAIRN.example:8443"));
        assert!(!ok("http://cairn.example:8443"));
        assert!(!ok("https://cairn.example"));
        assert!(!ok("https://evil.example:8443"));
        assert!(!ok("null"));
        // Default ports are the same origin written either way.
        let plain = Url::parse("https://cairn.example").unwrap().origin();
        let with_port = headers(&[
            ("x-requested-with", "cairn"),
            ("origin", "https://cairn.example:443"),
        ]);
        assert!(check_same_origin(Some(&plain), &with_port).is_ok());
        // Without a known origin of our own, any Origin is foreign.
        assert!(check_same_origin(None, &with_port).is_err());
        assert!(check_same_origin(None, &headers(&[("x-requested-with", "cairn")])).is_ok());
    }

    #[test]
    fn the_refresh_token_is_read_from_among_other_cookies() {
        let h = headers(&[("cookie", "theme=dark; cairn_refresh=abc-_1 ; lang=en")]);
        assert_eq!(refresh_token(&h), Some("abc-_1"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "cairn_refresh=xyz")]);
        assert_eq!(refresh_token(&h), Some("xyz"));
        assert_eq!(
            refresh_token(&headers(&[("cookie", "cairn_refresh=")])),
            None
        );
        assert_eq!(
            refresh_token(&headers(&[("cookie", "cairn_refreshx=1")])),
            None
        );
        assert_eq!(refresh_token(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_has_every_attribute() {
        let tenant = TenantId::new("demo").unwrap();
        let cookie = cookie_header(&tenant, "tok", 60).unwrap();
        assert_eq!(
            cookie.to_str().unwrap(),
            "cairn_refresh=tok; Path=/realms/demo/browser; HttpOnly; Secure; SameSite=Strict; Max-Age=60"
        );
        assert!(cookie.is_sensitive());
        assert!(
            cleared_cookie(&tenant)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("cairn_refresh=; ")
        );
    }
}
