//! The users of a tenant; passwords are kept only as hashes.

use cairn_core::{TenantId, ValidationError};

use super::{Identity, IdentityError, command_error, system};
use crate::domain::{User, UserCommand, validate_username};

impl Identity {
    /// Creates a user of `tenant`. Returns its id (the tokens' `sub`).
    pub async fn create_user(
        &self,
        actor: &str,
        tenant: &TenantId,
        username: &str,
        password: &str,
        roles: &[String],
    ) -> Result<String, IdentityError> {
        let mut errors = Vec::new();
        if let Err(e) = validate_username(username) {
            errors.push(e);
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            errors.push(ValidationError::new(
                "password",
                "must be 8 to 1024 characters",
            ));
        }
        if let Err(IdentityError::Invalid(more)) = self.check_roles(tenant, roles) {
            errors.extend(more);
        }
        if !errors.is_empty() {
            return Err(IdentityError::Invalid(errors));
        }
        self.require_tenant(tenant).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let password_hash = self.hash(password).await?;
        self.inner
            .users
            .execute(
                &system(tenant).with_actor(actor),
                username,
                None,
                &UserCommand::Create {
                    id: id.clone(),
                    username: username.to_owned(),
                    password_hash,
                    roles: roles.to_vec(),
                },
            )
            .await
            .map_err(command_error)?;
        Ok(id)
    }

    /// The users of `tenant`: `(id, username, roles)`.
    pub async fn users(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, String, Vec<String>)>, IdentityError> {
        self.require_tenant(tenant).await?;
        let ctx = system(tenant);
        let mut out = Vec::new();
        for name in self.ids_of::<User>(tenant).await? {
            if let Some(u) = self
                .inner
                .users
                .load(&ctx, &name)
                .await
                .map_err(command_error)?
                && let Some(id) = u.state.id
            {
                out.push((id, u.state.username, u.state.roles));
            }
        }
        Ok(out)
    }
}
