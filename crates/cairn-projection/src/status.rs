//! What an operator sees of a projection: how far it is, how far behind,
//! and, when it stopped on a poison event, which event and why. The types
//! serialize as camelCase JSON for the HTTP status endpoint and the CLI.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::PoisonPolicy;

/// Whether a projection is consuming events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionState {
    /// Following `$all` (including while it retries a transient failure).
    Running,
    /// Not running: stopped by an operator, by `shutdown`, or not yet started.
    Stopped,
    /// Stopped at a poison event until someone retries it; see the failure.
    Failed,
}

/// The event a projection stopped at and why. Persisted, so a restarted
/// process still reports it and does not move past the event. The event
/// fields are empty for the rare failure that is not an event's (the runner
/// itself crashed, or the checkpoint row was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionFailure {
    /// Global position of the failing event.
    pub position: u64,
    /// Its event id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Its tenant.
    pub tenant: String,
    /// Its stream.
    pub stream: String,
    /// What `apply` said (or the panic message).
    pub error: String,
    /// When it failed.
    pub failed_at: DateTime<Utc>,
}

/// One projection's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Running, stopped or failed.
    pub state: ProjectionState,
    /// Every event up to here is handled: applied, or not wanted by the
    /// filter. This is what `wait_for` compares with.
    pub position: u64,
    /// The persisted checkpoint (at most `position`; the runner persists
    /// progress past unwanted events lazily).
    pub checkpoint: u64,
    /// The store's head as this process knows it.
    pub head: u64,
    /// `head - position`: events not yet looked at (positions are dense).
    pub lag_events: u64,
    /// Age in seconds of the oldest event the projection wants and has not
    /// applied; 0 when there is none.
    pub lag_seconds: f64,
    /// Set when `state` is failed.
    pub failure: Option<ProjectionFailure>,
    /// The last transient error (store or read database unreachable) while it
    /// is being retried; cleared by the next success.
    pub retrying: Option<String>,
    /// What it does at a poison event: stop there, or park it and go on.
    pub policy: PoisonPolicy,
    /// Events parked by the policy (see its dead letters).
    pub parked: u64,
    /// Events an operator skipped.
    pub skipped: u64,
}
