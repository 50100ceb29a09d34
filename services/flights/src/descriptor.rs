//! Flights as the runtime sees it: its [`descriptor()`].

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use cairn_flightops_contracts::{
    CloseBoarding, GetFlightForBooking, RemoveFlightPassengers, ReopenBoarding,
};
use cairn_service::{Background, ConsumerGroup, Env, ServiceDescriptor, Started, Topology};
use utoipa::OpenApi as _;

use crate::{
    app::{
        DeleteFlight, DepartFlight, Flights, GetFlight, LandFlight, ListFlights, RescheduleFlight,
        ScheduleFlight,
    },
    http::{FlightsApi, FlightsOpenApi},
    messaging::{self, SERVICE},
    view::{FlightsProjection, OwnFlightsProjection},
};

/// The service that answers Flights' boarding commands.
const PASSENGERS: &str = "passengers";

/// Everything the runtime needs to run Flights.
pub fn descriptor() -> ServiceDescriptor {
    ServiceDescriptor::new(SERVICE, "Cairn flights", start)
        .command::<ScheduleFlight>()
        .command::<RescheduleFlight>()
        .command::<DepartFlight>()
        .command::<LandFlight>()
        .command::<DeleteFlight>()
        .query::<GetFlight>()
        .query::<ListFlights>()
        .exports_query::<GetFlightForBooking>()
        .imports_command::<CloseBoarding>(PASSENGERS)
        .imports_command::<ReopenBoarding>(PASSENGERS)
        .imports_command::<RemoveFlightPassengers>(PASSENGERS)
        .openapi(FlightsOpenApi::openapi)
        .publishes(messaging::public_events().expect("flights' public events are valid"))
        .shares("/api/flights", "flights")
        // In one process the read model counts passengers from the shared
        // log; on its own, from Passengers' public events (the consumer).
        .projections(|env| match env.topology {
            Topology::Shared => vec![Arc::new(FlightsProjection)],
            Topology::Own => vec![Arc::new(OwnFlightsProjection)],
        })
        .consumers(
            |layout| match layout.topology {
                Topology::Shared => Vec::new(),
                Topology::Own => vec![ConsumerGroup::new(
                    messaging::PASSENGER_EVENTS,
                    PASSENGERS,
                    messaging::PASSENGER_COUNTS,
                )],
            },
            |env| match env.topology {
                Topology::Shared => Vec::new(),
                Topology::Own => vec![messaging::passenger_events(
                    env.db.clone(),
                    env.broker.clone(),
                    env.live.clone(),
                )],
            },
        )
}

async fn start(env: Env) -> anyhow::Result<Started> {
    let store = env.store(SERVICE)?;
    let flights = Flights::register(
        store,
        &env.commands,
        &env.queries,
        env.projections(SERVICE)?,
    )
    .context("wiring the flights service")?;
    let sagas = flights.start_sagas(Duration::from_secs(1));
    let mut background: Vec<Box<dyn Background>> = vec![Box::new(sagas)];
    background.extend(env.push_live(crate::live::feed()));
    let live = crate::live::FlightsLive {
        projections: env.projections(SERVICE)?.clone(),
        commands: env.commands.clone(),
        queries: env.queries.clone(),
    };
    let api = crate::http::router(FlightsApi {
        flights,
        commands: env.commands.clone(),
        queries: env.queries.clone(),
    });
    Ok(Started {
        api,
        background,
        live: Some(Arc::new(live)),
        ..Started::default()
    })
}
