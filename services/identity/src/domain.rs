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

use cairn_auth::{KeyHistory, StoredKey};
use cairn_core::{DomainEvent, ErrorCode, ValidationError};
use cairn_domain::{Aggregate, DomainError};
use serde::{Deserialize, Serialize};

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
}
