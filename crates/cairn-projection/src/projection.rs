//! What a read model declares: its name (the checkpoint key), which `$all`
//! events it wants, its tables, how to empty them, and how one event changes
//! them.

use async_trait::async_trait;
use cairn_core::RecordedEvent;
use cairn_store::AllFilter;
use sqlx::{Any, Transaction};

use crate::ProjectionError;

/// A read model fed from `$all`.
///
/// The runner calls [`apply`](Projection::apply) for each event the
/// [`filter`](Projection::filter) lets through, in position order, inside a
/// transaction that also moves the projection's checkpoint: the model's
/// change and the checkpoint commit together or not at all, so each event
/// takes effect exactly once. `apply` must therefore do all its work through
/// the given transaction, and must not commit it.
///
/// Write portable SQL: `$1` placeholders, `TEXT`, `BIGINT`, `BOOLEAN`,
/// `DOUBLE PRECISION` columns (ids, times as RFC 3339 and JSON as `TEXT`),
/// `INSERT ... ON CONFLICT (...) DO UPDATE SET x = excluded.x` for upserts.
/// Every row carries the event's `tenant_id`.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// A stable identifier: the checkpoint's key. Renaming it starts the
    /// projection from zero under the new name.
    fn name(&self) -> &'static str;

    /// The version of the model's shape. When it differs from the version
    /// stored with the checkpoint, the runner rebuilds the model (reset,
    /// schema, replay from zero) before it runs: bump it whenever the tables
    /// or the meaning of their rows change.
    fn version(&self) -> u32 {
        1
    }

    /// Which `$all` events the projection wants; usually all tenants of some
    /// categories or event types.
    fn filter(&self) -> AllFilter;

    /// Statements creating the model's tables and indexes; run at every start,
    /// so they must be idempotent (`CREATE TABLE IF NOT EXISTS ...`,
    /// `CREATE INDEX IF NOT EXISTS ...`).
    fn schema(&self) -> Vec<String>;

    /// Statements that remove the model's tables for a rebuild; they must
    /// also work when the tables do not exist (`DROP TABLE IF EXISTS ...`).
    /// [`schema`](Projection::schema) runs right after them, in the same
    /// transaction.
    fn reset(&self) -> Vec<String>;

    /// Applies one event to the model through `tx`.
    ///
    /// Return [`ProjectionError::Poison`] for an event that can never be
    /// applied; the runner stops this projection at it and reports it.
    /// Database errors (`?` on sqlx calls) are retried when transient and
    /// stop the projection otherwise. A panic is caught and treated as
    /// poison.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError>;
}
