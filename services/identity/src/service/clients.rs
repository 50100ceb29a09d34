//! Confidential OAuth clients of a tenant; a secret is shown once, at
//! creation, and kept only as a hash.

use cairn_core::{TenantId, ValidationError};
use serde::Serialize;

use super::{Identity, IdentityError, command_error, store_error, system};
use crate::{
    PUBLIC_CLIENT,
    domain::{ClientCommand, validate_client_id},
};

/// A confidential client just created: its secret is shown once.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewClient {
    pub client_id: String,
    pub client_secret: String,
    pub roles: Vec<String>,
}

impl Identity {
    /// Creates a confidential client; its secret is in the answer only.
    pub async fn create_client(
        &self,
        actor: &str,
        tenant: &TenantId,
        client_id: &str,
        roles: &[String],
    ) -> Result<NewClient, IdentityError> {
        let mut errors = Vec::new();
        if let Err(e) = validate_client_id(client_id) {
            errors.push(e);
        } else if client_id == PUBLIC_CLIENT {
            errors.push(ValidationError::new("clientId", "is reserved"));
        }
        if let Err(IdentityError::Invalid(more)) = self.check_roles(tenant, roles) {
            errors.extend(more);
        }
        if !errors.is_empty() {
            return Err(IdentityError::Invalid(errors));
        }
        self.require_tenant(tenant).await?;
        let secret = cairn_auth::random_token().map_err(store_error)?;
        let secret_hash = self.hash(&secret).await?;
        self.inner
            .clients
            .execute(
                &system(tenant).with_actor(actor),
                client_id,
                None,
                &ClientCommand::Create {
                    client_id: client_id.to_owned(),
                    secret_hash,
                    roles: roles.to_vec(),
                },
            )
            .await
            .map_err(command_error)?;
        Ok(NewClient {
            client_id: client_id.to_owned(),
            client_secret: secret.to_string(),
            roles: roles.to_vec(),
        })
    }
}
