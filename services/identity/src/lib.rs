//! Cairn's identity service: tenants, users, OAuth clients and per-tenant
//! signing keys, all event-sourced on Cairn's own store, and an OIDC issuer
//! per tenant with Keycloak's paths (`/realms/{tenant}/…`), so OIDC clients
//! need no special case.
//!
//! - [`domain`]: the aggregates (tenant, realm keys, user, client).
//! - [`Identity`]: the application: bootstrap, admin operations, the token
//!   grants, revocation, and the in-process [`cairn_auth::KeySource`] and
//!   [`cairn_auth::Revocations`] that resource servers in the same process
//!   use.
//! - [`http`]: the routes.

pub mod domain;
pub mod http;
mod service;
mod tokens;

pub use service::{
    BootstrapUser, Identity, IdentityError, IdentityOptions, LocalKeys, LocalRevocations,
    NewClient, TokenResponse,
};
pub use tokens::create_tables;

/// The platform tenant: super-admins live here.
pub const PLATFORM_TENANT: &str = "platform";
/// The public client every tenant has: password and refresh grants, no secret.
pub const PUBLIC_CLIENT: &str = "cairn";
/// Stream categories whose events carry credentials (sealed keys, password
/// and secret hashes). The audit log records these events without data.
pub const CREDENTIAL_CATEGORIES: [&str; 3] = ["user", "client", "realmkeys"];
