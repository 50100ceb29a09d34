//! Cross-origin requests (CORS) for browsers calling a Cairn API from
//! another origin: one set of options per deployment, applied by [`app`]
//! (through [`HttpOptions::cors`]) and by the gateway, so a service, `cairn
//! up` and the gateway answer the same way.
//!
//! What it guarantees:
//! - with no allowed origin (the default) nothing changes: no CORS header
//!   is ever sent;
//! - with allowed origins, every `OPTIONS` request on every path is a
//!   preflight answered at once by this layer (200, empty body), before
//!   tokens, routes or methods are looked at: a preflight carries no token
//!   and must never be 401 or 405, and a gateway never forwards it;
//! - only an allowed origin gets `Access-Control-Allow-Origin` (on the
//!   preflight and on the actual response); any other origin gets none, so
//!   its browser refuses the answer;
//! - `*` is accepted only without credentials, and refused when the
//!   options are built (tower-http would otherwise panic on the first
//!   request); methods and headers are lists, never wildcards.
//!
//! [`app`]: crate::app
//! [`HttpOptions::cors`]: crate::HttpOptions::cors

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    context::{CORRELATION_ID_HEADER, TENANT_HEADER, TRACEPARENT_HEADER},
    idempotency::{IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAYED_HEADER},
    position::POSITION_HEADER,
};

/// How long a browser may cache a preflight's answer, by default.
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The longest preflight cache accepted: a day (browsers cap it lower).
pub const MAX_CORS_MAX_AGE: Duration = Duration::from_secs(86_400);

/// Why CORS options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorsError {
    /// An allowed origin is not `scheme://host[:port]`.
    #[error(
        "CORS origin `{origin}`: {reason} (expected scheme://host[:port], e.g. https://console.example)"
    )]
    Origin {
        origin: String,
        reason: &'static str,
    },
    /// `*` with credentials: browsers refuse it, so it is refused here.
    #[error("CORS origin `*` cannot be used with credentials: name the allowed origins one by one")]
    WildcardWithCredentials,
    /// `*` among other origins: it would allow every origin anyway.
    #[error("CORS origin `*` allows every origin: give it alone, or name the origins")]
    WildcardAmongOrigins,
    /// A preflight cache longer than [`MAX_CORS_MAX_AGE`].
    #[error("CORS max age of {secs} s is more than a day ({max} s)")]
    MaxAge { secs: u64, max: u64 },
}

/// Which origins may call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    None,
    Any,
    List(Vec<HeaderValue>),
}

/// The CORS policy of one deployment. The default allows no origin: no
/// CORS headers at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOptions {
    origins: Origins,
    credentials: bool,
    methods: Vec<Method>,
    allowed_headers: Vec<HeaderName>,
    exposed_headers: Vec<HeaderName>,
    max_age: Duration,
}

impl Default for CorsOptions {
    fn default() -> Self {
        Self {
            origins: Origins::None,
            credentials: false,
            methods: vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ],
            allowed_headers: vec![
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                IDEMPOTENCY_KEY_HEADER,
                CORRELATION_ID_HEADER,
                TENANT_HEADER,
                TRACEPARENT_HEADER,
            ],
            exposed_headers: vec![
                header::LOCATION,
                header::ETAG,
                POSITION_HEADER,
                CORRELATION_ID_HEADER,
                header::RETRY_AFTER,
                IDEMPOTENT_REPLAYED_HEADER,
                // The RateLimit header fields (IETF httpapi draft), in both
                // of the draft's shapes.
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ],
            max_age: DEFAULT_CORS_MAX_AGE,
        }
    }
}

