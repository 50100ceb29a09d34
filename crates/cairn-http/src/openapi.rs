//! The OpenAPI 3.1 document at `/openapi.json`, generated from the code.
//!
//! Each service describes its routes with `#[utoipa::path]` and its bodies
//! with `#[derive(ToSchema)]`, collects them in a `#[derive(OpenApi)]` type,
//! and the process merges every service's document with [`openapi_document`]
//! and serves it with [`openapi_router`]. The merged document always holds
//! [`CairnHttpApi`]: the `Problem` schema (the body of every error), the
//! `bearer` security scheme, the health endpoints and their schemas, and
//! `/metrics`.
//!
//! The pieces every route shares are described once, here, so a route's
//! annotation names them instead of spelling them out:
//!
//! - error responses: [`ProblemResponses`] (a command route) and
//!   [`QueryProblems`] (a read), each an `application/problem+json`
//!   [`Problem`]; one error at a time can also be written out
//!   (`(status = 404, body = cairn_http::Problem, content_type =
//!   "application/problem+json")`);
//! - [`CommittedResponses`]: the `202` of a command whose write committed
//!   before its read model showed it;
//! - parameters: [`MinPosition`] (`?minPosition=`, query), [`IfMatch`]
//!   (`If-Match`, header) and [`IdempotencyKey`] (`Idempotency-Key`,
//!   header), as `params(...)`.
//!
//! What the served document guarantees, and `cairn`'s tests check against
//! the running binary: it is a valid OpenAPI 3.1 document; every path
//! parameter of a route template is declared exactly once and `in: path`,
//! every other parameter is in the query or a header, no `(name, in)` pair
//! repeats; and every answer of every route has a documented status, media
//! type and body schema.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use utoipa::{
    IntoParams, IntoResponses, Modify, OpenApi,
    openapi::{
        Content, HeaderBuilder, InfoBuilder, OpenApiBuilder, RefOr, Required, Response,
        ResponseBuilder,
        path::{Parameter, ParameterBuilder, ParameterIn},
        schema::{KnownFormat, ObjectBuilder, Ref, SchemaFormat, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    etag::IfMatch,
    health::{CheckReport, HealthReport},
    idempotency::MAX_IDEMPOTENCY_KEY_BYTES,
    position::{Committed, MinPosition},
    problem::{FieldError, PROBLEM_CONTENT_TYPE, Problem},
};

/// The parts of the API every Cairn process has: the `Problem` schema, the
/// `bearer` security scheme, the health endpoints and `/metrics`.
#[derive(OpenApi, Debug)]
#[openapi(
    paths(crate::health::live, crate::health::ready, crate::http_metrics::scrape),
    components(schemas(Problem, FieldError, Committed, HealthReport, CheckReport)),
    modifiers(&BearerScheme),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Prometheus metrics")
    )
)]
pub struct CairnHttpApi;

/// Adds the `bearer` security scheme that every API route names
/// (`security(("bearer" = []))`).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "An access token from a realm's token endpoint (or a trusted issuer)",
                        ))
                        .build(),
                ),
            );
    }
}

/// What every route behind the standard stack and bearer tokens can answer,
/// whatever it does.
const ANY_API_ROUTE: [(&str, &str); 7] = [
    (
        "400",
        "Malformed request or invalid parameter (`invalid_input`, `malformed_request`)",
    ),
    (
        "401",
        "No bearer token, or not a valid one (`unauthenticated`)",
    ),
    ("403", "The token's roles do not allow it (`forbidden`)"),
    ("404", "No such resource, for this tenant (`not_found`)"),
    ("413", "The body is too large (`payload_too_large`)"),
    ("500", "Internal error"),
    (
        "503",
        "A dependency is unavailable; retry later (`unavailable`)",
    ),
];

/// The error responses any Cairn command route can give, each an
/// `application/problem+json` [`Problem`]: those of every API route (400,
/// 401, 403, 404, 413, 500, 503) and 409, 412, 415, 422 and 504. Use as
/// `responses((status = 201, ...), ProblemResponses)`.
#[derive(Debug)]
pub struct ProblemResponses;

impl IntoResponses for ProblemResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(ANY_API_ROUTE.into_iter().chain([
            (
                "409",
                "A domain rule or a concurrent change forbids it (`rule_violation`, `concurrency_conflict`, ...)",
            ),
            (
                "412",
                "`If-Match` names another version than the current one (`precondition_failed`)",
            ),
            ("415", "The body is not JSON"),
            (
                "422",
                "Invalid fields, or an Idempotency-Key reused for another request",
            ),
            (
                "504",
                "The write did not finish in time; it may have committed (`timeout`)",
            ),
        ]))
    }
}

/// The error responses of a read (a `GET` route), each an
/// `application/problem+json` [`Problem`]: those of every API route (400,
/// 401, 403, 404, 413, 500, 503), 422 for a query parameter out of its
/// range, and 504 when the read model did not reach `?minPosition=` in time.
#[derive(Debug)]
pub struct QueryProblems;

impl IntoResponses for QueryProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(ANY_API_ROUTE.into_iter().chain([
            (
                "422",
                "A query parameter out of its range (`validation_failed`)",
            ),
            (
                "504",
                "The read model did not reach `minPosition` in time (`timeout`)",
            ),
        ]))
    }
}

fn problems<'a>(
    responses: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, RefOr<Response>> {
    responses
        .into_iter()
        .map(|(status, description)| (status.to_owned(), problem_response(description).into()))
        .collect()
}

