//! The Flights application layer: the commands and queries this context
//! answers on the buses, and how each one runs.
//!
//! A departure crosses contexts: the Passengers context must first close
//! boarding (it refuses unless every passenger has boarded, and once closed
//! no passenger can be added), then the flight departs; if the departure
//! cannot be recorded, boarding is opened again. It runs as the departure
//! saga ([`crate::departure`]), so a crash in between is finished or undone
//! on the saga's deadline. Deleting a flight asks the
//! Passengers context to remove the flight's passengers.

use std::{sync::Arc, time::Duration};

use cairn_auth::permissions::*;
use cairn_core::{ErrorCode, RequestContext, ValidationError};
use cairn_domain::bus::Access;
use cairn_domain::{
    AggregateOptions, AggregateStore, BusError, Command, CommandBus, Query, QueryBus,
    bus::DuplicateHandler,
};
use cairn_flightops_contracts::{
    CloseBoarding, FlightForBooking, GetFlightForBooking, Page, RemoveFlightPassengers,
    ReopenBoarding, Written,
};
use cairn_projection::Projections;
use cairn_store::EventStore;
use chrono::{DateTime, Utc};

use cairn_flightops_contracts::FlightStatus;
use cairn_saga::{Dispatcher, SagaOptions, SagaRunner, TimeoutsHandle};

use crate::{
    departure::{Departure, DepartureCommand, DepartureInput},
    domain::{Flight, FlightCommand, Schedule},
    view::{self, FlightFilter, FlightView},
};

/// Largest page of `GET /api/flights`.
pub use cairn_flightops_contracts::MAX_PAGE;

/// Schedule a new flight; answers its id with what was written.
#[derive(Debug, Clone)]
pub struct ScheduleFlight {
    pub schedule: Schedule,
}

impl Command for ScheduleFlight {
    const NAME: &'static str = "flights.schedule";
    const ACCESS: Access = Access::Permission(FLIGHTS_WRITE);
    type Output = (String, Written);

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        self.schedule.validate()
    }
}

/// Move a scheduled flight's times.
#[derive(Debug, Clone)]
pub struct RescheduleFlight {
    pub flight_id: String,
    pub departure: DateTime<Utc>,
    pub arrival: DateTime<Utc>,
    /// The client's `If-Match`.
    pub expected: Option<u64>,
}

impl Command for RescheduleFlight {
    const NAME: &'static str = "flights.reschedule";
    const ACCESS: Access = Access::Permission(FLIGHTS_WRITE);
    type Output = Written;
}

/// Record a departure (only when every passenger has boarded).
#[derive(Debug, Clone)]
pub struct DepartFlight {
    pub flight_id: String,
    pub expected: Option<u64>,
}

impl Command for DepartFlight {
    const NAME: &'static str = "flights.depart";
    const ACCESS: Access = Access::Permission(FLIGHTS_WRITE);
    type Output = Written;
}

/// Record a landing (only after departure).
#[derive(Debug, Clone)]
pub struct LandFlight {
    pub flight_id: String,
    pub expected: Option<u64>,
}

impl Command for LandFlight {
    const NAME: &'static str = "flights.land";
    const ACCESS: Access = Access::Permission(FLIGHTS_WRITE);
    type Output = Written;
}

/// Delete a flight and, through the Passengers context, its passengers.
#[derive(Debug, Clone)]
pub struct DeleteFlight {
    pub flight_id: String,
    pub expected: Option<u64>,
}

impl Command for DeleteFlight {
    const NAME: &'static str = "flights.delete";
    const ACCESS: Access = Access::Permission(FLIGHTS_WRITE);
    type Output = Written;
}

/// One flight from the read model.
#[derive(Debug, Clone)]
pub struct GetFlight {
    pub flight_id: String,
}

impl Query for GetFlight {
    const NAME: &'static str = "flights.get";
    const ACCESS: Access = Access::Permission(FLIGHTS_READ);
    type Output = Option<FlightView>;
}

