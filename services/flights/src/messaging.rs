//! What Flights tells other services: every flight event is public
//! (`cairn.<tenant>.flights.<type>`), published by the relay from the log.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_messaging::{
    Broker, Consumer, EventHandler, HandlerError, IntegrationEvent, MessagingError, PublicEvents,
};
use cairn_projection::{Projection, ProjectionError};
use cairn_service_db::ServiceDb;
use sqlx::{Any, Transaction};

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

/// The Passengers events that move a flight's passenger counts.
pub const PASSENGER_COUNTS: [&str; 3] = ["PassengerAdded", "PassengerBoarded", "PassengerRemoved"];

/// When Flights runs on its own, the passenger counts of its read model
/// come from Passengers' public events (in one process, the projection
/// reads them from the shared log instead).
///
/// With `live`, each count committed resets the flight's live resources
/// ([`crate::live::feed`] says which).
pub fn passenger_events(
    db: ServiceDb,
    broker: Arc<dyn Broker>,
    live: Option<cairn_live::Publisher>,
) -> Consumer {
    let counts = cairn_service::live::Announce {
        handler: ProjectionHandler(Arc::new(crate::view::FlightsProjection)),
        publisher: live,
        touched: crate::live::feed().touched,
    };
    PASSENGER_COUNTS.into_iter().fold(
        Consumer::new(PASSENGER_EVENTS, "passengers", db, broker),
        |consumer, event_type| consumer.on(event_type, counts.clone()),
    )
}

/// Feeds another service's events to a [`Projection`]: its read model is
/// then kept from integration events, in the consumer's transaction (so
/// with the inbox's exactly-once effect). A poison event is rejected (dead
/// letter at once); a failed statement is retried.
#[derive(Debug)]
pub struct ProjectionHandler<P>(pub Arc<P>);

impl<P> Clone for ProjectionHandler<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[async_trait]
impl<P: Projection> EventHandler for ProjectionHandler<P> {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        let recorded = event
            .to_recorded()
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        self.0.apply(tx, &recorded).await.map_err(|e| match e {
            ProjectionError::Poison(reason) => HandlerError::Reject(reason),
            other => HandlerError::Retry(other.to_string()),
        })
    }
}
