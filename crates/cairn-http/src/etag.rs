//! Optimistic concurrency over HTTP: `ETag` is the stream version, `If-Match`
//! carries the version a client last saw.
//!
//! Tags are strong and quoted: version 5 is `ETag: "5"`. Parsing `If-Match`
//! (RFC 9110 §13.1.1):
//!
//! - absent -> [`IfMatch::Absent`] (no precondition);
//! - `*` -> [`IfMatch::Any`] (the resource must exist);
//! - `"5"` -> [`IfMatch::Version(5)`](IfMatch::Version);
//! - a weak tag (`W/"5"`) or a well-formed tag that is not a version we issue
//!   (`"abc"`, `"05"`) can never match: If-Match uses the strong comparison,
//!   so the condition is false and the answer is 412 `precondition_failed`,
//!   as the RFC prescribes;
//! - a syntactically broken header (`5` without quotes, an unterminated
//!   quote, non-ASCII) or a list of several tags is 400 `invalid_input` (a
//!   command has one expected version).

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{IntoResponseParts, ResponseParts},
};
use cairn_core::ErrorCode;

use crate::problem::{ApiError, FieldError};

/// `ETag: "<version>"` as a response part: `(ETag(v), ApiJson(body))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ETag(pub u64);

impl ETag {
    /// The header value, `"<version>"`.
    pub fn header_value(self) -> HeaderValue {
        quoted_number(self.0)
    }
}

impl IntoResponseParts for ETag {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.headers_mut().insert(header::ETAG, self.header_value());
        Ok(res)
    }
}

/// `"<n>"` as a header value; digits and quotes are always valid.
fn quoted_number(n: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"{n}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The precondition a request's `If-Match` header states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// No `If-Match` header.
    Absent,
    /// `If-Match: *`: the resource must exist, any version.
    Any,
    /// `If-Match: "<version>"`: the resource must be at this version.
    Version(u64),
}

impl IfMatch {
    /// Parses the `If-Match` header(s) of `headers`; see the module docs.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut values = headers.get_all(header::IF_MATCH).iter().peekable();
        if values.peek().is_none() {
            return Ok(IfMatch::Absent);
        }
        let mut tags = Vec::new();
        for value in values {
            let text = value.to_str().map_err(|_| bad("must be ASCII"))?;
            for tag in split_list(text)? {
                tags.push(tag);
            }
        }
        match tags.as_slice() {
            [] => Err(bad("is empty")),
            [Tag::Star] => Ok(IfMatch::Any),
            [tag] => tag.version().map(IfMatch::Version).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::PreconditionFailed,
                    "If-Match names no version of this resource (tags are strong, \"<version>\")",
                )
            }),
            _ => Err(bad("must name exactly one version (or *)")),
        }
    }

    /// Checks the precondition against the resource's current version
    /// (`None`: it does not exist): unmet is 412 `precondition_failed` with
    /// the current version as `currentVersion` (RFC 9110: a missing resource
    /// fails `*` and every tag).
    ///
    /// A service that passes [`IfMatch::version`] to the store as the
    /// expected version must answer the store's `wrong_expected_version`
    /// with this 412 too, since the expectation came from the client's
    /// precondition.
    pub fn check(self, current: Option<u64>) -> Result<(), ApiError> {
        let met = match (self, current) {
            (IfMatch::Absent, _) => true,
            (IfMatch::Any, current) => current.is_some(),
            (IfMatch::Version(v), current) => current == Some(v),
        };
        if met {
            return Ok(());
        }
        let error = ApiError::new(
            ErrorCode::PreconditionFailed,
            match current {
                Some(_) => "the resource has changed since the version in If-Match",
                None => "the resource does not exist",
            },
        );
        Err(match current {
            Some(v) => error.with_extension("currentVersion", v),
            None => error,
        })
    }

    /// The expected version, if one was given.
    pub fn version(self) -> Option<u64> {
        match self {
            IfMatch::Version(v) => Some(v),
            _ => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        IfMatch::from_headers(&parts.headers).map_err(ApiError::as_rejection)
    }
}

fn bad(why: &str) -> ApiError {
    ApiError::invalid_input(format!("If-Match {why}"))
        .with_errors(vec![FieldError::new("if-match", why)])
}

