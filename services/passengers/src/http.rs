//! The Passengers HTTP API (`/api/passengers`), as `product.md` gives it.

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
use cairn_http::{ApiError, ApiJson, ApiPath, ApiQuery, Context, MinPosition, Position};
use serde::Deserialize;

use crate::{
    app::{
        AddPassenger, BoardPassenger, GetPassenger, ListPassengers, Passengers, RemovePassenger,
    },
    view::PassengerView,
};

/// How long a read waits for `?minPosition=` before answering 504.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct PassengersApi {
    pub passengers: Passengers,
    pub commands: CommandBus,
    pub queries: QueryBus,
}

/// `POST /api/passengers`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPassenger {
    pub flight_id: String,
    pub name: String,
    pub document: String,
}

/// `GET /api/passengers` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    pub flight_id: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-200, default 50.
    pub limit: Option<u32>,
    /// Wait until the read model has reached this global position.
    pub min_position: Option<u64>,
}

/// The routes, to be wrapped in the standard stack by the caller.
pub fn router(api: PassengersApi) -> Router {
    Router::new()
        .route("/api/passengers", post(create).get(list))
        .route("/api/passengers/{id}", get(read).delete(remove))
        .route("/api/passengers/{id}/boarding", post(board))
        .with_state(api)
}

type State = axum::extract::State<PassengersApi>;

/// Add a passenger to a flight.
#[utoipa::path(post, path = "/api/passengers", tag = "passengers", request_body = NewPassenger,
    responses((status = 201, description = "Added", body = PassengerView), cairn_http::ProblemResponses))]
async fn create(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiJson(body): ApiJson<NewPassenger>,
) -> Result<Response, ApiError> {
    let command = AddPassenger {
        flight_id: body.flight_id,
        name: body.name,
        document: body.document,
    };
    let (id, written) = api.commands.send(&ctx, command).await.map_err(api_error)?;
    let passenger = after_write(&api, &ctx, &id, written).await?;
    let location =
        HeaderValue::try_from(format!("/api/passengers/{id}")).map_err(ApiError::internal)?;
    Ok(respond(
        StatusCode::CREATED,
        Some(location),
        written,
        passenger,
    ))
}

/// List passengers, optionally of one flight.
#[utoipa::path(get, path = "/api/passengers", tag = "passengers", params(ListParams),
    responses((status = 200, description = "A page of passengers", body = Object), cairn_http::ProblemResponses))]
async fn list(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<PassengerView>>, ApiError> {
    wait(&api, params.min_position).await?;
    let query = ListPassengers {
        flight_id: params.flight_id,
        after: params.after,
        limit: params.limit.unwrap_or(50),
    };
    Ok(Json(
        api.queries.query(&ctx, query).await.map_err(api_error)?,
    ))
}

/// One passenger.
#[utoipa::path(get, path = "/api/passengers/{id}", tag = "passengers", params(("id" = String, Path)),
    responses((status = 200, description = "The passenger", body = PassengerView), cairn_http::ProblemResponses))]
async fn read(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
    min: MinPosition,
) -> Result<Json<PassengerView>, ApiError> {
    wait(&api, min.0).await?;
    Ok(Json(get_passenger(&api, &ctx, &id).await?))
}

/// Board a passenger.
#[utoipa::path(post, path = "/api/passengers/{id}/boarding", tag = "passengers", params(("id" = String, Path)),
    responses((status = 200, description = "Boarded", body = PassengerView), cairn_http::ProblemResponses))]
async fn board(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let written = api
        .commands
        .send(
            &ctx,
            BoardPassenger {
                passenger_id: id.clone(),
            },
        )
        .await
        .map_err(api_error)?;
    let passenger = after_write(&api, &ctx, &id, written).await?;
    Ok(respond(StatusCode::OK, None, written, passenger))
}

/// Take a passenger off their flight.
#[utoipa::path(delete, path = "/api/passengers/{id}", tag = "passengers", params(("id" = String, Path)),
    responses((status = 204, description = "Removed"), cairn_http::ProblemResponses))]
async fn remove(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let written = api
        .commands
        .send(&ctx, RemovePassenger { passenger_id: id })
        .await
        .map_err(api_error)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(p) = written.position {
        api.passengers.caught_up(p, READ_YOUR_WRITES_WAIT).await;
        response
            .headers_mut()
            .insert(cairn_http::POSITION_HEADER, HeaderValue::from(p));
    }
    Ok(response)
}

async fn wait(api: &PassengersApi, min: Option<u64>) -> Result<(), ApiError> {
    if let Some(p) = min
        && !api.passengers.caught_up(p, READ_YOUR_WRITES_WAIT).await
    {
        return Err(ApiError::new(
            ErrorCode::Timeout,
            format!("the passengers read model did not reach position {p} in time"),
        ));
    }
    Ok(())
}

async fn get_passenger(
    api: &PassengersApi,
    ctx: &RequestContext,
    id: &str,
) -> Result<PassengerView, ApiError> {
    api.queries
        .query(
            ctx,
            GetPassenger {
                passenger_id: id.to_owned(),
            },
        )
        .await
        .map_err(api_error)?
        .ok_or_else(|| ApiError::not_found(format!("passenger {id} not found")))
}

async fn after_write(
    api: &PassengersApi,
    ctx: &RequestContext,
    id: &str,
    written: Written,
) -> Result<PassengerView, ApiError> {
    if let Some(p) = written.position {
        wait(api, Some(p)).await?;
    }
    get_passenger(api, ctx, id).await
}

fn respond(
    status: StatusCode,
    location: Option<HeaderValue>,
    written: Written,
    passenger: PassengerView,
) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(location) = location {
        headers.insert(header::LOCATION, location);
    }
    match written.position {
        Some(p) => (status, headers, Position(p), Json(passenger)).into_response(),
        None => (status, headers, Json(passenger)).into_response(),
    }
}

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(create, list, read, board, remove),
    components(schemas(NewPassenger, PassengerView)),
    tags((name = "passengers", description = "Passengers: add, board, remove"))
)]
pub struct PassengersOpenApi;
