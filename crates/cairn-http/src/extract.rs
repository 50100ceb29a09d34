//! Extractors whose rejections are problem+json, and the 404/405 fallbacks.
//!
//! axum's own `Json`, `Path` and `Query` answer with plain-text bodies; these
//! wrappers answer every rejection as an [`ApiError`]:
//!
//! | what went wrong                                   | status | code                |
//! |---------------------------------------------------|--------|---------------------|
//! | `Content-Type` missing or not JSON                | 415    | `malformed_request` |
//! | body is not JSON (syntax, truncated, empty)       | 400    | `malformed_request` |
//! | JSON of the wrong shape (missing field, type)     | 422    | `validation_failed` + `errors[].field` |
//! | body larger than the limit                        | 413    | `payload_too_large` |
//! | path parameter does not parse                     | 400    | `invalid_input` + `errors[].field` |
//! | query string does not parse                       | 400    | `invalid_input` + `errors[].field` |
//! | no route                                          | 404    | `not_found`         |
//! | route exists, method does not                     | 405    | `malformed_request` |
//!
//! Content type: 415 rather than 400 because RFC 9110 has a status for exactly
//! this and clients (and curl users who forgot `-H content-type`) learn what
//! to fix from it; the code stays `malformed_request`. JSON is
//! `application/json` or any `application/*+json`, parameters ignored.

use axum::{
    body::Bytes,
    extract::{
        FromRequest, FromRequestParts, Path, RawPathParams, Request,
        rejection::{BytesRejection, FailedToBufferBody, PathRejection},
    },
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::problem::{ApiError, FieldError};

/// A JSON request body (and response body) whose rejections are problems.
///
/// As a response it is plain `application/json`, like `axum::Json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::malformed(
                "the body must be JSON: send `Content-Type: application/json`",
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .as_rejection());
        }
        let bytes = read_body(req, state)
            .await
            .map_err(ApiError::as_rejection)?;
        decode_json(&bytes)
            .map(ApiJson)
            .map_err(ApiError::as_rejection)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Whether the request declares a JSON body.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the whole body under the configured limit (axum's
/// `DefaultBodyLimit`, and the [`BodyLimitLayer`](crate::BodyLimitLayer)
/// when installed): too large is 413.
pub(crate) async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                too_large()
            }
            other => ApiError::malformed(format!("the body could not be read: {other}")),
        })
}

pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        cairn_core::ErrorCode::PayloadTooLarge,
        "the request body is larger than this service accepts",
    )
}

/// Decodes `bytes` as JSON into `T`: syntax errors are 400, shape errors 422
/// with the path of the offending field.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        // serde stops at the first problem, so a shape error can hide a
        // syntax error further on; broken JSON is 400 whatever its shape.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return json_problem(".", &syntax);
        }
        let path = err.path().to_string();
        json_problem(&path, &err.into_inner())
    })?;
    // Characters after the value are a syntax error too.
    de.end().map_err(|err| json_problem(".", &err))?;
    Ok(value)
}

fn json_problem(path: &str, err: &serde_json::Error) -> ApiError {
    let message = serde_message(err);
    if err.classify() != serde_json::error::Category::Data {
        return ApiError::malformed(format!("the body is not valid JSON: {err}"));
    }
    let field = field_of(path, &message);
    if field.is_empty() {
        return ApiError::new(cairn_core::ErrorCode::ValidationFailed, message);
    }
    ApiError::validation(
        format!("{field}: {message}"),
        vec![FieldError::new(field, message)],
    )
}

/// serde_json's message without its ` at line L column C` suffix.
fn serde_message(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
}

/// The dotted path of the field an error is about. serde reports a missing
/// field at the path of the object that lacks it, naming the field in the
/// message, so the name is appended here (an unknown field's path already
/// ends with it). Root is `""`.
fn field_of(path: &str, message: &str) -> String {
    let base = if path == "." { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match missing {
        Some(name) if base.is_empty() => name.to_owned(),
        Some(name) => format!("{base}.{name}"),
        None => base.to_owned(),
    }
}

/// Path parameters whose rejections are problems: a parameter that does not
/// parse is 400 `invalid_input` naming the parameter; a route whose
/// parameters do not fit `T` (a programming error) is 500.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                let raw = RawPathParams::from_request_parts(parts, state).await.ok();
                Err(path_problem(rejection, raw.as_ref()).as_rejection())
            }
        }
    }
}

