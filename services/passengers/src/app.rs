//! The Passengers application layer: the commands and queries this context
//! answers on the buses.
//!
//! Adding a passenger asks the Flights context (a query on the bus) whether
//! the flight exists, its status and capacity, then decides on the flight's
//! manifest. Flights asks this context to close boarding before a
//! departure, to reopen it if the departure failed, and to remove a deleted
//! flight's passengers.

use std::{sync::Arc, time::Duration};

use cairn_auth::permissions::*;
use cairn_core::{ErrorCode, RequestContext, ValidationError};
use cairn_domain::bus::Access;
use cairn_domain::{
    AggregateOptions, AggregateStore, BusError, Command, CommandBus, Query, QueryBus,
    bus::DuplicateHandler,
};
use cairn_flightops_contracts::{
    CloseBoarding, GetFlightForBooking, Page, RemoveFlightPassengers, ReopenBoarding, Written,
};
use cairn_projection::Projections;
use cairn_store::{EventStore, ReadStream};

use crate::{
    domain::{Manifest, ManifestCommand, validate_passenger},
    view::{self, PassengerView},
};

/// Largest page of `GET /api/passengers`.
pub use cairn_flightops_contracts::MAX_PAGE;

/// Seat a passenger on a flight; answers the passenger's id.
#[derive(Debug, Clone)]
pub struct AddPassenger {
    pub flight_id: String,
    pub name: String,
    pub document: String,
}

impl Command for AddPassenger {
    const NAME: &'static str = "passengers.add";
    const ACCESS: Access = Access::Permission(PASSENGERS_WRITE);
    type Output = (String, Written);

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        validate_passenger(&self.name, &self.document)
    }
}

/// Board a passenger.
#[derive(Debug, Clone)]
pub struct BoardPassenger {
    pub passenger_id: String,
}

impl Command for BoardPassenger {
    const NAME: &'static str = "passengers.board";
    const ACCESS: Access = Access::Permission(PASSENGERS_WRITE);
    type Output = Written;
}

/// Take a passenger off their flight.
#[derive(Debug, Clone)]
pub struct RemovePassenger {
    pub passenger_id: String,
}

impl Command for RemovePassenger {
    const NAME: &'static str = "passengers.remove";
    const ACCESS: Access = Access::Permission(PASSENGERS_WRITE);
    type Output = Written;
}

/// One passenger from the read model.
#[derive(Debug, Clone)]
pub struct GetPassenger {
    pub passenger_id: String,
}

impl Query for GetPassenger {
    const NAME: &'static str = "passengers.get";
    const ACCESS: Access = Access::Permission(PASSENGERS_READ);
    type Output = Option<PassengerView>;
}

/// A page of passengers, optionally of one flight.
#[derive(Debug, Clone)]
pub struct ListPassengers {
    pub flight_id: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
}

impl Query for ListPassengers {
    const NAME: &'static str = "passengers.list";
    const ACCESS: Access = Access::Permission(PASSENGERS_READ);
    type Output = Page<PassengerView>;

    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(vec![ValidationError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            )]);
        }
        Ok(())
    }
}

/// The Passengers context, wired to a store, the buses and its read model.
#[derive(Debug, Clone)]
pub struct Passengers {
    manifests: AggregateStore<Manifest>,
    queries: QueryBus,
    projections: Projections,
    head: tokio::sync::watch::Receiver<u64>,
}

