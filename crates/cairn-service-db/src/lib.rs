//! Each service's own database: one [`ServiceDb`] per service process,
//! holding its read models, its consumers' inbox and dead letters, its
//! relay's checkpoint, its saga timeouts, its idempotency keys and (for the
//! identity service) its tokens. SQLite (embedded, ephemeral) or
//! PostgreSQL, with one portable SQL dialect and row-level security by
//! tenant on PostgreSQL.
//!
//! Projections, messaging and sagas all build on it; it builds on none of
//! them, so none of them sits above another for the sake of a database
//! handle.
//!
//! Architecture invariant: this crate knows nothing of projections,
//! brokers, sagas or HTTP.

mod db;
mod error;

pub use db::{DbKind, ServiceDb, ServiceDbOptions, protect_tenant_tables, split_schema};
pub use error::{ServiceDbError, is_transient};
