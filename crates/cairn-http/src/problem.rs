//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error a Cairn service returns over HTTP is an [`ApiError`]: a stable
//! [`ErrorCode`], the HTTP status that code maps to (one table,
//! [`status_for`]), a title that belongs to the code, a human `detail`, and
//! optionally per-field errors and extension members. The body is
//!
//! ```json
//! {"type":"https://cairn.dev/problems/validation_failed","title":"Validation failed",
//!  "status":422,"detail":"…","code":"validation_failed",
//!  "errors":[{"field":"capacity","message":"…"}]}
//! ```
//!
//! `type` is `https://cairn.dev/problems/<code>` ([`PROBLEM_TYPE_BASE`]): one
//! stable URI per code, so a client can switch on `type` or on `code` (the
//! same information; `code` is easier to read). The URI identifies the problem
//! type; it is not promised to resolve.
//!
//! Guarantee: a 5xx response never carries the detail it was built with. The
//! body says only what kind of failure it was; the detail goes to the log
//! (`tracing::error!`), so database errors, paths or SQL never reach a client.

use std::fmt;

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use cairn_core::{ErrorCode, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The prefix of every problem `type` URI; the code follows it.
pub const PROBLEM_TYPE_BASE: &str = "https://cairn.dev/problems/";

/// The media type of problem bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The one mapping from error code to HTTP status.
///
/// `stream_deleted` is 404, not 410: to a client a deleted aggregate is a
/// resource that does not exist (reads of it already answer 404 from the read
/// model), 410 is not among the product's statuses, and the `code` still tells
/// the two apart for a client that cares. `read_model_behind` is 202: the
/// write it reports is committed, so nothing about it invites a resend.
/// Unknown future codes are 500.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidInput | ErrorCode::MalformedRequest => StatusCode::BAD_REQUEST,
        ErrorCode::ValidationFailed | ErrorCode::IdempotencyKeyReused => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::NotFound | ErrorCode::StreamDeleted => StatusCode::NOT_FOUND,
        ErrorCode::RuleViolation
        | ErrorCode::ConcurrencyConflict
        | ErrorCode::WrongExpectedVersion
        | ErrorCode::IdempotencyConflict => StatusCode::CONFLICT,
        ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unauthenticated
        | ErrorCode::MissingToken
        | ErrorCode::MalformedToken
        | ErrorCode::InvalidSignature
        | ErrorCode::UnknownKey
        | ErrorCode::IssuerMismatch
        | ErrorCode::AudienceMismatch
        | ErrorCode::TenantMismatch
        | ErrorCode::UnknownTenant
        | ErrorCode::Expired
        | ErrorCode::NotYetValid
        | ErrorCode::Revoked => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::ReadModelBehind => StatusCode::ACCEPTED,
        ErrorCode::Internal | ErrorCode::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The short, stable title of a code's problem type.
pub fn title_for(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidInput => "Invalid input",
        ErrorCode::MalformedRequest => "Malformed request",
        ErrorCode::ValidationFailed => "Validation failed",
        ErrorCode::NotFound => "Not found",
        ErrorCode::StreamDeleted => "Deleted",
        ErrorCode::RuleViolation => "Rule violation",
        ErrorCode::ConcurrencyConflict => "Concurrency conflict",
        ErrorCode::WrongExpectedVersion => "Wrong expected version",
        ErrorCode::IdempotencyConflict => "Idempotency conflict",
        ErrorCode::PreconditionFailed => "Precondition failed",
        ErrorCode::PayloadTooLarge => "Payload too large",
        ErrorCode::IdempotencyKeyReused => "Idempotency key reused",
        ErrorCode::Unauthenticated => "Unauthenticated",
        ErrorCode::MissingToken => "Access token missing",
        ErrorCode::MalformedToken => "Malformed access token",
        ErrorCode::InvalidSignature => "Invalid token signature",
        ErrorCode::UnknownKey => "Unknown signing key",
        ErrorCode::IssuerMismatch => "Token issuer not trusted",
        ErrorCode::AudienceMismatch => "Token audience not accepted",
        ErrorCode::TenantMismatch => "Token tenant mismatch",
        ErrorCode::UnknownTenant => "Unknown tenant",
        ErrorCode::Expired => "Access token expired",
        ErrorCode::NotYetValid => "Access token not yet valid",
        ErrorCode::Revoked => "Access token revoked",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::RateLimited => "Rate limited",
        ErrorCode::Unavailable => "Service unavailable",
        ErrorCode::Timeout => "Timeout",
        ErrorCode::ReadModelBehind => "Committed; the read model is behind",
        ErrorCode::Corrupt => "Corrupt data",
        _ => "Internal error",
    }
}

