//! The services of the platform, each by its descriptor: the one list
//! `cairn up` and `cairn run` loop over.

use cairn_service::ServiceDescriptor;

/// Flights, Passengers, Audit and Identity, in the order they start in one
/// process (and their OpenAPI documents merge).
pub fn all() -> Vec<ServiceDescriptor> {
    vec![
        cairn_flights::descriptor::descriptor(),
        cairn_passengers::descriptor::descriptor(),
        cairn_audit::descriptor(),
        cairn_identity::descriptor::descriptor(),
    ]
}
