//! The flight aggregate: every rule about a flight itself, as a decider.
//!
//! Rules that need another context (a departure needs every passenger
//! boarded) are checked by the application layer through the buses before
//! the command reaches the aggregate; the aggregate keeps its own: a flight
//! is scheduled once, changes schedule only before it departs, departs only
//! once, lands only after departing.

use cairn_core::{DomainEvent, ErrorCode, ValidationError};
use cairn_domain::{Aggregate, DomainError};
use cairn_flightops_contracts::FlightStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Largest seat capacity accepted.
pub const MAX_CAPACITY: u32 = 1000;

/// What a flight is scheduled as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub number: String,
    pub origin: String,
    pub destination: String,
    pub departure: DateTime<Utc>,
    pub arrival: DateTime<Utc>,
    pub capacity: u32,
}

impl Schedule {
    /// Every problem with the fields, at once.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        if !is_flight_number(&self.number) {
            errors.push(ValidationError::new(
                "number",
                "must be an airline code of two letters or digits and 1-4 digits, e.g. SK1421",
            ));
        }
        for (field, code) in [("origin", &self.origin), ("destination", &self.destination)] {
            if !is_airport(code) {
                errors.push(ValidationError::new(
                    field,
                    "must be a three-letter IATA airport code in capitals, e.g. ARN",
                ));
            }
        }
        if is_airport(&self.origin) && self.origin == self.destination {
            errors.push(ValidationError::new(
                "destination",
                "must differ from the origin",
            ));
        }
        if let Err(e) = check_times(self.departure, self.arrival) {
            errors.push(e);
        }
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            errors.push(ValidationError::new(
                "capacity",
                format!("must be between 1 and {MAX_CAPACITY}"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn check_times(departure: DateTime<Utc>, arrival: DateTime<Utc>) -> Result<(), ValidationError> {
    if arrival <= departure {
        return Err(ValidationError::new(
            "arrival",
            "must be after the departure",
        ));
    }
    Ok(())
}

fn is_flight_number(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 3
        && b.len() <= 7
        && b[..2]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && b[2..].iter().all(u8::is_ascii_digit)
        && b[2..].len() <= 4
}

fn is_airport(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|c| c.is_ascii_uppercase())
}

/// What a client can ask of a flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightCommand {
    Schedule {
        flight_id: String,
        schedule: Schedule,
    },
    Reschedule {
        departure: DateTime<Utc>,
        arrival: DateTime<Utc>,
    },
    /// Sent once the Passengers context has closed boarding.
    Depart {
        at: DateTime<Utc>,
    },
    Land {
        at: DateTime<Utc>,
    },
    Delete,
}

/// What happened to a flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum FlightEvent {
    FlightScheduled {
        flight_id: String,
        #[serde(flatten)]
        schedule: Schedule,
    },
    FlightRescheduled {
        flight_id: String,
        departure: DateTime<Utc>,
        arrival: DateTime<Utc>,
    },
    FlightDeparted {
        flight_id: String,
        at: DateTime<Utc>,
    },
    FlightLanded {
        flight_id: String,
        at: DateTime<Utc>,
    },
    FlightDeleted {
        flight_id: String,
    },
}

impl DomainEvent for FlightEvent {}

/// Why a flight command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    #[error("flight not found")]
    NotFound,
    #[error("the flight is already scheduled")]
    AlreadyScheduled,
    #[error("invalid flight: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    #[error("the flight has {}; only a scheduled flight can be {action}", describe(*.status))]
    NotScheduled {
        status: FlightStatus,
        action: &'static str,
    },
    #[error("the flight has not departed; it can only land after departing")]
    NotDeparted,
}

fn describe(status: FlightStatus) -> &'static str {
    match status {
        FlightStatus::Scheduled => "not departed",
        FlightStatus::Departed => "already departed",
        FlightStatus::Landed => "already landed",
    }
}

impl DomainError for FlightError {
    fn code(&self) -> ErrorCode {
        match self {
            FlightError::NotFound => ErrorCode::NotFound,
            FlightError::Invalid(_) => ErrorCode::ValidationFailed,
            FlightError::AlreadyScheduled
            | FlightError::NotScheduled { .. }
            | FlightError::NotDeparted => ErrorCode::RuleViolation,
        }
    }

