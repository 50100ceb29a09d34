//! Given/when/then specifications for aggregates, so a domain test reads as
//! the rule it checks:
//!
//! ```
//! use cairn_core::{DomainEvent, ErrorCode};
//! use cairn_domain::{Aggregate, DomainError, testing::Spec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Flight { scheduled: bool, departed: bool }
//!
//! enum FlightCommand { Schedule, Depart }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum FlightEvent { FlightScheduled, FlightDeparted }
//! impl DomainEvent for FlightEvent {}
//!
//! #[derive(Debug, thiserror::Error)]
//! enum FlightError {
//!     #[error("no such flight")]
//!     NotFound,
//!     #[error("the flight has departed")]
//!     AlreadyDeparted,
//! }
//! impl DomainError for FlightError {
//!     fn code(&self) -> ErrorCode {
//!         match self {
//!             FlightError::NotFound => ErrorCode::NotFound,
//!             FlightError::AlreadyDeparted => ErrorCode::RuleViolation,
//!         }
//!     }
//! }
//!
//! impl Aggregate for Flight {
//!     const CATEGORY: &'static str = "flight";
//!     type Command = FlightCommand;
//!     type Event = FlightEvent;
//!     type Error = FlightError;
//!     fn decide(&self, command: &FlightCommand) -> Result<Vec<FlightEvent>, FlightError> {
//!         match command {
//!             FlightCommand::Schedule => Ok(vec![FlightEvent::FlightScheduled]),
//!             FlightCommand::Depart if !self.scheduled => Err(FlightError::NotFound),
//!             FlightCommand::Depart if self.departed => Err(FlightError::AlreadyDeparted),
//!             FlightCommand::Depart => Ok(vec![FlightEvent::FlightDeparted]),
//!         }
//!     }
//!     fn apply(&mut self, event: &FlightEvent) {
//!         match event {
//!             FlightEvent::FlightScheduled => self.scheduled = true,
//!             FlightEvent::FlightDeparted => self.departed = true,
//!         }
//!     }
//! }
//!
//! let state = Spec::<Flight>::given([FlightEvent::FlightScheduled])
//!     .when(FlightCommand::Depart)
//!     .then([FlightEvent::FlightDeparted]);
//! assert!(state.departed);
//! Spec::<Flight>::given_nothing()
//!     .when(FlightCommand::Depart)
//!     .then_error(|e| matches!(e, FlightError::NotFound));
//! Spec::<Flight>::given([FlightEvent::FlightScheduled, FlightEvent::FlightDeparted])
//!     .when(FlightCommand::Depart)
//!     .then_error_code(ErrorCode::RuleViolation);
//! ```
//!
//! Events are compared through their JSON (the form they are stored in), so
//! event types need not implement `PartialEq`; a mismatch panics with the
//! given history, the expected and the actual events, pretty-printed. The
//! decided events are also applied, so an `apply` that panics on them fails
//! the spec too. Always compiled (no extra dependencies), meant for tests.

use std::fmt;

use cairn_core::ErrorCode;
use serde::Serialize;

use crate::{Aggregate, DomainError};

/// The history of a specification: events already recorded.
pub struct Spec<A: Aggregate> {
    given: Vec<A::Event>,
}

impl<A: Aggregate> fmt::Debug for Spec<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("given", &json_lines(&self.given))
            .finish()
    }
}

impl<A: Aggregate> Spec<A> {
    /// An aggregate whose stream already holds `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        Self {
            given: events.into_iter().collect(),
        }
    }

    /// An aggregate that does not exist yet (the default state).
    pub fn given_nothing() -> Self {
        Self { given: Vec::new() }
    }

    /// The state the history folds into.
    pub fn state(&self) -> A {
        A::from_events(&self.given)
    }

    /// Decides `command` on the state after the history.
    pub fn when(self, command: A::Command) -> Decided<A> {
        let state = self.state();
        let result = state.decide(&command);
        Decided {
            given: self.given,
            state,
            result,
        }
    }
}

/// The outcome of [`Spec::when`], to be checked with one of the `then`
/// methods.
pub struct Decided<A: Aggregate> {
    given: Vec<A::Event>,
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> fmt::Debug for Decided<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let result = match &self.result {
            Ok(events) => Ok(json_lines(events)),
            Err(e) => Err(e.to_string()),
        };
        f.debug_struct("Decided")
            .field("given", &json_lines(&self.given))
            .field("result", &result)
            .finish()
    }
}

impl<A: Aggregate> Decided<A> {
    /// Asserts the command decided exactly `expected` (same order, same
    /// JSON), applies them and returns the resulting state for further
    /// checks.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let actual = match self.result {
            Ok(events) => events,
            Err(error) => panic!(
                "{}expected events:\n{}\nbut the command was refused: {error}\n  ({error:?}, code {})",
                history(&self.given),
                json_lines(&expected),
                error.code(),
            ),
        };
        let (want, got) = (to_json(&expected), to_json(&actual));
        if want != got {
            panic!(
                "{}expected events:\n{}\nactual events:\n{}",
                history(&self.given),
                json_lines(&expected),
                json_lines(&actual),
            );
        }
        let mut state = self.state;
        for event in &actual {
            state.apply(event);
        }
        state
    }

    /// Asserts the command was accepted and changed nothing.
    #[track_caller]
    pub fn then_nothing(self) -> A {
        self.then([])
    }

    /// Asserts the command was refused with an error `check` accepts, and
    /// returns the error.
    #[track_caller]
    pub fn then_error(self, check: impl FnOnce(&A::Error) -> bool) -> A::Error {
        match self.result {
            Ok(events) => panic!(
                "{}expected the command to be refused, but it decided:\n{}",
                history(&self.given),
                json_lines(&events),
            ),
            Err(error) => {
                if !check(&error) {
                    panic!(
                        "{}the command was refused, but not with the expected error; got: {error}\n  ({error:?}, code {})",
                        history(&self.given),
                        error.code(),
                    );
                }
                error
            }
        }
    }

    /// Asserts the command was refused with an error of `code`.
    #[track_caller]
    pub fn then_error_code(self, code: ErrorCode) -> A::Error {
        let error = self.then_error(|_| true);
        assert_eq!(
            error.code(),
            code,
            "the command was refused with {error} ({error:?}), whose code is {} instead of {code}",
            error.code()
        );
        error
    }

    /// The raw decision, for checks the `then` methods do not cover.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

fn to_json<T: Serialize>(events: &[T]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            serde_json::to_value(e)
                .unwrap_or_else(|err| serde_json::Value::String(format!("<unserializable: {err}>")))
        })
        .collect()
}

fn json_lines<T: Serialize>(events: &[T]) -> String {
    if events.is_empty() {
        return "  (none)".to_owned();
    }
    to_json(events)
        .iter()
        .enumerate()
        .map(|(i, v)| format!("  {i}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn history<T: Serialize>(given: &[T]) -> String {
    format!("given:\n{}\n", json_lines(given))
}
