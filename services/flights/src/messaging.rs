//! What Flights tells other services: every flight event is public
//! (`cairn.<tenant>.flights.<type>`), published by the relay from the log.

use cairn_messaging::{MessagingError, PublicEvents};

/// The service name on the broker.
pub const SERVICE: &str = "flights";

/// Flights' public events: every event of the `flight` category.
pub fn public_events() -> Result<PublicEvents, MessagingError> {
    PublicEvents::new(
        SERVICE,
        ["flight"],
        [
            "FlightScheduled",
            "FlightRescheduled",
            "FlightDeparted",
            "FlightLanded",
            "FlightDeleted",
        ],
    )
}

/// The consumer group reading Passengers' events.
pub const PASSENGER_EVENTS: &str = "flights-passenger-events";

/// When Flights runs on its own, the passenger counts of its read model
/// come from Passengers' public events (in one process, the projection
/// reads them from the shared log instead).
pub fn passenger_events(
    db: cairn_projection::ReadDb,
    broker: std::sync::Arc<dyn cairn_messaging::Broker>,
) -> cairn_messaging::Consumer {
    let counts =
        cairn_messaging::ProjectionHandler(std::sync::Arc::new(crate::view::FlightsProjection));
    cairn_messaging::Consumer::new(PASSENGER_EVENTS, "passengers", db, broker)
        .on("PassengerAdded", counts.clone())
        .on("PassengerBoarded", counts.clone())
        .on("PassengerRemoved", counts)
}