    fn details(&self) -> Option<serde_json::Value> {
        match self {
            FlightError::Invalid(errors) => Some(serde_json::json!({
                "errors": errors
                    .iter()
                    .map(|e| serde_json::json!({"field": e.field, "reason": e.reason}))
                    .collect::<Vec<_>>()
            })),
            FlightError::NotScheduled { status, .. } => {
                Some(serde_json::json!({"rule": "flight_not_scheduled", "status": status}))
            }
            FlightError::NotDeparted => Some(serde_json::json!({"rule": "flight_not_departed"})),
            FlightError::AlreadyScheduled => {
                Some(serde_json::json!({"rule": "flight_already_scheduled"}))
            }
            FlightError::NotFound => None,
        }
    }
}

/// A flight's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flight {
    pub id: Option<String>,
    pub schedule: Option<Schedule>,
    pub status: Option<FlightStatus>,
    pub deleted: bool,
}

impl Flight {
    /// The status of a flight that exists and is not deleted.
    pub fn live_status(&self) -> Option<FlightStatus> {
        if self.deleted { None } else { self.status }
    }

    fn require(&self) -> Result<(&str, FlightStatus), FlightError> {
        match (&self.id, self.live_status()) {
            (Some(id), Some(status)) => Ok((id, status)),
            _ => Err(FlightError::NotFound),
        }
    }

    fn require_scheduled(&self, action: &'static str) -> Result<&str, FlightError> {
        let (id, status) = self.require()?;
        if status == FlightStatus::Scheduled {
            Ok(id)
        } else {
            Err(FlightError::NotScheduled { status, action })
        }
    }
}

impl Aggregate for Flight {
    const CATEGORY: &'static str = "flight";
    type Command = FlightCommand;
    type Event = FlightEvent;
    type Error = FlightError;

    fn decide(&self, command: &FlightCommand) -> Result<Vec<FlightEvent>, FlightError> {
        match command {
            FlightCommand::Schedule {
                flight_id,
                schedule,
            } => {
                if self.id.is_some() {
                    return Err(FlightError::AlreadyScheduled);
                }
                schedule.validate().map_err(FlightError::Invalid)?;
                Ok(vec![FlightEvent::FlightScheduled {
                    flight_id: flight_id.clone(),
                    schedule: schedule.clone(),
                }])
            }
            FlightCommand::Reschedule { departure, arrival } => {
                let id = self.require_scheduled("rescheduled")?;
                check_times(*departure, *arrival).map_err(|e| FlightError::Invalid(vec![e]))?;
                let current = self.schedule.as_ref().ok_or(FlightError::NotFound)?;
                if current.departure == *departure && current.arrival == *arrival {
                    return Ok(vec![]);
                }
                Ok(vec![FlightEvent::FlightRescheduled {
                    flight_id: id.to_owned(),
                    departure: *departure,
                    arrival: *arrival,
                }])
            }
            FlightCommand::Depart { at } => {
                let id = self.require_scheduled("departed")?;
                Ok(vec![FlightEvent::FlightDeparted {
                    flight_id: id.to_owned(),
                    at: *at,
                }])
            }
            FlightCommand::Land { at } => {
                let (id, status) = self.require()?;
                match status {
                    FlightStatus::Departed => Ok(vec![FlightEvent::FlightLanded {
                        flight_id: id.to_owned(),
                        at: *at,
                    }]),
                    FlightStatus::Scheduled => Err(FlightError::NotDeparted),
                    FlightStatus::Landed => Err(FlightError::NotScheduled {
                        status,
                        action: "landed",
                    }),
                }
            }
            FlightCommand::Delete => {
                let (id, _) = self.require()?;
                Ok(vec![FlightEvent::FlightDeleted {
                    flight_id: id.to_owned(),
                }])
            }
        }
    }

