//! Roles and permissions. A token carries roles; a [`RoleMap`] turns them
//! into the permissions the buses check ([`cairn_core::RequestContext`]'s
//! `permissions`). A role the map does not know grants nothing.

use std::collections::{BTreeMap, BTreeSet};

use cairn_core::{RequestContext, TenantId};

/// The permissions of the reference system and the platform.
pub mod permissions {
    pub const FLIGHTS_READ: &str = "flights:read";
    pub const FLIGHTS_WRITE: &str = "flights:write";
    pub const PASSENGERS_READ: &str = "passengers:read";
    pub const PASSENGERS_WRITE: &str = "passengers:write";
    pub const AUDIT_READ: &str = "audit:read";
    /// Manage the users and keys of one's own tenant.
    pub const USERS_ADMIN: &str = "users:admin";
    /// Create and list tenants, manage any tenant's users (super-tenant).
    pub const TENANTS_ADMIN: &str = "tenants:admin";
    /// Read another tenant's data; every such read is audited (super-tenant).
    pub const CROSS_TENANT_READ: &str = "tenants:read-any";
    /// See the projections' status, lag, failures and dead letters.
    pub const PROJECTIONS_READ: &str = "projections:read";
    /// Retry a stopped projection, skip the event it stopped at (one's own
    /// tenant's event, unless super-tenant); a rebuild also needs
    /// [`TENANTS_ADMIN`], as it empties every tenant's read model for a while.
    pub const PROJECTIONS_ADMIN: &str = "projections:admin";
}

/// The built-in roles.
pub mod roles {
    /// Everything, in every tenant. Only meaningful in the platform tenant.
    pub const SUPER_ADMIN: &str = "super-admin";
    /// Everything within one tenant, users included.
    pub const ADMIN: &str = "admin";
    /// Reads and writes flights and passengers, reads the audit log.
    pub const OPERATOR: &str = "operator";
    /// Reads only.
    pub const VIEWER: &str = "viewer";
}

/// Role name -> permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMap {
    roles: BTreeMap<String, BTreeSet<String>>,
    /// Roles whose holders are super-tenant only when their token was issued
    /// in this tenant (the platform tenant).
    super_tenant: Option<TenantId>,
}

impl Default for RoleMap {
    /// The built-in roles; super-tenant roles count only in `platform`.
    fn default() -> Self {
        use permissions::*;
        let read = [FLIGHTS_READ, PASSENGERS_READ, AUDIT_READ];
        let write = [FLIGHTS_WRITE, PASSENGERS_WRITE];
        let mut map = Self {
            roles: BTreeMap::new(),
            super_tenant: Some(TenantId::new("platform").expect("valid tenant")),
        };
        map = map
            .with_role(roles::VIEWER, read)
            .with_role(roles::OPERATOR, read.into_iter().chain(write))
            .with_role(
                roles::ADMIN,
                read.into_iter().chain(write).chain([
                    USERS_ADMIN,
                    PROJECTIONS_READ,
                    PROJECTIONS_ADMIN,
                ]),
            )
            .with_role(
                roles::SUPER_ADMIN,
                read.into_iter().chain(write).chain([
                    USERS_ADMIN,
                    TENANTS_ADMIN,
                    CROSS_TENANT_READ,
                    PROJECTIONS_READ,
                    PROJECTIONS_ADMIN,
                ]),
            );
        map
    }
}

impl RoleMap {
    /// A map with no roles at all.
    pub fn empty() -> Self {
        Self {
            roles: BTreeMap::new(),
            super_tenant: None,
        }
    }

    /// Adds (or replaces) a role.
    pub fn with_role<I, S>(mut self, role: impl Into<String>, permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles.insert(
            role.into(),
            permissions.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Super-tenant permissions ([`permissions::TENANTS_ADMIN`],
    /// [`permissions::CROSS_TENANT_READ`]) are granted only to tokens of
    /// `tenant`; `None` grants them nowhere.
    pub fn with_super_tenant(mut self, tenant: Option<TenantId>) -> Self {
        self.super_tenant = tenant;
        self
    }

    /// The super tenant, if any.
    pub fn super_tenant(&self) -> Option<&TenantId> {
        self.super_tenant.as_ref()
    }

    /// The permissions `roles` grant to a token of `tenant`.
    pub fn permissions<'a>(
        &self,
        tenant: &TenantId,
        roles: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        let is_super = self.super_tenant.as_ref() == Some(tenant);
        roles
            .into_iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .filter(|p| {
                is_super
                    || (p.as_str() != permissions::TENANTS_ADMIN
                        && p.as_str() != permissions::CROSS_TENANT_READ)
            })
            .cloned()
            .collect()
    }
}

/// Who a valid token says is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant the token belongs to.
    pub tenant: TenantId,
    /// `sub`: the user's (or client's) id.
    pub subject: String,
    /// `preferred_username`, if any.
    pub username: Option<String>,
    /// The roles the token carries.
    pub roles: Vec<String>,
    /// What those roles grant here.
    pub permissions: BTreeSet<String>,
    /// `iss`.
    pub issuer: String,
    /// `jti`, if any.
    pub token_id: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
    /// The client the token was issued to (`azp`), if any.
    pub client_id: Option<String>,
    /// Tenant groups: what each other tenant of the token's groups shares
    /// with it (see [`crate::AccessClaims::shared`]). Empty for tokens of
    /// external issuers.
    pub shared: BTreeMap<TenantId, BTreeSet<String>>,
}

impl Principal {
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether `tenant` shares `resource` with this token's tenant through
    /// a tenant group.
    pub fn shares(&self, tenant: &TenantId, resource: &str) -> bool {
        self.shared
            .get(tenant)
            .is_some_and(|resources| resources.contains(resource))
    }

    /// The request context of a call made with this token, in its own tenant.
    pub fn context(&self) -> RequestContext {
        RequestContext::new(self.tenant.clone())
            .with_actor(self.subject.clone())
            .with_permissions(self.permissions.iter().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_tenant_permissions_only_count_in_the_platform_tenant() {
        let map = RoleMap::default();
        let platform = TenantId::new("platform").unwrap();
        let acme = TenantId::new("acme").unwrap();
        let there = map.permissions(&platform, ["super-admin"]);
        assert!(there.contains(permissions::TENANTS_ADMIN));
        assert!(there.contains(permissions::CROSS_TENANT_READ));
        let here = map.permissions(&acme, ["super-admin"]);
        assert!(!here.contains(permissions::TENANTS_ADMIN));
        assert!(!here.contains(permissions::CROSS_TENANT_READ));
        assert!(here.contains(permissions::FLIGHTS_WRITE));
        assert!(map.permissions(&acme, ["nobody-knows"]).is_empty());
        let viewer = map.permissions(&acme, ["viewer"]);
        assert!(viewer.contains(permissions::FLIGHTS_READ));
        assert!(!viewer.contains(permissions::FLIGHTS_WRITE));
    }
}
