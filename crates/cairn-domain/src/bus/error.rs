//! The bus's error: what a sender can act on, each with a stable code, able
//! to carry a handler's domain error (code, message, details) unchanged
//! across the bus.

use cairn_core::{ErrorCode, ValidationError};
use cairn_store::StoreError;
use serde_json::{Value, json};

use crate::{CommandError, DomainError};

use super::MessageKind;

/// Why a command or query sent on a bus failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BusError {
    /// The message failed its own validation; the handler did not run.
    /// Code `validation_failed`.
    #[error("validation failed: {}", join(.0))]
    Validation(Vec<ValidationError>),

    /// The caller is not authenticated and the message needs a permission.
    /// Code `unauthenticated`.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),

    /// The caller lacks the permission the message needs. Code `forbidden`.
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// Nothing is registered for this message type: a wiring mistake.
    /// Code `internal`.
    #[error("no handler is registered for {kind} {name}")]
    NoHandler {
        kind: MessageKind,
        name: &'static str,
    },

    /// The handler failed; `code` is the stable code of its own error (a
    /// domain rule, not found, a concurrency conflict...).
    #[error("{message}")]
    Handler {
        code: ErrorCode,
        message: String,
        details: Option<Value>,
    },
}

fn join(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl BusError {
    /// The stable code the edge maps to a status.
    pub fn code(&self) -> ErrorCode {
        match self {
            BusError::Validation(_) => ErrorCode::ValidationFailed,
            BusError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            BusError::Forbidden(_) => ErrorCode::Forbidden,
            BusError::NoHandler { .. } => ErrorCode::Internal,
            BusError::Handler { code, .. } => *code,
        }
    }

    /// Structured details for the client: the invalid fields of a
    /// validation failure (`[{"field", "reason"}]`) or the handler's own.
    pub fn details(&self) -> Option<Value> {
        match self {
            BusError::Validation(errors) => Some(Value::Array(
                errors
                    .iter()
                    .map(|e| json!({ "field": e.field, "reason": e.reason }))
                    .collect(),
            )),
            BusError::Handler { details, .. } => details.clone(),
            _ => None,
        }
    }

    /// A handler failure with `code` and a message for the client.
    pub fn handler(code: ErrorCode, message: impl Into<String>) -> Self {
        BusError::Handler {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// A handler failure carrying a domain error's code, message and details.
    pub fn domain<E: DomainError>(error: &E) -> Self {
        BusError::Handler {
            code: error.code(),
            message: error.to_string(),
            details: error.details(),
        }
    }

    /// An unexpected failure inside a handler.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::handler(ErrorCode::Internal, message)
    }
}

impl<E: DomainError> From<CommandError<E>> for BusError {
    fn from(error: CommandError<E>) -> Self {
        BusError::Handler {
            code: error.code(),
            details: error.details(),
            message: error.to_string(),
        }
    }
}

impl From<StoreError> for BusError {
    fn from(error: StoreError) -> Self {
        BusError::handler(error.code(), error.to_string())
    }
}

impl From<ValidationError> for BusError {
    fn from(error: ValidationError) -> Self {
        BusError::Validation(vec![error])
    }
}

impl From<Vec<ValidationError>> for BusError {
    fn from(errors: Vec<ValidationError>) -> Self {
        BusError::Validation(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::StreamId;

    #[derive(Debug, thiserror::Error)]
    #[error("flight {0} is full")]
    struct Full(u32);
    impl DomainError for Full {
        fn details(&self) -> Option<Value> {
            Some(json!({ "capacity": self.0 }))
        }
    }

    #[test]
    fn codes_and_details() {
        let v = BusError::Validation(vec![
            ValidationError::new("name", "must not be empty"),
            ValidationError::new("capacity", "must be positive"),
        ]);
        assert_eq!(v.code(), ErrorCode::ValidationFailed);
        assert_eq!(
            v.to_string(),
            "validation failed: invalid name: must not be empty; invalid capacity: must be positive"
        );
        assert_eq!(v.details().unwrap()[1]["field"], "capacity");
        assert_eq!(
            BusError::Unauthenticated("x".into()).code(),
            ErrorCode::Unauthenticated
        );
        assert_eq!(BusError::Forbidden("x".into()).code(), ErrorCode::Forbidden);
        assert_eq!(
            BusError::NoHandler {
                kind: MessageKind::Query,
                name: "q"
            }
            .code(),
            ErrorCode::Internal
        );
    }

    #[test]
    fn domain_and_command_errors_keep_their_code_and_details() {
        let e = BusError::domain(&Full(3));
        assert_eq!(e.code(), ErrorCode::RuleViolation);
        assert_eq!(e.to_string(), "flight 3 is full");
        assert_eq!(e.details(), Some(json!({"capacity": 3})));

        let e: BusError = CommandError::Domain(Full(5)).into();
        assert_eq!(
            (e.code(), e.details()),
            (ErrorCode::RuleViolation, Some(json!({"capacity": 5})))
        );

        let stream = StreamId::new("flight-1").unwrap();
        let e: BusError = CommandError::<Full>::PreconditionFailed {
            stream: stream.clone(),
            expected: 2,
            actual: Some(4),
        }
        .into();
        assert_eq!(e.code(), ErrorCode::PreconditionFailed);
        assert_eq!(e.details(), Some(json!({"expected": 2, "actual": 4})));

        let e: BusError = CommandError::<Full>::Deleted { stream }.into();
        assert_eq!(e.code(), ErrorCode::NotFound);

        let e: BusError = StoreError::Unavailable("down".into()).into();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        let e: BusError = StoreError::invalid("stream", "bad").into();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
    }
}
