//! Cairn's gateway: one HTTP address in front of the services, so a client
//! sees one API while Flights, Passengers, Audit and Identity run as
//! processes of their own (`cairn run gateway`).
//!
//! What it does:
//! - routes by path prefix ([`Route`]: longest prefix on a segment
//!   boundary), spreading each route's requests over its upstreams in turn
//!   (round robin);
//! - proxies without buffering: bodies stream both ways through hyper's
//!   client, hop-by-hop headers are dropped, `Host` names the upstream,
//!   `X-Forwarded-For`/`-Proto`/`-Host` are set, and every request carries
//!   an `X-Correlation-Id` (the caller's, or a fresh one) that the response
//!   carries back;
//! - passes WebSocket upgrades through on every proxied route: the request
//!   goes to the route's upstream with `Connection: upgrade` and its
//!   `Upgrade: websocket` kept (after the same token check, CORS and
//!   routing as any request), the upstream's 101 comes back with its
//!   headers, and the two connections are then joined, bytes copied both
//!   ways until either side closes (the upstream timeout bounds only the
//!   wait for the 101; an upstream that refuses is answered as it came).
//!   Other upgrades are dropped: only what is declared is passed;
//! - answers its failures as the services do, as problems: 404 for a path
//!   no route serves, 413 for a body over the limit (16 MiB by default),
//!   502 `unavailable` when an upstream cannot be reached, 504 `timeout`
//!   when it sends no response head in time (30 s by default);
//! - checks tokens at the edge when given a verifier: outside the public
//!   prefixes (`/realms`, `/health`, `/openapi.json`, `/metrics`) a request
//!   without a valid bearer token gets the services' own 401 and never
//!   reaches an upstream; the token is forwarded untouched and the services
//!   verify it again;
//! - serves its own `/health/live`, `/health/ready` (ready when each route
//!   has an upstream whose `/health/live` answers within 2 s, checked on
//!   request) and `/metrics` (the services' RED metrics, labelled by route
//!   prefix);
//! - serves its own `/openapi.json`: the upstreams' documents merged, each
//!   cut to the paths the gateway routes to it, kept for
//!   [`OPENAPI_CACHE`] (503 `unavailable` when no upstream gives one);
//! - serves its own `/api/projections` ([`PROJECTIONS_PREFIX`]), composed
//!   from the upstreams' projections APIs: the list is every upstream's,
//!   concatenated, and `/api/projections/{name}/…` goes to the upstream
//!   that owns `{name}` (404 when none does); behind a token like any API
//!   path;
//! - answers CORS at the edge when given origins
//!   ([`cairn_http::CorsOptions`], as the services apply it): every
//!   `OPTIONS` is a preflight answered by the gateway, before the token
//!   check and never forwarded, and proxied answers get the CORS headers.
//!
//! What it does not do yet: balancing other than round robin, active or
//! passive health checks that take upstreams out of turn, retries, circuit
//! breaking, rate limits, compression, host or method routing and
//! rewrites, TLS to upstreams, hot reload of routes, upgrades to protocols
//! other than WebSocket.
//!
//! Architecture invariant: the gateway never answers for an upstream. A
//! response either comes from the upstream (status, headers minus
//! hop-by-hop, body as it streams or the tunnel after a 101; plus CORS
//! headers when configured) or is a problem the gateway made about its own
//! part: no route, no token, too large, unreachable, too slow. Its own
//! endpoints compose what upstreams answered (a merged document, a
//! concatenated list, an upstream's refusal passed on) and never invent an
//! upstream's answer.

mod compose;
mod edge;
mod forward;
mod gateway;
mod openapi;
mod projections;
mod route;
mod tunnel;

pub use forward::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
pub use gateway::{
    DEFAULT_BODY_LIMIT_BYTES, DEFAULT_UPSTREAM_TIMEOUT, Gateway, GatewayOptions, PUBLIC_PREFIXES,
    READY_TIMEOUT,
};
pub use openapi::OPENAPI_CACHE;
pub use projections::PROJECTIONS_PREFIX;
pub use route::{Route, RouteError};
pub use url::Url;
