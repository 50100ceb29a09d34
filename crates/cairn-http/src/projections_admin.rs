//! The projections' admin API: what an operator needs when a read model
//! stops at a poison event, over HTTP and behind a token.
//!
//! ```text
//! GET  /api/projections                     every projection's status
//! GET  /api/projections/{name}              one
//! POST /api/projections/{name}/retry        run it again from its checkpoint
//! POST /api/projections/{name}/skip         {"position": P}: pass over the event it stopped at
//! POST /api/projections/{name}/rebuild      empty the model and replay from zero (202)
//! GET  /api/projections/{name}/dead-letters the events it passed over (?after=&limit=)
//! ```
//!
//! Who may do what: reading needs `projections:read`, retry and skip
//! `projections:admin` (the `admin` and `super-admin` roles have both). A
//! tenant admin sees the projections of the whole process, since they are
//! shared, but only the details of their own tenant's events: another
//! tenant's failing event shows its position and type, never its stream,
//! id or error, and its dead letters are left out. A tenant admin may skip
//! only their own tenant's event. A rebuild empties every tenant's read
//! model for a while, so it is the super-admin's alone (`tenants:admin`).
//! A skip names the position of the event the projection stopped at, so an
//! operator skips exactly the event they looked at; it is recorded with who
//! skipped it (`<tenant>/<subject>`) and when.

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cairn_auth::permissions;
use cairn_core::{ErrorCode, RequestContext};
use cairn_projection::{
    ProjectionDeadLetter, ProjectionFailure, ProjectionStatus, Projections, ReadModelError,
};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiJson, ApiPath, ApiQuery, Context, FieldError};

/// What a redacted field of another tenant's event reads.
pub const REDACTED: &str = "(another tenant's event)";

/// The most dead letters one page returns.
pub const MAX_DEAD_LETTERS_PAGE: u32 = 500;

/// `POST /api/projections/{name}/skip`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkipRequest {
    /// The global position of the event the projection stopped at.
    pub position: u64,
}

/// `GET /api/projections/{name}/dead-letters` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterParams {
    /// Only events after this global position (the `next` of the previous page).
    pub after: Option<u64>,
    /// 1-500, default 100.
    pub limit: Option<u32>,
}

/// A page of a projection's dead letters.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    /// Oldest first.
    pub items: Vec<ProjectionDeadLetter>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next: Option<u64>,
}

/// The admin routes over `projections`, to be put behind authentication
/// (the `api` half of [`crate::app`]).
pub fn projections_router(projections: Projections) -> Router {
    Router::new()
        .route("/api/projections", get(list))
        .route("/api/projections/{name}", get(one))
        .route("/api/projections/{name}/retry", post(retry))
        .route("/api/projections/{name}/skip", post(skip))
        .route("/api/projections/{name}/rebuild", post(rebuild))
        .route("/api/projections/{name}/dead-letters", get(dead_letters))
        .with_state(projections)
}

type State = axum::extract::State<Projections>;

fn require(ctx: &RequestContext, permission: &str, what: &str) -> Result<(), ApiError> {
    if ctx.has_permission(permission) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{what} needs the {permission} permission (roles admin, super-admin)"),
        ))
    }
}

fn is_super(ctx: &RequestContext) -> bool {
    ctx.has_permission(permissions::TENANTS_ADMIN)
}

fn model_error(e: ReadModelError) -> ApiError {
    match &e {
        ReadModelError::UnknownProjection(_) | ReadModelError::NotFailedAt { .. } => {
            ApiError::new(e.code(), e.to_string())
        }
        _ => ApiError::new(e.code(), "the read database is unavailable"),
    }
}

/// The status as `ctx` may see it: another tenant's event keeps only its
/// position, type and time (over HTTP and in the live API's `ops.*`).
pub fn visible(ctx: &RequestContext, mut status: ProjectionStatus) -> ProjectionStatus {
    if !is_super(ctx)
        && let Some(failure) = status.failure.as_mut()
    {
        redact(ctx, failure);
    }
    status
}

fn redact(ctx: &RequestContext, failure: &mut ProjectionFailure) {
    if failure.tenant != ctx.tenant.as_str() && !failure.event_id.is_empty() {
        failure.tenant = REDACTED.into();
        failure.stream = REDACTED.into();
        failure.event_id = REDACTED.into();
        failure.error = REDACTED.into();
    }
}

async fn status_of(
    projections: &Projections,
    ctx: &RequestContext,
    name: &str,
) -> Result<ProjectionStatus, ApiError> {
    let status = projections.status_of(name).await.map_err(model_error)?;
    Ok(visible(ctx, status))
}

/// Every projection's status: position, head, lag, state, failure, policy
/// and dead-letter counts.
#[utoipa::path(get, path = "/api/projections", tag = "projections", operation_id = "listProjections",
    responses((status = 200, description = "Every projection of this process", body = Vec<ProjectionStatus>), crate::QueryProblems),
    security(("bearer" = [])))]
async fn list(
    axum::extract::State(projections): State,
    Context(ctx): Context,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    require(&ctx, permissions::PROJECTIONS_READ, "reading projections")?;
    let all = projections.status().await;
    Ok(Json(all.into_iter().map(|s| visible(&ctx, s)).collect()))
}

/// One projection's status.
#[utoipa::path(get, path = "/api/projections/{name}", tag = "projections", operation_id = "getProjection",
    params(("name" = String, Path, description = "The projection's name")),
    responses((status = 200, description = "The projection", body = ProjectionStatus), crate::QueryProblems),
    security(("bearer" = [])))]
