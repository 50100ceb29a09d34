//! Process managers (sagas): long-running business transactions across
//! aggregates and services, with durable state, compensation and durable
//! timeouts.
//!
//! - [`Saga`]: a decider over inputs. Its state is event-sourced in its own
//!   stream (`<NAME>_saga-<id>`); [`Saga::handle`] turns an input (a start
//!   request, a command's outcome, a fired timeout) into a [`Decision`]:
//!   events to record and [`Action`]s (send a command, schedule or cancel a
//!   timeout). Compensation is just more decisions.
//! - [`Dispatcher`]: carries a saga's commands out (on a bus, to another
//!   service) and turns each outcome, success or typed failure, into the
//!   saga's next input.
//! - [`SagaRunner`]: feeds inputs, persists each decision (deadlines,
//!   events on the expected version with retries, cancellations), sends the
//!   commands and feeds their outcomes back; and, with
//!   [`SagaRunner::start_timeouts`], fires due deadlines from the
//!   `cairn_saga_timeouts` table in the service's [`ServiceDb`](cairn_service_db::ServiceDb).
//!
//! Architecture invariant: a saga's state lives only in its stream; the
//! timeouts table holds deadlines, never state, and a deadline whose
//! decision was not recorded is harmless by contract (see [`Saga`]).
//! - [`SagaEvents`]: a consumer handler that turns integration events into
//!   saga inputs, so a saga reacts to other services' events.
//!
//! Architecture invariant: this crate knows nothing of HTTP or of a
//! particular broker.

mod error;
mod events;
mod runner;
mod saga;
mod table;
mod timeouts;

pub use error::SagaError;
pub use events::SagaEvents;
pub use runner::{MAX_TIMEOUT_KEY_BYTES, PendingTimeout, SagaOptions, SagaRunner, saga_stream};
pub use saga::{Action, Decision, Dispatcher, Saga};
pub use timeouts::{TimeoutsHandle, TimeoutsStatus};