impl Passengers {
    /// Registers this context's handlers on the buses.
    pub fn register(
        store: Arc<dyn EventStore>,
        commands: &CommandBus,
        queries: &QueryBus,
        projections: &Projections,
    ) -> Result<Self, DuplicateHandler> {
        let this = Self {
            manifests: AggregateStore::with_options(
                store.clone(),
                AggregateOptions::default()
                    .with_snapshot_every(100)
                    .with_max_retries(20),
            ),
            queries: queries.clone(),
            projections: projections.clone(),
            head: store.head(),
        };
        let s = this.clone();
        commands.register_fn(move |ctx, c: AddPassenger| {
            let s = s.clone();
            async move { s.add(&ctx, c).await }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: BoardPassenger| {
            let s = s.clone();
            async move {
                let board = |flight_id, passenger_id| ManifestCommand::Board {
                    flight_id,
                    passenger_id,
                };
                s.on_passenger(&ctx, c.passenger_id, board).await
            }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: RemovePassenger| {
            let s = s.clone();
            async move {
                let remove = |flight_id, passenger_id| ManifestCommand::Remove {
                    flight_id,
                    passenger_id,
                };
                s.on_passenger(&ctx, c.passenger_id, remove).await
            }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: CloseBoarding| {
            let s = s.clone();
            async move {
                let close = |flight_id| ManifestCommand::CloseBoarding { flight_id };
                s.on_flight(&ctx, c.flight_id, close).await
            }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: ReopenBoarding| {
            let s = s.clone();
            async move {
                let reopen = |flight_id| ManifestCommand::ReopenBoarding { flight_id };
                s.on_flight(&ctx, c.flight_id, reopen).await
            }
        })?;
        let s = this.clone();
        commands.register_fn(move |ctx, c: RemoveFlightPassengers| {
            let s = s.clone();
            async move {
                let remove_all = |flight_id| ManifestCommand::RemoveAll { flight_id };
                s.on_flight(&ctx, c.flight_id, remove_all).await
            }
        })?;
        let s = this.clone();
        queries.register_fn(move |ctx, q: GetPassenger| {
            let s = s.clone();
            async move {
                view::get(s.projections.db(), &ctx.tenant, &q.passenger_id)
                    .await
                    .map_err(read_model_error)
            }
        })?;
        let s = this.clone();
        queries.register_fn(move |ctx, q: ListPassengers| {
            let s = s.clone();
            async move {
                view::list(
                    s.projections.db(),
                    &ctx.tenant,
                    q.flight_id.as_deref(),
                    q.after.as_deref(),
                    q.limit,
                )
                .await
                .map_err(read_model_error)
            }
        })?;
        Ok(this)
    }

    /// Whether an event has been written at `position`: one that has not
    /// cannot be waited for.
    pub async fn written(&self, position: u64) -> Result<bool, cairn_store::StoreError> {
        self.projections.written(position).await
    }

    /// Waits until the passengers read model has reached `position`.
    pub async fn caught_up(&self, position: u64, timeout: Duration) -> bool {
        self.projections
            .wait_for(view::PROJECTION, position, timeout)
            .await
    }

    /// Waits until the passengers read model has reached `position`, and says
    /// where it stands if it has not: still on its way, or failed.
    pub async fn catch_up(&self, position: u64, timeout: Duration) -> cairn_projection::CatchUp {
        self.projections
            .catch_up(view::PROJECTION, position, timeout)
            .await
    }

    /// Runs a command on the manifest of the flight `passenger_id` is on.
    async fn on_passenger(
        &self,
        ctx: &RequestContext,
        passenger_id: String,
        command: impl FnOnce(String, String) -> ManifestCommand,
    ) -> Result<Written, BusError> {
        let flight_id = self.flight_of(ctx, &passenger_id).await?;
        let command = command(flight_id.clone(), passenger_id);
        self.run(ctx, &flight_id, &command).await
    }

    /// Runs a command another context sent about a flight's manifest;
    /// answers the position of the last event written, if any.
    async fn on_flight(
        &self,
        ctx: &RequestContext,
        flight_id: String,
        command: impl FnOnce(String) -> ManifestCommand,
    ) -> Result<Option<u64>, BusError> {
        let written = self
            .run(ctx, &flight_id, &command(flight_id.clone()))
            .await?;
        if written.position.is_some() {
            return Ok(written.position);
        }
        // Nothing to do (already done, say by the FlightDeleted consumer):
        // answer the position of the manifest's last event, so the caller
        // still reads what was done.
        let Ok(stream) = AggregateStore::<Manifest>::stream_id(&flight_id) else {
            return Ok(None);
        };
        let last = self
            .manifests
            .event_store()
            .read_stream(
                &ctx.tenant,
                &stream,
                ReadStream {
                    limit: 1,
                    ..ReadStream::backward()
                },
            )
            .await
            .ok()
            .and_then(|events| events.first().map(|e| e.position));
        Ok(last)
    }

    async fn add(
        &self,
        ctx: &RequestContext,
        c: AddPassenger,
    ) -> Result<(String, Written), BusError> {
        let flight = self
            .queries
            .query(
                &ctx.clone().as_service(crate::messaging::SERVICE),
                GetFlightForBooking {
                    flight_id: c.flight_id.clone(),
                },
            )
            .await?
            .ok_or_else(|| {
                BusError::handler(
                    ErrorCode::NotFound,
                    format!("flight {} not found", c.flight_id),
                )
            })?;
        let passenger_id = uuid::Uuid::now_v7().to_string();
        let flight_id = flight.flight_id.clone();
        let command = ManifestCommand::Add {
            flight,
            passenger_id: passenger_id.clone(),
            name: c.name,
            document: c.document,
        };
        let written = self.run(ctx, &flight_id, &command).await?;
        Ok((passenger_id, written))
    }

    async fn run(
        &self,
        ctx: &RequestContext,
        flight_id: &str,
        command: &ManifestCommand,
    ) -> Result<Written, BusError> {
        if uuid::Uuid::try_parse(flight_id).is_err() {
            return Err(BusError::handler(
                ErrorCode::NotFound,
                format!("flight {flight_id} not found"),
            ));
        }
        let outcome = self
            .manifests
            .execute(ctx, flight_id, None, command)
            .await?;
        Ok(Written {
            version: outcome.version,
            position: outcome.position,
        })
    }

    /// The flight a passenger is on. The read model may not have a
    /// just-added passenger yet: on a miss, wait for it to reach the
    /// store's head once, then decide.
    async fn flight_of(
        &self,
        ctx: &RequestContext,
        passenger_id: &str,
    ) -> Result<String, BusError> {
        let db = self.projections.db();
        if let Some(f) = view::flight_of(db, &ctx.tenant, passenger_id)
            .await
            .map_err(read_model_error)?
        {
            return Ok(f);
        }
        let head = *self.head.borrow();
        self.caught_up(head, Duration::from_secs(5)).await;
        view::flight_of(db, &ctx.tenant, passenger_id)
            .await
            .map_err(read_model_error)?
            .ok_or_else(|| {
                BusError::handler(
                    ErrorCode::NotFound,
                    format!("passenger {passenger_id} not found"),
                )
            })
    }
}

fn read_model_error(e: sqlx::Error) -> BusError {
    tracing::error!(error = %e, "passengers read model query failed");
    BusError::handler(
        ErrorCode::Unavailable,
        "the passengers read model is unavailable",
    )
}
