//! The Flights HTTP API (`/api/flights`), as `product.md` gives it.
//!
//! Every handler sends a command or query on the buses; reads come from the
//! read model. A command's response carries `X-Cairn-Position` and the
//! flight as the read model shows it once it has caught up with the write,
//! so a client reads its own writes. When the read model does not show the
//! write in time, the answer says the write is committed instead
//! ([`cairn_http::Committed`]: 202), never an error that invites a resend.

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
    ApiError, ApiJson, ApiPath, ApiQuery, Committed, Context, ETag, IfMatch, MinPosition, Position,
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
    /// An airline code of two capitals or digits and 1-4 digits.
    #[schema(pattern = "^[A-Z0-9]{2}[0-9]{1,4}$", example = "SK1421")]
    pub number: String,
    /// A three-letter IATA airport code in capitals.
    #[schema(pattern = "^[A-Z]{3}$", example = "ARN")]
    pub origin: String,
    /// A three-letter IATA airport code in capitals, not the origin.
    #[schema(pattern = "^[A-Z]{3}$", example = "LHR")]
    pub destination: String,
    pub departure: DateTime<Utc>,
    /// After the departure.
    pub arrival: DateTime<Utc>,
    /// Seats, 1-1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub capacity: u32,
}

/// `PATCH /api/flights/{id}`: the new times.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reschedule {
    pub departure: DateTime<Utc>,
    /// After the departure.
    pub arrival: DateTime<Utc>,
}

/// `GET /api/flights` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    /// Only flights in this state.
    #[param(pattern = "^(scheduled|departed|landed)$")]
    pub status: Option<String>,
    /// Only flights from this airport.
    pub origin: Option<String>,
    /// Only flights to this airport.
    pub destination: Option<String>,
    /// Only flights with this number.
    pub number: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Answer only once the read model has reached this global position
    /// (a command's `X-Cairn-Position`).
    pub min_position: Option<u64>,
}

// The documented `limit` maximum above is this one.
const _: () = assert!(crate::app::MAX_PAGE == 200);

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
#[utoipa::path(post, path = "/api/flights", tag = "flights", operation_id = "scheduleFlight", request_body = NewFlight,
    params(cairn_http::IdempotencyKey),
    responses(
        (status = 201, description = "Scheduled", body = FlightView, headers(
            ("Location" = String, description = "Where the flight is read"),
            ("ETag" = String, description = "Its version, `\"<version>\"`"),
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
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
    finish(&api, &ctx, &id, written, StatusCode::CREATED).await
}

/// List flights.
#[utoipa::path(get, path = "/api/flights", tag = "flights", operation_id = "listFlights", params(ListParams),
    responses((status = 200, description = "A page of flights", body = Page<FlightView>), cairn_http::QueryProblems),
    security(("bearer" = [])))]
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
        limit: params
            .limit
            .unwrap_or(cairn_flightops_contracts::DEFAULT_PAGE),
    };
    let page = api
        .queries
        .query(&ctx, ListFlights { filter })
        .await
        .map_err(api_error)?;
    Ok(Json(page))
}

/// One flight.
#[utoipa::path(get, path = "/api/flights/{id}", tag = "flights", operation_id = "getFlight",
    params(("id" = String, Path, description = "The flight"), MinPosition),
    responses(
        (status = 200, description = "The flight", body = FlightView, headers(
            ("ETag" = String, description = "Its version, `\"<version>\"`"))),
        cairn_http::QueryProblems),
    security(("bearer" = [])))]
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
#[utoipa::path(patch, path = "/api/flights/{id}", tag = "flights", operation_id = "rescheduleFlight", request_body = Reschedule,
    params(("id" = String, Path, description = "The flight"), IfMatch),
    responses(
        (status = 200, description = "Rescheduled", body = FlightView, headers(
            ("ETag" = String, description = "Its new version, `\"<version>\"`"),
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
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
    finish(&api, &ctx, &id, written, StatusCode::OK).await
}

/// Record the departure: 409 unless every passenger has boarded.
#[utoipa::path(post, path = "/api/flights/{id}/departure", tag = "flights", operation_id = "departFlight",
    params(("id" = String, Path, description = "The flight"), IfMatch),
    responses(
        (status = 200, description = "Departed", body = FlightView, headers(
            ("ETag" = String, description = "Its new version, `\"<version>\"`"),
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
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
    finish(&api, &ctx, &id, written, StatusCode::OK).await
}

/// Record the landing: 409 unless departed.
#[utoipa::path(post, path = "/api/flights/{id}/landing", tag = "flights", operation_id = "landFlight",
    params(("id" = String, Path, description = "The flight"), IfMatch),
    responses(
        (status = 200, description = "Landed", body = FlightView, headers(
            ("ETag" = String, description = "Its new version, `\"<version>\"`"),
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
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
    finish(&api, &ctx, &id, written, StatusCode::OK).await
}

/// Delete a flight; its passengers are removed as well.
#[utoipa::path(delete, path = "/api/flights/{id}", tag = "flights", operation_id = "deleteFlight",
    params(("id" = String, Path, description = "The flight"), IfMatch),
    responses(
        (status = 204, description = "Deleted", headers(
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
async fn delete(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
) -> Result<Response, ApiError> {
    let command = DeleteFlight {
        flight_id: id.clone(),
        expected: if_match.version(),
    };
    let written = api.commands.send(&ctx, command).await.map_err(api_error)?;
    if let Some(answer) = committed(&api, &id, written).await {
        return answer;
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
    let Some(p) = min else { return Ok(()) };
    let written = api.flights.written(p).await.map_err(|e| {
        ApiError::new(
            e.code(),
            format!("cannot tell whether position {p} exists: {e}"),
        )
    })?;
    if !written {
        return Err(cairn_http::unwritten_position(p));
    }
    if !api.flights.caught_up(p, READ_YOUR_WRITES_WAIT).await {
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

/// Waits for the read model to show `written`: `None` once it does, or the
/// answer that says the write is committed while it does not.
async fn committed(
    api: &FlightsApi,
    id: &str,
    written: Written,
) -> Option<Result<Response, ApiError>> {
    let position = written.position?;
    let catch_up = api.flights.catch_up(position, READ_YOUR_WRITES_WAIT).await;
    Committed {
        id: id.to_owned(),
        version: written.version,
        position,
        location: format!("/api/flights/{id}"),
        read_model: String::new(),
    }
    .response(crate::view::PROJECTION, catch_up)
}

/// A command's answer: the flight as the read model shows it once it has
/// the write (`Location` too when `status` is 201 Created).
async fn finish(
    api: &FlightsApi,
    ctx: &RequestContext,
    id: &str,
    written: Written,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if let Some(answer) = committed(api, id, written).await {
        return answer;
    }
    let flight = get_flight(api, ctx, id).await?;
    let mut headers = HeaderMap::new();
    if status == StatusCode::CREATED {
        let location =
            HeaderValue::try_from(format!("/api/flights/{id}")).map_err(ApiError::internal)?;
        headers.insert(header::LOCATION, location);
    }
    let etag = ETag(flight.version);
    Ok(match written.position {
        Some(p) => (status, headers, etag, Position(p), Json(flight)).into_response(),
        None => (status, headers, etag, Json(flight)).into_response(),
    })
}

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(create, list, read, reschedule, depart, land, delete),
    components(schemas(NewFlight, Reschedule, FlightView, crate::view::PassengerCounts, Page<FlightView>)),
    tags((name = "flights", description = "Flights: schedule, reschedule, depart, land, delete"))
)]
pub struct FlightsOpenApi;
