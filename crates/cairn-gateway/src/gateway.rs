//! The gateway service: typed options build a [`Gateway`], whose
//! [`router`](Gateway::router) is served like any Cairn service
//! ([`cairn_http::serve`]).
//!
//! Each request goes through, in order: CORS (when origins are allowed:
//! every `OPTIONS` is a preflight answered here, never forwarded), the
//! gateway's own endpoints (`/health/live`, `/health/ready`, `/metrics`,
//! `/openapi.json`), a refusal of paths with `.` or `..` segments (400),
//! the token check at the edge unless the path is public (401), the
//! projections API the gateway composes (`/api/projections`), the route
//! (404 when none matches), the body limit (413 at once for a declared
//! length, or when a streamed body passes it), and the upstream call (502
//! when it fails, 504 when no response head arrives within the upstream
//! timeout). A WebSocket upgrade takes the same way; when the upstream
//! answers it with 101, that answer is passed on and the two connections
//! are joined into a tunnel (`tunnel`), which neither the timeout nor the
//! body limit bounds.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header},
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_auth::Verifier;
use cairn_core::{ErrorCode, EventId, Metadata};
use cairn_http::{
    ApiError, CORRELATION_ID_HEADER, CorsOptions, Health, HttpMetricsLayer, UNMATCHED_ROUTE,
    method_not_allowed_fallback, metrics_router, trace_layer,
};
use cairn_telemetry::{Metrics, names};
use http_body_util::Limited;
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{
    edge,
    forward::{self, body_too_large, describe},
    openapi::OpenApiCache,
    projections::{PROJECTIONS_PREFIX, is_projections_path},
    route::{Route, RouteError, RouteTable, Target, Upstream, is_dot_segment, prefix_matches},
    tunnel,
};

/// How long an upstream has to send its response head, by default.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request body the gateway forwards, by default: 16 MiB.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// The paths that need no token at the edge by default: the identity
/// service's realms (sign-in, keys, discovery), health, the OpenAPI
/// document and metrics.
pub const PUBLIC_PREFIXES: [&str; 4] = ["/realms", "/health", "/openapi.json", "/metrics"];

/// How long an upstream has to answer `/health/live` when `/health/ready`
/// asks.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a [`Gateway`] serves and how.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The routes (at least one; prefixes distinct).
    pub routes: Vec<Route>,
    /// How long an upstream has to send its response head; then 504. The
    /// body that follows is streamed without a bound.
    pub upstream_timeout: Duration,
    /// Largest request body forwarded; larger is 413.
    pub body_limit_bytes: usize,
    /// With a verifier, every path outside `public_prefixes` needs a valid
    /// bearer token at the edge. Without one, nothing is checked here (the
    /// services still check).
    pub verifier: Option<Verifier>,
    /// Path prefixes (segment-wise, like routes) that need no token.
    pub public_prefixes: Vec<String>,
    /// When set, `GET /metrics` serves this handle's scrape.
    pub metrics: Option<Metrics>,
    /// Cross-origin requests, answered at the edge (off by default).
    pub cors: CorsOptions,
    /// Routes the gateway answers itself, ahead of the proxy and without
    /// its token check (they check what they need): the live endpoint and
    /// the console of `cairn run gateway`.
    pub own_routes: Option<Router>,
}

impl GatewayOptions {
    /// `routes` with the defaults: 30 s upstream timeout, 16 MiB bodies, no
    /// token check, [`PUBLIC_PREFIXES`], no `/metrics`, no CORS.
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            verifier: None,
            public_prefixes: PUBLIC_PREFIXES.iter().map(|p| (*p).to_owned()).collect(),
            metrics: None,
            cors: CorsOptions::default(),
            own_routes: None,
        }
    }
}

/// The gateway: cheap to clone, clones share the routes, their turns and
/// the connection pool.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    health: Health,
    metrics: Option<Metrics>,
    cors: CorsOptions,
    own_routes: Option<Router>,
}

pub(crate) type HttpClient = Client<HttpConnector, Body>;

#[derive(Debug)]
pub(crate) struct Inner {
    /// As configured, for display.
    routes: Vec<Route>,
    pub(crate) table: RouteTable,
    pub(crate) client: HttpClient,
    pub(crate) upstream_timeout: Duration,
    body_limit: usize,
    verifier: Option<Verifier>,
    public_prefixes: Vec<String>,
    openapi: OpenApiCache,
}

