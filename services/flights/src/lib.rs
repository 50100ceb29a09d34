//! The Flights bounded context: a flight's schedule and its life from
//! scheduled to departed to landed, or deleted.

pub mod app;
pub mod departure;
pub mod descriptor;
pub mod domain;
pub mod http;
pub mod live;
pub mod messaging;
pub mod view;

use cairn_core::{DecodeError, Upcasters, check_payload};

/// Checks an event payload as this service will read it: `None` when the
/// type is none of its events, else whether it decodes (e.g. "missing
/// field `flightId`"). For whoever writes events from outside the service.
pub fn check_event(
    event_type: &str,
    schema_version: u32,
    data: &serde_json::Value,
) -> Option<Result<(), DecodeError>> {
    let upcasters = Upcasters::new();
    check_payload::<domain::FlightEvent>(&upcasters, event_type, schema_version, data).or_else(
        || check_payload::<departure::DepartureEvent>(&upcasters, event_type, schema_version, data),
    )
}
