//! The Flights HTTP API (`/api/flights`), as `product.md` gives it.
//!
//! Every handler sends a command or query on the buses; reads come from the
//! read model. A command's response carries `X-Cairn-Position` and the
//! flight as the read model shows it once it has caught up with the write,
//! so a client reads its own writes.

use std::time::Duration;

use axum::{
    Json, Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cairn_core::{ErrorCode, RequestContext};
use cairn_domain::{CommandBus, QueryBus};
use cairn_flightops_contracts::{Page, Written, api_error};
use cairn_http::{
    ApiError, ApiJson, ApiPath, ApiQuery, Context, ETag, IfMatch, MinPosition, Position,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::{
    app::{
        DeleteFlight, DepartFlight, Flights, GetFlight, LandFlight, ListFlights, RescheduleFlight,
        ScheduleFlight,
    },
    domain::Schedule,
    view::{FlightFilter, FlightView},
};

/// How long a read waits for `?minPosition=` before answering 504.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct FlightsApi {
    pub flights: Flights,
    pub commands: CommandBus,
    pub queries: QueryBus,
}

/// `POST /api/flights`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewFlight {
    pub number: String,
    pub origin: String,
    pub destination: String,
    pub departure: DateTime<Utc>,
    pub arrival: DateTime<Utc>,
    pub capacity: u32,
}

/// `PATCH /api/flights/{id}`: the new times.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reschedule {
    pub departure: DateTime<Utc>,
    pub arrival: DateTime<Utc>,
}

/// `GET /api/flights` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    pub status: Option<String>,
    pub origin: Option<String>,
    pub destination: Option<String>,
    pub number: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-200, default 50.
    pub limit: Option<u32>,
    /// Wait until the read model has reached this global position.
    pub min_position: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ReadParams {
    /// Wait until the read model has reached this global position.
    #[allow(dead_code)]
    pub min_position: Option<u64>,
}

/// The routes, to be wrapped in the standard stack by the caller.
pub fn router(api: FlightsApi) -> Router {
    Router::new()
        .route("/api/flights", post(create).get(list))
        .route(
            "/api/flights/{id}",
            get(read).patch(reschedule).delete(delete),
        )
        .route("/api/flights/{id}/departure", post(depart))
        .route("/api/flights/{id}/landing", post(land))
        .with_state(api)
}

type State = axum::extract::State<FlightsApi>;

/// Schedule a flight.
#[utoipa::path(post, path = "/api/flights", tag = "flights", request_body = NewFlight,
    responses((status = 201, description = "Scheduled", body = FlightView), cairn_http::ProblemResponses))]
async fn create(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiJson(body): ApiJson<NewFlight>,
) -> Result<Response, ApiError> {
    let schedule = Schedule {
        number: body.number,
        origin: body.origin,
        destination: body.destination,
        departure: body.departure,
        arrival: body.arrival,
        capacity: body.capacity,
    };
    let (id, written) = api
        .commands
        .send(&ctx, ScheduleFlight { schedule })
        .await
        .map_err(api_error)?;
    let flight = after_write(&api, &ctx, &id, written).await?;
    let location =
        HeaderValue::try_from(format!("/api/flights/{id}")).map_err(ApiError::internal)?;
    Ok(respond(
        StatusCode::CREATED,
        Some(location),
        written,
        flight,
    ))
}

/// List flights.
#[utoipa::path(get, path = "/api/flights", tag = "flights", params(ListParams),
    responses((status = 200, description = "A page of flights", body = Object), cairn_http::ProblemResponses))]
async fn list(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<FlightView>>, ApiError> {
    wait(&api, params.min_position).await?;
    let filter = FlightFilter {
        status: params.status,
        origin: params.origin,
        destination: params.destination,
        number: params.number,
        after: params.after,
        limit: params.limit.unwrap_or(50),
    };
    let page = api
        .queries
        .query(&ctx, ListFlights { filter })
        .await
        .map_err(api_error)?;
    Ok(Json(page))
}

/// One flight.
#[utoipa::path(get, path = "/api/flights/{id}", tag = "flights", params(("id" = String, Path), ReadParams),
    responses((status = 200, description = "The flight; ETag is its version", body = FlightView), cairn_http::ProblemResponses))]
async fn read(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    min: MinPosition,
) -> Result<Response, ApiError> {
    wait(&api, min.0).await?;
    let flight = get_flight(&api, &ctx, &id).await?;
    Ok((ETag(flight.version), Json(flight)).into_response())
}

