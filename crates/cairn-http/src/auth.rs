//! Bearer-token authentication: [`bearer_auth`] validates the
//! `Authorization: Bearer …` token with a [`Verifier`] and puts the
//! caller's [`RequestContext`] (tenant, subject, permissions, correlation
//! id, trace context) into the request, where [`crate::Context`] finds it.
//!
//! - No token: 401 `missing_token`, `WWW-Authenticate: Bearer
//!   realm="cairn"`.
//! - A refused token: 401 with a code saying why (`malformed_token`,
//!   `invalid_signature`, `unknown_key`, `issuer_mismatch`,
//!   `audience_mismatch`, `tenant_mismatch`, `unknown_tenant`, `expired`,
//!   `not_yet_valid`, `revoked`), the same sentence as `detail` and as the
//!   challenge's `error_description`, next to `error="invalid_token"`
//!   (RFC 6750). It never carries the token, which part of a signature
//!   failed, or anything about users; the reason also goes to the log (at
//!   `info`, without the token).
//! - An issuer whose keys cannot be fetched: 503 `unavailable`.
//! - `X-Cairn-Tenant` naming another tenant: allowed only for reads (GET,
//!   HEAD), and only to a token with [`permissions::CROSS_TENANT_READ`]
//!   (a super-tenant caller: any path), or to a member of a tenant group
//!   that shares the path's resource with it ([`AuthOptions::shared`] maps
//!   path prefixes to resources; the token's `shared` claim says what each
//!   other tenant shares). The read is first recorded through the
//!   [`CrossTenantAudit`] hook (no record, no read). Anyone else gets 403.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, header, request::Parts},
    response::{IntoResponse, Response},
};
use cairn_auth::{AuthError, Principal, Rejection, Verifier, permissions};
use cairn_core::{ErrorCode, RequestContext, TenantId};
use tower::{Layer, Service};

use crate::{
    ApiError, TENANT_HEADER, TenantHeaderOptions, context::context_from_headers,
    problem::FieldError,
};

/// A read of another tenant's data by a super-tenant caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossTenantRead {
    /// The tenant whose data is read.
    pub tenant: TenantId,
    /// The caller's own tenant.
    pub actor_tenant: TenantId,
    /// The caller (`sub`).
    pub actor: String,
    /// The caller's user name, if the token has one.
    pub username: Option<String>,
    pub method: String,
    /// The path and query read.
    pub target: String,
    pub correlation_id: String,
    /// The shared resource, when a tenant group allowed the read (else a
    /// super-tenant caller read it).
    pub shared: Option<String>,
}

/// The event type of a recorded cross-tenant read.
pub const CROSS_TENANT_READ: &str = "CrossTenantRead";

/// The JSON a recorded cross-tenant read carries.
pub fn cross_read_data(read: &CrossTenantRead) -> serde_json::Value {
    serde_json::json!({
        "actorTenant": read.actor_tenant.as_str(),
        "actor": read.actor,
        "username": read.username,
        "method": read.method,
        "target": read.target,
        "shared": read.shared,
    })
}

/// Records cross-tenant reads (in the audit log). A read goes ahead only
/// after its record was written.
pub trait CrossTenantAudit: Send + Sync + fmt::Debug {
    fn record(
        &self,
        read: CrossTenantRead,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// What [`bearer_auth`] needs.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub verifier: Verifier,
    /// Where cross-tenant reads are recorded. Without it, cross-tenant reads
    /// are refused (403) even for super-tenant callers.
    pub audit: Option<Arc<dyn CrossTenantAudit>>,
    /// The resources tenant groups may share, by path prefix
    /// (`/api/flights` -> `flights`): a read under the prefix is allowed
    /// across tenants when the token says the other tenant shares it.
    pub shared: Vec<SharedRoute>,
}

impl AuthOptions {
    /// Validation with `verifier`, cross-tenant reads recorded by `audit`.
    pub fn new(verifier: Verifier, audit: Option<Arc<dyn CrossTenantAudit>>) -> Self {
        Self {
            verifier,
            audit,
            shared: Vec::new(),
        }
    }

    /// Paths at `prefix` (and below it) read `resource`, which tenant
    /// groups may share.
    pub fn share(mut self, prefix: impl Into<String>, resource: impl Into<String>) -> Self {
        self.shared.push(SharedRoute {
            prefix: prefix.into().trim_end_matches('/').to_owned(),
            resource: resource.into(),
        });
        self
    }

    /// The shareable resource `path` reads, if any.
    fn resource_of(&self, path: &str) -> Option<&str> {
        self.shared
            .iter()
            .find(|r| {
                path.strip_prefix(r.prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|r| r.resource.as_str())
    }
}

/// A path prefix and the shareable resource it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRoute {
    pub prefix: String,
    pub resource: String,
}

/// A layer that requires a valid bearer token; see the module documentation.
pub fn bearer_auth(options: AuthOptions) -> BearerAuthLayer {
    BearerAuthLayer {
        options: Arc::new(options),
    }
}

/// The layer made by [`bearer_auth`].
#[derive(Debug, Clone)]
pub struct BearerAuthLayer {
    options: Arc<AuthOptions>,
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            options: self.options.clone(),
        }
    }
}