/// What a 5xx body says instead of the detail it was built with.
fn public_server_detail(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unavailable => "A dependency of the service is unavailable; retry later.",
        ErrorCode::Timeout => "A dependency of the service did not answer in time; retry later.",
        ErrorCode::Corrupt => "Stored data could not be read; the operators have been told.",
        _ => "An internal error occurred; the operators have been told.",
    }
}

/// One invalid input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Where the field is: a dotted path with indexes (`passengers[0].name`)
    /// for JSON bodies, the parameter name for query and path parameters, the
    /// header name for headers.
    pub field: String,
    /// Why it was rejected, in words a user can act on.
    pub message: String,
}

impl FieldError {
    /// A field error for `field` saying `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<ValidationError> for FieldError {
    fn from(e: ValidationError) -> Self {
        Self::new(e.field, e.reason)
    }
}

/// An RFC 9457 problem body as it goes over the wire; the schema of every
/// error response in `/openapi.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "https://cairn.dev/problems/validation_failed",
    "title": "Validation failed",
    "status": 422,
    "detail": "capacity: invalid type: string \"many\", expected u32",
    "code": "validation_failed",
    "errors": [{"field": "capacity", "message": "invalid type: string \"many\", expected u32"}]
}))]
pub struct Problem {
    /// A URI naming the problem type: `https://cairn.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type; the same for every occurrence.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, for a human.
    pub detail: String,
    /// The stable Cairn error code (`validation_failed`, `not_found`, ...).
    pub code: String,
    /// Per-field errors, when the problem is about specific inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Further members specific to the problem (`currentVersion`...).
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub extensions: Map<String, Value>,
}

/// An error answered as `application/problem+json`.
///
/// Build it from a code ([`ApiError::new`] or a shortcut such as
/// [`ApiError::not_found`]); the status and title follow from the code. The
/// status can be overridden only for HTTP-level conditions that have no code
/// of their own (405 method not allowed, 415 unsupported media type).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status (from [`status_for`] unless overridden).
    pub status: StatusCode,
    /// The stable error code.
    pub code: ErrorCode,
    /// The problem type's title (from [`title_for`]).
    pub title: &'static str,
    /// What went wrong, for a human. Never sent for 5xx statuses.
    pub detail: String,
    /// Per-field errors.
    pub errors: Option<Vec<FieldError>>,
    /// Extension members added to the body (reserved names are ignored).
    pub extensions: Map<String, Value>,
    /// Extra response headers (`Allow`, `Retry-After`...); boxed because
    /// rare, so that `Result<T, ApiError>` stays small.
    headers: Option<Box<HeaderMap>>,
    /// Whether the request was refused for its form before the handler ran.
    rejection: bool,
}

/// Response extension marking a problem answered by an extractor or a
/// fallback, before any handler logic ran (see [`ApiError::as_rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRejected;

impl ApiError {
    /// An error with `code`, its status and title, and `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            status: status_for(code),
            code,
            title: title_for(code),
            detail: detail.into(),
            errors: None,
            extensions: Map::new(),
            headers: None,
            rejection: false,
        }
    }

    /// 400 `invalid_input`.
    pub fn invalid_input(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, detail)
    }

    /// 400 `malformed_request`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::MalformedRequest, detail)
    }

    /// 422 `validation_failed` with the fields that failed.
    pub fn validation(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self::new(ErrorCode::ValidationFailed, detail).with_errors(errors)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, detail)
    }

    /// 500 `internal`; `detail` is logged, never sent.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, detail.to_string())
    }

    /// Replaces the status; meant for HTTP-level conditions without a code
    /// of their own (405, 415).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Sets the per-field errors.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = Some(errors);
        self
    }

    /// Adds an extension member to the body. Reserved members (`type`,
    /// `title`, `status`, `detail`, `code`, `errors`, `instance`) cannot be
    /// replaced this way and are ignored.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        if !RESERVED.contains(&name.as_str()) {
            self.extensions.insert(name, value.into());
        }
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers
            .get_or_insert_with(Default::default)
            .append(name, value);
        self
    }

    /// Marks the error as a rejection of the request's form (bad JSON,
    /// wrong content type, bad parameter or header), made before the handler
    /// ran. Such responses carry the [`RequestRejected`] extension and are
    /// never stored under an `Idempotency-Key`, so a client can fix the
    /// request and retry with the same key. The extractors of this crate
    /// mark their rejections; custom extractors should too.
    pub fn as_rejection(mut self) -> Self {
        self.rejection = true;
        self
    }

    /// Whether [`ApiError::as_rejection`] marked this error.
    pub fn is_rejection(&self) -> bool {
        self.rejection
    }

    /// The extra response headers added with [`ApiError::with_header`].
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.headers.as_deref()
    }

    /// The wire body. For 5xx statuses the detail is replaced by a fixed
    /// sentence for the code.
    pub fn to_problem(&self) -> Problem {
        let detail = if self.status.is_server_error() {
            public_server_detail(self.code).to_owned()
        } else {
            self.detail.clone()
        };
        Problem {
            problem_type: format!("{PROBLEM_TYPE_BASE}{}", self.code.as_str()),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail,
            code: self.code.as_str().to_owned(),
            errors: self.errors.clone(),
            extensions: self.extensions.clone(),
        }
    }
}

