//! Tenants: each is a realm of its own, created with its first signing key.

use cairn_core::{TenantId, ValidationError};

use super::{Identity, IdentityError, command_error, platform, system};
use crate::domain::{Tenant, TenantCommand};

impl Identity {
    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, IdentityError> {
        Ok(self
            .inner
            .tenants
            .load(&system(&platform()), tenant)
            .await
            .map_err(command_error)?
            .is_some())
    }

    /// Creates a tenant and its first signing key.
    pub async fn create_tenant(
        &self,
        actor: &str,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), IdentityError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(IdentityError::Invalid(vec![ValidationError::new(
                "name",
                "must be 1-200 characters",
            )]));
        }
        let ctx = system(&platform()).with_actor(actor);
        self.inner
            .tenants
            .execute(
                &ctx,
                tenant,
                None,
                &TenantCommand::Create {
                    id: tenant.to_string(),
                    name: name.to_owned(),
                },
            )
            .await
            .map_err(command_error)?;
        self.ensure_keys(tenant).await?;
        Ok(())
    }

    /// Every tenant: `(id, name)`.
    pub async fn tenants(&self) -> Result<Vec<(String, String)>, IdentityError> {
        let ctx = system(&platform());
        let mut out = Vec::new();
        for id in self.ids_of::<Tenant>(&platform()).await? {
            if let Some(t) = self
                .inner
                .tenants
                .load(&ctx, &id)
                .await
                .map_err(command_error)?
            {
                out.push((id, t.state.name));
            }
        }
        Ok(out)
    }

    pub(super) async fn require_tenant(&self, tenant: &TenantId) -> Result<(), IdentityError> {
        if self.tenant_exists(tenant).await? {
            Ok(())
        } else {
            Err(IdentityError::NotFound(format!(
                "tenant {tenant} does not exist"
            )))
        }
    }
}
