//! The axum glue every Cairn service uses, so each service's HTTP edge
//! behaves the same way.
//!
//! - [`ApiError`]: errors as RFC 9457 `application/problem+json`, one
//!   mapping from [`cairn_core::ErrorCode`] to status ([`status_for`]).
//! - [`ApiJson`], [`ApiPath`], [`ApiQuery`]: extractors whose rejections are
//!   problems (415 / 400 / 422 with the field / 413), and the 404/405
//!   fallbacks ([`with_problem_fallbacks`]).
//! - [`Context`] and [`tenant_from_header`]: the caller's
//!   [`RequestContext`](cairn_core::RequestContext) in every request.
//! - [`IdempotencyStore`] / [`IdempotencyLayer`]: `Idempotency-Key` on POST,
//!   persisted in SQL (SQLite or PostgreSQL through `sqlx::AnyPool`).
//! - [`ETag`], [`IfMatch`]: the stream version as a strong entity tag.
//! - [`Position`], [`MinPosition`], [`wait_for_position`]: read-your-writes.
//! - [`Health`]: `/health/live`, `/health/ready`.
//! - [`HttpMetricsLayer`], [`metrics_router`]: RED metrics per method, route
//!   template and status, and `GET /metrics` (Prometheus).
//! - [`openapi_document`], [`openapi_router`], [`ProblemResponses`]:
//!   one OpenAPI 3.1 document at `/openapi.json`.
//! - [`app`], [`serve`], [`shutdown_signal`], [`BodyLimitLayer`],
//!   [`trace_layer`]: the standard stack and graceful serving.
//! - [`CorsOptions`]: cross-origin requests, one policy per deployment,
//!   preflights answered before tokens and routes.
//!
//! Architecture invariant: an error leaves a Cairn service only as a
//! problem document with a stable `code`, and a 5xx body never carries the
//! internal detail it was built with.

mod auth;
mod context;
mod cors;
mod etag;
mod extract;
mod health;
mod http_metrics;
mod idempotency;
mod openapi;
mod position;
mod problem;
mod projections_admin;
mod server;

pub use auth::{
    AuthOptions, BearerAuth, BearerAuthLayer, CROSS_TENANT_READ, Caller, CrossTenantAudit,
    CrossTenantRead, SharedRoute, bearer_auth, bearer_token, cross_read_data, unauthenticated,
};
pub use context::{
    CORRELATION_ID_HEADER, Context, RequestContextLayer, RequestContextService, TENANT_HEADER,
    TRACEPARENT_HEADER, TenantHeaderOptions, context_from_headers, tenant_from_header,
};
pub use cors::{CorsError, CorsOptions, DEFAULT_CORS_MAX_AGE, MAX_CORS_MAX_AGE};
pub use etag::{ETag, IfMatch};
pub use extract::{
    ApiJson, ApiPath, ApiQuery, decode_json, decode_query, method_not_allowed_fallback,
    not_found_fallback, with_problem_fallbacks,
};
pub use health::{CheckReport, Health, HealthReport};
pub use http_metrics::{HttpMetrics, HttpMetricsLayer, UNMATCHED_ROUTE, metrics_router};
pub use idempotency::{
    IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAYED_HEADER, IdempotencyError, IdempotencyLayer,
    IdempotencyOptions, IdempotencyService, IdempotencyStore, MAX_IDEMPOTENCY_KEY_BYTES,
    is_replayable,
};
pub use openapi::{
    CairnHttpApi, CommittedResponses, IdempotencyKey, ProblemResponses, QueryProblems,
    openapi_document, openapi_router, problem_response,
};
pub use position::{
    Committed, MinPosition, POSITION_HEADER, Position, unwritten_position, wait_for_position,
};
pub use problem::{
    ApiError, FieldError, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, Problem, RequestRejected,
    status_for, title_for,
};
pub use projections_admin::{
    DeadLetterPage, DeadLetterParams, MAX_DEAD_LETTERS_PAGE, ProjectionsOpenApi, REDACTED,
    SkipRequest, projections_router, visible as visible_projection_status,
};
pub use server::{
    BodyLimit, BodyLimitLayer, CairnTraceLayer, DEFAULT_BODY_LIMIT_BYTES, HttpOptions, RequestSpan,
    app, serve, shutdown_signal, trace_layer,
};