/// Reschedule a flight (`If-Match: "<version>"` for optimistic concurrency).
#[utoipa::path(patch, path = "/api/flights/{id}", tag = "flights", request_body = Reschedule,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "Rescheduled", body = FlightView), cairn_http::ProblemResponses))]
async fn reschedule(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
    ApiJson(body): ApiJson<Reschedule>,
) -> Result<Response, ApiError> {
    let command = RescheduleFlight {
        flight_id: id.clone(),
        departure: body.departure,
        arrival: body.arrival,
        expected: if_match.version(),
    };
    let written = api.commands.send(&ctx, command).await.map_err(api_error)?;
    let flight = after_write(&api, &ctx, &id, written).await?;
    Ok(respond(StatusCode::OK, None, written, flight))
}

/// Record the departure: 409 unless every passenger has boarded.
#[utoipa::path(post, path = "/api/flights/{id}/departure", tag = "flights",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "Departed", body = FlightView), cairn_http::ProblemResponses))]
async fn depart(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
) -> Result<Response, ApiError> {
    let command = DepartFlight {
        flight_id: id.clone(),
        expected: if_match.version(),
    };
    let written = api.commands.send(&ctx, command).await.map_err(api_error)?;
    let flight = after_write(&api, &ctx, &id, written).await?;
    Ok(respond(StatusCode::OK, None, written, flight))
}

/// Record the landing: 409 unless departed.
#[utoipa::path(post, path = "/api/flights/{id}/landing", tag = "flights",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "Landed", body = FlightView), cairn_http::ProblemResponses))]
async fn land(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
) -> Result<Response, ApiError> {
    let command = LandFlight {
        flight_id: id.clone(),
        expected: if_match.version(),
    };
    let written = api.commands.send(&ctx, command).await.map_err(api_error)?;
    let flight = after_write(&api, &ctx, &id, written).await?;
    Ok(respond(StatusCode::OK, None, written, flight))
}

/// Delete a flight; its passengers are removed as well.
#[utoipa::path(delete, path = "/api/flights/{id}", tag = "flights",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204, description = "Deleted"), cairn_http::ProblemResponses))]
async fn delete(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
) -> Result<Response, ApiError> {
    let command = DeleteFlight {
        flight_id: id,
        expected: if_match.version(),
    };
    let written = api.commands.send(&ctx, command).await.map_err(api_error)?;
    if let Some(p) = written.position {
        api.flights.caught_up(p, READ_YOUR_WRITES_WAIT).await;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(p) = written.position {
        response
            .headers_mut()
            .insert(cairn_http::POSITION_HEADER, HeaderValue::from(p));
    }
    Ok(response)
}

async fn wait(api: &FlightsApi, min: Option<u64>) -> Result<(), ApiError> {
    if let Some(p) = min
        && !api.flights.caught_up(p, READ_YOUR_WRITES_WAIT).await
    {
        return Err(ApiError::new(
            ErrorCode::Timeout,
            format!("the flights read model did not reach position {p} in time"),
        ));
    }
    Ok(())
}

async fn get_flight(
    api: &FlightsApi,
    ctx: &RequestContext,
    id: &str,
) -> Result<FlightView, ApiError> {
    api.queries
        .query(
            ctx,
            GetFlight {
                flight_id: id.to_owned(),
            },
        )
        .await
        .map_err(api_error)?
        .ok_or_else(|| ApiError::not_found(format!("flight {id} not found")))
}

/// The flight as the read model shows it once it has the write.
async fn after_write(
    api: &FlightsApi,
    ctx: &RequestContext,
    id: &str,
    written: Written,
) -> Result<FlightView, ApiError> {
    if let Some(p) = written.position {
        wait(api, Some(p)).await?;
    }
    get_flight(api, ctx, id).await
}

fn respond(
    status: StatusCode,
    location: Option<HeaderValue>,
    written: Written,
    flight: FlightView,
) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(location) = location {
        headers.insert(header::LOCATION, location);
    }
    let etag = ETag(flight.version);
    match written.position {
        Some(p) => (status, headers, etag, Position(p), Json(flight)).into_response(),
        None => (status, headers, etag, Json(flight)).into_response(),
    }
}

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(create, list, read, reschedule, depart, land, delete),
    components(schemas(NewFlight, Reschedule, FlightView, crate::view::PassengerCounts)),
    tags((name = "flights", description = "Flights: schedule, reschedule, depart, land, delete"))
)]
pub struct FlightsOpenApi;
