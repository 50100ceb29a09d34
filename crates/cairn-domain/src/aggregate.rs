//! Aggregates as deciders.
//!
//! An aggregate is a consistency boundary written as two pure functions over
//! its state: [`Aggregate::decide`] turns a command into events (or refuses
//! it with a domain error) without changing anything, and
//! [`Aggregate::apply`] folds one event into the state. The state before the
//! first event is `Default::default()`, so a creation command is decided on
//! the default state like any other; an aggregate tells "not created yet"
//! apart itself (a status field, an `Option`) and refuses commands that need
//! an existing aggregate with an error whose [`DomainError::code`] is
//! [`ErrorCode::NotFound`].
//!
//! Because deciding does no I/O, the same code runs in the
//! [`AggregateStore`](crate::AggregateStore) (load, decide, append, retry) and
//! in the given/when/then specs of [`testing`](crate::testing).

use cairn_core::{DomainEvent, ErrorCode};
use serde::{Serialize, de::DeserializeOwned};

/// A decider: state that decides commands into events and evolves by them.
///
/// The state is serializable so it can be snapshotted; bump
/// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) whenever its serialized
/// shape changes, and older snapshots are ignored (the state is rebuilt from
/// the events).
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The stream category, e.g. `"flight"`: the aggregate `7f3a` lives in
    /// stream `flight-7f3a`. Must not be empty or contain `-`.
    const CATEGORY: &'static str;

    /// The schema version of the serialized state in snapshots.
    const SNAPSHOT_VERSION: u32 = 1;

    /// What the aggregate can be asked to do.
    type Command: Send + Sync;

    /// What happened; a serde enum with adjacent tagging (see [`DomainEvent`]).
    type Event: DomainEvent + Clone;

    /// Why a command was refused.
    type Error: DomainError;

    /// Decides `command` against the current state: the events to record,
    /// none (nothing to do), or the rule it breaks. Must not change state or
    /// do I/O; it may run several times for one command when writers race.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Must not fail: the event happened.
    fn apply(&mut self, event: &Self::Event);

    /// The state after `events`, starting from the default state.
    fn from_events<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }
}

/// A domain error: why a command was refused, with the stable code the edge
/// (HTTP, RES, CLI) maps to a status.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// The error's code; by default a broken rule (HTTP 409).
    fn code(&self) -> ErrorCode {
        ErrorCode::RuleViolation
    }

    /// Structured details for the client (problem+json extension members),
    /// if any.
    fn details(&self) -> Option<serde_json::Value> {
        None
    }
}

/// For aggregates whose commands cannot be refused.
impl DomainError for std::convert::Infallible {}

/// An aggregate's state as loaded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The state after every event of the stream.
    pub state: A,
    /// The version of the stream's last event (the `ETag` a client sends
    /// back in `If-Match`).
    pub version: u64,
}