#[derive(Debug, PartialEq)]
enum Tag<'a> {
    Star,
    Weak,
    Strong(&'a str),
}

impl Tag<'_> {
    /// The version a strong tag names, if it is one we could have issued
    /// (canonical decimal, so `"05"` is not version 5).
    fn version(&self) -> Option<u64> {
        let Tag::Strong(opaque) = self else {
            return None;
        };
        let v: u64 = opaque.parse().ok()?;
        (v.to_string() == *opaque).then_some(v)
    }
}

/// Splits `If-Match: #entity-tag / "*"` into tags, checking the syntax of
/// each (`entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE`).
fn split_list(text: &str) -> Result<Vec<Tag<'_>>, ApiError> {
    let mut tags = Vec::new();
    let mut rest = text.trim_matches([' ', '\t']);
    if rest == "*" {
        return Ok(vec![Tag::Star]);
    }
    while !rest.is_empty() {
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let inner = after
            .strip_prefix('"')
            .ok_or_else(|| bad("must be a quoted entity tag, such as \"3\", or *"))?;
        let end = inner
            .find('"')
            .ok_or_else(|| bad("has an unterminated entity tag"))?;
        let opaque = &inner[..end];
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        {
            return Err(bad("has an invalid character in an entity tag"));
        }
        tags.push(if weak { Tag::Weak } else { Tag::Strong(opaque) });
        rest = inner[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma.trim_start_matches([' ', '\t']);
            if rest.is_empty() {
                return Err(bad("ends with a comma"));
            }
        } else if !rest.is_empty() {
            return Err(bad("must separate entity tags with commas"));
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<IfMatch, u16> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        IfMatch::from_headers(&h).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn absent_star_and_versions() {
        assert_eq!(parse(&[]), Ok(IfMatch::Absent));
        assert_eq!(parse(&["*"]), Ok(IfMatch::Any));
        assert_eq!(parse(&[" * "]), Ok(IfMatch::Any));
        assert_eq!(parse(&["\"0\""]), Ok(IfMatch::Version(0)));
        assert_eq!(parse(&["\"42\""]), Ok(IfMatch::Version(42)));
        assert_eq!(parse(&[" \"7\" "]), Ok(IfMatch::Version(7)));
        assert_eq!(
            parse(&["\"18446744073709551615\""]),
            Ok(IfMatch::Version(u64::MAX))
        );
        assert_eq!(IfMatch::Version(3).version(), Some(3));
        assert_eq!(IfMatch::Any.version(), None);
    }

    #[test]
    fn tags_that_can_never_match_fail_the_precondition() {
        for v in [
            "W/\"3\"",
            "\"abc\"",
            "\"05\"",
            "\"\"",
            "\"-1\"",
            "\"18446744073709551616\"",
        ] {
            assert_eq!(parse(&[v]), Err(412), "{v}");
        }
    }

    #[test]
    fn broken_headers_are_400() {
        for v in [
            "3",
            "\"3",
            "",
            "   ",
            "\"3\" \"4\"",
            "\"3\",",
            "W/3",
            "*, \"3\"",
            "'3'",
        ] {
            assert_eq!(parse(&[v]), Err(400), "{v:?}");
        }
    }

    #[test]
    fn several_tags_are_400() {
        assert_eq!(parse(&["\"1\", \"2\""]), Err(400));
        assert_eq!(parse(&["\"1\"", "\"2\""]), Err(400));
    }

    #[test]
    fn check_compares_with_the_current_version() {
        assert!(IfMatch::Absent.check(None).is_ok());
        assert!(IfMatch::Absent.check(Some(4)).is_ok());
        assert!(IfMatch::Any.check(Some(0)).is_ok());
        assert!(IfMatch::Version(4).check(Some(4)).is_ok());
        let stale = IfMatch::Version(3).check(Some(4)).unwrap_err();
        assert_eq!(stale.status.as_u16(), 412);
        assert_eq!(stale.extensions["currentVersion"], 4);
        assert_eq!(IfMatch::Any.check(None).unwrap_err().status.as_u16(), 412);
        assert_eq!(
            IfMatch::Version(0).check(None).unwrap_err().status.as_u16(),
            412
        );
    }

    #[test]
    fn etag_is_strong_and_quoted() {
        assert_eq!(ETag(5).header_value(), "\"5\"");
    }
}