/// The `202 Accepted` of a command whose write committed but whose read
/// model did not show it within the wait: a [`Committed`] body while the
/// read model is on its way, the `read_model_behind` problem when it has
/// stopped. Either way `Location` and `X-Cairn-Position` say where the
/// write is, and the command must not be sent again.
#[derive(Debug)]
pub struct CommittedResponses;

impl IntoResponses for CommittedResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let response = ResponseBuilder::new()
            .description(
                "Committed, but the read model does not show it yet: do not send it again; \
                 read with `?minPosition=` to see it",
            )
            .header("Location", string_header("Where the resource is read"))
            .header("X-Cairn-Position", position_header())
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("Committed"))),
            )
            .content(
                PROBLEM_CONTENT_TYPE,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build();
        BTreeMap::from([("202".to_owned(), response.into())])
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

/// The `X-Cairn-Position` response header: where a write landed in `$all`.
fn position_header() -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(position_schema())
        .description(Some(
            "The global position of the write; pass it as `?minPosition=` to read it",
        ))
        .build()
}

fn string_header(description: &str) -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

fn position_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
}

/// `?minPosition=P`: answer once the read model has reached `P`.
impl IntoParams for MinPosition {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("minPosition")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "Answer only once the read model has reached this global position \
                     (a command's `X-Cairn-Position`); 504 `timeout` when it does not in time",
                ))
                .schema(Some(position_schema()))
                .build(),
        ]
    }
}

/// `If-Match: "<version>"` (or `*`): the version the client last saw.
impl IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("If-Match")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "The version the change is for, as the `ETag` gave it (`\"3\"`), or `*`; \
                     another version is 412 `precondition_failed`",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        ]
    }
}

/// `Idempotency-Key` on a POST: a retry with the same key gets the first
/// answer again instead of running the command twice.
#[derive(Debug)]
pub struct IdempotencyKey;

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Any visible-ASCII key the client chooses per command; a retry with the \
                     same key and request gets the first answer (`Idempotent-Replayed: true`), \
                     the same key with another request is 422 `idempotency_key_reused`",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(MAX_IDEMPOTENCY_KEY_BYTES)),
                ))
                .build(),
        ]
    }
}

/// One document from several: `title` and `version` describe the whole
/// process; paths, components and tags of `docs` and of [`CairnHttpApi`]
/// are merged (a path present twice keeps the first one's operations and
/// adds the other's), and every operation id is made unique.
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
    unique_operation_ids(&mut doc);
    doc
}

/// OpenAPI wants operation ids unique in a document, and clients generated
/// from it name their methods by them. An id defaults to the handler's
/// name, which two services can share (`list`) and one handler serving two
/// methods does; the first keeps it, the others get their method appended
/// (and a number, should that be taken too). Paths are ordered, so the
/// result is the same on every start.
fn unique_operation_ids(doc: &mut utoipa::openapi::OpenApi) {
    let mut taken = BTreeSet::new();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("options", &mut item.options),
            ("head", &mut item.head),
            ("patch", &mut item.patch),
            ("trace", &mut item.trace),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let Some(id) = operation.operation_id.take() else {
                continue;
            };
            let unique = std::iter::once(id.clone())
                .chain((1..).map(|n| match n {
                    1 => format!("{id}_{method}"),
                    n => format!("{id}_{method}_{n}"),
                }))
                .find(|candidate| !taken.contains(candidate))
                .unwrap_or(id);
            taken.insert(unique.clone());
            operation.operation_id = Some(unique);
        }
    }
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
    fn operation_ids_are_made_unique_in_a_fixed_order() {
        #[utoipa::path(get, path = "/a")]
        #[allow(dead_code)]
        fn list() {}
        mod other {
            #[utoipa::path(method(get, post), path = "/b")]
            #[allow(dead_code)]
            pub(super) fn list() {}
        }
        #[derive(OpenApi)]
        #[openapi(paths(list, other::list))]
        struct Twice;

        let json = serde_json::to_value(openapi_document("t", "1", [Twice::openapi()])).unwrap();
        assert_eq!(json["paths"]["/a"]["get"]["operationId"], "list");
        assert_eq!(json["paths"]["/b"]["get"]["operationId"], "list_get");
        assert_eq!(json["paths"]["/b"]["post"]["operationId"], "list_post");
    }

    #[test]
    fn shared_parameters_are_in_the_query_and_the_headers() {
        let min = &MinPosition::into_params(|| None)[0];
        assert_eq!(min.name, "minPosition");
        assert!(min.parameter_in == ParameterIn::Query);
        let if_match = &IfMatch::into_params(|| None)[0];
        assert_eq!(if_match.name, "If-Match");
        assert!(if_match.parameter_in == ParameterIn::Header);
        let key = &IdempotencyKey::into_params(|| None)[0];
        assert_eq!(key.name, "Idempotency-Key");
        assert!(key.parameter_in == ParameterIn::Header);
    }

    #[test]
    fn a_committed_write_is_a_202_of_either_body() {
        let responses = CommittedResponses::responses();
        let json = serde_json::to_value(&responses["202"]).unwrap();
        assert_eq!(
            json["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Committed"
        );
        assert_eq!(
            json["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        assert!(json["headers"]["X-Cairn-Position"].is_object());
        let doc = serde_json::to_value(openapi_document("t", "1", [])).unwrap();
        assert!(doc["components"]["schemas"]["Committed"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
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
