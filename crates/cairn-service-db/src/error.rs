//! What opening and using a service database can fail with, and the one
//! answer to "is this database error worth retrying?".

use cairn_core::ErrorCode;
use sqlx::error::DatabaseError;

/// Opening or preparing a service database failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceDbError {
    /// A URL or schema name was rejected.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which input was wrong.
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// The database failed or could not be reached.
    #[error("service database unavailable: {0}")]
    Database(#[from] sqlx::Error),
}

impl ServiceDbError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceDbError::Invalid { .. } => ErrorCode::InvalidInput,
            ServiceDbError::Database(_) => ErrorCode::Unavailable,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ServiceDbError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Whether a database error may go away on retry: the connection or pool
/// failed, or the engine was busy, locked, out of resources or failing over,
/// as opposed to a statement or data that fails every time. Every retry over
/// a service database (opening SQLite, the projection runners) asks this.
pub fn is_transient(e: &sqlx::Error) -> bool {
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
    fn connection_trouble_is_transient_and_data_trouble_is_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }

    #[tokio::test]
    async fn a_busy_sqlite_is_transient_and_a_constraint_violation_or_bad_sql_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let impatient = crate::ServiceDbOptions {
            busy_timeout: std::time::Duration::ZERO,
            ..Default::default()
        };
        let a = crate::ServiceDb::open_with(&url, impatient.clone())
            .await
            .unwrap();
        let b = crate::ServiceDb::open_with(&url, impatient).await.unwrap();
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
        assert!(!is_transient(&bad_sql), "{bad_sql}");
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
    fn codes() {
        assert_eq!(
            ServiceDbError::invalid("url", "bad").code(),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            ServiceDbError::from(sqlx::Error::PoolClosed).code(),
            ErrorCode::Unavailable
        );
    }
}
