//! The OpenAPI 3.1 document at `/openapi.json`, generated from the code.
//!
//! Each service describes its routes with `#[utoipa::path]` and its bodies
//! with `#[derive(ToSchema)]`, collects them in a `#[derive(OpenApi)]` type,
//! and the process merges every service's document with [`openapi_document`]
//! and serves it with [`openapi_router`]. The merged document always holds
//! [`CairnHttpApi`]: the `Problem` schema (the body of every error), the
//! health endpoints and their schemas, and `/metrics`. Error responses of a route can be
//! described one by one (`(status = 404, body = cairn_http::Problem,
//! content_type = "application/problem+json")`) or all at once with
//! [`ProblemResponses`].

use std::{collections::BTreeMap, sync::Arc};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use utoipa::{
    IntoResponses, OpenApi,
    openapi::{
        Content, InfoBuilder, OpenApiBuilder, RefOr, Response, ResponseBuilder, schema::Ref,
    },
};

use crate::{
    health::{CheckReport, HealthReport},
    problem::{FieldError, PROBLEM_CONTENT_TYPE, Problem},
};

/// The parts of the API every Cairn process has: the `Problem` schema, the
/// health endpoints and `/metrics`.
#[derive(OpenApi, Debug)]
#[openapi(
    paths(crate::health::live, crate::health::ready, crate::http_metrics::scrape),
    components(schemas(Problem, FieldError, HealthReport, CheckReport)),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Prometheus metrics")
    )
)]
pub struct CairnHttpApi;

/// The error responses any Cairn command route can give, each an
/// `application/problem+json` [`Problem`]: 400, 404, 409, 413, 415, 422,
/// 500. Use as `responses((status = 201, ...), ProblemResponses)`.
#[derive(Debug)]
pub struct ProblemResponses;

impl IntoResponses for ProblemResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("400", "Malformed request or invalid parameter"),
            ("404", "No such resource (for this tenant)"),
            ("409", "A domain rule or a concurrent change forbids it"),
            ("413", "The body is too large"),
            ("415", "The body is not JSON"),
            (
                "422",
                "Invalid fields, or an Idempotency-Key reused for another request",
            ),
            ("500", "Internal error"),
        ]
        .into_iter()
        .map(|(status, description)| (status.to_owned(), problem_response(description).into()))
        .collect()
    }
}

/// A response whose body is a [`Problem`], for hand-built documents.
pub fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_CONTENT_TYPE,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
}

/// One document from several: `title` and `version` describe the whole
/// process; paths, components and tags of `docs` and of [`CairnHttpApi`]
/// are merged (a path present twice keeps the first one's operations and
/// adds the other's).
pub fn openapi_document(
    title: &str,
    version: &str,
    docs: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(InfoBuilder::new().title(title).version(version).build())
        .build();
    doc.merge(CairnHttpApi::openapi());
    for other in docs {
        doc.merge(other);
    }
    doc
}

/// `GET /openapi.json` serving `doc`.
pub fn openapi_router<S>(doc: utoipa::openapi::OpenApi) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let doc = Arc::new(doc);
    Router::new().route(
        "/openapi.json",
        get(move || {
            let doc = Arc::clone(&doc);
            async move {
                match serde_json::to_vec(&*doc) {
                    Ok(body) => {
                        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
                    }
                    Err(e) => crate::ApiError::internal(format!("openapi: {e}")).into_response(),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_the_problem_schema() {
        let doc = openapi_document("t", "1", []);
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1."));
        assert!(json["components"]["schemas"]["Problem"].is_object());
        assert!(json["paths"]["/health/ready"]["get"].is_object());
    }

    #[test]
    fn problem_responses_point_at_the_problem_schema() {
        let responses = ProblemResponses::responses();
        let json = serde_json::to_value(&responses["422"]).unwrap();
        assert_eq!(
            json["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }
}
