//! What the realm, admin and browser routes share: an identity failure as
//! a problem, and the tenant a path names. It uses none of them.

use cairn_core::{ErrorCode, TenantId};
use cairn_http::{ApiError, FieldError};

use crate::{Identity, IdentityError};

/// An identity failure as a problem; a store failure is logged and
/// answered without its detail.
pub(super) fn api_error(e: IdentityError) -> ApiError {
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

pub(super) fn tenant_param(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::new(raw).map_err(|_| ApiError::not_found(format!("realm {raw} does not exist")))
}
/// The tenant `raw` names, if its realm exists; else 404.
pub(super) async fn existing_realm(identity: &Identity, raw: &str) -> Result<TenantId, ApiError> {
    let tenant = tenant_param(raw)?;
    if identity.realm_exists(&tenant).await.map_err(api_error)? {
        Ok(tenant)
    } else {
        Err(ApiError::not_found(format!("realm {raw} does not exist")))
    }
}
