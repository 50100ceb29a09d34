//! Projections: read models fed from the event store's `$all` log into SQL
//! tables, on SQLite (embedded, ephemeral) or PostgreSQL.
//!
//! A service implements [`Projection`] (name, filter, DDL, reset, `apply`)
//! and hands its projections to [`Projections::start`] with a [`ReadDb`] and
//! the event store. Each projection gets a runner that applies events in
//! batches, each batch in one transaction that also moves the projection's
//! checkpoint, so every event takes effect exactly once across crashes and
//! restarts. [`Projections`] answers "has this projection reached position
//! P?" ([`Projections::wait_for`], for read-your-writes), reports status and
//! lag ([`ProjectionStatus`]), and can stop, retry and rebuild a projection.
//!
//! A poison event stops only its projection, visibly (status `failed` with
//! the event and the error, persisted across restarts); it is never skipped
//! and never takes the process down.
//!
//! Architecture invariant: a projection's checkpoint moves only in the
//! transaction that applies the events up to it.
//! Architecture invariant: this crate knows nothing of HTTP.

mod checkpoint;
mod db;
mod error;
mod projection;
mod projections;
mod runner;
mod status;

pub use db::{DbKind, ReadDb, ReadDbOptions, protect_tenant_tables};
pub use error::{ProjectionError, ReadModelError};
pub use projection::Projection;
pub use projections::{ProjectionOptions, Projections};
pub use status::{ProjectionFailure, ProjectionState, ProjectionStatus};
