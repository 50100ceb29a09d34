//! The identity aggregates, as deciders.
//!
//! - [`Tenant`] (`tenant-{id}`, kept in the platform tenant): a tenant exists
//!   once created.
//! - [`RealmKeys`] (`realmkeys-signing`, in the tenant itself): the signing
//!   keys, private halves sealed under the master key.
//! - [`User`] (`user-{username}`, in the tenant): an argon2id password hash
//!   and roles; `sub` is the user's generated id.
//! - [`Client`] (`client-{clientId}`, in the tenant): a confidential OAuth
//!   client for the client-credentials grant, with a hashed secret and the
//!   roles its tokens carry.
//! - [`Group`] (`group-{id}`, kept in the platform tenant): a tenant group,
//!   the tenants it holds and the resources it shares among them.

use cairn_auth::{KeyHistory, StoredKey};
use std::collections::BTreeSet;

use cairn_core::{DomainEvent, ErrorCode, TenantId, ValidationError};
use cairn_domain::{Aggregate, DomainError};
use serde::{Deserialize, Serialize};

use crate::PLATFORM_TENANT;

/// Why an identity command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityRule {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} does not exist")]
    Missing(String),
}

impl DomainError for IdentityRule {
    fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyExists(_) => ErrorCode::RuleViolation,
            Self::Missing(_) => ErrorCode::NotFound,
        }
    }
}

/// A user name: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ValidationError> {
    validate_name("username", name)
}

/// A client id, with the user-name rules.
pub fn validate_client_id(id: &str) -> Result<(), ValidationError> {
    validate_name("clientId", id)
}

fn validate_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

