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

use cairn_core::ErrorCode;
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

/// Why a token was refused. Its `Display` is the sentence a caller may be
/// told, and [`Rejection::code`] the stable code it is answered with (every
/// one a 401): neither ever carries the token, says which part of a
/// signature failed, or whether a user exists. The issuers and audiences a
/// rejection names are what OIDC discovery publishes anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `Authorization: Bearer` token (no header, another scheme).
    #[error("an access token is required (Authorization: Bearer <token>)")]
    Missing,
    #[error("the bearer token is not a well-formed access token")]
    Malformed,
    /// `iss` names no trusted issuer. `issuer` is the token's (shortened,
    /// printable ASCII only); `expected` the issuers trusted for the
    /// token's tenant, when the token says which tenant it is for.
    #[error("{}", issuer_mismatch(issuer, expected))]
    UnknownIssuer {
        issuer: String,
        expected: Vec<String>,
    },
    /// The header's `alg` is not on the issuer's allow-list; told to the
    /// caller as a bad signature.
    #[error("the token's signature is not valid")]
    AlgorithmNotAllowed,
    #[error("the token's signing key (kid) is not among its issuer's keys")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` names none of `expected`.
    #[error("the token is not meant for this API: its audience (aud) must name {}", expected.join(" or "))]
    WrongAudience { expected: Vec<String> },
    #[error("the token's tenant claim is not its issuer's tenant")]
    WrongTenant,
    /// The issuer is a realm of Cairn's whose tenant does not exist.
    #[error("the token's issuer is the realm of a tenant that does not exist")]
    UnknownTenant,
    #[error("the access token was revoked")]
    Revoked,
}

fn issuer_mismatch(issuer: &str, expected: &[String]) -> String {
    if expected.is_empty() {
        format!("the token's issuer (iss) {issuer} is not trusted here")
    } else {
        format!(
            "the token's issuer (iss) is {issuer}, but tokens for its tenant must be issued by {}",
            expected.join(" or ")
        )
    }
}

impl Rejection {
    /// A stable name, finer than [`Rejection::code`] (logs, metrics labels).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::WrongTenant => "wrong_tenant",
            Self::UnknownTenant => "unknown_tenant",
            Self::Revoked => "revoked",
        }
    }

    /// The error code the caller is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::MissingToken,
            Self::Malformed => ErrorCode::MalformedToken,
            Self::UnknownIssuer { .. } => ErrorCode::IssuerMismatch,
            Self::AlgorithmNotAllowed | Self::BadSignature => ErrorCode::InvalidSignature,
            Self::UnknownKey => ErrorCode::UnknownKey,
            Self::Expired => ErrorCode::Expired,
            Self::NotYetValid => ErrorCode::NotYetValid,
            Self::WrongAudience { .. } => ErrorCode::AudienceMismatch,
            Self::WrongTenant => ErrorCode::TenantMismatch,
            Self::UnknownTenant => ErrorCode::UnknownTenant,
            Self::Revoked => ErrorCode::Revoked,
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
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Rejected(r) => Some(r),
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
