//! The manifest aggregate: the passengers of one flight, as a decider.
//!
//! The manifest is the consistency boundary for every rule that spans
//! passengers of a flight: seats left, no document twice on a flight, and
//! "everyone boarded" before departure. One stream per flight
//! (`manifest-<flightId>`) serializes those decisions, so fifty concurrent
//! bookings on a thirty-seat flight seat exactly thirty. What the manifest
//! needs to know about the flight itself (exists, status, capacity) comes
//! from the Flights context with the command.

use std::collections::BTreeMap;

use cairn_core::{DomainEvent, ErrorCode, ValidationError};
use cairn_domain::{Aggregate, DomainError};
use cairn_flightops_contracts::{FlightForBooking, FlightStatus};
use serde::{Deserialize, Serialize};

/// Longest accepted passenger name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest accepted travel document number.
pub const MAX_DOCUMENT_CHARS: usize = 32;

/// Checks a passenger's name and document; every problem at once.
pub fn validate_passenger(name: &str, document: &str) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    let name_len = name.trim().chars().count();
    if name_len == 0 || name_len > MAX_NAME_CHARS {
        errors.push(ValidationError::new(
            "name",
            format!("must be 1-{MAX_NAME_CHARS} characters"),
        ));
    } else if name.chars().any(char::is_control) {
        errors.push(ValidationError::new(
            "name",
            "must not contain control characters",
        ));
    }
    if document.is_empty()
        || document.len() > MAX_DOCUMENT_CHARS
        || !document
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        errors.push(ValidationError::new(
            "document",
            format!("must be 1-{MAX_DOCUMENT_CHARS} capital letters or digits"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What can be asked of a flight's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestCommand {
    /// Seat a passenger; `flight` is what the Flights context said about it.
    Add {
        flight: FlightForBooking,
        passenger_id: String,
        name: String,
        document: String,
    },
    Board {
        flight_id: String,
        passenger_id: String,
    },
    Remove {
        flight_id: String,
        passenger_id: String,
    },
    /// Before departure: only when every passenger has boarded.
    CloseBoarding { flight_id: String },
    /// Compensation when the departure could not be recorded.
    ReopenBoarding { flight_id: String },
    /// The flight was deleted: everyone leaves.
    RemoveAll { flight_id: String },
}

/// Why a passenger left a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    Requested,
    FlightDeleted,
}

/// What happened on a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ManifestEvent {
    PassengerAdded {
        passenger_id: String,
        flight_id: String,
        name: String,
        document: String,
    },
    PassengerBoarded {
        passenger_id: String,
        flight_id: String,
    },
    PassengerRemoved {
        passenger_id: String,
        flight_id: String,
        reason: RemovalReason,
    },
    BoardingClosed {
        flight_id: String,
        passengers: u32,
    },
    BoardingReopened {
        flight_id: String,
    },
}

impl DomainEvent for ManifestEvent {}

/// Why a manifest command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("passenger not found")]
    PassengerNotFound,
    #[error("invalid passenger: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    #[error("the flight has {}; passengers can no longer be added", status.as_str())]
    FlightNotScheduled { status: FlightStatus },
    #[error("boarding is closed for this flight")]
    BoardingClosed,
    #[error("all {capacity} seats are taken")]
    NoSeatsLeft { capacity: u32 },
    #[error("a passenger with document {document} is already on this flight")]
    DuplicateDocument { document: String },
    #[error("{boarded} of {total} passengers have boarded; every passenger must board first")]
    NotAllBoarded { total: u32, boarded: u32 },
}

impl DomainError for ManifestError {
    fn code(&self) -> ErrorCode {
        match self {
            ManifestError::PassengerNotFound => ErrorCode::NotFound,
            ManifestError::Invalid(_) => ErrorCode::ValidationFailed,
            _ => ErrorCode::RuleViolation,
        }
    }

    fn details(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            ManifestError::PassengerNotFound => return None,
            ManifestError::Invalid(errors) => json!({
                "errors": errors
                    .iter()
                    .map(|e| json!({"field": e.field, "reason": e.reason}))
                    .collect::<Vec<_>>()
            }),
            ManifestError::FlightNotScheduled { status } => {
                json!({"rule": "flight_not_scheduled", "status": status})
            }
            ManifestError::BoardingClosed => json!({"rule": "boarding_closed"}),
            ManifestError::NoSeatsLeft { capacity } => {
                json!({"rule": "no_seats_left", "capacity": capacity})
            }
            ManifestError::DuplicateDocument { document } => {
                json!({"rule": "duplicate_document", "document": document})
            }
            ManifestError::NotAllBoarded { total, boarded } => {
                json!({"rule": "passengers_not_boarded", "total": total, "boarded": boarded})
            }
        })
    }
}

/// One passenger on the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seat {
    pub name: String,
    pub document: String,
    pub boarded: bool,
    pub removed: bool,
}

/// A flight's manifest, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub passengers: BTreeMap<String, Seat>,
    pub boarding_closed: bool,
}

