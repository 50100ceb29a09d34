//! Liveness and readiness.
//!
//! `GET /health/live` answers 200 `{"status":"live"}` for as long as the
//! process serves requests: it checks nothing, so an orchestrator restarts
//! the process only when it is truly stuck.
//!
//! `GET /health/ready` runs every registered check concurrently, each bounded
//! by [`Health::with_timeout`] (default 2 s), and answers 200
//! `{"status":"ready","checks":{"store":{"status":"up"}}}` when all pass, or
//! 503 `{"status":"unready","checks":{"store":{"status":"down","error":"…"}}}`
//! naming what failed. A check can also report the process **degraded**:
//! it still serves, but a part of it needs an operator (a projection stopped
//! at a poison event, say). Then it answers 200
//! `{"status":"degraded","checks":{"projection:flights":{"status":"degraded","error":"…"}}}`:
//! 200 because taking the process out of a load balancer, or restarting
//! it, would not help, while the body names what needs attention. After
//! [`Health::set_draining`] (shutdown begun) it
//! answers 503 `{"status":"draining"}` so load balancers stop sending new
//! requests while in-flight ones finish. The error text of a check is sent
//! as is: checks must not put secrets in it.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A check's verdict: `Ok(None)` up, `Ok(Some(why))` degraded, `Err(why)`
/// down.
type Verdict = Result<Option<String>, String>;

type CheckFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Verdict> + Send>> + Send + Sync>;

/// The registered readiness checks. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Health {
    checks: Arc<Vec<(String, CheckFn)>>,
    timeout: Duration,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// The status of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckReport {
    /// `up`, `degraded` or `down`.
    pub status: String,
    /// Why it is down or degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The body of `/health/live` and `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// `live`, `ready`, `degraded`, `unready` or `draining`.
    pub status: String,
    /// Each readiness check by name (absent for `live` and `draining`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, CheckReport>>,
}

impl Health {
    /// No checks: ready whenever the process runs.
    pub fn new() -> Self {
        Self {
            checks: Arc::new(Vec::new()),
            timeout: Duration::from_secs(2),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds a readiness check named `name`: a closure returning a future
    /// that resolves to `Ok(())` when the dependency is usable.
    pub fn with_check<F, Fut, E>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let check: CheckFn = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map(|()| None).map_err(|e| e.to_string()) })
        });
        Arc::make_mut(&mut self.checks).push((name.into(), check));
        self
    }

    /// Adds a check that can only degrade readiness, never fail it: the
    /// future resolves to `Some(why)` when the part named `name` needs an
    /// operator. The text is sent as is: it must not carry secrets.
    pub fn with_degradation_check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || {
            let fut = check();
            Box::pin(async move { Ok(fut.await) })
        });
        Arc::make_mut(&mut self.checks).push((name.into(), check));
        self
    }

    /// Adds one degradation check per projection, named
    /// `projection:<name>`: degraded while the projection is failed (the
    /// poison event's position and type, and the error), up otherwise.
    pub fn with_projections(self, projections: &cairn_projection::Projections) -> Self {
        projections.names().into_iter().fold(self, |health, name| {
            let projections = projections.clone();
            health.with_degradation_check(format!("projection:{name}"), move || {
                let failure = projections.failure_of(name);
                async move {
                    let failure = failure?;
                    Some(if failure.event_type.is_empty() {
                        format!("failed: {}", failure.error)
                    } else {
                        format!(
                            "failed at position {} ({}): {}",
                            failure.position, failure.event_type, failure.error
                        )
                    })
                }
            })
        })
    }

    /// Adds a check that runs `SELECT 1` on `pool`.
    pub fn with_sql_check(self, name: impl Into<String>, pool: sqlx::AnyPool) -> Self {
        self.with_check(name, move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| match e {
                        sqlx::Error::PoolTimedOut => "no database connection available".to_owned(),
                        sqlx::Error::PoolClosed => "the database pool is closed".to_owned(),
                        _ => "the database did not answer SELECT 1".to_owned(),
                    })
            }
        })
    }

    /// Bounds each check; a check that takes longer is down.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Marks the process as shutting down: readiness answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Runs every check and reports.
    pub async fn readiness(&self) -> (bool, HealthReport) {
        if self.draining.load(Ordering::Relaxed) {
            return (
                false,
                HealthReport {
                    status: "draining".into(),
                    checks: None,
                },
            );
        }
        let runs = self.checks.iter().map(|(name, check)| {
            let timeout = self.timeout;
            async move {
                let result = match tokio::time::timeout(timeout, check()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                };
                (name.clone(), result)
            }
        });
        let results = futures_util::future::join_all(runs).await;
        let ready = results.iter().all(|(_, r)| r.is_ok());
        let degraded = results.iter().any(|(_, r)| matches!(r, Ok(Some(_))));
        let checks = results
            .into_iter()
            .map(|(name, result)| {
                let report = match result {
                    Ok(None) => CheckReport {
                        status: "up".into(),
                        error: None,
                    },
                    Ok(Some(why)) => CheckReport {
                        status: "degraded".into(),
                        error: Some(why),
                    },
                    Err(error) => CheckReport {
                        status: "down".into(),
                        error: Some(error),
                    },
                };
                (name, report)
            })
            .collect();
        let status = match (ready, degraded) {
            (false, _) => "unready",
            (true, true) => "degraded",
            (true, false) => "ready",
        };
        (
            ready,
            HealthReport {
                status: status.into(),
                checks: Some(checks),
            },
        )
    }

    /// `GET /health/live` and `GET /health/ready`.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready).with_state(self.clone()))
    }
}