    fn apply(&mut self, event: &FlightEvent) {
        match event {
            FlightEvent::FlightScheduled {
                flight_id,
                schedule,
            } => {
                self.id = Some(flight_id.clone());
                self.schedule = Some(schedule.clone());
                self.status = Some(FlightStatus::Scheduled);
            }
            FlightEvent::FlightRescheduled {
                departure, arrival, ..
            } => {
                if let Some(s) = &mut self.schedule {
                    s.departure = *departure;
                    s.arrival = *arrival;
                }
            }
            FlightEvent::FlightDeparted { .. } => self.status = Some(FlightStatus::Departed),
            FlightEvent::FlightLanded { .. } => self.status = Some(FlightStatus::Landed),
            FlightEvent::FlightDeleted { .. } => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_domain::testing::Spec;
    use chrono::TimeZone;

    use super::*;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    fn schedule() -> Schedule {
        Schedule {
            number: "SK1421".into(),
            origin: "ARN".into(),
            destination: "LHR".into(),
            departure: t(8),
            arrival: t(10),
            capacity: 180,
        }
    }

    fn scheduled() -> FlightEvent {
        FlightEvent::FlightScheduled {
            flight_id: "f1".into(),
            schedule: schedule(),
        }
    }

    fn departed() -> FlightEvent {
        FlightEvent::FlightDeparted {
            flight_id: "f1".into(),
            at: t(8),
        }
    }

    #[test]
    fn a_valid_flight_is_scheduled() {
        Spec::<Flight>::given_nothing()
            .when(FlightCommand::Schedule {
                flight_id: "f1".into(),
                schedule: schedule(),
            })
            .then([scheduled()]);
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let bad = Schedule {
            number: "sk1".into(),
            origin: "ARN".into(),
            destination: "ARN".into(),
            departure: t(10),
            arrival: t(8),
            capacity: 0,
        };
        let err = Spec::<Flight>::given_nothing()
            .when(FlightCommand::Schedule {
                flight_id: "f1".into(),
                schedule: bad,
            })
            .then_error_code(ErrorCode::ValidationFailed);
        let FlightError::Invalid(errors) = err else {
            panic!("{err:?}")
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["number", "destination", "arrival", "capacity"]);
    }

    #[test]
    fn a_flight_is_scheduled_once() {
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Schedule {
                flight_id: "f1".into(),
                schedule: schedule(),
            })
            .then_error(|e| *e == FlightError::AlreadyScheduled);
    }

    #[test]
    fn rescheduling_moves_the_times_before_departure_only() {
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Reschedule {
                departure: t(9),
                arrival: t(11),
            })
            .then([FlightEvent::FlightRescheduled {
                flight_id: "f1".into(),
                departure: t(9),
                arrival: t(11),
            }]);
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Reschedule {
                departure: t(8),
                arrival: t(10),
            })
            .then_nothing();
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Reschedule {
                departure: t(11),
                arrival: t(9),
            })
            .then_error_code(ErrorCode::ValidationFailed);
        Spec::<Flight>::given([scheduled(), departed()])
            .when(FlightCommand::Reschedule {
                departure: t(9),
                arrival: t(11),
            })
            .then_error_code(ErrorCode::RuleViolation);
    }

    #[test]
    fn a_flight_departs_once_and_lands_only_after_departing() {
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Depart { at: t(8) })
            .then([departed()]);
        Spec::<Flight>::given([scheduled(), departed()])
            .when(FlightCommand::Depart { at: t(9) })
            .then_error_code(ErrorCode::RuleViolation);
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Land { at: t(10) })
            .then_error(|e| *e == FlightError::NotDeparted);
        let landed = Spec::<Flight>::given([scheduled(), departed()])
            .when(FlightCommand::Land { at: t(10) })
            .then([FlightEvent::FlightLanded {
                flight_id: "f1".into(),
                at: t(10),
            }]);
        assert_eq!(landed.status, Some(FlightStatus::Landed));
    }

    #[test]
    fn a_deleted_or_unknown_flight_is_not_found() {
        Spec::<Flight>::given_nothing()
            .when(FlightCommand::Depart { at: t(8) })
            .then_error_code(ErrorCode::NotFound);
        Spec::<Flight>::given([
            scheduled(),
            FlightEvent::FlightDeleted {
                flight_id: "f1".into(),
            },
        ])
        .when(FlightCommand::Land { at: t(8) })
        .then_error_code(ErrorCode::NotFound);
        Spec::<Flight>::given([scheduled()])
            .when(FlightCommand::Delete)
            .then([FlightEvent::FlightDeleted {
                flight_id: "f1".into(),
            }]);
    }

    #[test]
    fn events_are_stored_camel_case_with_the_schedule_inline() {
        let json = serde_json::to_value(scheduled()).unwrap();
        assert_eq!(json["type"], "FlightScheduled");
        assert_eq!(json["data"]["flightId"], "f1");
        assert_eq!(json["data"]["capacity"], 180);
        assert_eq!(json["data"]["departure"], "2026-12-01T08:00:00Z");
    }
}
