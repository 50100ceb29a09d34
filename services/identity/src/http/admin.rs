//! The admin API (`/api/admin/…`), behind bearer authentication: tenants
//! and tenant groups for super-admins; users, clients and signing keys of a
//! tenant for its admins and super-admins. Every operation runs as its
//! caller, who is the actor of the events it records.

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cairn_auth::permissions;
use cairn_core::{ErrorCode, TenantId, ValidationError};
use cairn_http::{ApiError, ApiJson, Caller};
use serde::{Deserialize, Serialize};

use super::common::{api_error, tenant_param};
use crate::{Identity, IdentityError, TenantGroup};

/// The admin API; needs [`cairn_http::bearer_auth`] in front of it.
pub(super) fn router(identity: Identity) -> Router {
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

/// Runs a super-admin's operation as its caller (the actor it records),
/// once [`require_super`] lets it; its failure as a problem. The body is
/// read before, so a malformed one is refused as such whoever sends it.
async fn as_super<T>(
    caller: &Caller,
    operation: impl AsyncFnOnce(&str) -> Result<T, IdentityError>,
) -> Result<T, ApiError> {
    require_super(caller)?;
    operation(&caller.0.subject).await.map_err(api_error)
}

/// Runs an operation on the tenant `raw` names as its caller, once
/// [`require_admin_of`] lets it; the tenant and the outcome, a failure as
/// a problem.
async fn as_admin_of<T>(
    caller: &Caller,
    raw: &str,
    operation: impl AsyncFnOnce(&TenantId, &str) -> Result<T, IdentityError>,
) -> Result<(TenantId, T), ApiError> {
    let tenant = require_admin_of(caller, raw)?;
    let outcome = operation(&tenant, &caller.0.subject)
        .await
        .map_err(api_error)?;
    Ok((tenant, outcome))
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
    let tenant = as_super(&caller, async |actor| {
        let tenant = TenantId::new(&body.id)
            .map_err(|e| IdentityError::Invalid(vec![ValidationError::new("id", e.reason)]))?;
        identity.create_tenant(actor, &tenant, &body.name).await?;
        Ok(tenant)
    })
    .await?;
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
    let items: Vec<_> = as_super(&caller, async |_| identity.tenants().await)
        .await?
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
    let (tenant, id) = as_admin_of(&caller, &raw, async |tenant, actor| {
        identity
            .create_user(actor, tenant, &body.username, &body.password, &body.roles)
            .await
    })
    .await?;
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
    let (tenant, users) = as_admin_of(&caller, &raw, async |tenant, _| {
        identity.users(tenant).await
    })
    .await?;
    let items: Vec<_> = users
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
    let (_, client) = as_admin_of(&caller, &raw, async |tenant, actor| {
        identity
            .create_client(actor, tenant, &body.client_id, &body.roles)
            .await
    })
    .await?;
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
    let (_, kid) = as_admin_of(&caller, &raw, async |tenant, actor| {
        identity.rotate_keys(actor, tenant).await
    })
    .await?;
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
    let group = as_super(&caller, async |actor| {
        identity
            .create_group(actor, &body.id, &body.name, &body.tenants, &body.shared)
            .await
    })
    .await?;
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
    let items: Vec<GroupView> = as_super(&caller, async |_| identity.groups().await)
        .await?
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
    let group = as_super(&caller, async |_| identity.group(&id).await).await?;
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
    let group = as_super(&caller, async |actor| {
        identity
            .update_group(actor, &id, &body.tenants, &body.shared)
            .await
    })
    .await?;
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
    as_super(&caller, async |actor| {
        identity.dissolve_group(actor, &id).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
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