/// Liveness: 200 while the process serves requests.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "The process is running", body = HealthReport))
)]
pub(crate) async fn live() -> Json<HealthReport> {
    Json(HealthReport {
        status: "live".into(),
        checks: None,
    })
}

/// Readiness: 200 when every check passes (`degraded`, naming the parts
/// that need an operator, when some do), 503 naming those that failed.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Every readiness check passed (status `ready`), or the process serves while a part of it needs an operator (status `degraded`)", body = HealthReport),
        (status = 503, description = "A check failed, or the process is shutting down", body = HealthReport)
    )
)]
pub(crate) async fn ready(State(health): State<Health>) -> Response {
    let (ready, report) = health.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_when_every_check_passes() {
        let health = Health::new()
            .with_check("a", || async { Ok::<_, String>(()) })
            .with_check("b", || async { Ok::<_, String>(()) });
        let (ready, report) = health.readiness().await;
        assert!(ready);
        assert_eq!(report.status, "ready");
        assert_eq!(report.checks.unwrap()["b"].status, "up");
    }

    #[tokio::test]
    async fn a_failing_or_hanging_check_makes_it_unready() {
        let health = Health::new()
            .with_check("ok", || async { Ok::<_, String>(()) })
            .with_check("broken", || async { Err("disk full") })
            .with_check("stuck", std::future::pending::<Result<(), String>>)
            .with_timeout(Duration::from_millis(10));
        let (ready, report) = health.readiness().await;
        assert!(!ready);
        let checks = report.checks.unwrap();
        assert_eq!(checks["ok"].status, "up");
        assert_eq!(checks["broken"].error.as_deref(), Some("disk full"));
        assert_eq!(checks["stuck"].status, "down");
    }

    #[tokio::test]
    async fn a_degraded_part_is_named_but_the_process_stays_ready() {
        let health = Health::new()
            .with_check("db", || async { Ok::<_, String>(()) })
            .with_degradation_check("projection:flights", || async {
                Some("failed at position 7 (FlightRescheduled): missing field".to_owned())
            })
            .with_degradation_check("projection:audit", || async { None });
        let (ready, report) = health.readiness().await;
        assert!(ready, "a degraded process still takes traffic");
        assert_eq!(report.status, "degraded");
        let checks = report.checks.unwrap();
        assert_eq!(checks["projection:flights"].status, "degraded");
        assert!(
            checks["projection:flights"]
                .error
                .as_deref()
                .unwrap()
                .contains("position 7")
        );
        assert_eq!(checks["projection:audit"].status, "up");

        // Down wins over degraded.
        let health = Health::new()
            .with_check("db", || async { Err("gone") })
            .with_degradation_check("p", || async { Some("failed".to_owned()) });
        let (ready, report) = health.readiness().await;
        assert!(!ready);
        assert_eq!(report.status, "unready");
    }

    #[tokio::test]
    async fn draining_is_unready() {
        let health = Health::new();
        assert!(health.readiness().await.0);
        health.clone().set_draining();
        let (ready, report) = health.readiness().await;
        assert!(!ready);
        assert_eq!(report.status, "draining");
    }
}
