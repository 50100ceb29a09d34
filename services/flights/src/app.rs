//! The Flights application layer: the commands and queries this context
//! answers on the buses, and how each one runs.
//!
//! A departure crosses contexts: the Passengers context must first close
//! boarding (it refuses unless every passenger has boarded, and once closed
//! no passenger can be added), then the flight departs; if the departure
//! cannot be recorded, boarding is opened again. Deleting a flight asks the
//! Passengers context to remove the flight's passengers.

use std::{sync::Arc, time::Duration};

use cairn_core::{ErrorCode, RequestContext, ValidationError};
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

use crate::{
    domain::{Flight, FlightCommand, Schedule},
    view::{self, FlightFilter, FlightView},
};

/// Largest page of `GET /api/flights`.
pub const MAX_PAGE: u32 = 200;

/// Schedule a new flight; answers its id with what was written.
#[derive(Debug, Clone)]
pub struct ScheduleFlight {
    pub schedule: Schedule,
}

impl Command for ScheduleFlight {
    const NAME: &'static str = "flights.schedule";
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
    type Output = Written;
}

/// One flight from the read model.
#[derive(Debug, Clone)]
pub struct GetFlight {
    pub flight_id: String,
}

impl Query for GetFlight {
    const NAME: &'static str = "flights.get";
    type Output = Option<FlightView>;
}

/// A page of flights from the read model.
#[derive(Debug, Clone)]
pub struct ListFlights {
    pub filter: FlightFilter,
}

impl Query for ListFlights {
    const NAME: &'static str = "flights.list";
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
#[derive(Debug, Clone)]
pub struct Flights {
    flights: AggregateStore<Flight>,
    commands: CommandBus,
    projections: Projections,
}

impl Flights {
    /// Registers this context's handlers on the buses.
    pub fn register(
        store: Arc<dyn EventStore>,
        commands: &CommandBus,
        queries: &QueryBus,
        projections: &Projections,
    ) -> Result<Self, DuplicateHandler> {
        let this = Self {
            flights: AggregateStore::with_options(
                store,
                AggregateOptions::default().with_snapshot_every(50),
            ),
            commands: commands.clone(),
            projections: projections.clone(),
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
                view::get(s.projections.db().pool(), &ctx.tenant, &q.flight_id)
                    .await
                    .map_err(read_model_error)
            }
        })?;
        let s = this.clone();
        queries.register_fn(move |ctx, q: ListFlights| {
            let s = s.clone();
            async move {
                view::list(s.projections.db().pool(), &ctx.tenant, &q.filter)
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

    /// Waits until the flights read model has reached `position`.
    pub async fn caught_up(&self, position: u64, timeout: Duration) -> bool {
        self.projections
            .wait_for(view::PROJECTION, position, timeout)
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
        self.commands
            .send(
                ctx,
                CloseBoarding {
                    flight_id: id.to_owned(),
                },
            )
            .await?;
        let command = FlightCommand::Depart { at: Utc::now() };
        match self.flights.execute(ctx, id, c.expected, &command).await {
            Ok(outcome) => Ok(Written {
                version: outcome.version,
                position: outcome.position,
            }),
            Err(e) => {
                // Compensate: the flight did not depart, so boarding opens again.
                let reopen = ReopenBoarding {
                    flight_id: id.to_owned(),
                };
                if let Err(undo) = self.commands.send(ctx, reopen).await {
                    tracing::error!(flight = id, error = %undo, "could not reopen boarding after a failed departure");
                }
                Err(e.into())
            }
        }
    }

    async fn delete(&self, ctx: &RequestContext, c: DeleteFlight) -> Result<Written, BusError> {
        let id = checked_id(&c.flight_id)?;
        let outcome = self
            .flights
            .execute(ctx, id, c.expected, &FlightCommand::Delete)
            .await?;
        let removed = self
            .commands
            .send(
                ctx,
                RemoveFlightPassengers {
                    flight_id: id.to_owned(),
                },
            )
            .await?;
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