impl Manifest {
    /// Passengers on the flight now (not removed).
    pub fn active(&self) -> impl Iterator<Item = (&String, &Seat)> {
        self.passengers.iter().filter(|(_, s)| !s.removed)
    }

    fn seat(&self, passenger_id: &str) -> Result<&Seat, ManifestError> {
        self.passengers
            .get(passenger_id)
            .filter(|s| !s.removed)
            .ok_or(ManifestError::PassengerNotFound)
    }
}

impl Aggregate for Manifest {
    const CATEGORY: &'static str = "manifest";
    type Command = ManifestCommand;
    type Event = ManifestEvent;
    type Error = ManifestError;

    fn decide(&self, command: &ManifestCommand) -> Result<Vec<ManifestEvent>, ManifestError> {
        match command {
            ManifestCommand::Add {
                flight,
                passenger_id,
                name,
                document,
            } => {
                validate_passenger(name, document).map_err(ManifestError::Invalid)?;
                if flight.status != FlightStatus::Scheduled {
                    return Err(ManifestError::FlightNotScheduled {
                        status: flight.status,
                    });
                }
                if self.boarding_closed {
                    return Err(ManifestError::BoardingClosed);
                }
                if self.passengers.contains_key(passenger_id) {
                    // The same command decided again after a retry.
                    return Ok(vec![]);
                }
                if self.active().any(|(_, s)| s.document == *document) {
                    return Err(ManifestError::DuplicateDocument {
                        document: document.clone(),
                    });
                }
                if self.active().count() as u64 >= u64::from(flight.capacity) {
                    return Err(ManifestError::NoSeatsLeft {
                        capacity: flight.capacity,
                    });
                }
                Ok(vec![ManifestEvent::PassengerAdded {
                    passenger_id: passenger_id.clone(),
                    flight_id: flight.flight_id.clone(),
                    name: name.trim().to_owned(),
                    document: document.clone(),
                }])
            }
            ManifestCommand::Board {
                flight_id,
                passenger_id,
            } => {
                if self.seat(passenger_id)?.boarded {
                    return Ok(vec![]);
                }
                Ok(vec![ManifestEvent::PassengerBoarded {
                    passenger_id: passenger_id.clone(),
                    flight_id: flight_id.clone(),
                }])
            }
            ManifestCommand::Remove {
                flight_id,
                passenger_id,
            } => {
                self.seat(passenger_id)?;
                if self.boarding_closed {
                    return Err(ManifestError::BoardingClosed);
                }
                Ok(vec![ManifestEvent::PassengerRemoved {
                    passenger_id: passenger_id.clone(),
                    flight_id: flight_id.clone(),
                    reason: RemovalReason::Requested,
                }])
            }
            ManifestCommand::CloseBoarding { flight_id } => {
                if self.boarding_closed {
                    return Ok(vec![]);
                }
                let total = self.active().count() as u32;
                let boarded = self.active().filter(|(_, s)| s.boarded).count() as u32;
                if boarded < total {
                    return Err(ManifestError::NotAllBoarded { total, boarded });
                }
                Ok(vec![ManifestEvent::BoardingClosed {
                    flight_id: flight_id.clone(),
                    passengers: total,
                }])
            }
            ManifestCommand::ReopenBoarding { flight_id } => Ok(if self.boarding_closed {
                vec![ManifestEvent::BoardingReopened {
                    flight_id: flight_id.clone(),
                }]
            } else {
                vec![]
            }),
            ManifestCommand::RemoveAll { flight_id } => Ok(self
                .active()
                .map(|(id, _)| ManifestEvent::PassengerRemoved {
                    passenger_id: id.clone(),
                    flight_id: flight_id.clone(),
                    reason: RemovalReason::FlightDeleted,
                })
                .collect()),
        }
    }

