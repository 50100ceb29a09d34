//! Who is calling: the [`RequestContext`] every handler needs, put into the
//! request by a layer and read with the [`Context`] extractor.
//!
//! [`tenant_from_header`] is the stand-in used until token authentication
//! exists (issue 5 replaces it): the tenant comes from `X-Cairn-Tenant`, or a
//! configured default; the correlation id from `X-Correlation-Id` when it is
//! a valid one (non-empty, at most 128 bytes, no control characters), fresh
//! otherwise; `traceparent` is kept only when it is valid W3C trace context
//! (an invalid one is ignored, as the W3C spec asks). A request that already
//! carries a `RequestContext` (inserted by an earlier, stronger layer) keeps
//! it. Every response carries `X-Correlation-Id`.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderMap, HeaderName, HeaderValue, request::Parts},
    response::{IntoResponse, Response},
};
use cairn_core::{ErrorCode, Metadata, RequestContext, TenantId};
use tower::{Layer, Service};

use crate::problem::{ApiError, FieldError};

/// The header naming the tenant (until tokens carry it).
pub const TENANT_HEADER: HeaderName = HeaderName::from_static("x-cairn-tenant");
/// The header carrying the correlation id, in requests and responses.
pub const CORRELATION_ID_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");
/// The W3C trace context header.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

/// The caller's [`RequestContext`], as inserted by [`tenant_from_header`] or
/// an authentication layer. Missing (no such layer installed) is a 500.
#[derive(Debug, Clone)]
pub struct Context(pub RequestContext);

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .map(Context)
            .ok_or_else(|| {
                ApiError::internal("no RequestContext: the context layer is missing").as_rejection()
            })
    }
}

/// How [`tenant_from_header`] finds the tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantHeaderOptions {
    /// The tenant of requests without `X-Cairn-Tenant`. `None`: such
    /// requests are rejected with 400 `invalid_input`.
    pub default_tenant: Option<TenantId>,
}

/// A layer that builds the [`RequestContext`] from headers; see the module
/// documentation.
pub fn tenant_from_header(options: TenantHeaderOptions) -> RequestContextLayer {
    RequestContextLayer { options }
}

/// The layer made by [`tenant_from_header`].
#[derive(Debug, Clone)]
pub struct RequestContextLayer {
    options: TenantHeaderOptions,
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            options: self.options.clone(),
        }
    }
}

/// The service made by [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    options: TenantHeaderOptions,
}

impl<S> Service<Request> for RequestContextService<S>
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

    fn call(&mut self, mut req: Request) -> Self::Future {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let ctx = match req.extensions().get::<RequestContext>() {
            Some(ctx) => Ok(ctx.clone()),
            None => context_from_headers(req.headers(), &self.options),
        };
        Box::pin(async move {
            let ctx = match ctx {
                Ok(ctx) => ctx,
                Err(e) => return Ok(e.into_response()),
            };
            let span = tracing::Span::current();
            span.record("tenant", ctx.tenant.as_str());
            span.record("correlation_id", ctx.correlation_id.as_str());
            let correlation = HeaderValue::from_str(&ctx.correlation_id).ok();
            req.extensions_mut().insert(ctx);
            let mut response = inner.call(req).await?;
            if let Some(value) = correlation {
                response
                    .headers_mut()
                    .entry(CORRELATION_ID_HEADER)
                    .or_insert(value);
            }
            Ok(response)
        })
    }
}

/// Builds the context from `X-Cairn-Tenant`, `X-Correlation-Id` and
/// `traceparent`.
pub fn context_from_headers(
    headers: &HeaderMap,
    options: &TenantHeaderOptions,
) -> Result<RequestContext, ApiError> {
    let tenant = match headers.get(TENANT_HEADER) {
        Some(value) => {
            let reject = |message: String| {
                ApiError::new(
                    ErrorCode::InvalidInput,
                    format!("{TENANT_HEADER}: {message}"),
                )
                .with_errors(vec![FieldError::new(TENANT_HEADER.as_str(), message)])
            };
            let text = value
                .to_str()
                .map_err(|_| reject("must be visible ASCII".into()))?;
            TenantId::new(text).map_err(|e| reject(e.reason))?
        }
        None => options.default_tenant.clone().ok_or_else(|| {
            ApiError::invalid_input(format!("the {TENANT_HEADER} header is required"))
        })?,
    };
    let mut ctx = RequestContext::new(tenant);
    if let Some(id) = header_text(headers, &CORRELATION_ID_HEADER)
        && valid_metadata(Metadata {
            correlation_id: Some(id.to_owned()),
            ..Metadata::default()
        })
    {
        ctx = ctx.with_correlation_id(id);
    }
    if let Some(tp) = header_text(headers, &TRACEPARENT_HEADER)
        && valid_metadata(Metadata {
            traceparent: Some(tp.to_owned()),
            ..Metadata::default()
        })
    {
        ctx = ctx.with_traceparent(tp);
    }
    Ok(ctx)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The event-metadata rules are the rules for these headers: what is
/// accepted here can be stamped on events without failing later.
fn valid_metadata(meta: Metadata) -> bool {
    meta.validate().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn defaulted() -> TenantHeaderOptions {
        TenantHeaderOptions {
            default_tenant: Some(TenantId::new("demo").unwrap()),
        }
    }

    #[test]
    fn the_header_names_the_tenant_and_the_default_fills_in() {
        let ctx =
            context_from_headers(&headers(&[(&TENANT_HEADER, "acme")]), &defaulted()).unwrap();
        assert_eq!(ctx.tenant.as_str(), "acme");
        let ctx = context_from_headers(&HeaderMap::new(), &defaulted()).unwrap();
        assert_eq!(ctx.tenant.as_str(), "demo");
    }

    #[test]
    fn a_missing_or_bad_tenant_is_400() {
        let err =
            context_from_headers(&HeaderMap::new(), &TenantHeaderOptions::default()).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        let err = context_from_headers(&headers(&[(&TENANT_HEADER, "Not A Tenant")]), &defaulted())
            .unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert_eq!(err.errors.unwrap()[0].field, "x-cairn-tenant");
    }

    #[test]
    fn correlation_id_and_traceparent_are_taken_when_valid() {
        let ctx = context_from_headers(
            &headers(&[
                (&CORRELATION_ID_HEADER, "order-42"),
                (&TRACEPARENT_HEADER, TP),
            ]),
            &defaulted(),
        )
        .unwrap();
        assert_eq!(ctx.correlation_id, "order-42");
        assert_eq!(ctx.traceparent.as_deref(), Some(TP));

        let long = "x".repeat(129);
        let ctx = context_from_headers(
            &headers(&[
                (&CORRELATION_ID_HEADER, long.as_str()),
                (&TRACEPARENT_HEADER, "00-0000-bad-01"),
            ]),
            &defaulted(),
        )
        .unwrap();
        assert_ne!(ctx.correlation_id, long);
        assert!(!ctx.correlation_id.is_empty());
        assert_eq!(ctx.traceparent, None);
    }
}