// ---- tenant ---------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone)]
pub enum TenantCommand {
    Create { id: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum TenantEvent {
    TenantCreated { id: String, name: String },
}

impl DomainEvent for TenantEvent {}

impl Aggregate for Tenant {
    const CATEGORY: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = IdentityRule;

    fn decide(&self, command: &TenantCommand) -> Result<Vec<TenantEvent>, IdentityRule> {
        match command {
            TenantCommand::Create { id, name } => {
                if self.id.is_some() {
                    return Err(IdentityRule::AlreadyExists(format!("tenant {id}")));
                }
                Ok(vec![TenantEvent::TenantCreated {
                    id: id.clone(),
                    name: name.clone(),
                }])
            }
        }
    }

    fn apply(&mut self, event: &TenantEvent) {
        match event {
            TenantEvent::TenantCreated { id, name } => {
                self.id = Some(id.clone());
                self.name = name.clone();
            }
        }
    }
}

// ---- realm keys -----------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RealmKeys {
    pub history: KeyHistory,
}

#[derive(Debug, Clone)]
pub enum RealmKeysCommand {
    /// Adds `key` as the active key; the previous one is retired `at`.
    Add { key: StoredKey, at: i64 },
    /// Adds the first key only if there is none yet.
    Ensure { key: StoredKey, at: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum RealmKeysEvent {
    SigningKeyAdded { key: StoredKey, at: i64 },
}

impl DomainEvent for RealmKeysEvent {}

impl Aggregate for RealmKeys {
    const CATEGORY: &'static str = "realmkeys";
    type Command = RealmKeysCommand;
    type Event = RealmKeysEvent;
    type Error = std::convert::Infallible;

    fn decide(&self, command: &RealmKeysCommand) -> Result<Vec<RealmKeysEvent>, Self::Error> {
        Ok(match command {
            RealmKeysCommand::Add { key, at } => vec![RealmKeysEvent::SigningKeyAdded {
                key: key.clone(),
                at: *at,
            }],
            RealmKeysCommand::Ensure { key, at } => {
                if self.history.active().is_some() {
                    Vec::new()
                } else {
                    vec![RealmKeysEvent::SigningKeyAdded {
                        key: key.clone(),
                        at: *at,
                    }]
                }
            }
        })
    }

    fn apply(&mut self, event: &RealmKeysEvent) {
        match event {
            RealmKeysEvent::SigningKeyAdded { key, at } => self.history.push(key.clone(), *at),
        }
    }
}

// ---- user -----------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    pub id: Option<String>,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    Create {
        id: String,
        username: String,
        password_hash: String,
        roles: Vec<String>,
    },
    SetPassword {
        password_hash: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum UserEvent {
    UserCreated {
        id: String,
        username: String,
        password_hash: String,
        roles: Vec<String>,
    },
    PasswordChanged {
        password_hash: String,
    },
}

impl DomainEvent for UserEvent {}

impl Aggregate for User {
    const CATEGORY: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = IdentityRule;

    fn decide(&self, command: &UserCommand) -> Result<Vec<UserEvent>, IdentityRule> {
        match command {
            UserCommand::Create {
                id,
                username,
                password_hash,
                roles,
            } => {
                if self.id.is_some() {
                    return Err(IdentityRule::AlreadyExists(format!("user {username}")));
                }
                Ok(vec![UserEvent::UserCreated {
                    id: id.clone(),
                    username: username.clone(),
                    password_hash: password_hash.clone(),
                    roles: roles.clone(),
                }])
            }
            UserCommand::SetPassword { password_hash } => {
                if self.id.is_none() {
                    return Err(IdentityRule::Missing("user".into()));
                }
                Ok(vec![UserEvent::PasswordChanged {
                    password_hash: password_hash.clone(),
                }])
            }
        }
    }

    fn apply(&mut self, event: &UserEvent) {
        match event {
            UserEvent::UserCreated {
                id,
                username,
                password_hash,
                roles,
            } => {
                self.id = Some(id.clone());
                self.username = username.clone();
                self.password_hash = password_hash.clone();
                self.roles = roles.clone();
            }
            UserEvent::PasswordChanged { password_hash } => {
                self.password_hash = password_hash.clone();
            }
        }
    }
}

// ---- client ---------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Client {
    pub client_id: Option<String>,
    pub secret_hash: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum ClientCommand {
    Create {
        client_id: String,
        secret_hash: String,
        roles: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ClientEvent {
    ClientCreated {
        client_id: String,
        secret_hash: String,
        roles: Vec<String>,
    },
}

impl DomainEvent for ClientEvent {}

impl Aggregate for Client {
    const CATEGORY: &'static str = "client";
    type Command = ClientCommand;
    type Event = ClientEvent;
    type Error = IdentityRule;

    fn decide(&self, command: &ClientCommand) -> Result<Vec<ClientEvent>, IdentityRule> {
        match command {
            ClientCommand::Create {
                client_id,
                secret_hash,
                roles,
            } => {
                if self.client_id.is_some() {
                    return Err(IdentityRule::AlreadyExists(format!("client {client_id}")));
                }
                Ok(vec![ClientEvent::ClientCreated {
                    client_id: client_id.clone(),
                    secret_hash: secret_hash.clone(),
                    roles: roles.clone(),
                }])
            }
        }
    }

    fn apply(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::ClientCreated {
                client_id,
                secret_hash,
                roles,
            } => {
                self.client_id = Some(client_id.clone());
                self.secret_hash = secret_hash.clone();
                self.roles = roles.clone();
            }
        }
    }
}

// ---- group ----------------------------------------------------------------

/// At most this many tenants in one group.
pub const MAX_GROUP_TENANTS: usize = 100;
/// At most this many resources shared by one group.
pub const MAX_GROUP_RESOURCES: usize = 32;

/// A group id, with the tenant-id rules.
pub fn validate_group_id(id: &str) -> Result<(), ValidationError> {
    TenantId::new(id)
        .map(|_| ())
        .map_err(|e| ValidationError::new("id", e.reason))
}

/// A shared resource: the name of a read model or stream category a service
/// offers for sharing (`flights`, `passengers`, `audit`): `[a-z][a-z0-9_-]`,
/// at most 64 characters. What the name means is the service's business.
pub fn validate_resource(resource: &str) -> Result<(), ValidationError> {
    let ok = resource.len() <= 64
        && resource
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_lowercase)
        && resource
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "shared",
            format!(
                "{resource:?} must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter"
            ),
        ))
    }
}