/// The service made by [`BearerAuthLayer`].
#[derive(Debug, Clone)]
pub struct BearerAuth<S> {
    inner: S,
    options: Arc<AuthOptions>,
}

/// The caller's validated token, also put into the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S> Service<Request> for BearerAuth<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let options = self.options.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match authenticate(&options, &parts).await {
                Ok((ctx, principal)) => {
                    parts.extensions.insert(ctx);
                    parts.extensions.insert(Caller(principal));
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(response) => Ok(response),
            }
        })
    }
}

async fn authenticate(
    options: &AuthOptions,
    req: &Parts,
) -> Result<(RequestContext, Principal), Response> {
    let refuse = |r| unauthenticated(&r, &req.method, req.uri.path());
    let token = bearer_token(&req.headers).map_err(refuse)?;
    let principal = match options.verifier.verify(token).await {
        Ok(p) => p,
        Err(AuthError::Rejected(r)) => return Err(refuse(r)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot validate an access token");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "access tokens cannot be validated right now",
            )
            .into_response());
        }
    };
    // Correlation id and trace context as without authentication; the tenant
    // is the token's.
    let mut ctx = context_from_headers(
        &req.headers,
        &TenantHeaderOptions {
            default_tenant: Some(principal.tenant.clone()),
        },
    )
    .map_err(IntoResponse::into_response)?;
    let wanted = ctx.tenant.clone();
    ctx.tenant = principal.tenant.clone();
    ctx.actor = Some(principal.subject.clone());
    ctx.permissions = principal.permissions.clone();
    if wanted != principal.tenant {
        let reading = matches!(req.method, Method::GET | Method::HEAD);
        // A super-tenant caller reads anything; a group member what the
        // group shares.
        let shared = if principal.has_permission(permissions::CROSS_TENANT_READ) {
            Some(None)
        } else {
            options
                .resource_of(req.uri.path())
                .filter(|resource| principal.shares(&wanted, resource))
                .map(|resource| Some(resource.to_owned()))
        };
        let (audit, shared) = match (&options.audit, shared) {
            (Some(audit), Some(shared)) if reading => (audit, shared),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "this token acts for tenant {}; {TENANT_HEADER} may name another tenant only for reads by a super-tenant caller or of what a tenant group shares",
                        principal.tenant
                    ),
                )
                .with_errors(vec![FieldError::new(
                    TENANT_HEADER.as_str(),
                    "not allowed for this caller",
                )])
                .into_response());
            }
        };
        let read = CrossTenantRead {
            tenant: wanted.clone(),
            actor_tenant: principal.tenant.clone(),
            actor: principal.subject.clone(),
            username: principal.username.clone(),
            method: req.method.to_string(),
            target: req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            correlation_id: ctx.correlation_id.clone(),
            shared,
        };
        if let Err(e) = audit.record(read).await {
            tracing::warn!(error = %e, "cannot record a cross-tenant read; refusing it");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the cross-tenant read cannot be recorded, so it is refused",
            )
            .into_response());
        }
        ctx.tenant = wanted;
    }
    Ok((ctx, principal))
}

/// The bearer token of a request's headers: [`Rejection::Missing`] when
/// there is none (no `Authorization` header, one of another scheme, or one
/// that is not text, or `Bearer` alone).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Rejection> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Rejection::Missing)?
        .to_str()
        .map_err(|_| Rejection::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(Rejection::Missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Rejection::Missing);
    }
    Ok(token)
}

/// The one answer to a refused token: 401 with the rejection's code, its
/// sentence as `detail`, and a `WWW-Authenticate` challenge that carries
/// the same sentence as `error_description` (no `error` when there was no
/// token at all, as RFC 6750 asks). The reason goes to the log (at `info`,
/// with the method and path, never the token).
pub fn unauthenticated(reason: &Rejection, method: &Method, path: &str) -> Response {
    let detail = reason.to_string();
    let challenge = if *reason == Rejection::Missing {
        HeaderValue::from_static(r#"Bearer realm="cairn""#)
    } else {
        tracing::info!(
            reason = reason.as_str(),
            %method,
            path,
            "access token refused"
        );
        HeaderValue::from_str(&format!(
            r#"Bearer realm="cairn", error="invalid_token", error_description="{}""#,
            quoted_string_safe(&detail)
        ))
        .unwrap_or_else(|_| {
            HeaderValue::from_static(r#"Bearer realm="cairn", error="invalid_token""#)
        })
    };
    ApiError::new(reason.code(), detail)
        .with_header(header::WWW_AUTHENTICATE, challenge)
        .into_response()
}

/// `text` with only the characters RFC 6750 allows in `error_description`
/// (printable ASCII but `"` and `\`); others become `?`.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}
