//! The crate's error type: what a caller of a saga runner can act on, each
//! with a stable [`ErrorCode`].

use cairn_core::{DecodeError, ErrorCode, StreamId, ValidationError};
use cairn_store::StoreError;

/// Why feeding a saga did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// A saga id or the request's metadata was rejected; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),

    /// The event store refused or failed (its own code: a deleted stream,
    /// the store unreachable...).
    #[error("event store: {0}")]
    Store(#[from] StoreError),

    /// The database that keeps the timeouts failed or could not be reached.
    #[error("saga database: {0}")]
    Database(#[from] sqlx::Error),

    /// A recorded event of the saga does not decode into its event type.
    #[error("cannot decode {stream} at version {version}: {source}")]
    Decode {
        stream: StreamId,
        version: u64,
        source: DecodeError,
    },

    /// An event the saga decided does not encode as a stored event.
    #[error("cannot encode an event of {stream}: {source}")]
    Encode {
        stream: StreamId,
        source: DecodeError,
    },

    /// The saga's stream does not start where it should (it was truncated):
    /// its state cannot be rebuilt.
    #[error("the history of {stream} is not readable from its first event")]
    HistoryUnavailable { stream: StreamId },

    /// Other writers kept appending to the saga; every attempt was decided on
    /// state that was stale by the time it was appended.
    #[error("{stream} kept changing concurrently; gave up after {attempts} attempts")]
    ConcurrencyConflict { stream: StreamId, attempts: u32 },

    /// The saga decided something the runner cannot carry out (a bad
    /// timeout key, an event that is not a valid stored event).
    #[error("invalid decision of {stream}: {reason}")]
    InvalidDecision { stream: StreamId, reason: String },

    /// One feed went through more decisions than allowed: the saga keeps
    /// sending commands whose outcomes make it send more.
    #[error("{stream} took more than {steps} decisions in one feed; stopped")]
    TooManySteps { stream: StreamId, steps: u32 },
}

impl SagaError {
    /// The stable code the edge maps to a status.
    pub fn code(&self) -> ErrorCode {
        match self {
            SagaError::Invalid(_) => ErrorCode::InvalidInput,
            SagaError::Store(e) => e.code(),
            SagaError::Database(_) => ErrorCode::Unavailable,
            SagaError::Decode { .. } | SagaError::HistoryUnavailable { .. } => ErrorCode::Corrupt,
            SagaError::ConcurrencyConflict { .. } => ErrorCode::ConcurrencyConflict,
            SagaError::Encode { .. }
            | SagaError::InvalidDecision { .. }
            | SagaError::TooManySteps { .. } => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code() {
        let s = StreamId::new("x_saga-1").unwrap();
        let cases = vec![
            (
                SagaError::from(ValidationError::new("saga_id", "bad")),
                ErrorCode::InvalidInput,
            ),
            (
                SagaError::from(StoreError::StreamDeleted { stream: s.clone() }),
                ErrorCode::StreamDeleted,
            ),
            (
                SagaError::from(sqlx::Error::PoolTimedOut),
                ErrorCode::Unavailable,
            ),
            (
                SagaError::Decode {
                    stream: s.clone(),
                    version: 3,
                    source: DecodeError::Representation,
                },
                ErrorCode::Corrupt,
            ),
            (
                SagaError::HistoryUnavailable { stream: s.clone() },
                ErrorCode::Corrupt,
            ),
            (
                SagaError::ConcurrencyConflict {
                    stream: s.clone(),
                    attempts: 6,
                },
                ErrorCode::ConcurrencyConflict,
            ),
            (
                SagaError::Encode {
                    stream: s.clone(),
                    source: DecodeError::Representation,
                },
                ErrorCode::Internal,
            ),
            (
                SagaError::InvalidDecision {
                    stream: s.clone(),
                    reason: "empty key".into(),
                },
                ErrorCode::Internal,
            ),
            (
                SagaError::TooManySteps {
                    stream: s,
                    steps: 10,
                },
                ErrorCode::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }
}