/// A page of flights from the read model.
#[derive(Debug, Clone)]
pub struct ListFlights {
    pub filter: FlightFilter,
}

impl Query for ListFlights {
    const NAME: &'static str = "flights.list";
    const ACCESS: Access = Access::Permission(FLIGHTS_READ);
    type Output = Page<FlightView>;

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        if self.filter.limit == 0 || self.filter.limit > MAX_PAGE {
            errors.push(ValidationError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        if let Some(s) = &self.filter.status
            && !["scheduled", "departed", "landed"].contains(&s.as_str())
        {
            errors.push(ValidationError::new(
                "status",
                "must be scheduled, departed or landed",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The Flights context, wired to a store, the buses and its read model.
#[derive(Clone)]
pub struct Flights {
    flights: AggregateStore<Flight>,
    commands: CommandBus,
    projections: Projections,
    departures: Arc<SagaRunner<Departure>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("projections", &self.projections)
            .finish_non_exhaustive()
    }
}

/// Carries the departure saga's commands out: closing and reopening
/// boarding on the bus (in this process or forwarded to Passengers), the
/// departure on the flight itself.
struct DepartureDispatcher {
    flights: AggregateStore<Flight>,
    commands: CommandBus,
}

#[async_trait::async_trait]
impl Dispatcher<Departure> for DepartureDispatcher {
    async fn dispatch(
        &self,
        ctx: &RequestContext,
        _saga_id: &str,
        command: DepartureCommand,
    ) -> DepartureInput {
        // Passengers' boarding commands are internal: sent as this service,
        // for the same actor.
        let ctx = &ctx.clone().as_service(crate::messaging::SERVICE);
        match command {
            DepartureCommand::CloseBoarding { flight_id } => DepartureInput::BoardingClosed(
                self.commands
                    .send(ctx, CloseBoarding { flight_id })
                    .await
                    .map(|_| ()),
            ),
            DepartureCommand::ReopenBoarding { flight_id } => DepartureInput::BoardingReopened(
                self.commands
                    .send(ctx, ReopenBoarding { flight_id })
                    .await
                    .map(|_| ()),
            ),
            DepartureCommand::Depart {
                flight_id,
                expected,
            } => {
                let command = FlightCommand::Depart { at: Utc::now() };
                match self
                    .flights
                    .execute(ctx, &flight_id, expected, &command)
                    .await
                {
                    Ok(outcome) => DepartureInput::Departed(Ok(Written {
                        version: outcome.version,
                        position: outcome.position,
                    })),
                    Err(e) => {
                        // Tried again after a crash: a flight that already
                        // departed is the departure done.
                        if let Ok(Some(loaded)) = self.flights.load(ctx, &flight_id).await
                            && loaded.state.live_status() == Some(FlightStatus::Departed)
                        {
                            return DepartureInput::Departed(Ok(Written {
                                version: Some(loaded.version),
                                position: None,
                            }));
                        }
                        DepartureInput::Departed(Err(e.into()))
                    }
                }
            }
        }
    }
}

impl Flights {
    /// Registers this context's handlers on the buses.
    pub fn register(
        store: Arc<dyn EventStore>,
        commands: &CommandBus,
        queries: &QueryBus,
        projections: &Projections,
    ) -> Result<Self, DuplicateHandler> {
        let flights = AggregateStore::with_options(
            store.clone(),
            AggregateOptions::default().with_snapshot_every(50),
        );
        let departures = SagaRunner::new(
            store,
            projections.db().clone(),
            DepartureDispatcher {
                flights: flights.clone(),
                commands: commands.clone(),
            },
            SagaOptions::default(),
        );
        let this = Self {
            flights,
            commands: commands.clone(),
            projections: projections.clone(),
            departures: Arc::new(departures),
        };
        let s = this.clone();
        commands.register_fn(move |ctx, c: ScheduleFlight| {
            let s = s.clone();
            async move { s.schedule(&ctx, c).await }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: RescheduleFlight| {
            let s = s.clone();
            async move {
                let command = FlightCommand::Reschedule {
                    departure: c.departure,
                    arrival: c.arrival,
                };
                s.run(&ctx, &c.flight_id, c.expected, &command).await
            }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: DepartFlight| {
            let s = s.clone();
            async move { s.depart(&ctx, c).await }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: LandFlight| {
            let s = s.clone();
            async move {
                let command = FlightCommand::Land { at: Utc::now() };
                s.run(&ctx, &c.flight_id, c.expected, &command).await
            }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: DeleteFlight| {
            let s = s.clone();
            async move { s.delete(&ctx, c).await }
        })?;
        let s = this.clone();
        queries.register_fn(move |ctx, q: GetFlight| {
            let s = s.clone();
            async move {
                view::get(s.projections.db(), &ctx.tenant, &q.flight_id)
                    .await
                    .map_err(read_model_error)
            }
        })?;
        let s = this.clone();
        queries.register_fn(move |ctx, q: ListFlights| {
            let s = s.clone();
            async move {
                view::list(s.projections.db(), &ctx.tenant, &q.filter)
                    .await
                    .map_err(read_model_error)
            }
        })?;
        let s = this.clone();
        queries.register_fn(move |ctx, q: GetFlightForBooking| {
            let s = s.clone();
            async move { s.for_booking(&ctx, &q.flight_id).await }
        })?;
        Ok(this)
    }

    /// Whether an event has been written at `position`: one that has not
    /// cannot be waited for.
    pub async fn written(&self, position: u64) -> Result<bool, cairn_store::StoreError> {
        self.projections.written(position).await
    }

    /// Waits until the flights read model has reached `position`.
    pub async fn caught_up(&self, position: u64, timeout: Duration) -> bool {
        self.projections
            .wait_for(view::PROJECTION, position, timeout)
            .await
    }

    /// Waits until the flights read model has reached `position`, and says
    /// where it stands if it has not: still on its way, or failed.
    pub async fn catch_up(&self, position: u64, timeout: Duration) -> cairn_projection::CatchUp {
        self.projections
            .catch_up(view::PROJECTION, position, timeout)
            .await
    }

    async fn schedule(
        &self,
        ctx: &RequestContext,
        c: ScheduleFlight,
    ) -> Result<(String, Written), BusError> {
        let id = uuid::Uuid::now_v7().to_string();
        let command = FlightCommand::Schedule {
            flight_id: id.clone(),
            schedule: c.schedule,
        };
        let written = self.run(ctx, &id, None, &command).await?;
        Ok((id, written))
    }

    async fn run(
        &self,
        ctx: &RequestContext,
        id: &str,
        expected: Option<u64>,
        command: &FlightCommand,
    ) -> Result<Written, BusError> {
        let id = checked_id(id)?;
        let outcome = self.flights.execute(ctx, id, expected, command).await?;
        Ok(Written {
            version: outcome.version,
            position: outcome.position,
        })
    }

    async fn depart(&self, ctx: &RequestContext, c: DepartFlight) -> Result<Written, BusError> {
        let id = checked_id(&c.flight_id)?;
        // Refuse early, before touching the other context, when the flight
        // cannot depart anyway (unknown, deleted, already departed, stale
        // If-Match).
        let loaded = self
            .flights
            .load(ctx, id)
            .await?
            .filter(|l| l.state.live_status().is_some())
            .ok_or_else(|| not_found(id))?;
        if let Some(expected) = c.expected
            && expected != loaded.version
        {
            return Err(BusError::Handler {
                code: ErrorCode::PreconditionFailed,
                message: format!(
                    "the flight is at version {}, the request expected {expected}",
                    loaded.version
                ),
                details: Some(serde_json::json!({"expected": expected, "actual": loaded.version})),
            });
        }
        loaded
            .state
            .clone()
            .into_departure_check()
            .map_err(|e| BusError::domain(&e))?;
        // One saga instance per attempt: a refused departure can be tried
        // again later as a new instance.
        let saga_id = format!("{id}.{}", uuid::Uuid::now_v7().simple());
        let start = DepartureInput::Start {
            flight_id: id.to_owned(),
            expected: c.expected,
        };
        let departure = self
            .departures
            .feed(ctx, &saga_id, start)
            .await
            .map_err(|e| BusError::handler(e.code(), e.to_string()))?;
        match departure.outcome() {
            Some(Ok(written)) => Ok(*written),
            Some(Err(refusal)) => Err(refusal.to_bus()),
            None => Err(match departure.compensating() {
                // The departure failed and boarding is still being reopened
                // (the saga keeps trying on its deadline).
                Some(refusal) => refusal.to_bus(),
                None => BusError::handler(
                    ErrorCode::Timeout,
                    "the departure is still in progress; it completes or is undone on its own",
                ),
            }),
        }
    }

    /// Starts firing the departure saga's deadlines (until the handle is
    /// shut down or dropped): how a departure interrupted by a crash
    /// completes or is undone.
    pub fn start_sagas(&self, poll: Duration) -> TimeoutsHandle {
        self.departures.clone().start_timeouts(poll)
    }

    async fn delete(&self, ctx: &RequestContext, c: DeleteFlight) -> Result<Written, BusError> {
        let id = checked_id(&c.flight_id)?;
        let outcome = self
            .flights
            .execute(ctx, id, c.expected, &FlightCommand::Delete)
            .await?;
        // Passengers removes the flight's passengers when it receives
        // FlightDeleted; asking now as well lets a reader see it at once.
        // If Passengers cannot answer, the deletion still stands.
        let removed = match self
            .commands
            .send(
                &ctx.clone().as_service(crate::messaging::SERVICE),
                RemoveFlightPassengers {
                    flight_id: id.to_owned(),
                },
            )
            .await
        {
            Ok(position) => position,
            Err(e) => {
                tracing::warn!(flight = id, error = %e, "passengers not removed yet; FlightDeleted will remove them");
                None
            }
        };
        Ok(Written {
            version: outcome.version,
            position: outcome.position.max(removed),
        })
    }

    async fn for_booking(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Option<FlightForBooking>, BusError> {
        let Ok(id) = checked_id(id) else {
            return Ok(None);
        };
        let loaded = match self.flights.load(ctx, id).await {
            Ok(loaded) => loaded,
            Err(e) if e.code() == ErrorCode::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        Ok(loaded.and_then(|l| {
            let status = l.state.live_status()?;
            let capacity = l.state.schedule.as_ref()?.capacity;
            Some(FlightForBooking {
                flight_id: id.to_owned(),
                status,
                capacity,
            })
        }))
    }
}

impl Flight {
    /// Whether a departure could be recorded now (before asking the
    /// Passengers context to close boarding).
    fn into_departure_check(self) -> Result<(), crate::domain::FlightError> {
        use cairn_domain::Aggregate;
        self.decide(&FlightCommand::Depart { at: Utc::now() })
            .map(drop)
    }
}

/// Flight ids are UUIDs; anything else cannot name a flight.
fn checked_id(id: &str) -> Result<&str, BusError> {
    match uuid::Uuid::try_parse(id) {
        Ok(_) => Ok(id),
        Err(_) => Err(not_found(id)),
    }
}

fn not_found(id: &str) -> BusError {
    BusError::handler(ErrorCode::NotFound, format!("flight {id} not found"))
}

fn read_model_error(e: sqlx::Error) -> BusError {
    tracing::error!(error = %e, "flights read model query failed");
    BusError::handler(
        ErrorCode::Unavailable,
        "the flights read model is unavailable",
    )
}
