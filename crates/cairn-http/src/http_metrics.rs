//! RED metrics of the HTTP edge and the `GET /metrics` endpoint.
//!
//! [`HttpMetricsLayer`] counts every answered request in
//! `cairn_http_requests_total{method,route,status}` and times it in
//! `cairn_http_request_duration_seconds{method,route}`. The route is the
//! route's template (`/api/flights/{id}`, from axum's [`MatchedPath`]),
//! never the requested path, and `unmatched` when no route matched (404s
//! of unknown paths), so a scan of random URLs cannot blow up the number of
//! series; a method outside the standard ones is `other`. The time runs until
//! the response head is ready (a streamed body is not waited for).
//!
//! [`metrics_router`] serves [`Metrics::scrape`] at `GET /metrics` in the
//! Prometheus text format.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Instant,
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{Method, header},
    response::{IntoResponse, Response},
    routing::get,
};
use cairn_telemetry::{CONTENT_TYPE, Metrics, names};
use tower::{Layer, Service};

/// The `route` label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `method` label: the standard methods as themselves, anything else
/// `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Records the RED metrics of each request. Apply it with `Router::layer`
/// (as [`app`](crate::app) does) so the matched route is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpMetricsLayer;

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics { inner }
    }
}

/// The service made by [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetrics<S> {
    inner: S,
}

impl<S> Service<Request> for HttpMetrics<S>
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
        let method = method_label(req.method());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
            .to_owned();
        let started = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let seconds = started.elapsed().as_secs_f64();
            let status = response.status().as_u16().to_string();
            metrics::histogram!(
                names::HTTP_REQUEST_DURATION_SECONDS,
                "method" => method,
                "route" => route.clone(),
            )
            .record(seconds);
            metrics::counter!(
                names::HTTP_REQUESTS_TOTAL,
                "method" => method,
                "route" => route,
                "status" => status,
            )
            .increment(1);
            Ok(response)
        })
    }
}

/// `GET /metrics`: runs the collectors of `metrics` and answers the
/// Prometheus text format. Public (no tenant).
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Metrics in the Prometheus text exposition format 0.0.4",
        body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    ))
)]
pub(crate) async fn scrape(State(metrics): State<Metrics>) -> Response {
    let body = metrics.scrape().await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&odd), "other");
        let random = Method::from_bytes(b"X7F3A9").unwrap();
        assert_eq!(method_label(&random), "other");
    }
}