impl Gateway {
    /// Checks the routes and builds the gateway; nothing is contacted yet.
    pub fn new(options: GatewayOptions) -> Result<Self, RouteError> {
        let table = RouteTable::new(&options.routes)?;
        let client = client();
        let mut health = Health::new().with_timeout(READY_TIMEOUT);
        for target in table.targets() {
            let upstreams = target.upstreams.clone();
            let client = client.clone();
            health = health.with_check(target.route.prefix.clone(), move || {
                any_upstream_live(client.clone(), upstreams.clone())
            });
        }
        let public_prefixes = options
            .public_prefixes
            .iter()
            .map(|p| match p.trim_end_matches('/') {
                "" => "/".to_owned(),
                p => p.to_owned(),
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                routes: options.routes,
                table,
                client,
                upstream_timeout: options.upstream_timeout,
                body_limit: options.body_limit_bytes,
                verifier: options.verifier,
                public_prefixes,
                openapi: OpenApiCache::default(),
            }),
            health,
            metrics: options.metrics,
            cors: options.cors,
            own_routes: options.own_routes,
        })
    }

    /// The routes, in the order they were given.
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// Readiness: [`Health::set_draining`] when shutting down.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The whole gateway as a router. Serve it with
    /// [`cairn_http::serve`], which gives handlers the caller's address
    /// (`X-Forwarded-For` needs it).
    pub fn router(&self) -> Router {
        let mut own = self.health.router();
        if let Some(routes) = &self.own_routes {
            own = own.merge(routes.clone());
        }
        if let Some(metrics) = &self.metrics {
            own = own.merge(metrics_router(metrics.clone()));
        }
        let inner = self.inner.clone();
        own = own.route(
            "/openapi.json",
            get(move || {
                let inner = inner.clone();
                async move { inner.openapi.serve(&inner.table, &inner.client).await }
            }),
        );
        let inner = self.inner.clone();
        let router = own
            .route_layer(HttpMetricsLayer)
            .method_not_allowed_fallback(method_not_allowed_fallback)
            .fallback(move |req: Request| {
                let inner = inner.clone();
                async move { inner.proxy(req).await }
            });
        // Outside the token check and the proxy: a preflight carries no
        // token, and it is the gateway's to answer, not an upstream's.
        let router = match self.cors.layer() {
            Some(cors) => router.layer(cors),
            None => router,
        };
        router.layer(trace_layer())
    }
}

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// `Ok` when one of `upstreams` answers `GET /health/live` with a 2xx.
async fn any_upstream_live(client: HttpClient, upstreams: Vec<Upstream>) -> Result<(), String> {
    let probes = upstreams.into_iter().map(|upstream| {
        let client = client.clone();
        Box::pin(async move {
            let uri = Uri::try_from(format!("{}/health/live", upstream.origin))
                .map_err(|e| e.to_string())?;
            let mut request = axum::http::Request::new(Body::empty());
            *request.uri_mut() = uri;
            request
                .headers_mut()
                .insert(header::HOST, upstream.host.clone());
            match client.request(request).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(response.status().to_string()),
                Err(e) => Err(describe(&e)),
            }
        })
    });
    futures_util::future::select_ok(probes)
        .await
        .map(drop)
        .map_err(|_| "no upstream answered /health/live".to_owned())
}

impl Inner {
    /// Every request that is not one of the gateway's own endpoints.
    async fn proxy(&self, req: Request) -> Response {
        let started = Instant::now();
        let method = method_label(req.method());
        let target = self.table.find(req.uri().path());
        let route = if is_projections_path(req.uri().path()) {
            PROJECTIONS_PREFIX
        } else {
            target.map_or(UNMATCHED_ROUTE, |t| t.route.prefix.as_str())
        };
        let correlation_id = correlation_id(req.headers());
        if let Ok(id) = correlation_id.to_str() {
            tracing::Span::current().record("correlation_id", id);
        }
        let mut response = self.answer(target, req, &correlation_id).await;
        response
            .headers_mut()
            .entry(CORRELATION_ID_HEADER)
            .or_insert(correlation_id);
        record(method, route, response.status(), started);
        response
    }

    async fn answer(
        &self,
        target: Option<&Target>,
        req: Request,
        correlation_id: &HeaderValue,
    ) -> Response {
        let path = req.uri().path();
        if path.split('/').any(is_dot_segment) {
            return ApiError::malformed("the path has a `.` or `..` segment").into_response();
        }
        if let Some(verifier) = &self.verifier
            && !self.is_public(path)
            && let Err(refused) =
                edge::check_token(verifier, req.method(), path, req.headers()).await
        {
            return refused;
        }
        if is_projections_path(path) {
            return self.projections(req, correlation_id).await;
        }
        let Some(target) = target else {
            return ApiError::not_found("no route of the gateway serves this path").into_response();
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit as u64) {
            return self.too_large();
        }
        self.forward(target, req, correlation_id).await
    }

    fn is_public(&self, path: &str) -> bool {
        self.public_prefixes
            .iter()
            .any(|prefix| prefix_matches(prefix, path))
    }

    async fn forward(
        &self,
        target: &Target,
        req: Request,
        correlation_id: &HeaderValue,
    ) -> Response {
        self.forward_to(
            target.next_upstream(),
            &target.route.prefix,
            req,
            correlation_id,
        )
        .await
    }