/// `raw` names the parameter when axum's error gives only its value (a
/// single parameter extracted as a plain type).
fn path_problem(rejection: PathRejection, raw: Option<&RawPathParams>) -> ApiError {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(err) = rejection else {
        return ApiError::internal(format!("path extraction misconfigured: {rejection}"));
    };
    let detail = err.body_text();
    let field = match err.kind() {
        ErrorKind::WrongNumberOfParameters { .. } | ErrorKind::UnsupportedType { .. } => {
            return ApiError::internal(format!("path extraction misconfigured: {detail}"));
        }
        ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::InvalidUtf8InPathParam { key }
        | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
        ErrorKind::ParseErrorAtIndex { index, .. } => Some(index.to_string()),
        ErrorKind::ParseError { value, .. } => raw.and_then(|raw| {
            raw.iter()
                .find(|(_, v)| v == value)
                .map(|(k, _)| k.to_owned())
        }),
        _ => None,
    };
    let error = ApiError::invalid_input(detail.clone());
    match field {
        Some(field) => error.with_errors(vec![FieldError::new(field, detail)]),
        None => error,
    }
}

/// A query string whose rejections are problems: 400 `invalid_input` with
/// the parameter that failed. Unknown parameters are ignored unless `T`
/// denies them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        decode_query(parts.uri.query().unwrap_or_default())
            .map(ApiQuery)
            .map_err(ApiError::as_rejection)
    }
}

/// Decodes a query string (without `?`) into `T`.
pub fn decode_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        let field = field_of(&path, &message);
        let error = ApiError::invalid_input(if field.is_empty() {
            format!("invalid query string: {message}")
        } else {
            format!("invalid query parameter `{field}`: {message}")
        });
        if field.is_empty() {
            error
        } else {
            error.with_errors(vec![FieldError::new(field, message)])
        }
    })
}

/// The fallback for unknown routes: 404 `not_found`.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("there is no resource at this path").as_rejection()
}

/// The fallback for known routes called with another method: 405.
pub async fn method_not_allowed_fallback(method: Method) -> ApiError {
    ApiError::malformed(format!("method {method} is not allowed on this resource"))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .as_rejection()
}

/// Sets the problem+json 404 and 405 fallbacks on `router`.
///
/// Call it once, on the fully assembled router, after every route is merged:
/// axum applies the 405 fallback to the routes present when it is called,
/// and merging two routers that both carry a fallback panics.
pub fn with_problem_fallbacks<S>(router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Flight {
        number: String,
        capacity: u32,
        legs: Vec<Leg>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Leg {
        from: String,
    }

    fn code_and_field<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> (u16, String, String) {
        let err = decode_json::<T>(body.as_bytes()).unwrap_err();
        let field = err
            .errors
            .as_ref()
            .and_then(|e| e.first())
            .map(|f| f.field.clone())
            .unwrap_or_default();
        (err.status.as_u16(), err.code.to_string(), field)
    }

    #[test]
    fn syntax_errors_are_malformed() {
        for body in ["", "{", "{\"number\":", "nope", "{} trailing", "{\"a\" 1}"] {
            let (status, code, _) = code_and_field::<Flight>(body);
            assert_eq!(
                (status, code.as_str()),
                (400, "malformed_request"),
                "{body:?}"
            );
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let cases = [
            (
                r#"{"number":"SK1","capacity":"many","legs":[]}"#,
                "capacity",
            ),
            (r#"{"number":"SK1","legs":[]}"#, "capacity"),
            (
                r#"{"number":"SK1","capacity":1,"legs":[{"from":7}]}"#,
                "legs[0].from",
            ),
            (
                r#"{"number":"SK1","capacity":1,"legs":[{}]}"#,
                "legs[0].from",
            ),
            (r#"{"number":"SK1","capacity":-1,"legs":[]}"#, "capacity"),
            (
                r#"{"number":"SK1","capacity":1,"legs":[{"from":"A","to":"B"}]}"#,
                "legs[0].to",
            ),
        ];
        for (body, field) in cases {
            let (status, code, got) = code_and_field::<Flight>(body);
            assert_eq!(
                (status, code.as_str(), got.as_str()),
                (422, "validation_failed", field),
                "{body}"
            );
        }
    }

    #[test]
    fn a_body_of_the_wrong_kind_is_422_without_a_field() {
        let err = decode_json::<Flight>(b"\"SK1\"").unwrap_err();
        assert_eq!(err.status.as_u16(), 422);
        assert!(err.errors.is_none());
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), json, "{value}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Page {
        limit: u32,
        after: Option<u64>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let err = decode_query::<Page>("limit=ten").unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert_eq!(err.errors.unwrap()[0].field, "limit");
        let err = decode_query::<Page>("after=1").unwrap_err();
        assert_eq!(err.errors.unwrap()[0].field, "limit");
        let page = decode_query::<Page>("limit=10&other=x").unwrap();
        assert_eq!((page.limit, page.after), (10, None));
    }
}
