//! The departure saga: a departure spans two contexts, so it runs as a
//! process manager with its own durable state (the stream
//! `departure_saga-<flight>.<attempt>`) and a deadline for every step.
//!
//! 1. Ask Passengers to close boarding (it refuses unless everyone boarded).
//!    Refused: the departure is refused, nothing else happened.
//! 2. Record the departure on the flight. Done.
//! 3. If the flight cannot depart, ask Passengers to reopen boarding
//!    (compensation), retrying until it answers.
//!
//! When the process dies in between, the step's deadline fires after a
//! restart (it is in the service's database) and the saga carries on: a
//! close that got no answer is compensated, a departure is tried again (a
//! flight already departed counts as done), a reopen is tried again.

use std::time::Duration;

use cairn_core::{DomainEvent, ErrorCode};
use cairn_domain::BusError;
use cairn_flightops_contracts::Written;
use cairn_saga::{Decision, Saga};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The deadline key every step uses.
pub const STEP: &str = "step";
/// How long a step may take before the saga acts on its own.
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// How soon an unanswered reopen is tried again.
pub const REOPEN_RETRY: Duration = Duration::from_secs(5);

/// A refusal or failure as recorded: its stable code, message and details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl Refusal {
    pub fn from_bus(error: &BusError) -> Self {
        Self {
            code: error.code().as_str().to_owned(),
            message: error.to_string(),
            details: error.details(),
        }
    }

    pub fn to_bus(&self) -> BusError {
        BusError::Handler {
            code: ErrorCode::parse(&self.code).unwrap_or(ErrorCode::Internal),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }

    fn timed_out(step: &str) -> Self {
        Self {
            code: ErrorCode::Timeout.as_str().to_owned(),
            message: format!("the departure got no answer while {step}"),
            details: None,
        }
    }
}

/// What the saga records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum DepartureEvent {
    DepartureRequested {
        flight_id: String,
        expected: Option<u64>,
    },
    DepartureBoardingClosed,
    DepartureCompleted {
        version: Option<u64>,
        position: Option<u64>,
    },
    DepartureRefused {
        refusal: Refusal,
    },
    DepartureFailed {
        refusal: Refusal,
    },
    DepartureBoardingReopened,
}

impl DomainEvent for DepartureEvent {}

/// What the saga reacts to.
#[derive(Debug, Clone)]
pub enum DepartureInput {
    Start {
        flight_id: String,
        expected: Option<u64>,
    },
    BoardingClosed(Result<(), BusError>),
    Departed(Result<Written, BusError>),
    BoardingReopened(Result<(), BusError>),
    Timeout(String),
}

