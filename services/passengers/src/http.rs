//! The Passengers HTTP API (`/api/passengers`), as `product.md` gives it.
//!
//! A command's response carries `X-Cairn-Position`, the passenger as the
//! read model shows it once it has the write, and its version as `ETag`.
//! When the read model does not show the write in time, the answer says
//! the write is committed instead ([`cairn_http::Committed`]: 202).

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
    ApiError, ApiJson, ApiPath, ApiQuery, Committed, Context, ETag, MinPosition, Position,
};
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
    /// The flight the passenger is booked on.
    pub flight_id: String,
    /// 1-200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200, example = "Ada Lovelace")]
    pub name: String,
    /// The travel document's number: 1-32 capital letters or digits.
    #[schema(pattern = "^[A-Z0-9]{1,32}$", example = "P1234567")]
    pub document: String,
}

/// `GET /api/passengers` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    /// Only the passengers of this flight.
    pub flight_id: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Answer only once the read model has reached this global position
    /// (a command's `X-Cairn-Position`).
    pub min_position: Option<u64>,
}

// The documented limits above are these.
const _: () = assert!(
    crate::app::MAX_PAGE == 200
        && crate::domain::MAX_NAME_CHARS == 200
        && crate::domain::MAX_DOCUMENT_CHARS == 32
);

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
#[utoipa::path(post, path = "/api/passengers", tag = "passengers", operation_id = "addPassenger", request_body = NewPassenger,
    params(cairn_http::IdempotencyKey),
    responses(
        (status = 201, description = "Added", body = PassengerView, headers(
            ("Location" = String, description = "Where the passenger is read"),
            ("ETag" = String, description = "Its version, `\"<version>\"`"),
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
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
    finish(&api, &ctx, &id, written, StatusCode::CREATED).await
}

/// List passengers, optionally of one flight.
#[utoipa::path(get, path = "/api/passengers", tag = "passengers", operation_id = "listPassengers", params(ListParams),
    responses((status = 200, description = "A page of passengers", body = Page<PassengerView>), cairn_http::QueryProblems),
    security(("bearer" = [])))]
async fn list(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<PassengerView>>, ApiError> {
    wait(&api, params.min_position).await?;
    let query = ListPassengers {
        flight_id: params.flight_id,
        after: params.after,
        limit: params
            .limit
            .unwrap_or(cairn_flightops_contracts::DEFAULT_PAGE),
    };
    Ok(Json(
        api.queries.query(&ctx, query).await.map_err(api_error)?,
    ))
}

/// One passenger.
#[utoipa::path(get, path = "/api/passengers/{id}", tag = "passengers", operation_id = "getPassenger",
    params(("id" = String, Path, description = "The passenger"), MinPosition),
    responses(
        (status = 200, description = "The passenger", body = PassengerView, headers(
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
    let passenger = get_passenger(&api, &ctx, &id).await?;
    Ok((ETag(passenger.version), Json(passenger)).into_response())
}

/// Board a passenger.
#[utoipa::path(post, path = "/api/passengers/{id}/boarding", tag = "passengers", operation_id = "boardPassenger",
    params(("id" = String, Path, description = "The passenger")),
    responses(
        (status = 200, description = "Boarded", body = PassengerView, headers(
            ("ETag" = String, description = "Its new version, `\"<version>\"`"),
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
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
    finish(&api, &ctx, &id, written, StatusCode::OK).await
}

/// Take a passenger off their flight.
#[utoipa::path(delete, path = "/api/passengers/{id}", tag = "passengers", operation_id = "removePassenger",
    params(("id" = String, Path, description = "The passenger")),
    responses(
        (status = 204, description = "Removed", headers(
            ("X-Cairn-Position" = u64, description = "The global position of the write"))),
        cairn_http::CommittedResponses, cairn_http::ProblemResponses),
    security(("bearer" = [])))]
async fn remove(
    axum::extract::State(api): State,
    Context(ctx): Context,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let written = api
        .commands
        .send(
            &ctx,
            RemovePassenger {
                passenger_id: id.clone(),
            },
        )
        .await
        .map_err(api_error)?;
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

async fn wait(api: &PassengersApi, min: Option<u64>) -> Result<(), ApiError> {
    let Some(p) = min else { return Ok(()) };
    let written = api.passengers.written(p).await.map_err(|e| {
        ApiError::new(
            e.code(),
            format!("cannot tell whether position {p} exists: {e}"),
        )
    })?;
    if !written {
        return Err(cairn_http::unwritten_position(p));
    }
    if !api.passengers.caught_up(p, READ_YOUR_WRITES_WAIT).await {
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

/// Waits for the read model to show `written`: `None` once it does, or the
/// answer that says the write is committed while it does not.
async fn committed(
    api: &PassengersApi,
    id: &str,
    written: Written,
) -> Option<Result<Response, ApiError>> {
    let position = written.position?;
    let catch_up = api
        .passengers
        .catch_up(position, READ_YOUR_WRITES_WAIT)
        .await;
    Committed {
        id: id.to_owned(),
        version: written.version,
        position,
        location: format!("/api/passengers/{id}"),
        read_model: String::new(),
    }
    .response(crate::view::PROJECTION, catch_up)
}

/// A command's answer: the passenger as the read model shows it once it
/// has the write (`Location` too when `status` is 201 Created).
async fn finish(
    api: &PassengersApi,
    ctx: &RequestContext,
    id: &str,
    written: Written,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if let Some(answer) = committed(api, id, written).await {
        return answer;
    }
    let passenger = get_passenger(api, ctx, id).await?;
    let mut headers = HeaderMap::new();
    if status == StatusCode::CREATED {
        let location =
            HeaderValue::try_from(format!("/api/passengers/{id}")).map_err(ApiError::internal)?;
        headers.insert(header::LOCATION, location);
    }
    let etag = ETag(passenger.version);
    Ok(match written.position {
        Some(p) => (status, headers, etag, Position(p), Json(passenger)).into_response(),
        None => (status, headers, etag, Json(passenger)).into_response(),
    })
}

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(create, list, read, board, remove),
    components(schemas(NewPassenger, PassengerView, Page<PassengerView>)),
    tags((name = "passengers", description = "Passengers: add, board, remove"))
)]
pub struct PassengersOpenApi;
