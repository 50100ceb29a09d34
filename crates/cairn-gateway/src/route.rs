//! Routes: which upstreams serve which path prefix.
//!
//! A prefix matches a request path on a segment boundary: `/api/flights`
//! matches `/api/flights` and `/api/flights/7`, never `/api/flightsx`; `/`
//! matches every path. Of the routes that match, the longest prefix wins.
//! Each route spreads its requests over its upstreams in turn (round robin).
//!
//! An upstream is an `http://host[:port]` base: the request's path and query
//! are forwarded unchanged (there is no rewrite yet), and TLS to upstreams is
//! not there yet. Both are refused when a route is built, so a route that
//! exists is one the gateway can serve.

use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering},
};

use axum::http::HeaderValue;
use url::Url;

/// A path prefix and the upstreams that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `/` or a path without a trailing `/` (`/api/flights`).
    pub prefix: String,
    /// At least one `http://host[:port]` base URL.
    pub upstreams: Vec<Url>,
}

/// Why a route (or a set of routes) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A route spec is not `PREFIX=URL[,URL…]`.
    #[error("route `{spec}`: expected PREFIX=URL[,URL…], e.g. /api/flights=http://127.0.0.1:8081")]
    Syntax { spec: String },
    /// The prefix is not a plain absolute path.
    #[error("route prefix `{prefix}`: {reason}")]
    Prefix {
        prefix: String,
        reason: &'static str,
    },
    /// An upstream is not an `http://host[:port]` base URL.
    #[error("route {prefix}: upstream `{upstream}`: {reason}")]
    Upstream {
        prefix: String,
        upstream: String,
        reason: String,
    },
    /// A route without upstreams.
    #[error("route {prefix}: no upstream")]
    NoUpstream { prefix: String },
    /// Two routes with the same prefix.
    #[error("two routes for {prefix}")]
    Duplicate { prefix: String },
    /// A gateway without routes.
    #[error("no routes: the gateway needs at least one")]
    NoRoutes,
}

impl Route {
    /// A route for `prefix` (a trailing `/` is dropped) served by
    /// `upstreams`.
    pub fn new(prefix: &str, upstreams: Vec<Url>) -> Result<Self, RouteError> {
        let prefix = normalize_prefix(prefix)?;
        if upstreams.is_empty() {
            return Err(RouteError::NoUpstream { prefix });
        }
        for upstream in &upstreams {
            check_upstream(upstream).map_err(|reason| RouteError::Upstream {
                prefix: prefix.clone(),
                upstream: upstream.to_string(),
                reason: reason.to_owned(),
            })?;
        }
        Ok(Self { prefix, upstreams })
    }

    /// Whether this route's prefix matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }
}

/// `PREFIX=URL[,URL…]`, as `cairn run gateway --route` takes it.
impl FromStr for Route {
    type Err = RouteError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let syntax = || RouteError::Syntax {
            spec: spec.to_owned(),
        };
        let (prefix, upstreams) = spec.split_once('=').ok_or_else(syntax)?;
        let upstreams = upstreams
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                Url::parse(u).map_err(|e| RouteError::Upstream {
                    prefix: prefix.trim().to_owned(),
                    upstream: u.to_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(prefix.trim(), upstreams)
    }
}

/// `PREFIX=URL,URL`, the form [`FromStr`] reads.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.prefix)?;
        for (i, upstream) in self.upstreams.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&upstream.origin().ascii_serialization())?;
        }
        Ok(())
    }
}

/// Whether `prefix` (normalized) matches `path` on a segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn normalize_prefix(prefix: &str) -> Result<String, RouteError> {
    let refuse = |reason| RouteError::Prefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if !prefix.starts_with('/') {
        return Err(refuse("must start with /"));
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) || prefix.contains(['?', '#']) {
        return Err(refuse(
            "must be a plain path: visible ASCII, no query or fragment",
        ));
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_owned());
    }
    if trimmed[1..]
        .split('/')
        .any(|segment| segment.is_empty() || is_dot_segment(segment))
    {
        return Err(refuse("has an empty, `.` or `..` segment"));
    }
    Ok(trimmed.to_owned())
}

/// `.` and `..`, also percent-encoded: a path with one means something
/// else to a server that normalizes it than to prefix matching.
pub(crate) fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

fn check_upstream(url: &Url) -> Result<(), &'static str> {
    if url.scheme() != "http" {
        return Err("only http:// upstreams (TLS to upstreams is not there yet)");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("no credentials in upstream URLs");
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("give http://host[:port] only: paths are forwarded unchanged");
    }
    Ok(())
}

/// The routes in matching order (longest prefix first), each with its
/// round-robin turn.
#[derive(Debug)]
pub(crate) struct RouteTable {
    targets: Vec<Target>,
}

/// One route as the gateway serves it.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) route: Route,
    pub(crate) upstreams: Vec<Upstream>,
    turn: AtomicUsize,
}

/// One upstream, ready to address.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// `http://host[:port]`, without a trailing `/`.
    pub(crate) origin: String,
    /// The `Host` header it gets.
    pub(crate) host: HeaderValue,
}

