//! The crate's errors: [`ProjectionError`] is what a projection's `apply`
//! returns (a poison event, or a read-model statement that failed), and
//! [`ReadModelError`] is what opening a read database and operating the
//! runners return. Both carry a stable [`ErrorCode`].
//!
//! The runner's central decision lives here: [`ProjectionError::is_transient`]
//! separates failures worth retrying (the database is busy, locked, restarting
//! or unreachable) from failures that will recur on every attempt (a poison
//! event, a constraint violation, bad SQL), which stop the projection.

use cairn_core::{DecodeError, ErrorCode};
use cairn_service_db::is_transient;

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event cannot be projected, and trying again will not change that
    /// (unknown shape, a payload that does not decode, a broken invariant of
    /// the model). The runner stops the projection at this event.
    #[error("poison event: {0}")]
    Poison(String),

    /// A read-model statement failed. Transient failures (busy, locked,
    /// connection lost) are retried; the others stop the projection like a
    /// poison event.
    #[error("read model statement failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl ProjectionError {
    /// Declares the event poison, with a reason an operator can act on.
    pub fn poison(reason: impl Into<String>) -> Self {
        ProjectionError::Poison(reason.into())
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProjectionError::Poison(_) => ErrorCode::Internal,
            ProjectionError::Database(e) if is_transient(e) => ErrorCode::Unavailable,
            ProjectionError::Database(_) => ErrorCode::Internal,
        }
    }

    /// Whether retrying the same transaction may succeed: the database was
    /// busy, locked, out of resources or unreachable, as opposed to a
    /// statement or an event that fails every time.
    pub fn is_transient(&self) -> bool {
        match self {
            ProjectionError::Poison(_) => false,
            ProjectionError::Database(e) => is_transient(e),
        }
    }
}

/// A payload that does not decode into the projection's event type is poison.
impl From<DecodeError> for ProjectionError {
    fn from(e: DecodeError) -> Self {
        ProjectionError::Poison(e.to_string())
    }
}

/// Operating projections failed, or the service database under them did.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// A URL, schema name or projection definition was rejected.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which input was wrong.
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// No projection of that name is registered.
    #[error("no projection named {0:?}")]
    UnknownProjection(String),

    /// A projection's schema or reset statements failed.
    #[error("schema of projection {projection} failed: {source}")]
    Schema {
        /// The projection whose DDL failed.
        projection: String,
        /// The database's answer.
        source: sqlx::Error,
    },

    /// The read database failed or could not be reached.
    #[error("read database unavailable: {0}")]
    Database(#[from] sqlx::Error),

    /// The projections were shut down; nothing more can be started.
    #[error("projections are shut down")]
    ShutDown,

    /// A skip named an event the projection is not stopped at.
    #[error("projection {projection:?} is not stopped at an event at position {position}")]
    NotFailedAt {
        /// The projection.
        projection: String,
        /// The position the caller named.
        position: u64,
    },
}

impl From<cairn_service_db::ServiceDbError> for ReadModelError {
    fn from(e: cairn_service_db::ServiceDbError) -> Self {
        match e {
            cairn_service_db::ServiceDbError::Invalid { field, reason } => {
                ReadModelError::Invalid { field, reason }
            }
            cairn_service_db::ServiceDbError::Database(e) => ReadModelError::Database(e),
        }
    }
}

impl ReadModelError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReadModelError::Invalid { .. } => ErrorCode::InvalidInput,
            ReadModelError::UnknownProjection(_) => ErrorCode::NotFound,
            ReadModelError::NotFailedAt { .. } => ErrorCode::RuleViolation,
            ReadModelError::Schema { .. } => ErrorCode::Internal,
            ReadModelError::Database(_) | ReadModelError::ShutDown => ErrorCode::Unavailable,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ReadModelError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_is_not_transient_and_keeps_its_reason() {
        let e = ProjectionError::poison("flight 7 has no number");
        assert!(!e.is_transient());
        assert_eq!(e.code(), ErrorCode::Internal);
        assert_eq!(e.to_string(), "poison event: flight 7 has no number");
    }

    #[test]
    fn database_trouble_is_transient_as_the_service_database_judges_it() {
        let down = ProjectionError::from(sqlx::Error::PoolClosed);
        assert!(down.is_transient());
        assert_eq!(down.code(), ErrorCode::Unavailable);
        let data = ProjectionError::from(sqlx::Error::RowNotFound);
        assert!(!data.is_transient());
        assert_eq!(data.code(), ErrorCode::Internal);
    }

    #[test]
    fn service_database_errors_keep_their_kind_and_code() {
        let invalid = ReadModelError::from(cairn_service_db::ServiceDbError::Invalid {
            field: "read_db_url",
            reason: "bad".into(),
        });
        assert!(matches!(
            invalid,
            ReadModelError::Invalid {
                field: "read_db_url",
                ..
            }
        ));
        assert_eq!(invalid.code(), ErrorCode::InvalidInput);
        let down = ReadModelError::from(cairn_service_db::ServiceDbError::from(
            sqlx::Error::PoolTimedOut,
        ));
        assert!(matches!(down, ReadModelError::Database(_)));
        assert_eq!(down.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn decode_errors_are_poison() {
        let e: ProjectionError = DecodeError::Representation.into();
        assert!(matches!(e, ProjectionError::Poison(_)));
    }

    #[test]
    fn codes() {
        assert_eq!(
            ReadModelError::UnknownProjection("x".into()).code(),
            ErrorCode::NotFound
        );
        assert_eq!(
            ReadModelError::invalid("url", "bad").code(),
            ErrorCode::InvalidInput
        );
        assert_eq!(ReadModelError::ShutDown.code(), ErrorCode::Unavailable);
    }
}
