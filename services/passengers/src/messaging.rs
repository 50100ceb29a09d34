//! What Passengers tells other services, and how it reacts to Flights.
//!
//! Every manifest event is public (`cairn.<tenant>.passengers.<type>`).
//! Passengers consumes Flights' events: a `FlightDeleted` removes the
//! flight's passengers. Flights also asks for that removal directly when it
//! deletes a flight, so a reader sees it at once; the consumer makes it
//! certain even when that request was lost (Passengers down, a crash in
//! between). Removing passengers of a flight that has none left changes
//! nothing, so doing it twice is harmless.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{ErrorCode, RequestContext};
use cairn_domain::CommandBus;
use cairn_flightops_contracts::RemoveFlightPassengers;
use cairn_messaging::{
    Broker, Consumer, EventHandler, HandlerError, IntegrationEvent, MessagingError, PublicEvents,
};
use cairn_service_db::ServiceDb;
use sqlx::{Any, Transaction};

/// The service name on the broker.
pub const SERVICE: &str = "passengers";
/// The consumer group reading Flights' events.
pub const FLIGHT_EVENTS: &str = "passengers-flight-events";

/// Passengers' public events: every event of the `manifest` category.
pub fn public_events() -> Result<PublicEvents, MessagingError> {
    PublicEvents::new(
        SERVICE,
        ["manifest"],
        [
            "PassengerAdded",
            "PassengerBoarded",
            "PassengerRemoved",
            "BoardingClosed",
            "BoardingReopened",
        ],
    )
}

/// The consumer of Flights' events, keeping its inbox in `db` and sending
/// its commands on `commands`.
pub fn flight_events(db: ServiceDb, broker: Arc<dyn Broker>, commands: CommandBus) -> Consumer {
    Consumer::new(FLIGHT_EVENTS, "flights", db, broker).on(
        "FlightDeleted",
        RemovePassengersOfDeletedFlight { commands },
    )
}

/// `FlightDeleted` → `RemoveFlightPassengers`.
#[derive(Debug)]
struct RemovePassengersOfDeletedFlight {
    commands: CommandBus,
}

#[async_trait]
impl EventHandler for RemovePassengersOfDeletedFlight {
    async fn handle(
        &self,
        _tx: &mut Transaction<'static, Any>,
        event: &IntegrationEvent,
    ) -> Result<(), HandlerError> {
        let Some(flight_id) = event.subject.as_str().strip_prefix("flight-") else {
            return Err(HandlerError::Reject(format!(
                "FlightDeleted on stream {} names no flight",
                event.subject
            )));
        };
        let mut ctx = RequestContext::new(event.tenantid.clone())
            .with_actor("passengers")
            .with_causation_id(event.id.to_string())
            .as_service(SERVICE);
        if let Some(correlation) = &event.correlationid {
            ctx = ctx.with_correlation_id(correlation.clone());
        }
        let command = RemoveFlightPassengers {
            flight_id: flight_id.to_owned(),
        };
        match self.commands.send(&ctx, command).await {
            Ok(_) => Ok(()),
            Err(e) => match e.code() {
                ErrorCode::ValidationFailed
                | ErrorCode::InvalidInput
                | ErrorCode::RuleViolation => Err(HandlerError::Reject(e.to_string())),
                _ => Err(HandlerError::Retry(e.to_string())),
            },
        }
    }
}