impl RouteTable {
    pub(crate) fn new(routes: &[Route]) -> Result<Self, RouteError> {
        if routes.is_empty() {
            return Err(RouteError::NoRoutes);
        }
        let mut targets = Vec::with_capacity(routes.len());
        for route in routes {
            if targets
                .iter()
                .any(|t: &Target| t.route.prefix == route.prefix)
            {
                return Err(RouteError::Duplicate {
                    prefix: route.prefix.clone(),
                });
            }
            // Checked again: the fields are public, so a route may not have
            // come through `Route::new`.
            let route = Route::new(&route.prefix, route.upstreams.clone())?;
            let upstreams = route
                .upstreams
                .iter()
                .map(|url| upstream(&route.prefix, url))
                .collect::<Result<_, _>>()?;
            targets.push(Target {
                route,
                upstreams,
                turn: AtomicUsize::new(0),
            });
        }
        // Prefixes are distinct and normalized, so the first match in this
        // order is the longest.
        targets.sort_by_key(|t| std::cmp::Reverse(t.route.prefix.len()));
        Ok(Self { targets })
    }

    /// The route with the longest prefix matching `path`.
    pub(crate) fn find(&self, path: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.route.matches(path))
    }

    pub(crate) fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Every upstream once, however many routes it serves, in matching
    /// order.
    pub(crate) fn distinct_upstreams(&self) -> Vec<&Upstream> {
        let mut distinct: Vec<&Upstream> = Vec::new();
        for upstream in self.targets.iter().flat_map(|t| &t.upstreams) {
            if distinct.iter().all(|u| u.origin != upstream.origin) {
                distinct.push(upstream);
            }
        }
        distinct
    }
}

impl Target {
    /// The next upstream in turn.
    pub(crate) fn next_upstream(&self) -> &Upstream {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[turn % self.upstreams.len()]
    }
}

fn upstream(prefix: &str, url: &Url) -> Result<Upstream, RouteError> {
    let host = url.host_str().unwrap_or_default();
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let host = HeaderValue::from_str(&authority).map_err(|_| RouteError::Upstream {
        prefix: prefix.to_owned(),
        upstream: url.to_string(),
        reason: "the host is not a valid Host header".into(),
    })?;
    Ok(Upstream {
        origin: format!("http://{authority}"),
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(spec: &str) -> Route {
        spec.parse().unwrap()
    }

    #[test]
    fn specs_parse_and_print_back() {
        let r = route("/api/flights/=http://127.0.0.1:8081, http://127.0.0.1:8082/");
        assert_eq!(r.prefix, "/api/flights");
        assert_eq!(r.upstreams.len(), 2);
        assert_eq!(
            r.to_string(),
            "/api/flights=http://127.0.0.1:8081,http://127.0.0.1:8082"
        );
        assert_eq!(route("/=http://a").prefix, "/");
        assert_eq!(route("//=http://a").prefix, "/");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("/api", "expected PREFIX=URL"),
            ("api=http://a", "must start with /"),
            ("/api?x=http://a", "plain path"),
            ("/a//b=http://a", "segment"),
            ("/a/../b=http://a", "segment"),
            ("/a/%2E%2e=http://a", "segment"),
            ("/api=", "no upstream"),
            ("/api=https://a", "TLS"),
            ("/api=http://u:p@a", "credentials"),
            ("/api=http://a/v1", "paths are forwarded unchanged"),
            ("/api=http://a?x=1", "paths are forwarded unchanged"),
            ("/api=not a url", "upstream"),
        ] {
            let err = spec.parse::<Route>().unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let r = route("/api/flights=http://a");
        assert!(r.matches("/api/flights"));
        assert!(r.matches("/api/flights/"));
        assert!(r.matches("/api/flights/7/departure"));
        assert!(!r.matches("/api/flightsx"));
        assert!(!r.matches("/api"));
        assert!(route("/=http://a").matches("/anything/at/all"));
    }

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        let table = RouteTable::new(&[
            route("/=http://root"),
            route("/api=http://api"),
            route("/api/flights=http://flights"),
        ])
        .unwrap();
        let prefix = |path| table.find(path).unwrap().route.prefix.as_str();
        assert_eq!(prefix("/api/flights/1"), "/api/flights");
        assert_eq!(prefix("/api/flightsx"), "/api");
        assert_eq!(prefix("/api"), "/api");
        assert_eq!(prefix("/other"), "/");
        let no_root = RouteTable::new(&[route("/api=http://api")]).unwrap();
        assert!(no_root.find("/apix").is_none());
    }

    #[test]
    fn tables_refuse_duplicates_and_emptiness() {
        assert_eq!(RouteTable::new(&[]).unwrap_err(), RouteError::NoRoutes);
        let err = RouteTable::new(&[route("/api=http://a"), route("/api/=http://b")]).unwrap_err();
        assert_eq!(
            err,
            RouteError::Duplicate {
                prefix: "/api".into()
            }
        );
    }

    #[test]
    fn upstreams_take_turns() {
        let table = RouteTable::new(&[route("/api=http://a:1,http://b:2,http://c")]).unwrap();
        let target = table.find("/api").unwrap();
        let turns: Vec<&str> = (0..6)
            .map(|_| target.next_upstream().origin.as_str())
            .collect();
        assert_eq!(
            turns,
            [
                "http://a:1",
                "http://b:2",
                "http://c",
                "http://a:1",
                "http://b:2",
                "http://c"
            ]
        );
        assert_eq!(target.upstreams[0].host, "a:1");
    }

    #[test]
    fn an_upstream_of_several_routes_counts_once() {
        let table = RouteTable::new(&[
            route("/realms=http://id:8084"),
            route("/api/admin=http://id:8084/"),
            route("/api/flights=http://f1,http://f2"),
        ])
        .unwrap();
        let origins: Vec<&str> = table
            .distinct_upstreams()
            .iter()
            .map(|u| u.origin.as_str())
            .collect();
        assert_eq!(origins, ["http://f1", "http://f2", "http://id:8084"]);
    }
}
