//! The published language of the flight-operations reference system.
//!
//! Flights, Passengers and Audit are separate bounded contexts: each owns its
//! streams and read models and none reads another's tables. What one context
//! asks of another travels as the commands and queries defined here, over the
//! in-process buses of `cairn-domain` (and, later, a broker). Keeping them in
//! a crate of their own lets each service depend on the language without
//! depending on the other service.

use cairn_core::ValidationError;
use cairn_domain::{BusError, Command, Query, bus::Access};
use cairn_http::{ApiError, FieldError};
use serde::{Deserialize, Serialize};

/// The HTTP problem for a bus error: its stable code and message, the
/// invalid fields of a validation failure as `errors`, and a domain error's
/// details as extension members (`rule`, `status`...).
pub fn api_error(error: BusError) -> ApiError {
    let mut api = ApiError::new(error.code(), error.to_string());
    match (&error, error.details()) {
        (BusError::Validation(errors), _) => {
            api = api.with_errors(
                errors
                    .iter()
                    .map(|e| FieldError::new(e.field, e.reason.clone()))
                    .collect(),
            );
        }
        (_, Some(serde_json::Value::Object(details))) => {
            for (name, value) in details {
                if name == "errors" {
                    let fields = value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| {
                            FieldError::new(
                                e["field"].as_str().unwrap_or_default().to_owned(),
                                e["reason"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect();
                    api = api.with_errors(fields);
                } else {
                    api = api.with_extension(name, value);
                }
            }
        }
        _ => {}
    }
    api
}

/// The largest page of every list (`?limit=`), the same for every service.
pub const MAX_PAGE: u32 = 200;

/// The page size of a list that asks for none.
pub const DEFAULT_PAGE: u32 = 50;

/// A page of a list: `{"items":[…],"total":N,"next":cursor-or-null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// How many items match the filters, on every page.
    pub total: u64,
    /// Pass as `after` to get the next page; `null` on the last one.
    pub next: Option<String>,
}

/// What a command wrote: the aggregate, its new version and the global
/// position of its last event (for `X-Cairn-Position` and `?minPosition=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: Option<u64>,
    pub position: Option<u64>,
}

/// Where a flight is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FlightStatus {
    Scheduled,
    Departed,
    Landed,
}

impl FlightStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlightStatus::Scheduled => "scheduled",
            FlightStatus::Departed => "departed",
            FlightStatus::Landed => "landed",
        }
    }
}

/// What the Passengers context needs to know about a flight to seat someone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlightForBooking {
    pub flight_id: String,
    pub status: FlightStatus,
    pub capacity: u32,
}

/// Asked of Flights: the flight's booking facts, from its event stream (not
/// a read model), or `None` if it does not exist or was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetFlightForBooking {
    pub flight_id: String,
}

impl Query for GetFlightForBooking {
    const NAME: &'static str = "flights.for_booking";
    const ACCESS: Access = Access::Internal;
    type Output = Option<FlightForBooking>;

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        non_empty("flightId", &self.flight_id)
    }
}

/// Sent to Passengers before a departure: closes boarding for the flight if
/// every passenger on it has boarded, and refuses (`rule_violation`,
/// `passengers_not_boarded`) otherwise. Once closed, no passenger can be
/// added. Answers the global position of the closing event, if one was
/// written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseBoarding {
    pub flight_id: String,
}

impl Command for CloseBoarding {
    const NAME: &'static str = "passengers.close_boarding";
    const ACCESS: Access = Access::Internal;
    type Output = Option<u64>;

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        non_empty("flightId", &self.flight_id)
    }
}

/// Sent to Passengers when a departure could not be recorded after boarding
/// was closed: the compensation that opens boarding again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReopenBoarding {
    pub flight_id: String,
}

impl Command for ReopenBoarding {
    const NAME: &'static str = "passengers.reopen_boarding";
    const ACCESS: Access = Access::Internal;
    type Output = Option<u64>;

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        non_empty("flightId", &self.flight_id)
    }
}

/// Sent to Passengers when a flight is deleted: removes every passenger of
/// the flight. Idempotent. Answers the global position of the last event
/// written, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveFlightPassengers {
    pub flight_id: String,
}

impl Command for RemoveFlightPassengers {
    const NAME: &'static str = "passengers.remove_flight_passengers";
    const ACCESS: Access = Access::Internal;
    type Output = Option<u64>;

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        non_empty("flightId", &self.flight_id)
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), Vec<ValidationError>> {
    if value.trim().is_empty() {
        Err(vec![ValidationError::new(field, "must not be empty")])
    } else {
        Ok(())
    }
}
