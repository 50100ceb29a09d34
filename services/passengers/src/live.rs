//! Passengers' live resources, read and called through the same buses, with
//! the same permissions, as its HTTP API:
//! - `passengers.flight.<flightId>`: a collection of references to the
//!   passengers of a flight (the first page, as `GET
//!   /api/passengers?flightId=` lists them);
//! - `passengers.passenger.<id>`: a model, the passenger as `GET
//!   /api/passengers/{id}` answers it;
//! - `call.passengers.flight.<flightId>.add` (`{"name", "document"}`):
//!   answers the new passenger, which the caller then holds;
//! - `call.passengers.passenger.<id>.board` and `.remove`: answer
//!   `{"version", "position", "readModel"}`.
//!
//! [`feed`] says which events touch which of these resources; the runtime
//! publishes their resets once the read model shows the events.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::RequestContext;
use cairn_domain::{CommandBus, QueryBus};
use cairn_flightops_contracts::Written;
use cairn_live::{CallAnswer, Resources};
use cairn_projection::Projections;
use cairn_res::{ResError, Resource, Rid, Value};
use cairn_service::live::{self, LiveFeed, bus_error};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::{
    app::{AddPassenger, BoardPassenger, GetPassenger, ListPassengers, MAX_PAGE, RemovePassenger},
    http::READ_YOUR_WRITES_WAIT,
};

/// Passengers' resources over the buses.
#[derive(Debug, Clone)]
pub struct PassengersLive {
    /// Its projections: a write is answered once its read model shows it.
    pub projections: Projections,
    pub commands: CommandBus,
    pub queries: QueryBus,
}

/// What `add` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassenger {
    name: String,
    document: String,
}

fn passenger_rid(id: &str) -> Result<Rid, ResError> {
    Rid::parse(&format!("passengers.passenger.{id}"))
}

impl PassengersLive {
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

#[async_trait]
impl Resources for PassengersLive {
    async fn get(&self, ctx: &RequestContext, rid: &Rid) -> Result<Resource, ResError> {
        if rid.query().is_some() {
            return Err(ResError::not_found());
        }
        let parts: Vec<&str> = rid.parts().collect();
        match parts.as_slice() {
            ["passengers", "flight", flight_id] => {
                let page = self
                    .queries
                    .query(
                        ctx,
                        ListPassengers {
                            flight_id: Some((*flight_id).to_owned()),
                            after: None,
                            limit: MAX_PAGE,
                        },
                    )
                    .await
                    .map_err(bus_error)?;
                let values = page
                    .items
                    .iter()
                    .map(|p| passenger_rid(&p.id).map(Value::reference))
                    .collect::<Result<_, _>>()?;
                Ok(Resource::Collection(values))
            }
            ["passengers", "passenger", id] => {
                let view = self
                    .queries
                    .query(
                        ctx,
                        GetPassenger {
                            passenger_id: (*id).to_owned(),
                        },
                    )
                    .await
                    .map_err(bus_error)?
                    .ok_or_else(ResError::not_found)?;
                match serde_json::to_value(&view) {
                    Ok(Json::Object(object)) => Ok(Resource::model_from_json(object)),
                    _ => Err(ResError::internal_error()),
                }
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
            (["passengers", "flight", flight_id], "add") => {
                let body: NewPassenger = serde_json::from_value(params)
                    .map_err(|e| ResError::invalid_params(e.to_string()))?;
                let (id, written) = self
                    .commands
                    .send(
                        ctx,
                        AddPassenger {
                            flight_id: (*flight_id).to_owned(),
                            name: body.name,
                            document: body.document,
                        },
                    )
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
                    Ok(CallAnswer::Resource(passenger_rid(&id)?))
                } else {
                    payload["id"] = json!(id);
                    Ok(CallAnswer::Payload(payload))
                }
            }
            (["passengers", "passenger", id], "board") => {
                let written = self
                    .commands
                    .send(
                        ctx,
                        BoardPassenger {
                            passenger_id: (*id).to_owned(),
                        },
                    )
                    .await
                    .map_err(bus_error)?;
                Ok(self.answer(written).await)
            }
            (["passengers", "passenger", id], "remove") => {
                let written = self
                    .commands
                    .send(
                        ctx,
                        RemovePassenger {
                            passenger_id: (*id).to_owned(),
                        },
                    )
                    .await
                    .map_err(bus_error)?;
                Ok(self.answer(written).await)
            }
            (["passengers", "flight", _] | ["passengers", "passenger", _], _) => {
                Err(ResError::method_not_found())
            }
            _ => Err(ResError::not_found()),
        }
    }
}

/// A manifest's events (`manifest-<flightId>`) touch that flight's list of
/// passengers and the passenger they name.
pub fn feed() -> LiveFeed {
    LiveFeed {
        categories: vec!["manifest"],
        projection: crate::view::PROJECTION,
        touched: Arc::new(|event| {
            let Some(flight_id) = event.stream.as_str().strip_prefix("manifest-") else {
                return Vec::new();
            };
            let mut names = vec![format!("passengers.flight.{flight_id}")];
            if let Some(id) = event.data.get("passengerId").and_then(Json::as_str) {
                names.push(format!("passengers.passenger.{id}"));
            }
            names
        }),
    }
}
