//! RES error objects: the protocol's `system.*` errors, and Cairn's
//! [`ErrorCode`]s mapped to them once, as problem+json maps them over HTTP.

use cairn_core::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An error object: a dot-separated code, a sentence, and optional data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl std::fmt::Display for ResError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ResError {}

impl ResError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            data: None,
        }
    }

    /// With `data` (details a client may show or act on).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn not_found() -> Self {
        Self::new("system.notFound", "Not found")
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new("system.invalidParams", message)
    }

    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new("system.invalidQuery", message)
    }

    pub fn internal_error() -> Self {
        Self::new("system.internalError", "Internal error")
    }

    pub fn method_not_found() -> Self {
        Self::new("system.methodNotFound", "Method not found")
    }

    pub fn access_denied() -> Self {
        Self::new("system.accessDenied", "Access denied")
    }

    pub fn timeout() -> Self {
        Self::new("system.timeout", "Request timeout")
    }

    pub fn no_subscription() -> Self {
        Self::new("system.noSubscription", "No subscription")
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new("system.invalidRequest", message)
    }

    pub fn unsupported_protocol() -> Self {
        Self::new("system.unsupportedProtocol", "Unsupported protocol")
    }

    /// The error for one of Cairn's codes, with the handler's message:
    /// - `not_found`, `stream_deleted` -> `system.notFound`;
    /// - bad input (`invalid_input`, `malformed_request`,
    ///   `validation_failed`) -> `system.invalidParams`;
    /// - no or a refused token, no permission -> `system.accessDenied`,
    ///   with the token's reason in `data.reason` as in a 401's `code`;
    /// - `timeout` -> `system.timeout`; `internal`, `corrupt` ->
    ///   `system.internalError`, whose message never carries details;
    /// - every other code (a rule refused, a conflict, a limit, a read
    ///   model behind) -> `cairn.<code>`, with the message as it is.
    ///
    /// `data.code` always carries Cairn's own code.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let base = match code {
            ErrorCode::NotFound | ErrorCode::StreamDeleted => Self::new("system.notFound", message),
            ErrorCode::InvalidInput | ErrorCode::MalformedRequest | ErrorCode::ValidationFailed => {
                Self::invalid_params(message)
            }
            ErrorCode::Unauthenticated
            | ErrorCode::Forbidden
            | ErrorCode::MissingToken
            | ErrorCode::MalformedToken
            | ErrorCode::InvalidSignature
            | ErrorCode::UnknownKey
            | ErrorCode::IssuerMismatch
            | ErrorCode::AudienceMismatch
            | ErrorCode::TenantMismatch
            | ErrorCode::UnknownTenant
            | ErrorCode::Expired
            | ErrorCode::NotYetValid
            | ErrorCode::Revoked => Self::new("system.accessDenied", message),
            ErrorCode::Timeout => Self::new("system.timeout", message),
            ErrorCode::Internal | ErrorCode::Corrupt => Self::internal_error(),
            // A rule refused, a conflict, a limit, a read model behind, and
            // any code added later.
            _ => Self::new(format!("cairn.{}", code.as_str()), message),
        };
        base.with_data(serde_json::json!({ "code": code.as_str() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_dotted_code_and_keeps_its_own() {
        for code in ErrorCode::ALL {
            let err = ResError::from_code(code, "detail");
            assert!(
                err.code.starts_with("system.") || err.code == format!("cairn.{}", code.as_str()),
                "{code:?} -> {}",
                err.code
            );
            assert_eq!(err.data.as_ref().unwrap()["code"], code.as_str());
        }
        assert_eq!(
            ResError::from_code(ErrorCode::NotFound, "flight 7 not found").code,
            "system.notFound"
        );
        assert_eq!(
            ResError::from_code(ErrorCode::Revoked, "revoked").code,
            "system.accessDenied"
        );
        assert_eq!(
            ResError::from_code(ErrorCode::RuleViolation, "boarding is closed").code,
            "cairn.rule_violation"
        );
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let err = ResError::from_code(ErrorCode::Internal, "pool timed out at 10.0.0.7");
        assert_eq!(err.message, "Internal error");
        assert!(!serde_json::to_string(&err).unwrap().contains("10.0.0.7"));
    }

    #[test]
    fn data_is_left_out_when_absent() {
        assert_eq!(
            serde_json::to_value(ResError::not_found()).unwrap(),
            serde_json::json!({"code": "system.notFound", "message": "Not found"})
        );
    }
}