    /// Proxies `req` to `upstream`; `prefix` names the route in problems.
    pub(crate) async fn forward_to(
        &self,
        upstream: &Upstream,
        prefix: &str,
        req: Request,
        correlation_id: &HeaderValue,
    ) -> Response {
        let (mut parts, body) = req.into_parts();
        // A WebSocket upgrade is passed on only when the caller's connection
        // can switch (HTTP/1.1 served by hyper): its side of the tunnel is
        // taken here.
        let upgrade = forward::websocket_upgrade(&parts.headers)
            .and_then(|value| Some((value, parts.extensions.remove::<OnUpgrade>()?)));
        let caller = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let asked_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let mut headers = parts.headers;
        forward::request_headers(&mut headers, caller, asked_host, upstream, correlation_id);
        if let Some((value, _)) = &upgrade {
            forward::keep_upgrade(&mut headers, value.clone());
        }
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = match Uri::try_from(format!("{}{path_and_query}", upstream.origin)) {
            Ok(uri) => uri,
            Err(_) => {
                return ApiError::malformed("the request target is not valid").into_response();
            }
        };
        let mut request = axum::http::Request::new(Body::new(Limited::new(body, self.body_limit)));
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        match tokio::time::timeout(self.upstream_timeout, self.client.request(request)).await {
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => switch(
                response,
                upgrade.map(|(_, caller)| caller),
                upstream,
                prefix,
            ),
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                forward::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(e)) if body_too_large(&e) => self.too_large(),
            Ok(Err(e)) => ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "route {prefix}: upstream {} failed: {}",
                    upstream.origin,
                    describe(&e)
                ),
            )
            .with_status(StatusCode::BAD_GATEWAY)
            .into_response(),
            Err(_) => ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "route {prefix}: upstream {} sent no response within {} ms",
                    upstream.origin,
                    self.upstream_timeout.as_millis()
                ),
            )
            .into_response(),
        }
    }

    fn too_large(&self) -> Response {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than the gateway forwards ({} bytes)",
                self.body_limit
            ),
        )
        .into_response()
    }
}

/// An upstream's 101: passed on with the upstream's headers, and the tunnel
/// started, when it switches to the WebSocket the caller asked for; else
/// 502, as the upstream switched to what nobody asked the gateway to carry.
fn switch(
    mut response: Response<Incoming>,
    caller: Option<OnUpgrade>,
    upstream: &Upstream,
    prefix: &str,
) -> Response {
    let upstream_side = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    let (Some(caller), Some(protocol)) = (caller, forward::websocket_upgrade(&parts.headers))
    else {
        return ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "route {prefix}: upstream {} switched protocols without a WebSocket upgrade asked and agreed",
                upstream.origin
            ),
        )
        .with_status(StatusCode::BAD_GATEWAY)
        .into_response();
    };
    forward::strip_hop_by_hop(&mut parts.headers);
    forward::keep_upgrade(&mut parts.headers, protocol);
    tunnel::spawn(caller, upstream_side, prefix.to_owned());
    Response::from_parts(parts, Body::empty())
}

/// The caller's correlation id when it is a valid one (the rule of event
/// metadata, as the services apply it), else a fresh one: the upstream and
/// the gateway's log then share it.
fn correlation_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(CORRELATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| {
            Metadata {
                correlation_id: Some((*id).to_owned()),
                ..Metadata::default()
            }
            .validate()
            .is_ok()
        })
        .and_then(|id| HeaderValue::from_str(id).ok())
        .unwrap_or_else(|| {
            HeaderValue::from_str(&EventId::new().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("gateway"))
        })
}

/// The `method` label as `cairn-http` gives it: the standard methods as
/// themselves, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    ]
    .into_iter()
    .find(|m| *m == method.as_str())
    .unwrap_or("other")
}

/// RED metrics of a forwarded request, under the same names as every
/// service's, with the route prefix (or `unmatched`) as the route: never
/// the requested path.
fn record(method: &'static str, route: &str, status: StatusCode, started: Instant) {
    metrics::histogram!(
        names::HTTP_REQUEST_DURATION_SECONDS,
        "method" => method,
        "route" => route.to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        names::HTTP_REQUESTS_TOTAL,
        "method" => method,
        "route" => route.to_owned(),
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_kept_when_valid_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(CORRELATION_ID_HEADER, HeaderValue::from_static("order-42"));
        assert_eq!(correlation_id(&h), "order-42");
        h.insert(
            CORRELATION_ID_HEADER,
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        let made = correlation_id(&h);
        assert_ne!(made.to_str().unwrap(), "x".repeat(200));
        assert!(!made.is_empty());
        assert_ne!(correlation_id(&HeaderMap::new()), made, "fresh each time");
    }

    #[test]
    fn odd_methods_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").unwrap()),
            "other"
        );
    }
}
