//! Passengers as the runtime sees it: its [`descriptor()`].

use std::sync::Arc;

use anyhow::Context as _;
use cairn_flightops_contracts::{
    CloseBoarding, GetFlightForBooking, RemoveFlightPassengers, ReopenBoarding,
};
use cairn_service::{ConsumerGroup, Env, ServiceDescriptor, Started};
use utoipa::OpenApi as _;

use crate::{
    app::{
        AddPassenger, BoardPassenger, GetPassenger, ListPassengers, Passengers, RemovePassenger,
    },
    http::{PassengersApi, PassengersOpenApi},
    messaging::{self, SERVICE},
    view::PassengersProjection,
};

/// The service that answers the booking query.
const FLIGHTS: &str = "flights";

/// Everything the runtime needs to run Passengers.
pub fn descriptor() -> ServiceDescriptor {
    ServiceDescriptor::new(SERVICE, "Cairn passengers", start)
        .command::<AddPassenger>()
        .command::<BoardPassenger>()
        .command::<RemovePassenger>()
        .query::<GetPassenger>()
        .query::<ListPassengers>()
        .exports_command::<CloseBoarding>()
        .exports_command::<ReopenBoarding>()
        .exports_command::<RemoveFlightPassengers>()
        .imports_query::<GetFlightForBooking>(FLIGHTS)
        .openapi(PassengersOpenApi::openapi)
        .publishes(messaging::public_events().expect("passengers' public events are valid"))
        .shares("/api/passengers", "passengers")
        .projections(|_| vec![Arc::new(PassengersProjection)])
        // A deleted flight's passengers go, from the log in one process or
        // from the broker on its own.
        .consumers(
            |_| {
                vec![ConsumerGroup::new(
                    messaging::FLIGHT_EVENTS,
                    FLIGHTS,
                    ["FlightDeleted"],
                )]
            },
            |env| {
                vec![messaging::flight_events(
                    env.db.clone(),
                    env.broker.clone(),
                    env.commands.clone(),
                )]
            },
        )
}

async fn start(env: Env) -> anyhow::Result<Started> {
    let store = env.store(SERVICE)?;
    let passengers = Passengers::register(
        store,
        &env.commands,
        &env.queries,
        env.projections(SERVICE)?,
    )
    .context("wiring the passengers service")?;
    let live = crate::live::PassengersLive {
        projections: env.projections(SERVICE)?.clone(),
        commands: env.commands.clone(),
        queries: env.queries.clone(),
    };
    let background = env.push_live(crate::live::feed()).into_iter().collect();
    let api = crate::http::router(PassengersApi {
        passengers,
        commands: env.commands.clone(),
        queries: env.queries.clone(),
    });
    Ok(Started {
        api,
        background,
        live: Some(std::sync::Arc::new(live)),
        ..Started::default()
    })
}
