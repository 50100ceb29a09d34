use cairn_core::ValidationError;

use crate::BrokerError;

/// Why a messaging component could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}
