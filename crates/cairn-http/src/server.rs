//! Putting a service on the network: the standard layer stack ([`app`]),
//! the request body limit, request tracing, graceful serving and the
//! SIGINT/SIGTERM shutdown signal.
//!
//! Layer order of [`app`], outermost first: tracing span, RED metrics, CORS
//! (when origins are allowed), body limit, then for the API routes only:
//! request context (tenant), idempotency keys. The public routes (health,
//! OpenAPI, `/metrics`) need no tenant. The 404/405 fallbacks are set last,
//! on the merged router.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::header,
    response::{IntoResponse, Response},
};
use cairn_telemetry::Metrics;
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::{DefaultOnResponse, MakeSpan, TraceLayer},
};
use tracing::{Level, Span};

use crate::{
    context::{TenantHeaderOptions, tenant_from_header},
    extract::{too_large, with_problem_fallbacks},
    http_metrics::{HttpMetricsLayer, metrics_router},
    idempotency::IdempotencyStore,
};

/// The default request body limit: 1 MiB, far above any command body.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// Options of the standard stack.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest accepted request body; larger is 413 `payload_too_large`.
    pub body_limit_bytes: usize,
    /// How the tenant is found (until tokens carry it).
    pub tenant: TenantHeaderOptions,
    /// When set, `GET /metrics` serves this handle's
    /// [`scrape`](Metrics::scrape) (its collectors run first). Requests are
    /// counted either way; they reach Prometheus once a recorder is
    /// installed ([`Metrics::install`]).
    pub metrics: Option<Metrics>,
    /// When set, every `api` route requires a valid bearer token
    /// ([`crate::bearer_auth`]) and the tenant is the token's; the
    /// `tenant` options then no longer choose it.
    pub auth: Option<crate::AuthOptions>,
    /// Cross-origin requests: off by default (no allowed origin, no CORS
    /// header); with origins, preflights on every path are answered
    /// before anything else sees them.
    pub cors: crate::CorsOptions,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            tenant: TenantHeaderOptions::default(),
            metrics: None,
            auth: None,
            cors: crate::CorsOptions::default(),
        }
    }
}

/// The standard stack around a service's routes: `api` gets the request
/// context and (when a store is given) idempotency keys; `public` (health,
/// OpenAPI) gets neither, and `GET /metrics` joins it when
/// [`HttpOptions::metrics`] is set; all get the problem fallbacks, the body
/// limit, the RED metrics ([`HttpMetricsLayer`]) and request tracing.
pub fn app(
    api: Router,
    public: Router,
    options: &HttpOptions,
    idempotency: Option<&IdempotencyStore>,
) -> Router {
    let api = match idempotency {
        Some(store) => api.layer(store.layer()),
        None => api,
    };
    let api = api.layer(tenant_from_header(options.tenant.clone()));
    let api = match &options.auth {
        Some(auth) => api.layer(crate::bearer_auth(auth.clone())),
        None => api,
    };
    let public = match &options.metrics {
        Some(metrics) => public.merge(metrics_router(metrics.clone())),
        None => public,
    };
    let router = with_problem_fallbacks(api.merge(public))
        .layer(BodyLimitLayer::new(options.body_limit_bytes));
    // Outside tokens and the 405 fallback, so a preflight (which carries no
    // token) is answered on every path; inside metrics and tracing, so it
    // is counted and logged like any request.
    let router = match options.cors.layer() {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(HttpMetricsLayer).layer(trace_layer())
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight requests to finish (without a bound:
/// wrap the call in a timeout to cap the drain). Handlers can extract
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM. A signal that cannot
/// be listened for is ignored rather than taken as a request to stop.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Limits request bodies to a number of bytes, answering 413
/// `payload_too_large` as problem+json: at once when `Content-Length` says
/// so, and when reading a body (chunked, or lying about its length) passes
/// the limit, in whichever extractor or layer reads it. It also sets axum's
/// `DefaultBodyLimit` to the same value, replacing axum's own 2 MB.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    /// A limit of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<<DefaultBodyLimit as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner: DefaultBodyLimit::max(self.limit).layer(inner),
            limit: self.limit,
        }
    }
}

/// The service made by [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<Request> for BodyLimit<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit as u64) {
            return Box::pin(async { Ok(too_large().into_response()) });
        }
        let limit = self.limit;
        let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
        Box::pin(self.inner.call(req))
    }
}

/// The request span: method, path (never the query string, which may carry
/// secrets, and no headers), the matched route, and `tenant` and
/// `correlation_id` filled in by the context layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> Span {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        tracing::info_span!(
            "http_request",
            method = %req.method(),
            path = %req.uri().path(),
            route,
            tenant = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
        )
    }
}

/// The trace layer of [`trace_layer`].
pub type CairnTraceLayer = TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan>;

/// tower-http's `TraceLayer` with [`RequestSpan`], logging each response
/// (status, latency) at INFO and 5xx responses as failures.
pub fn trace_layer() -> CairnTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_response(DefaultOnResponse::new().level(Level::INFO))
}
