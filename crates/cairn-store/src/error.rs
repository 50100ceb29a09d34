//! The store's error type: what a caller can act on, each with a stable code.

use cairn_core::{ErrorCode, EventId, StreamId, ValidationError};

use crate::ExpectedVersion;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),

    /// The stream's version did not match.
    #[error("wrong expected version on {stream}: expected {expected}, stream is {}", actual.map_or("absent".to_owned(), |v| format!("at version {v}")))]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: Option<u64>,
    },

    /// An event id was already stored with other content or in another place.
    #[error("event id {event_id} was already used: {reason}")]
    IdempotencyConflict { event_id: EventId, reason: String },

    /// The stream is tombstoned.
    #[error("stream {stream} is deleted")]
    StreamDeleted { stream: StreamId },

    /// The stream does not exist (for operations that need it to).
    #[error("stream {stream} not found")]
    StreamNotFound { stream: StreamId },

    /// Stored data could not be read back.
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),

    /// The backend failed; the message never contains credentials.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Invalid(_) => ErrorCode::InvalidInput,
            StoreError::WrongExpectedVersion { .. } => ErrorCode::WrongExpectedVersion,
            StoreError::IdempotencyConflict { .. } => ErrorCode::IdempotencyConflict,
            StoreError::StreamDeleted { .. } => ErrorCode::StreamDeleted,
            StoreError::StreamNotFound { .. } => ErrorCode::NotFound,
            StoreError::Corrupt(_) => ErrorCode::Corrupt,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// Shorthand for a validation failure.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid(ValidationError::new(field, reason))
    }
}
