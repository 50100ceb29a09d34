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
use sqlx::error::DatabaseError;

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

/// Opening a read database or operating projections failed.
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

/// Whether a database error may go away on retry.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // Primary result codes: BUSY, LOCKED, NOMEM, IOERR, FULL,
                // CANTOPEN, PROTOCOL.
                let primary = sqlite
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map_or(0, |c| c & 0xff);
                matches!(primary, 5 | 6 | 7 | 10 | 13 | 14 | 15)
            } else if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                transient_sqlstate(pg.code())
            } else {
                db.code().is_some_and(|c| transient_sqlstate(&c))
            }
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs worth retrying: connection exceptions, serialization
/// failures and deadlocks, insufficient resources, lock timeouts, operator
/// intervention (shutdown, restart, idle timeout), system errors and a
/// read-only standby (during failover).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("58")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57P05" | "25006"
        )
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
    fn connection_trouble_is_transient_and_data_trouble_is_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(ProjectionError::from(sqlx::Error::PoolClosed).code() == ErrorCode::Unavailable);
    }

    #[tokio::test]
    async fn a_busy_sqlite_is_transient_and_a_constraint_violation_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let impatient = crate::ReadDbOptions {
            busy_timeout: std::time::Duration::ZERO,
            ..Default::default()
        };
        let a = crate::ReadDb::open_with(&url, impatient.clone())
            .await
            .unwrap();
        let b = crate::ReadDb::open_with(&url, impatient).await.unwrap();
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .execute(a.pool())
            .await
            .unwrap();
        let holding = a.begin().await.unwrap();
        let busy = b.begin().await.unwrap_err();
        assert!(is_transient(&busy), "{busy}");
        // Rolled back and awaited: a dropped transaction is rolled back
        // later, and b (which never waits) could still find the lock.
        holding.rollback().await.unwrap();

        sqlx::query("INSERT INTO t (k) VALUES ('x')")
            .execute(b.pool())
            .await
            .unwrap();
        let duplicate = sqlx::query("INSERT INTO t (k) VALUES ('x')")
            .execute(b.pool())
            .await
            .unwrap_err();
        assert!(!is_transient(&duplicate), "{duplicate}");
        let bad_sql = sqlx::query("SELEC 1").execute(b.pool()).await.unwrap_err();
        assert!(!ProjectionError::from(bad_sql).is_transient());
    }

    #[test]
    fn sqlstates() {
        for code in ["08006", "40001", "40P01", "57P01", "53300", "25006"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "42601", "22P02"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
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