/// What the saga asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepartureCommand {
    CloseBoarding {
        flight_id: String,
    },
    Depart {
        flight_id: String,
        expected: Option<u64>,
    },
    ReopenBoarding {
        flight_id: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Step {
    #[default]
    New,
    Closing,
    Departing,
    Reopening,
    Finished,
}

/// A departure's state.
#[derive(Debug, Clone, Default)]
pub struct Departure {
    flight_id: String,
    expected: Option<u64>,
    step: Step,
    outcome: Option<Result<Written, Refusal>>,
}

impl Departure {
    /// How it ended, once it has: what was written, or why not.
    pub fn outcome(&self) -> Option<&Result<Written, Refusal>> {
        if self.step == Step::Finished {
            self.outcome.as_ref()
        } else {
            None
        }
    }

    /// The failure being compensated, while boarding is being reopened.
    pub fn compensating(&self) -> Option<&Refusal> {
        match (&self.step, &self.outcome) {
            (Step::Reopening, Some(Err(r))) => Some(r),
            _ => None,
        }
    }

    fn depart(&self) -> DepartureCommand {
        DepartureCommand::Depart {
            flight_id: self.flight_id.clone(),
            expected: self.expected,
        }
    }

    fn reopen(&self) -> DepartureCommand {
        DepartureCommand::ReopenBoarding {
            flight_id: self.flight_id.clone(),
        }
    }

    fn compensate(&self, refusal: Refusal) -> Decision<Self> {
        Decision::none()
            .record(DepartureEvent::DepartureFailed { refusal })
            .schedule(STEP, REOPEN_RETRY)
            .send(self.reopen())
    }
}

impl Saga for Departure {
    const NAME: &'static str = "departure";
    type Event = DepartureEvent;
    type Input = DepartureInput;
    type Command = DepartureCommand;

    fn apply(&mut self, event: &DepartureEvent) {
        match event {
            DepartureEvent::DepartureRequested {
                flight_id,
                expected,
            } => {
                self.flight_id = flight_id.clone();
                self.expected = *expected;
                self.step = Step::Closing;
            }
            DepartureEvent::DepartureBoardingClosed => self.step = Step::Departing,
            DepartureEvent::DepartureCompleted { version, position } => {
                self.step = Step::Finished;
                self.outcome = Some(Ok(Written {
                    version: *version,
                    position: *position,
                }));
            }
            DepartureEvent::DepartureRefused { refusal } => {
                self.step = Step::Finished;
                self.outcome = Some(Err(refusal.clone()));
            }
            DepartureEvent::DepartureFailed { refusal } => {
                self.step = Step::Reopening;
                self.outcome = Some(Err(refusal.clone()));
            }
            DepartureEvent::DepartureBoardingReopened => self.step = Step::Finished,
        }
    }

    fn handle(&self, input: &DepartureInput) -> Decision<Self> {
        use DepartureInput as I;
        let timeout = |key: &str| key == STEP;
        match (self.step, input) {
            (
                Step::New,
                I::Start {
                    flight_id,
                    expected,
                },
            ) => Decision::none()
                .record(DepartureEvent::DepartureRequested {
                    flight_id: flight_id.clone(),
                    expected: *expected,
                })
                .schedule(STEP, STEP_DEADLINE)
                .send(DepartureCommand::CloseBoarding {
                    flight_id: flight_id.clone(),
                }),
            (Step::Closing, I::BoardingClosed(Ok(()))) => Decision::none()
                .record(DepartureEvent::DepartureBoardingClosed)
                .schedule(STEP, STEP_DEADLINE)
                .send(self.depart()),
            (Step::Closing, I::BoardingClosed(Err(e))) => Decision::none()
                .record(DepartureEvent::DepartureRefused {
                    refusal: Refusal::from_bus(e),
                })
                .cancel(STEP),
            // No answer to the close: boarding may be closed; reopen it.
            (Step::Closing, I::Timeout(key)) if timeout(key) => {
                self.compensate(Refusal::timed_out("closing boarding"))
            }
            (Step::Departing, I::Departed(Ok(written))) => Decision::none()
                .record(DepartureEvent::DepartureCompleted {
                    version: written.version,
                    position: written.position,
                })
                .cancel(STEP),
            (Step::Departing, I::Departed(Err(e))) => self.compensate(Refusal::from_bus(e)),
            (Step::Departing, I::Timeout(key)) if timeout(key) => Decision::none()
                .schedule(STEP, STEP_DEADLINE)
                .send(self.depart()),
            (Step::Reopening, I::BoardingReopened(Ok(()))) => Decision::none()
                .record(DepartureEvent::DepartureBoardingReopened)
                .cancel(STEP),
            (Step::Reopening, I::Timeout(key)) if timeout(key) => Decision::none()
                .schedule(STEP, REOPEN_RETRY)
                .send(self.reopen()),
            // A late answer, a failed reopen (its deadline retries), or a
            // timeout this step does not expect: nothing to do.
            _ => Decision::none(),
        }
    }

    fn timeout(key: &str) -> DepartureInput {
        DepartureInput::Timeout(key.to_owned())
    }

    fn is_finished(&self) -> bool {
        self.step == Step::Finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_saga::Action;

    fn started() -> Departure {
        let mut d = Departure::default();
        d.apply(&DepartureEvent::DepartureRequested {
            flight_id: "f1".into(),
            expected: Some(3),
        });
        d
    }

    fn refused() -> BusError {
        BusError::Handler {
            code: ErrorCode::RuleViolation,
            message: "not everyone boarded".into(),
            details: Some(serde_json::json!({"rule": "passengers_not_boarded"})),
        }
    }

    #[test]
    fn a_start_closes_boarding_with_a_deadline() {
        let d = Departure::default().handle(&DepartureInput::Start {
            flight_id: "f1".into(),
            expected: None,
        });
        assert_eq!(d.events.len(), 1);
        assert_eq!(
            d.actions,
            vec![
                Action::Schedule {
                    key: STEP.into(),
                    after: STEP_DEADLINE
                },
                Action::Send(DepartureCommand::CloseBoarding {
                    flight_id: "f1".into()
                }),
            ]
        );
    }

    #[test]
    fn a_refused_close_ends_the_departure_with_the_refusal() {
        let mut d = started();
        let decision = d.handle(&DepartureInput::BoardingClosed(Err(refused())));
        for e in &decision.events {
            d.apply(e);
        }
        assert!(d.is_finished());
        let refusal = d.outcome().unwrap().as_ref().unwrap_err();
        assert_eq!(refusal.code, "rule_violation");
        assert_eq!(refusal.to_bus().details(), refused().details());
        assert_eq!(decision.actions, vec![Action::Cancel { key: STEP.into() }]);
    }

    #[test]
    fn a_failed_departure_reopens_boarding_until_it_is_reopened() {
        let mut d = started();
        for e in d.handle(&DepartureInput::BoardingClosed(Ok(()))).events {
            d.apply(&e);
        }
        let decision = d.handle(&DepartureInput::Departed(Err(refused())));
        assert!(
            decision
                .actions
                .contains(&Action::Send(DepartureCommand::ReopenBoarding {
                    flight_id: "f1".into()
                }))
        );
        for e in decision.events {
            d.apply(&e);
        }
        assert!(d.compensating().is_some());
        // The reopen fails: nothing now, the deadline tries again.
        assert!(
            d.handle(&DepartureInput::BoardingReopened(Err(refused())))
                .is_empty()
        );
        let retry = d.handle(&DepartureInput::Timeout(STEP.into()));
        assert!(
            retry
                .actions
                .contains(&Action::Send(DepartureCommand::ReopenBoarding {
                    flight_id: "f1".into()
                }))
        );
        for e in d.handle(&DepartureInput::BoardingReopened(Ok(()))).events {
            d.apply(&e);
        }
        assert!(d.is_finished());
        assert!(d.outcome().unwrap().is_err(), "the departure itself failed");
    }

    #[test]
    fn timeouts_it_does_not_expect_are_ignored() {
        let d = started();
        assert!(
            d.handle(&DepartureInput::Timeout("other".into()))
                .is_empty()
        );
        let done = {
            let mut d = started();
            d.apply(&DepartureEvent::DepartureBoardingClosed);
            d.apply(&DepartureEvent::DepartureCompleted {
                version: Some(4),
                position: Some(9),
            });
            d
        };
        assert!(
            done.handle(&DepartureInput::Timeout(STEP.into()))
                .is_empty()
        );
    }

    #[test]
    fn a_departure_without_an_answer_is_tried_again() {
        let mut d = started();
        d.apply(&DepartureEvent::DepartureBoardingClosed);
        let again = d.handle(&DepartureInput::Timeout(STEP.into()));
        assert!(
            again
                .actions
                .contains(&Action::Send(DepartureCommand::Depart {
                    flight_id: "f1".into(),
                    expected: Some(3)
                }))
        );
    }
}
