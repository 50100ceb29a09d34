//! Tokens at the edge: with a [`Verifier`], a request for a path outside
//! the public prefixes needs a valid bearer token before anything is
//! forwarded. The answers are the services' own (`cairn-http`'s
//! [`unauthenticated`]): 401 `missing_token` with `WWW-Authenticate: Bearer
//! realm="cairn"` when there is no token, 401 with the reason's code
//! (`issuer_mismatch`, `expired`, `revoked`, …) and `error="invalid_token"`
//! for a refused one, 503 `unavailable` when an issuer's keys cannot be
//! fetched.
//!
//! The check is only a first wall. The token travels on untouched and each
//! service verifies it again, and decides what `X-Cairn-Tenant` may name
//! (which is why `cairn-http`'s layer, which also judges cross-tenant reads
//! and builds the request context, is not used here). Revoked tokens are
//! refused here when the verifier was given a revocation list (`cairn run
//! gateway` with a database and a broker); the services refuse them
//! either way.

use axum::{
    http::{HeaderMap, Method},
    response::{IntoResponse, Response},
};
use cairn_auth::{AuthError, Verifier};
use cairn_core::ErrorCode;
use cairn_http::{ApiError, bearer_token, unauthenticated};

/// Checks the bearer token of a request for `path`.
pub(crate) async fn check_token(
    verifier: &Verifier,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let token = bearer_token(headers).map_err(|r| unauthenticated(&r, method, path))?;
    match verifier.verify(token).await {
        Ok(_) => Ok(()),
        Err(AuthError::Rejected(r)) => Err(unauthenticated(&r, method, path)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot validate an access token");
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "access tokens cannot be validated right now",
            )
            .into_response())
        }
    }
}