/// A group's members and shared resources, checked and as sets (sorted, no
/// repeats): 1 to [`MAX_GROUP_TENANTS`] tenants other than the platform
/// tenant, whose super-admin reads every tenant anyway, and up to
/// [`MAX_GROUP_RESOURCES`] resources. Whether the tenants exist is the
/// service's question.
pub fn group_sets(
    tenants: &[String],
    shared: &[String],
) -> Result<(Vec<String>, Vec<String>), Vec<ValidationError>> {
    let mut errors = Vec::new();
    for tenant in tenants {
        if let Err(e) = TenantId::new(tenant) {
            errors.push(ValidationError::new(
                "tenants",
                format!("{tenant:?} {}", e.reason),
            ));
        } else if tenant == PLATFORM_TENANT {
            errors.push(ValidationError::new(
                "tenants",
                format!(
                    "{PLATFORM_TENANT} cannot be in a group: its super-admin reads every tenant"
                ),
            ));
        }
    }
    let tenants: BTreeSet<&String> = tenants.iter().collect();
    if tenants.is_empty() || tenants.len() > MAX_GROUP_TENANTS {
        errors.push(ValidationError::new(
            "tenants",
            format!("must name 1-{MAX_GROUP_TENANTS} tenants"),
        ));
    }
    errors.extend(shared.iter().filter_map(|r| validate_resource(r).err()));
    let shared: BTreeSet<&String> = shared.iter().collect();
    if shared.len() > MAX_GROUP_RESOURCES {
        errors.push(ValidationError::new(
            "shared",
            format!("must name at most {MAX_GROUP_RESOURCES} resources"),
        ));
    }
    if errors.is_empty() {
        Ok((
            tenants.into_iter().cloned().collect(),
            shared.into_iter().cloned().collect(),
        ))
    } else {
        Err(errors)
    }
}

/// A tenant group: each member may read what the group shares of every
/// other member.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    pub id: Option<String>,
    pub name: String,
    pub tenants: Vec<String>,
    pub shared: Vec<String>,
    /// Dissolved groups share nothing; their id is not used again.
    #[serde(default)]
    pub dissolved: bool,
}

#[derive(Debug, Clone)]
pub enum GroupCommand {
    Create {
        id: String,
        name: String,
        tenants: Vec<String>,
        shared: Vec<String>,
    },
    /// Replaces the members and the shared resources.
    Update {
        tenants: Vec<String>,
        shared: Vec<String>,
    },
    /// Ends the group: its members no longer share anything through it.
    Dissolve,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum GroupEvent {
    GroupCreated {
        id: String,
        name: String,
        tenants: Vec<String>,
        shared: Vec<String>,
    },
    GroupChanged {
        tenants: Vec<String>,
        shared: Vec<String>,
    },
    GroupDissolved,
}

impl DomainEvent for GroupEvent {}

impl Aggregate for Group {
    const CATEGORY: &'static str = "group";
    type Command = GroupCommand;
    type Event = GroupEvent;
    type Error = IdentityRule;

    fn decide(&self, command: &GroupCommand) -> Result<Vec<GroupEvent>, IdentityRule> {
        match command {
            GroupCommand::Create {
                id,
                name,
                tenants,
                shared,
            } => {
                if self.id.is_some() {
                    return Err(IdentityRule::AlreadyExists(format!("group {id}")));
                }
                Ok(vec![GroupEvent::GroupCreated {
                    id: id.clone(),
                    name: name.clone(),
                    tenants: tenants.clone(),
                    shared: shared.clone(),
                }])
            }
            GroupCommand::Update { tenants, shared } => {
                if self.id.is_none() || self.dissolved {
                    return Err(IdentityRule::Missing("group".into()));
                }
                if *tenants == self.tenants && *shared == self.shared {
                    return Ok(Vec::new());
                }
                Ok(vec![GroupEvent::GroupChanged {
                    tenants: tenants.clone(),
                    shared: shared.clone(),
                }])
            }
            GroupCommand::Dissolve => {
                if self.id.is_none() || self.dissolved {
                    return Err(IdentityRule::Missing("group".into()));
                }
                Ok(vec![GroupEvent::GroupDissolved])
            }
        }
    }