    fn apply(&mut self, event: &ManifestEvent) {
        match event {
            ManifestEvent::PassengerAdded {
                passenger_id,
                name,
                document,
                ..
            } => {
                self.passengers.insert(
                    passenger_id.clone(),
                    Seat {
                        name: name.clone(),
                        document: document.clone(),
                        boarded: false,
                        removed: false,
                    },
                );
            }
            ManifestEvent::PassengerBoarded { passenger_id, .. } => {
                if let Some(s) = self.passengers.get_mut(passenger_id) {
                    s.boarded = true;
                }
            }
            ManifestEvent::PassengerRemoved { passenger_id, .. } => {
                if let Some(s) = self.passengers.get_mut(passenger_id) {
                    s.removed = true;
                }
            }
            ManifestEvent::BoardingClosed { .. } => self.boarding_closed = true,
            ManifestEvent::BoardingReopened { .. } => self.boarding_closed = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_domain::testing::Spec;

    use super::*;

    fn flight(capacity: u32) -> FlightForBooking {
        FlightForBooking {
            flight_id: "f1".into(),
            status: FlightStatus::Scheduled,
            capacity,
        }
    }

    fn add(id: &str, document: &str, capacity: u32) -> ManifestCommand {
        ManifestCommand::Add {
            flight: flight(capacity),
            passenger_id: id.into(),
            name: "Ada Lovelace".into(),
            document: document.into(),
        }
    }

    fn added(id: &str, document: &str) -> ManifestEvent {
        ManifestEvent::PassengerAdded {
            passenger_id: id.into(),
            flight_id: "f1".into(),
            name: "Ada Lovelace".into(),
            document: document.into(),
        }
    }

    fn boarded(id: &str) -> ManifestEvent {
        ManifestEvent::PassengerBoarded {
            passenger_id: id.into(),
            flight_id: "f1".into(),
        }
    }

    #[test]
    fn a_passenger_is_seated_while_seats_are_left() {
        Spec::<Manifest>::given_nothing()
            .when(add("p1", "P1234567", 2))
            .then([added("p1", "P1234567")]);
        Spec::<Manifest>::given([added("p1", "A1"), added("p2", "A2")])
            .when(add("p3", "A3", 2))
            .then_error(|e| *e == ManifestError::NoSeatsLeft { capacity: 2 });
    }

    #[test]
    fn a_removed_passenger_frees_the_seat_and_the_document() {
        let removed = ManifestEvent::PassengerRemoved {
            passenger_id: "p1".into(),
            flight_id: "f1".into(),
            reason: RemovalReason::Requested,
        };
        Spec::<Manifest>::given([added("p1", "A1"), removed])
            .when(add("p2", "A1", 1))
            .then([added("p2", "A1")]);
    }

    #[test]
    fn a_document_is_on_a_flight_once() {
        Spec::<Manifest>::given([added("p1", "A1")])
            .when(add("p2", "A1", 10))
            .then_error(|e| matches!(e, ManifestError::DuplicateDocument { .. }));
    }

    #[test]
    fn no_one_is_added_to_a_departed_flight_or_after_boarding_closed() {
        let mut departed = add("p1", "A1", 10);
        if let ManifestCommand::Add { flight, .. } = &mut departed {
            flight.status = FlightStatus::Departed;
        }
        Spec::<Manifest>::given_nothing()
            .when(departed)
            .then_error_code(ErrorCode::RuleViolation);
        Spec::<Manifest>::given([ManifestEvent::BoardingClosed {
            flight_id: "f1".into(),
            passengers: 0,
        }])
        .when(add("p1", "A1", 10))
        .then_error(|e| *e == ManifestError::BoardingClosed);
    }

    #[test]
    fn bad_names_and_documents_are_invalid() {
        for (name, document) in [("", "A1"), ("Ada", ""), ("Ada", "a-1"), ("A\u{7}", "A1")] {
            Spec::<Manifest>::given_nothing()
                .when(ManifestCommand::Add {
                    flight: flight(10),
                    passenger_id: "p1".into(),
                    name: name.into(),
                    document: document.into(),
                })
                .then_error_code(ErrorCode::ValidationFailed);
        }
    }

    #[test]
    fn boarding_closes_only_when_everyone_boarded() {
        let close = ManifestCommand::CloseBoarding {
            flight_id: "f1".into(),
        };
        Spec::<Manifest>::given([added("p1", "A1"), added("p2", "A2"), boarded("p1")])
            .when(close.clone())
            .then_error(|e| {
                *e == ManifestError::NotAllBoarded {
                    total: 2,
                    boarded: 1,
                }
            });
        Spec::<Manifest>::given([added("p1", "A1"), boarded("p1")])
            .when(close.clone())
            .then([ManifestEvent::BoardingClosed {
                flight_id: "f1".into(),
                passengers: 1,
            }]);
        // An empty flight may depart.
        Spec::<Manifest>::given_nothing()
            .when(close)
            .then([ManifestEvent::BoardingClosed {
                flight_id: "f1".into(),
                passengers: 0,
            }]);
    }

    #[test]
    fn boarding_twice_changes_nothing_and_unknown_passengers_are_not_found() {
        Spec::<Manifest>::given([added("p1", "A1"), boarded("p1")])
            .when(ManifestCommand::Board {
                flight_id: "f1".into(),
                passenger_id: "p1".into(),
            })
            .then_nothing();
        Spec::<Manifest>::given([added("p1", "A1")])
            .when(ManifestCommand::Board {
                flight_id: "f1".into(),
                passenger_id: "p9".into(),
            })
            .then_error_code(ErrorCode::NotFound);
    }

    #[test]
    fn deleting_the_flight_removes_everyone_still_on_it() {
        let removed = |id: &str, reason| ManifestEvent::PassengerRemoved {
            passenger_id: id.into(),
            flight_id: "f1".into(),
            reason,
        };
        Spec::<Manifest>::given([
            added("p1", "A1"),
            added("p2", "A2"),
            removed("p1", RemovalReason::Requested),
        ])
        .when(ManifestCommand::RemoveAll {
            flight_id: "f1".into(),
        })
        .then([removed("p2", RemovalReason::FlightDeleted)]);
    }
}