impl CorsOptions {
    /// Allows `origins` (each `scheme://host[:port]`, or `*` alone for any
    /// origin), with cookies and `Authorization` counted as credentials
    /// when `credentials` is set. No origin at all means CORS stays off.
    pub fn new<I, S>(origins: I, credentials: bool) -> Result<Self, CorsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let given: Vec<String> = origins
            .into_iter()
            .map(|o| o.as_ref().trim().to_owned())
            .collect();
        let origins = if given.iter().any(|o| o == "*") {
            if given.len() > 1 {
                return Err(CorsError::WildcardAmongOrigins);
            }
            if credentials {
                return Err(CorsError::WildcardWithCredentials);
            }
            Origins::Any
        } else if given.is_empty() {
            Origins::None
        } else {
            let mut list = Vec::with_capacity(given.len());
            for origin in &given {
                let value = parse_origin(origin)?;
                if !list.contains(&value) {
                    list.push(value);
                }
            }
            Origins::List(list)
        };
        Ok(Self {
            origins,
            credentials,
            ..Self::default()
        })
    }

    /// How long a browser may cache a preflight's answer (at most
    /// [`MAX_CORS_MAX_AGE`]).
    pub fn with_max_age(mut self, max_age: Duration) -> Result<Self, CorsError> {
        if max_age > MAX_CORS_MAX_AGE {
            return Err(CorsError::MaxAge {
                secs: max_age.as_secs(),
                max: MAX_CORS_MAX_AGE.as_secs(),
            });
        }
        self.max_age = max_age;
        Ok(self)
    }

    /// The methods a preflight allows (by default GET, HEAD, POST, PUT,
    /// PATCH, DELETE).
    pub fn with_methods(mut self, methods: Vec<Method>) -> Self {
        self.methods = methods;
        self
    }

    /// The request headers a preflight allows (by default
    /// `Authorization`, `Content-Type`, `If-Match`, `Idempotency-Key`,
    /// `X-Correlation-Id`, `X-Cairn-Tenant`, `traceparent`).
    pub fn with_allowed_headers(mut self, headers: Vec<HeaderName>) -> Self {
        self.allowed_headers = headers;
        self
    }

    /// The response headers a page may read (by default `Location`,
    /// `ETag`, `X-Cairn-Position`, `X-Correlation-Id`, `Retry-After`,
    /// `Idempotent-Replayed` and the `RateLimit` fields).
    pub fn with_exposed_headers(mut self, headers: Vec<HeaderName>) -> Self {
        self.exposed_headers = headers;
        self
    }

    /// Whether any origin is allowed (else no CORS header is sent).
    pub fn is_enabled(&self) -> bool {
        self.origins != Origins::None
    }

    /// The allowed origins as given (`*` for any), for a start-up banner.
    pub fn origins(&self) -> Vec<String> {
        match &self.origins {
            Origins::None => Vec::new(),
            Origins::Any => vec!["*".to_owned()],
            Origins::List(list) => list
                .iter()
                .filter_map(|o| o.to_str().ok().map(str::to_owned))
                .collect(),
        }
    }

    /// Whether credentials are allowed.
    pub fn credentials(&self) -> bool {
        self.credentials
    }

    /// How long a preflight's answer may be cached.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// tower-http's layer for these options, or `None` when no origin is
    /// allowed. Put it outside anything that may refuse a request (tokens,
    /// method routing, proxying), so preflights are answered first.
    pub fn layer(&self) -> Option<CorsLayer> {
        let origins = match &self.origins {
            Origins::None => return None,
            Origins::Any => AllowOrigin::any(),
            Origins::List(list) => AllowOrigin::list(list.iter().cloned()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_credentials(self.credentials)
                .allow_methods(self.methods.clone())
                .allow_headers(self.allowed_headers.clone())
                .expose_headers(self.exposed_headers.clone())
                .max_age(self.max_age),
        )
    }
}

/// An origin as a browser sends it: lower-case `http` or `https`, a host,
/// an optional port, nothing after.
fn parse_origin(origin: &str) -> Result<HeaderValue, CorsError> {
    let refuse = |reason| CorsError::Origin {
        origin: origin.to_owned(),
        reason,
    };
    let lower = origin.to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return Err(refuse("no scheme"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(refuse("only http and https origins"));
    }
    if authority.is_empty() {
        return Err(refuse("no host"));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(refuse("an origin has no path, query or fragment"));
    }
    if authority.contains('@') {
        return Err(refuse("an origin has no user information"));
    }
    // `[v6]:port` or `host:port`; the port, when there, is a number.
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, after)) => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return Err(refuse("not a valid host[:port]")),
            },
            None => return Err(refuse("not a valid host[:port]")),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    if !host_ok || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(refuse("not a valid host[:port]"));
    }
    HeaderValue::from_str(&lower).map_err(|_| refuse("not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_means_no_cors() {
        let off = CorsOptions::default();
        assert!(!off.is_enabled());
        assert!(off.layer().is_none());
        let empty = CorsOptions::new(Vec::<String>::new(), false).unwrap();
        assert_eq!(empty, off);
    }

    #[test]
    fn origins_are_checked_and_normalized() {
        let o = CorsOptions::new(
            [
                "https://Console.Example",
                "http://127.0.0.1:3000",
                "https://console.example",
                "http://[::1]:8080",
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            o.origins(),
            [
                "https://console.example",
                "http://127.0.0.1:3000",
                "http://[::1]:8080"
            ]
        );
        assert!(o.credentials());
        assert!(o.layer().is_some());
        for (bad, says) in [
            ("console.example", "no scheme"),
            ("ftp://console.example", "only http and https"),
            ("https://", "no host"),
            ("https://console.example/", "no path"),
            ("https://console.example/app", "no path"),
            ("https://console.example?x", "no path"),
            ("https://u:p@console.example", "user information"),
            ("https://con sole.example", "valid host"),
            ("https://console.example:port", "valid host"),
            ("https://console.example:99999", "valid host"),
            ("https://a:b:1", "valid host"),
            ("https://[::1", "valid host"),
            ("https://[::1]x", "valid host"),
            ("https://[::1]8080", "valid host"),
        ] {
            let err = CorsOptions::new([bad], false).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_wildcard_stands_alone_and_without_credentials() {
        let any = CorsOptions::new(["*"], false).unwrap();
        assert_eq!(any.origins(), ["*"]);
        assert!(any.layer().is_some());
        assert_eq!(
            CorsOptions::new(["*"], true).unwrap_err(),
            CorsError::WildcardWithCredentials
        );
        assert_eq!(
            CorsOptions::new(["*", "https://a.example"], false).unwrap_err(),
            CorsError::WildcardAmongOrigins
        );
    }

    #[test]
    fn the_max_age_is_bounded() {
        let o = CorsOptions::new(["https://a.example"], false).unwrap();
        assert_eq!(o.max_age(), DEFAULT_CORS_MAX_AGE);
        let o = o.with_max_age(Duration::from_secs(60)).unwrap();
        assert_eq!(o.max_age(), Duration::from_secs(60));
        let err = o.with_max_age(Duration::from_secs(86_401)).unwrap_err();
        assert!(err.to_string().contains("more than a day"), "{err}");
    }
}