async fn one(
    axum::extract::State(projections): State,
    Context(ctx): Context,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectionStatus>, ApiError> {
    require(&ctx, permissions::PROJECTIONS_READ, "reading projections")?;
    Ok(Json(status_of(&projections, &ctx, &name).await?))
}

/// Runs a projection again from its checkpoint, forgetting its failure: the
/// event it stopped at is tried again (after a fix, say).
#[utoipa::path(post, path = "/api/projections/{name}/retry", tag = "projections", operation_id = "retryProjection",
    params(("name" = String, Path, description = "The projection's name")),
    responses((status = 200, description = "Running again", body = ProjectionStatus), crate::ProblemResponses),
    security(("bearer" = [])))]
async fn retry(
    axum::extract::State(projections): State,
    Context(ctx): Context,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectionStatus>, ApiError> {
    require(
        &ctx,
        permissions::PROJECTIONS_ADMIN,
        "retrying a projection",
    )?;
    projections.restart(&name).await.map_err(model_error)?;
    tracing::info!(projection = %name, tenant = %ctx.tenant, actor = ?ctx.actor, "projection retried");
    Ok(Json(status_of(&projections, &ctx, &name).await?))
}

/// Passes over the event the projection stopped at and runs it on. The event
/// is recorded in the projection's dead letters, with who skipped it.
#[utoipa::path(post, path = "/api/projections/{name}/skip", tag = "projections", operation_id = "skipProjectionEvent",
    params(("name" = String, Path, description = "The projection's name")),
    request_body = SkipRequest,
    responses((status = 200, description = "Skipped; running again", body = ProjectionStatus), crate::ProblemResponses),
    security(("bearer" = [])))]
async fn skip(
    axum::extract::State(projections): State,
    Context(ctx): Context,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SkipRequest>,
) -> Result<Json<ProjectionStatus>, ApiError> {
    require(&ctx, permissions::PROJECTIONS_ADMIN, "skipping an event")?;
    let status = projections.status_of(&name).await.map_err(model_error)?;
    if let Some(failure) = &status.failure
        && failure.position == body.position
        && failure.tenant != ctx.tenant.as_str()
        && !is_super(&ctx)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "skipping another tenant's event needs the super-admin role",
        ));
    }
    let actor = format!(
        "{}/{}",
        ctx.tenant,
        ctx.actor.as_deref().unwrap_or("(unknown)")
    );
    projections
        .skip(&name, body.position, &actor)
        .await
        .map_err(model_error)?;
    Ok(Json(status_of(&projections, &ctx, &name).await?))
}

/// Empties the projection's read model and replays it from zero; readers
/// see it fill up meanwhile. Events in its dead letters stay passed over.
#[utoipa::path(post, path = "/api/projections/{name}/rebuild", tag = "projections", operation_id = "rebuildProjection",
    params(("name" = String, Path, description = "The projection's name")),
    responses((status = 202, description = "Rebuilding", body = ProjectionStatus), crate::ProblemResponses),
    security(("bearer" = [])))]
async fn rebuild(
    axum::extract::State(projections): State,
    Context(ctx): Context,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    require(
        &ctx,
        permissions::PROJECTIONS_ADMIN,
        "rebuilding a projection",
    )?;
    if !is_super(&ctx) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a rebuild empties every tenant's read model for a while: it needs the super-admin role",
        ));
    }
    projections.rebuild(&name).await.map_err(model_error)?;
    tracing::warn!(projection = %name, actor = ?ctx.actor, "projection rebuild started");
    let status = status_of(&projections, &ctx, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// The events the projection passed over: parked by its policy or skipped
/// by an operator. A tenant admin sees only their own tenant's.
#[utoipa::path(get, path = "/api/projections/{name}/dead-letters", tag = "projections", operation_id = "listProjectionDeadLetters",
    params(("name" = String, Path, description = "The projection's name"), DeadLetterParams),
    responses((status = 200, description = "A page of dead letters", body = DeadLetterPage), crate::QueryProblems),
    security(("bearer" = [])))]
async fn dead_letters(
    axum::extract::State(projections): State,
    Context(ctx): Context,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeadLetterParams>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    require(&ctx, permissions::PROJECTIONS_READ, "reading dead letters")?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_DEAD_LETTERS_PAGE).contains(&limit) {
        let why = format!("must be 1-{MAX_DEAD_LETTERS_PAGE}");
        return Err(ApiError::validation(
            format!("limit {why}"),
            vec![FieldError::new("limit", why)],
        ));
    }
    let after = params.after.unwrap_or(0);
    let page = projections
        .dead_letters(&name, after, limit)
        .await
        .map_err(model_error)?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|d| d.position))
        .flatten();
    let items = if is_super(&ctx) {
        page
    } else {
        page.into_iter()
            .filter(|d| d.tenant == ctx.tenant.as_str())
            .collect()
    };
    Ok(Json(DeadLetterPage { items, next }))
}

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi, Debug)]
#[openapi(
    paths(list, one, retry, skip, rebuild, dead_letters),
    components(schemas(
        ProjectionStatus,
        ProjectionFailure,
        cairn_projection::ProjectionState,
        cairn_projection::PoisonPolicy,
        ProjectionDeadLetter,
        cairn_projection::DeadLetterReason,
        SkipRequest,
        DeadLetterPage
    )),
    tags((name = "projections", description = "Projections: status, lag, retry, skip, rebuild, dead letters"))
)]
pub struct ProjectionsOpenApi;
