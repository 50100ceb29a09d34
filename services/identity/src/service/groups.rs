//! Tenant groups: each member tenant may read what its group shares of
//! every other member. The groups live in the platform tenant and reach
//! tokens through the loaded realms.

use std::collections::{BTreeMap, BTreeSet};

use cairn_core::{TenantId, ValidationError};
use serde::Serialize;

use super::{Identity, IdentityError, command_error, platform, store_error, system};
use crate::domain::{Group, GroupCommand, group_sets, validate_group_id};

fn group_missing(id: &str) -> IdentityError {
    IdentityError::NotFound(format!("group {id} does not exist"))
}

/// A tenant group: each member tenant may read what the group shares of
/// every other member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantGroup {
    pub id: String,
    pub name: String,
    /// The member tenants, sorted.
    pub tenants: Vec<String>,
    /// The shared resources (read models, stream categories), sorted.
    pub shared: Vec<String>,
}

impl TenantGroup {
    fn of(group: Group) -> Option<Self> {
        if group.dissolved {
            return None;
        }
        Some(Self {
            id: group.id?,
            name: group.name,
            tenants: group.tenants,
            shared: group.shared,
        })
    }
}

/// Tenant groups. The groups live in the platform tenant; what they share
/// reaches tokens through the realms: loading a realm derives its tenant's
/// `shared` claim from every group the tenant belongs to.
impl Identity {
    /// Creates a tenant group of existing tenants.
    pub async fn create_group(
        &self,
        actor: &str,
        id: &str,
        name: &str,
        tenants: &[String],
        shared: &[String],
    ) -> Result<TenantGroup, IdentityError> {
        let name = name.trim();
        let mut errors = Vec::new();
        if let Err(e) = validate_group_id(id) {
            errors.push(e);
        }
        if name.is_empty() || name.len() > 200 {
            errors.push(ValidationError::new("name", "must be 1-200 characters"));
        }
        let sets = match group_sets(tenants, shared) {
            Ok(sets) => Some(sets),
            Err(more) => {
                errors.extend(more);
                None
            }
        };
        let Some((tenants, shared)) = sets.filter(|_| errors.is_empty()) else {
            return Err(IdentityError::Invalid(errors));
        };
        self.require_members(&tenants).await?;
        let done = self
            .inner
            .groups
            .execute(
                &system(&platform()).with_actor(actor),
                id,
                None,
                &GroupCommand::Create {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    tenants,
                    shared,
                },
            )
            .await
            .map_err(command_error)?;
        self.forget_realms();
        TenantGroup::of(done.state).ok_or_else(|| store_error("a created group has no id"))
    }

    /// Replaces the members and the shared resources of a group.
    pub async fn update_group(
        &self,
        actor: &str,
        id: &str,
        tenants: &[String],
        shared: &[String],
    ) -> Result<TenantGroup, IdentityError> {
        validate_group_id(id).map_err(|_| group_missing(id))?;
        let (tenants, shared) = group_sets(tenants, shared).map_err(IdentityError::Invalid)?;
        self.require_members(&tenants).await?;
        self.change_group(actor, id, &GroupCommand::Update { tenants, shared })
            .await?
            .ok_or_else(|| group_missing(id))
    }

    /// Dissolves a group: its members stop sharing through it (new tokens
    /// at once here, within `realm_ttl` elsewhere; tokens already issued
    /// keep their claim until they expire). Its id is not used again.
    pub async fn dissolve_group(&self, actor: &str, id: &str) -> Result<(), IdentityError> {
        validate_group_id(id).map_err(|_| group_missing(id))?;
        self.change_group(actor, id, &GroupCommand::Dissolve)
            .await
            .map(drop)
    }

    /// Runs `command` on the existing group `id` (not found if there is
    /// none), then forgets the cached realms; the group as it now stands.
    async fn change_group(
        &self,
        actor: &str,
        id: &str,
        command: &GroupCommand,
    ) -> Result<Option<TenantGroup>, IdentityError> {
        let done = self
            .inner
            .groups
            .execute(&system(&platform()).with_actor(actor), id, None, command)
            .await
            .map_err(|e| match command_error(e) {
                IdentityError::NotFound(_) => group_missing(id),
                other => other,
            })?;
        self.forget_realms();
        Ok(TenantGroup::of(done.state))
    }

    /// Every tenant group.
    pub async fn groups(&self) -> Result<Vec<TenantGroup>, IdentityError> {
        let mut out = Vec::new();
        for id in self.ids_of::<Group>(&platform()).await? {
            out.extend(self.load_group(&id).await?);
        }
        Ok(out)
    }

    /// One tenant group.
    pub async fn group(&self, id: &str) -> Result<TenantGroup, IdentityError> {
        let missing = || IdentityError::NotFound(format!("group {id} does not exist"));
        validate_group_id(id).map_err(|_| missing())?;
        self.load_group(id).await?.ok_or_else(missing)
    }

    async fn load_group(&self, id: &str) -> Result<Option<TenantGroup>, IdentityError> {
        Ok(self
            .inner
            .groups
            .load(&system(&platform()), id)
            .await
            .map_err(command_error)?
            .and_then(|l| TenantGroup::of(l.state)))
    }

    /// Refuses, naming each, members that are not existing tenants.
    async fn require_members(&self, tenants: &[String]) -> Result<(), IdentityError> {
        let mut errors = Vec::new();
        for tenant in tenants {
            let id = TenantId::new(tenant).map_err(|e| IdentityError::Invalid(vec![e]))?;
            if !self.tenant_exists(&id).await? {
                errors.push(ValidationError::new(
                    "tenants",
                    format!("tenant {tenant} does not exist"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(IdentityError::Invalid(errors))
        }
    }

    /// The `shared` claim of `tenant`'s tokens: for each other member of
    /// each of its groups, the resources that group shares; never the
    /// tenant itself.
    pub(super) async fn shared_with(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<String, Vec<String>>, IdentityError> {
        let mut shared: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for group in self.groups().await? {
            if group.shared.is_empty() || !group.tenants.iter().any(|t| t == tenant.as_str()) {
                continue;
            }
            for member in group.tenants.iter().filter(|t| *t != tenant.as_str()) {
                shared
                    .entry(member.clone())
                    .or_default()
                    .extend(group.shared.iter().cloned());
            }
        }
        Ok(shared
            .into_iter()
            .map(|(member, resources)| (member, resources.into_iter().collect()))
            .collect())
    }

    /// Drops every loaded realm, so that tokens issued here from now on
    /// carry the groups as they are; other processes see a change once
    /// their realms expire ([`crate::IdentityOptions::realm_ttl`]).
    fn forget_realms(&self) {
        self.inner.realms.write().expect("lock").clear();
    }
}
