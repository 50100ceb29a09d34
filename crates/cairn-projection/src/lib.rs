//! Projections: read models fed from the event store's `$all` log into SQL
//! tables of the service's own database ([`cairn_service_db::ServiceDb`]:
//! SQLite, embedded or ephemeral, or PostgreSQL).
//!
//! A service implements [`Projection`] (name, filter, DDL, reset, `apply`)
//! and hands its projections to [`Projections::start`] with that database
//! and the event store. Each projection gets a runner that applies events in
//! batches, each batch in one transaction that also moves the projection's
//! checkpoint, so every event takes effect exactly once across crashes and
//! restarts. [`Projections`] answers "has this projection reached position
//! P?" ([`Projections::wait_for`], for read-your-writes), reports status and
//! lag ([`ProjectionStatus`]), and can stop, retry and rebuild a projection.
//! What the database itself fails with arrives as a [`ReadModelError`]
//! (from [`cairn_service_db::ServiceDbError`], with the same codes).
//!
//! A poison event stops only its projection, visibly (status `failed` with
//! the event and the error, persisted across restarts), and never takes the
//! process down. It is passed over only where someone decided so: the
//! projection's [`PoisonPolicy`] is `park` (the event goes to the
//! projection's dead letters and the runner goes on), or an operator skipped
//! it ([`Projections::skip`], recorded with who and when).
//!
//! Architecture invariant: a projection's checkpoint moves only in the
//! transaction that applies the events up to it.
//! Architecture invariant: this crate knows nothing of HTTP.

mod checkpoint;
mod dead_letters;
mod error;
mod projection;
mod projections;
mod runner;
mod status;

pub use dead_letters::{DeadLetterReason, PoisonPolicy, ProjectionDeadLetter};
pub use error::{ProjectionError, ReadModelError};
pub use projection::Projection;
pub use projections::{CatchUp, ProjectionOptions, Projections};
pub use status::{ProjectionFailure, ProjectionState, ProjectionStatus};