const RESERVED: [&str; 7] = [
    "type", "title", "status", "detail", "code", "errors", "instance",
];

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.status.as_u16(),
            self.detail
        )
    }
}

impl std::error::Error for ApiError {}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code, title_for(code))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = %self.code, status = self.status.as_u16(), detail = %self.detail, "request failed");
        }
        let body = match serde_json::to_vec(&self.to_problem()) {
            Ok(body) => body,
            // A map of strings and JSON values always serializes; keep a
            // well-formed answer even so.
            Err(_) => {
                br#"{"type":"about:blank","title":"Internal error","status":500,"code":"internal"}"#
                    .to_vec()
            }
        };
        let mut response = (self.status, body).into_response();
        if self.rejection {
            response.extensions_mut().insert(RequestRejected);
        }
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        for (name, value) in self.headers.iter().flat_map(|h| h.iter()) {
            headers.append(name, value.clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; ErrorCode::ALL.len()] = ErrorCode::ALL;

    #[test]
    fn every_code_has_its_documented_status() {
        let expected = [
            400, 409, 409, 404, 404, 500, 503, 500, 400, 422, 409, 409, 412, 413, 422, 401, 403,
            429, 504, 202, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401,
        ];
        assert_eq!(ALL.len(), expected.len(), "every code has its status here");
        for (code, status) in ALL.iter().zip(expected) {
            assert_eq!(status_for(*code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn every_code_has_a_title() {
        for code in ALL {
            assert!(!title_for(code).is_empty());
        }
        assert_eq!(title_for(ErrorCode::Internal), "Internal error");
    }

    #[test]
    fn server_errors_never_carry_their_detail() {
        for code in [
            ErrorCode::Internal,
            ErrorCode::Corrupt,
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
        ] {
            let p = ApiError::new(code, "password=hunter2 at /var/db").to_problem();
            assert!(!p.detail.contains("hunter2"), "{code}");
        }
        let p = ApiError::not_found("flight 7 not found").to_problem();
        assert_eq!(p.detail, "flight 7 not found");
    }

    #[test]
    fn the_body_has_the_rfc_9457_members_and_extensions() {
        let e = ApiError::new(ErrorCode::PreconditionFailed, "stale")
            .with_extension("currentVersion", 4)
            .with_extension("status", 200);
        let body = serde_json::to_value(e.to_problem()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "https://cairn.dev/problems/precondition_failed",
                "title": "Precondition failed",
                "status": 412,
                "detail": "stale",
                "code": "precondition_failed",
                "currentVersion": 4
            })
        );
    }

    #[test]
    fn rejections_are_marked_on_the_response() {
        let plain = ApiError::malformed("x").into_response();
        assert!(plain.extensions().get::<RequestRejected>().is_none());
        let rejected = ApiError::malformed("x").as_rejection();
        assert!(rejected.is_rejection());
        let response = rejected
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .into_response();
        assert!(response.extensions().get::<RequestRejected>().is_some());
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
    }

    #[test]
    fn api_error_is_small_enough_to_return_by_value() {
        assert!(std::mem::size_of::<ApiError>() <= 128);
    }

    #[test]
    fn field_errors_come_from_validation_errors() {
        let f = FieldError::from(ValidationError::new("tenant", "must not be empty"));
        assert_eq!(f, FieldError::new("tenant", "must not be empty"));
    }
}