    fn apply(&mut self, event: &GroupEvent) {
        match event {
            GroupEvent::GroupCreated {
                id,
                name,
                tenants,
                shared,
            } => {
                self.id = Some(id.clone());
                self.name = name.clone();
                self.tenants = tenants.clone();
                self.shared = shared.clone();
            }
            GroupEvent::GroupChanged { tenants, shared } => {
                self.tenants = tenants.clone();
                self.shared = shared.clone();
            }
            GroupEvent::GroupDissolved => self.dissolved = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["admin", "eve", "a.b_c-d", "0day"] {
            validate_username(ok).unwrap();
        }
        for bad in ["", "Eve", "-x", "a b", "ünï", &"x".repeat(65)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_is_created_once() {
        let create = UserCommand::Create {
            id: "1".into(),
            username: "eve".into(),
            password_hash: "h".into(),
            roles: vec![],
        };
        let events = User::default().decide(&create).unwrap();
        let user = User::from_events(&events);
        assert_eq!(
            user.decide(&create),
            Err(IdentityRule::AlreadyExists("user eve".into()))
        );
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn group_sets_are_checked_and_normalized() {
        let (tenants, shared) = group_sets(
            &strings(&["globex", "acme", "globex"]),
            &strings(&["flights", "audit", "flights"]),
        )
        .unwrap();
        assert_eq!(tenants, strings(&["acme", "globex"]));
        assert_eq!(shared, strings(&["audit", "flights"]));
        group_sets(&strings(&["acme"]), &[]).unwrap();

        let refused = |tenants: &[&str], shared: &[&str]| {
            group_sets(&strings(tenants), &strings(shared))
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(refused(&[], &["flights"]), ["tenants"]);
        assert_eq!(refused(&["acme", "platform"], &[]), ["tenants"]);
        assert_eq!(refused(&["Acme"], &[]), ["tenants"]);
        for bad in ["Flights", "1st", "", "a b", "_x", &"x".repeat(65)] {
            assert_eq!(refused(&["acme"], &[bad]), ["shared"], "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_GROUP_TENANTS).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(refused(&many, &[]), ["tenants"]);
        let resources: Vec<String> = (0..=MAX_GROUP_RESOURCES).map(|i| format!("r{i}")).collect();
        let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
        assert_eq!(refused(&["acme"], &resources), ["shared"]);
        validate_resource(&format!("a{}", "-".repeat(63))).unwrap();
        assert_eq!(validate_group_id("Star Alliance").unwrap_err().field, "id");
    }

    #[test]
    fn a_group_is_created_once_and_changed_only_when_it_exists() {
        let update = GroupCommand::Update {
            tenants: strings(&["acme"]),
            shared: vec![],
        };
        assert_eq!(
            Group::default().decide(&update),
            Err(IdentityRule::Missing("group".into()))
        );
        let create = GroupCommand::Create {
            id: "alliance".into(),
            name: "Alliance".into(),
            tenants: strings(&["acme", "globex"]),
            shared: strings(&["flights"]),
        };
        let events = Group::default().decide(&create).unwrap();
        let group = Group::from_events(&events);
        assert_eq!(
            group.decide(&create),
            Err(IdentityRule::AlreadyExists("group alliance".into()))
        );
        assert_eq!(
            group.decide(&update).unwrap(),
            [GroupEvent::GroupChanged {
                tenants: strings(&["acme"]),
                shared: vec![],
            }]
        );
        // The same sets again change nothing.
        let same = GroupCommand::Update {
            tenants: strings(&["acme", "globex"]),
            shared: strings(&["flights"]),
        };
        assert!(group.decide(&same).unwrap().is_empty());
    }

    #[test]
    fn group_events_carry_no_credentials() {
        assert!(!crate::CREDENTIAL_CATEGORIES.contains(&Group::CATEGORY));
    }
}
