//! Errors shared by all crates: the typed validation error and the one list of
//! stable error codes that the HTTP layer (problem+json `code`) and the CLI
//! print. A code, once published, never changes meaning.

use std::fmt;

/// Stable, documented error codes. Each crate maps its own error enum onto
/// these, and the edge (HTTP, CLI, RES) maps these onto its own status space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Input failed validation (bad identifier, empty batch, bad metadata...).
    InvalidInput,
    /// The stream's current version is not what the caller expected.
    WrongExpectedVersion,
    /// An event id was reused with different content.
    IdempotencyConflict,
    /// The stream was deleted (tombstoned) and accepts no more events.
    StreamDeleted,
    /// The stream (or another resource) does not exist.
    NotFound,
    /// A stored payload could not be decoded or upcast.
    Corrupt,
    /// The backing store failed or could not be reached.
    Unavailable,
    /// An unexpected internal error.
    Internal,
    /// The request body or its syntax was malformed (bad JSON, wrong content type).
    MalformedRequest,
    /// Fields were well-formed but invalid (422): a missing name, a past date...
    ValidationFailed,
    /// A domain rule forbids the command in the current state (409).
    RuleViolation,
    /// A concurrent change won and retrying did not help (409).
    ConcurrencyConflict,
    /// An `If-Match` version no longer matches (412).
    PreconditionFailed,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// An `Idempotency-Key` was reused for a different request (422).
    IdempotencyKeyReused,
    /// No valid credentials (401).
    Unauthenticated,
    /// Valid credentials without the needed permission (403).
    Forbidden,
    /// Too many requests (429).
    RateLimited,
    /// A dependency did not answer in time (504).
    Timeout,
    /// The write is committed, but the read model that would show it has
    /// stopped (a poison event): do not resend the command.
    ReadModelBehind,
    /// No bearer access token came with the request (401). This and the
    /// codes after it, up to `Revoked`, say why an access token was refused
    /// (all 401); `Unauthenticated` stays for failed logins.
    MissingToken,
    /// The bearer token is not a well-formed token (401).
    MalformedToken,
    /// The token's signature does not verify, or is of an algorithm the
    /// issuer is not trusted with (401); which of them is never said.
    InvalidSignature,
    /// The token names a signing key its issuer does not publish (401).
    UnknownKey,
    /// The token's issuer (`iss`) is not one trusted here (401).
    IssuerMismatch,
    /// The token is not meant for this API (`aud`, 401).
    AudienceMismatch,
    /// The token's `tenant` claim is not its issuer's tenant (401).
    TenantMismatch,
    /// The token's issuer is a realm of a tenant that does not exist (401).
    UnknownTenant,
    /// The access token has expired (401).
    Expired,
    /// The access token is not valid yet (`nbf`, 401).
    NotYetValid,
    /// The access token was revoked (401).
    Revoked,
}

impl ErrorCode {
    /// The code's wire name: `snake_case`, stable forever.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::WrongExpectedVersion => "wrong_expected_version",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::StreamDeleted => "stream_deleted",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::RuleViolation => "rule_violation",
            ErrorCode::ConcurrencyConflict => "concurrency_conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ReadModelBehind => "read_model_behind",
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::MalformedToken => "malformed_token",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::IssuerMismatch => "issuer_mismatch",
            ErrorCode::AudienceMismatch => "audience_mismatch",
            ErrorCode::TenantMismatch => "tenant_mismatch",
            ErrorCode::UnknownTenant => "unknown_tenant",
            ErrorCode::Expired => "expired",
            ErrorCode::NotYetValid => "not_yet_valid",
            ErrorCode::Revoked => "revoked",
        }
    }
}

impl ErrorCode {
    /// Every code, for parsing and documentation.
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::InvalidInput,
        ErrorCode::WrongExpectedVersion,
        ErrorCode::IdempotencyConflict,
        ErrorCode::StreamDeleted,
        ErrorCode::NotFound,
        ErrorCode::Corrupt,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::MalformedRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::RuleViolation,
        ErrorCode::ConcurrencyConflict,
        ErrorCode::PreconditionFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::ReadModelBehind,
        ErrorCode::MissingToken,
        ErrorCode::MalformedToken,
        ErrorCode::InvalidSignature,
        ErrorCode::UnknownKey,
        ErrorCode::IssuerMismatch,
        ErrorCode::AudienceMismatch,
        ErrorCode::TenantMismatch,
        ErrorCode::UnknownTenant,
        ErrorCode::Expired,
        ErrorCode::NotYetValid,
        ErrorCode::Revoked,
    ];

    /// The code with wire name `name`, if there is one (codes cross process
    /// boundaries in replies and dead letters).
    pub fn parse(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value was rejected before anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// Which input was wrong (`tenant`, `stream`, `event_type`, `metadata.traceparent`...).
    pub field: &'static str,
    /// Why, in words a user can act on.
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod code_tests {
    use super::ErrorCode;

    #[test]
    fn every_code_parses_back_from_its_wire_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }
}
