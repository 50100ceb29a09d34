//! The claims of an access token, as Cairn's issuer writes them and as
//! resource servers read them, from Cairn or from an external OIDC issuer
//! such as a Keycloak realm (roles under `realm_access.roles`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `aud` is a string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Self::One(a) => a == aud,
            Self::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

/// Keycloak's `realm_access` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmAccess {
    #[serde(default)]
    pub roles: Vec<String>,
}

/// An access token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The tenant the token was issued for (Cairn's tokens carry it; for an
    /// external issuer the configured tenant applies, and a token that names
    /// another one is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// Cairn's roles claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Keycloak's roles claim; Cairn writes both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm_access: Option<RealmAccess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The client the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    /// Tenant groups: for each other tenant that shares a group with the
    /// token's tenant, the resources (read models, stream categories) that
    /// group shares. Written by Cairn's issuer when the token is issued;
    /// honoured only from Cairn's own realms, never from an external
    /// issuer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared: BTreeMap<String, Vec<String>>,
}

impl AccessClaims {
    /// Every role the token grants, from both claims, without repeats.
    pub fn all_roles(&self) -> Vec<String> {
        let mut roles = self.roles.clone();
        if let Some(access) = &self.realm_access {
            for role in &access.roles {
                if !roles.contains(role) {
                    roles.push(role.clone());
                }
            }
        }
        roles
    }
}
