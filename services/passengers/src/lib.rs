//! The Passengers bounded context: who flies on which flight, and who has
//! boarded.

pub mod app;
pub mod descriptor;
pub mod domain;
pub mod http;
pub mod live;
pub mod messaging;
pub mod view;

use cairn_core::{DecodeError, Upcasters, check_payload};

/// Checks an event payload as this service will read it: `None` when the
/// type is none of its events, else whether it decodes. For whoever writes
/// events from outside the service.
pub fn check_event(
    event_type: &str,
    schema_version: u32,
    data: &serde_json::Value,
) -> Option<Result<(), DecodeError>> {
    check_payload::<domain::ManifestEvent>(&Upcasters::new(), event_type, schema_version, data)
}
