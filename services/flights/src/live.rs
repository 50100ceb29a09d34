//! Flights' live resources, read and called through the same buses, with
//! the same permissions, as its HTTP API:
//! - `flights.flights[?status=…]`: a collection of references to the
//!   flights, as `GET /api/flights` lists them (the first page);
//! - `flights.flight.<id>`: a model, the flight as `GET /api/flights/{id}`
//!   answers it (passenger counts as a data value);
//! - `call.flights.flights.create` (a new flight's fields, as `POST
//!   /api/flights` takes them): answers the new flight, which the caller
//!   then holds;
//!
//! [`feed`] says which events touch which of these resources; the runtime
//! publishes their resets once the read model shows the events.
//!
//! - `call.flights.flight.<id>.depart` and `.land`: answer
//!   `{"version", "position", "readModel"}`, `readModel` saying whether
//!   the flight reads as changed yet (it is waited for, as over HTTP).

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::RequestContext;
use cairn_domain::{CommandBus, QueryBus};
use cairn_live::{CallAnswer, Resources};
use cairn_projection::Projections;
use cairn_res::{ResError, Resource, Rid, Value};
use cairn_service::live::{self, LiveFeed, bus_error};
use serde_json::{Value as Json, json};

use cairn_flightops_contracts::Written;

use crate::{
    app::{DepartFlight, GetFlight, LandFlight, ListFlights, MAX_PAGE, ScheduleFlight},
    domain::Schedule,
    http::{NewFlight, READ_YOUR_WRITES_WAIT},
    view::{FlightFilter, FlightView},
};

/// Flights' resources over the buses.
#[derive(Debug, Clone)]
pub struct FlightsLive {
    /// Its projections: a write is answered once its read model shows it.
    pub projections: Projections,
    pub commands: CommandBus,
    pub queries: QueryBus,
}

impl FlightsLive {
    /// What a command answers once the read model shows it (waited for as
    /// HTTP waits).
    async fn answer(&self, written: Written) -> CallAnswer {
        live::written_answer(
            &self.projections,
            crate::view::PROJECTION,
            written.version,
            written.position,
            READ_YOUR_WRITES_WAIT,
        )
        .await
    }
}

fn flight_rid(id: &str) -> Result<Rid, ResError> {
    Rid::parse(&format!("flights.flight.{id}"))
}

/// The flight as a model: its fields as the HTTP API answers them.
pub fn flight_model(view: &FlightView) -> Resource {
    match serde_json::to_value(view) {
        Ok(Json::Object(object)) => Resource::model_from_json(object),
        _ => Resource::Model(Default::default()),
    }
}

/// The `?status=` of a list, the only filter it takes.
fn filter_of(rid: &Rid) -> Result<FlightFilter, ResError> {
    let mut filter = FlightFilter {
        limit: MAX_PAGE,
        ..FlightFilter::default()
    };
    for pair in rid
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("status", status)) if !status.is_empty() => {
                filter.status = Some(status.to_owned());
            }
            _ => {
                return Err(ResError::invalid_query(format!(
                    "{pair:?}: flights.flights takes status=<status> only"
                )));
            }
        }
    }
    Ok(filter)
}

#[async_trait]
impl Resources for FlightsLive {
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        let parts: Vec<&str> = rid.parts().collect();
        match parts.as_slice() {
            ["flights", "flights"] => {
                let filter = filter_of(rid)?;
                let page = self
                    .queries
                    .query(ctx, ListFlights { filter })
                    .await
                    .map_err(bus_error)?;
                let values = page
                    .items
                    .iter()
                    .map(|f| flight_rid(&f.id).map(Value::reference))
                    .collect::<Result<_, _>>()?;
                Ok(Resource::Collection(values))
            }
            ["flights", "flight", id] if rid.query().is_none() => {
                let view = self
                    .queries
                    .query(
                        ctx,
                        GetFlight {
                            flight_id: (*id).to_owned(),
                        },
                    )
                    .await
                    .map_err(bus_error)?
                    .ok_or_else(ResError::not_found)?;
                Ok(flight_model(&view))
            }
            _ => Err(ResError::not_found()),
        }
    }

    async fn call(
        &self,
        ctx: &RequestContext,
        rid: &Rid,
        method: &str,
        params: Json,
    ) -> Result<CallAnswer, ResError> {
        let parts: Vec<&str> = rid.parts().collect();
        match (parts.as_slice(), method) {
            (["flights", "flights"], "create") => {
                let body: NewFlight = serde_json::from_value(params)
                    .map_err(|e| ResError::invalid_params(e.to_string()))?;
                let schedule = Schedule {
                    number: body.number,
                    origin: body.origin,
                    destination: body.destination,
                    departure: body.departure,
                    arrival: body.arrival,
                    capacity: body.capacity,
                };
                let (id, written) = self
                    .commands
                    .send(ctx, ScheduleFlight { schedule })
                    .await
                    .map_err(bus_error)?;
                let (shown, mut payload) = live::written(
                    &self.projections,
                    crate::view::PROJECTION,
                    written.version,
                    written.position,
                    READ_YOUR_WRITES_WAIT,
                )
                .await;
                if shown {
                    Ok(CallAnswer::Resource(flight_rid(&id)?))
                } else {
                    // Committed, not yet readable: say so rather than
                    // answer a flight that reads as not found.
                    payload["id"] = json!(id);
                    Ok(CallAnswer::Payload(payload))
                }
            }
            (["flights", "flight", id], "depart") => {
                let written = self
                    .commands
                    .send(
                        ctx,
                        DepartFlight {
                            flight_id: (*id).to_owned(),
                            expected: None,
                        },
                    )
                    .await
                    .map_err(bus_error)?;
                Ok(self.answer(written).await)
            }
            (["flights", "flight", id], "land") => {
                let written = self
                    .commands
                    .send(
                        ctx,
                        LandFlight {
                            flight_id: (*id).to_owned(),
                            expected: None,
                        },
                    )
                    .await
                    .map_err(bus_error)?;
                Ok(self.answer(written).await)
            }
            (["flights", "flights"] | ["flights", "flight", _], _) => {
                Err(ResError::method_not_found())
            }
            _ => Err(ResError::not_found()),
        }
    }
}

/// Which events touch Flights' live resources: a flight's events touch
/// the list and the flight; a manifest's (passengers of a flight, in the
/// same log when every service runs in one process) touch the flight's
/// counts.
pub fn feed() -> LiveFeed {
    LiveFeed {
        categories: vec!["flight", "manifest"],
        projection: crate::view::PROJECTION,
        touched: Arc::new(|event| {
            let stream = event.stream.as_str();
            if let Some(id) = stream.strip_prefix("flight-") {
                vec!["flights.flights".to_owned(), format!("flights.flight.{id}")]
            } else if let Some(id) = stream.strip_prefix("manifest-") {
                vec![format!("flights.flight.{id}")]
            } else {
                Vec::new()
            }
        }),
    }
}
