//! Identity primitives for Cairn: signing keys sealed under a master key
//! ([`MasterKey`], [`SigningKey`], [`KeyHistory`]), access tokens
//! ([`AccessClaims`]), their validation against several trusted issuers
//! ([`Verifier`], [`TrustedIssuer`], JWKS via [`KeySource`]), roles and
//! permissions ([`RoleMap`], [`Principal`]) and password hashing
//! ([`PasswordHasher`], argon2id).
//!
//! The identity service issues with it; every resource server (each
//! service, the router) validates with it.

mod claims;
mod keys;
mod master;
mod password;
mod role_map;
mod verify;

pub use claims::{AccessClaims, Audience, RealmAccess};
pub use jsonwebtoken::{
    Algorithm,
    jwk::{Jwk, JwkSet},
};
pub use keys::{KeyHistory, SigningKey, StoredKey};
pub use master::MasterKey;
pub use password::{PasswordHasher, generate_password, random_token};
pub use role_map::{Principal, RoleMap, permissions, roles};
pub use verify::{
    IssuerMatch, KeySource, MAX_TOKEN_BYTES, RemoteJwks, Revocations, StaticKeys, TrustedIssuer,
    Verifier, VerifierOptions,
};

/// The audience of tokens Cairn's issuer writes for Cairn's APIs.
pub const AUDIENCE: &str = "cairn";

/// Why a token was refused. The HTTP edge answers every reason with the same
/// 401; the reason is for logs, metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no token")]
    Missing,
    #[error("not a well-formed token")]
    Malformed,
    #[error("issuer not trusted")]
    UnknownIssuer,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("signing key not known")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong audience")]
    WrongAudience,
    #[error("issued for another tenant")]
    WrongTenant,
    #[error("revoked")]
    Revoked,
}

impl Rejection {
    /// A stable name (logs, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongTenant => "wrong_tenant",
            Self::Revoked => "revoked",
        }
    }
}

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is not acceptable.
    #[error("token refused: {0}")]
    Rejected(Rejection),
    /// An issuer's keys could not be fetched.
    #[error("the keys of {issuer} are unavailable: {reason}")]
    KeysUnavailable { issuer: String, reason: String },
    /// Keys, secrets or settings are wrong; never carries secret material.
    #[error("{0}")]
    Config(String),
    /// A store behind a [`Revocations`] failed.
    #[error("revocation check failed: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    /// The rejection, if the token was refused.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) => Some(*r),
            _ => None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
