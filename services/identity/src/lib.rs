//! Cairn's identity service: tenants, users, OAuth clients, per-tenant
//! signing keys and tenant groups, all event-sourced on Cairn's own store,
//! and an OIDC issuer per tenant with Keycloak's paths
//! (`/realms/{tenant}/…`), so OIDC clients need no special case. A token
//! names, in its `shared` claim, what the tenant groups of its tenant let
//! it read of the other members.
//!
//! - [`domain`]: the aggregates (tenant, realm keys, user, client, group).
//! - [`Identity`]: the application: bootstrap, admin operations, the token
//!   grants, revocation, and the in-process [`cairn_auth::KeySource`] and
//!   [`cairn_auth::Revocations`] that resource servers in the same process
//!   use; its operations are split by resource (tenants, keys, users,
//!   clients, grants, groups).
//! - [`http`]: the routes (realms, admin API, browser sign-in), and
//!   [`IdentityOpenApi`], their OpenAPI description.
//! - [`browser`]: the web console's sign-in, with the refresh token in an
//!   `HttpOnly` cookie (part of [`http`]).
//! - [`revocations`]: revoked access tokens as public events, and the set
//!   every other service keeps of them.

pub mod descriptor;
pub mod domain;
pub mod http;
pub mod revocations;
mod service;
mod tokens;

pub use http::{IdentityOpenApi, browser};
pub use service::{
    BootstrapUser, Identity, IdentityError, IdentityOptions, LocalKeys, LocalRevocations,
    NewClient, TenantGroup, TokenResponse,
};
pub use tokens::create_tables;

/// Checks an event payload as this service will read it: `None` when the
/// type is none of its events, else whether it decodes. For whoever writes
/// events from outside the service.
pub fn check_event(
    event_type: &str,
    schema_version: u32,
    data: &serde_json::Value,
) -> Option<Result<(), cairn_core::DecodeError>> {
    use cairn_core::check_payload;
    use domain::{ClientEvent, GroupEvent, RealmKeysEvent, TenantEvent, UserEvent};
    let up = cairn_core::Upcasters::new();
    let (t, v) = (event_type, schema_version);
    check_payload::<TenantEvent>(&up, t, v, data)
        .or_else(|| check_payload::<RealmKeysEvent>(&up, t, v, data))
        .or_else(|| check_payload::<UserEvent>(&up, t, v, data))
        .or_else(|| check_payload::<ClientEvent>(&up, t, v, data))
        .or_else(|| check_payload::<GroupEvent>(&up, t, v, data))
}

/// The platform tenant: super-admins live here.
pub const PLATFORM_TENANT: &str = "platform";
/// The public client every tenant has: password and refresh grants, no secret.
pub const PUBLIC_CLIENT: &str = "cairn";
/// Stream categories whose events carry credentials (sealed keys, password
/// and secret hashes). The audit log records these events without data;
/// everything else (tenants, groups) it records whole.
pub const CREDENTIAL_CATEGORIES: [&str; 3] = ["user", "client", "realmkeys"];
