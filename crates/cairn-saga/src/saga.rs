//! The saga contract: a decider over inputs, the decisions it makes, and the
//! dispatcher that carries its commands out.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use cairn_core::{DomainEvent, RequestContext};

/// A process manager written as a decider.
///
/// A saga instance lives in its own stream, `<NAME>_saga-<id>` (category
/// `<NAME>_saga`). Its state is `Default::default()` folded over its
/// recorded events with [`apply`](Saga::apply). Every input (a start
/// request, the outcome of a command it sent, a fired timeout) is decided by
/// [`handle`](Saga::handle) into a [`Decision`]: events to record and
/// [`Action`]s to take (send a command, schedule or cancel a timeout).
/// Compensation is no special mechanism: a failed step comes back as an
/// input, and the saga decides to send the commands that undo the earlier
/// steps.
///
/// Rules a saga must follow:
/// - **`handle` is pure.** It does no I/O and changes nothing; it may run
///   several times for one input (when another writer appended to the saga
///   first, the input is decided again on the fresh state).
/// - **Every step schedules a deadline.** A command that was sent when the
///   process died has no outcome that will ever come back; the deadline is
///   what wakes the saga up again in another process. Use one key per step
///   (`"debit"`, `"credit"`) and cancel it when the step's outcome arrives.
/// - **A timeout the state does not expect is ignored** (an empty decision).
///   Deadlines are written *before* the events of the decision that
///   scheduled them, and cancellations are removed *after* the events of the
///   decision that cancelled them, so a crash in between leaves a deadline
///   whose decision was never recorded, or one that was already cancelled.
///   Such a spurious timeout must be harmless: check that the state is still
///   waiting for that step before acting on its key.
/// - **Command outcomes can come late.** A step whose deadline has already
///   fired may still report success afterwards; the state decides what that
///   means (often: compensate it too).
///
/// Once [`is_finished`](Saga::is_finished) holds, the runner feeds the saga
/// nothing more: later inputs are dropped without calling `handle`, and the
/// instance's remaining deadlines are removed.
pub trait Saga: Default + Send + Sync + 'static {
    /// The saga's name, e.g. `"departure"`: instance `7f3a` lives in stream
    /// `departure_saga-7f3a`. ASCII lower-case letters, digits and `_`, not
    /// empty (it also names the saga's rows in the timeouts table and its
    /// metrics).
    const NAME: &'static str;

    /// The recorded state transitions; a serde enum with adjacent tagging
    /// (see [`DomainEvent`]).
    type Event: DomainEvent + Clone;

    /// What the saga reacts to: its start, the outcomes of its commands,
    /// its timeouts.
    type Input: Send + 'static;

    /// What the saga asks other parts of the system to do.
    type Command: Send + 'static;

    /// Folds one recorded event into the state. Must not fail: it happened.
    fn apply(&mut self, event: &Self::Event);

    /// Decides `input` against the current state. Pure (see the trait docs).
    fn handle(&self, input: &Self::Input) -> Decision<Self>;

    /// The input a fired timeout with `key` becomes.
    fn timeout(key: &str) -> Self::Input;

    /// Whether the saga has reached a terminal state and expects no more
    /// input.
    fn is_finished(&self) -> bool;
}

/// What a saga decided for one input: the events that record the new state
/// and the actions to take, in order.
pub struct Decision<S: Saga> {
    /// Recorded in the saga's stream, all or none, before any command is sent.
    pub events: Vec<S::Event>,
    /// Taken after the events are recorded (deadlines are written before).
    pub actions: Vec<Action<S::Command>>,
}

/// Something a saga asks the runner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<C> {
    /// Dispatch a command; its outcome is the saga's next input.
    Send(C),
    /// Feed [`Saga::timeout`]`(key)` after `after`, unless cancelled first.
    /// Scheduling a key that is already pending moves its deadline.
    Schedule { key: String, after: Duration },
    /// Drop the pending timeout `key`, if any.
    Cancel { key: String },
}

impl<S: Saga> Decision<S> {
    /// Nothing to record, nothing to do: the input is ignored.
    pub fn none() -> Self {
        Self {
            events: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Records `event` as well.
    pub fn record(mut self, event: S::Event) -> Self {
        self.events.push(event);
        self
    }

    /// Sends `command` as well, after the actions already listed.
    pub fn send(mut self, command: S::Command) -> Self {
        self.actions.push(Action::Send(command));
        self
    }

    /// Schedules the timeout `key` to fire after `after`.
    pub fn schedule(mut self, key: impl Into<String>, after: Duration) -> Self {
        self.actions.push(Action::Schedule {
            key: key.into(),
            after,
        });
        self
    }

    /// Cancels the pending timeout `key`.
    pub fn cancel(mut self, key: impl Into<String>) -> Self {
        self.actions.push(Action::Cancel { key: key.into() });
        self
    }

    /// Whether the decision records nothing and does nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.actions.is_empty()
    }
}

impl<S: Saga> Default for Decision<S> {
    fn default() -> Self {
        Self::none()
    }
}

impl<S: Saga> Clone for Decision<S>
where
    S::Command: Clone,
{
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            actions: self.actions.clone(),
        }
    }
}

impl<S: Saga> fmt::Debug for Decision<S>
where
    S::Event: fmt::Debug,
    S::Command: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("events", &self.events)
            .field("actions", &self.actions)
            .finish()
    }
}

impl<S: Saga> PartialEq for Decision<S>
where
    S::Event: PartialEq,
    S::Command: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events && self.actions == other.actions
    }
}

/// Carries a saga's commands out.
#[async_trait]
pub trait Dispatcher<S: Saga>: Send + Sync + 'static {
    /// Sends a command (on a bus, possibly to another service) and turns its
    /// outcome — success or typed failure — into the saga's next input.
    ///
    /// There is no error channel on purpose: a failure is an input the saga
    /// decides on (retry, compensate, give up). A dispatch that can hang
    /// should carry its own time limit; the saga's deadline covers the case
    /// where the process dies while waiting.
    async fn dispatch(&self, ctx: &RequestContext, saga_id: &str, command: S::Command) -> S::Input;
}
