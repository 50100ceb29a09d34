//! A tiny service built with cairn-http, served on 127.0.0.1:0, and the
//! databases the idempotency tests run on (a SQLite file; a fresh
//! PostgreSQL schema, or a skip when PostgreSQL is absent and not required).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use cairn_core::{ErrorCode, TenantId};
use cairn_http::{
    ApiError, ApiJson, ApiPath, ApiQuery, Context, ETag, FieldError, Health, HttpOptions,
    IdempotencyOptions, IdempotencyStore, IfMatch, MinPosition, Position, ProblemResponses,
    TenantHeaderOptions, openapi_document, openapi_router,
};
use cairn_store::testkit::service_absent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{AnyPool, Connection, Executor, any::AnyPoolOptions};
use tokio::sync::{Semaphore, oneshot, watch};
use utoipa::{OpenApi, ToSchema};

/// Body limit of the test app, small so 413 is cheap to provoke.
pub const BODY_LIMIT: usize = 4096;

/// Every code, to drive `/errors/{code}`.
pub const ALL_CODES: [ErrorCode; 19] = [
    ErrorCode::InvalidInput,
    ErrorCode::WrongExpectedVersion,
    ErrorCode::IdempotencyConflict,
    ErrorCode::StreamDeleted,
    ErrorCode::NotFound,
    ErrorCode::Corrupt,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
    ErrorCode::MalformedRequest,
    ErrorCode::ValidationFailed,
    ErrorCode::RuleViolation,
    ErrorCode::ConcurrencyConflict,
    ErrorCode::PreconditionFailed,
    ErrorCode::PayloadTooLarge,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::Unauthenticated,
    ErrorCode::Forbidden,
    ErrorCode::RateLimited,
    ErrorCode::Timeout,
];

/// What the handlers share with the test.
#[derive(Clone)]
pub struct Shared {
    /// How many times `POST /flights` ran.
    pub calls: Arc<AtomicUsize>,
    /// A permit is added each time a `SLOW` flight enters the handler.
    pub entered: Arc<Semaphore>,
    /// Each permit lets one `SLOW` flight finish.
    pub release: Arc<Semaphore>,
    /// The read model's checkpoint for `?minPosition`.
    pub checkpoint: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            entered: Arc::new(Semaphore::new(0)),
            release: Arc::new(Semaphore::new(0)),
            checkpoint: watch::channel(10).0,
        }
    }
}

impl Shared {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until a `SLOW` flight is inside the handler.
    pub async fn wait_entered(&self) {
        self.entered.acquire().await.unwrap().forget();
    }
}

/// The body of `POST /flights`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewFlight {
    pub number: String,
    pub capacity: u32,
    #[serde(default)]
    pub legs: Vec<Leg>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Leg {
    pub from: String,
}

/// A flight as answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flight {
    pub id: u64,
    pub number: String,
    pub capacity: u32,
    pub call: usize,
}

/// Create a flight. The number steers the outcome: `FAIL500` is a 500,
/// `CONFLICT` a 409, `INVALID` a 422, `SLOW` waits to be released.
#[utoipa::path(
    post,
    path = "/flights",
    request_body = NewFlight,
    responses((status = 201, description = "Created", body = Flight), ProblemResponses)
)]
pub async fn create_flight(
    State(shared): State<Shared>,
    ApiJson(flight): ApiJson<NewFlight>,
) -> Result<Response, ApiError> {
    let call = shared.calls.fetch_add(1, Ordering::SeqCst) + 1;
    match flight.number.as_str() {
        "FAIL500" => return Err(ApiError::internal("database password=hunter2 refused")),
        "CONFLICT" => return Err(ApiError::new(ErrorCode::RuleViolation, "flight departed")),
        "INVALID" => {
            return Err(ApiError::validation(
                "number is not a flight number",
                vec![FieldError::new("number", "must look like SK1421")],
            ));
        }
        "SLOW" => {
            shared.entered.add_permits(1);
            shared.release.acquire().await.unwrap().forget();
        }
        _ => {}
    }
    let id = call as u64;
    let mut response = (
        StatusCode::CREATED,
        ETag(0),
        Position(100 + id),
        ApiJson(Flight {
            id,
            number: flight.number,
            capacity: flight.capacity,
            call,
        }),
    )
        .into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::try_from(format!("/flights/{id}")).unwrap(),
    );
    // Not among the headers an idempotent replay keeps.
    response
        .headers_mut()
        .insert("x-call", HeaderValue::from(call));
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct Search {
    limit: u32,
    #[allow(dead_code)]
    after: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(paths(create_flight), components(schemas(NewFlight, Leg, Flight)))]
pub struct FlightsApi;

fn code_named(name: &str) -> Option<ErrorCode> {
    ALL_CODES.into_iter().find(|c| c.as_str() == name)
}

/// The API routes of the test service.
pub fn api(shared: Shared) -> Router {
    Router::new()
        .route("/flights", post(create_flight))
        .route(
            "/flights/{id}",
            get(
                |State(shared): State<Shared>,
                 ApiPath(id): ApiPath<u64>,
                 min: MinPosition| async move {
                    min.wait(&shared.checkpoint.subscribe(), Duration::from_millis(50))
                        .await?;
                    Ok::<_, ApiError>((ETag(3), ApiJson(json!({ "id": id, "version": 3 }))))
                },
            )
            .patch(|if_match: IfMatch| async move {
                let precondition = match if_match {
                    IfMatch::Absent => json!("absent"),
                    IfMatch::Any => json!("any"),
                    IfMatch::Version(v) => json!(v),
                };
                ApiJson(json!({ "ifMatch": precondition }))
            }),
        )
        .route(
            "/errors/{code}",
            get(|ApiPath(name): ApiPath<String>| async move {
                let code = code_named(&name).ok_or_else(|| ApiError::not_found("no such code"))?;
                Err::<(), _>(ApiError::new(code, "internal detail password=hunter2"))
            }),
        )
        .route(
            "/search",
            get(|ApiQuery(search): ApiQuery<Search>| async move {
                ApiJson(json!({ "limit": search.limit }))
            }),
        )
        .route(
            "/context",
            get(|Context(ctx): Context| async move {
                ApiJson(json!({
                    "tenant": ctx.tenant.as_str(),
                    "correlationId": ctx.correlation_id,
                    "traceparent": ctx.traceparent,
                }))
            }),
        )
        .route("/echo", patch(|ApiJson(v): ApiJson<Value>| async move { ApiJson(v) }))
        .with_state(shared)
}

/// A running test app.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub shared: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /flights` with `body`, an optional key and tenant.
    pub async fn post_flight(&self, body: &Value, key: Option<&str>) -> reqwest::Response {
        self.post_flight_as(body, key, None).await
    }

    pub async fn post_flight_as(
        &self,
        body: &Value,
        key: Option<&str>,
        tenant: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url("/flights")).json(body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        if let Some(tenant) = tenant {
            req = req.header("x-cairn-tenant", tenant);
        }
        req.send().await.unwrap()
    }

    /// Stops the server, letting in-flight requests finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// Serves the test service with `health` checks and an optional idempotency
/// store.
pub async fn spawn_with(store: Option<&IdempotencyStore>, health: Health) -> TestApp {
    let shared = Shared::default();
    let options = HttpOptions {
        body_limit_bytes: BODY_LIMIT,
        tenant: TenantHeaderOptions {
            default_tenant: Some(TenantId::new("demo").unwrap()),
        },
        metrics: Some(cairn_telemetry::Metrics::install()),
        auth: None,
        cors: cairn_http::CorsOptions::default(),
    };
    let doc = openapi_document("cairn-http tests", "0.0.0", [FlightsApi::openapi()]);
    let public = health.router().merge(openapi_router(doc));
    let router = cairn_http::app(api(shared.clone()), public, &options, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(cairn_http::serve(listener, router, async move {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        shared,
        shutdown: Some(tx),
        server: Some(server),
    }
}

pub async fn spawn(store: Option<&IdempotencyStore>) -> TestApp {
    spawn_with(store, Health::new()).await
}

/// The response's body as JSON, checking the problem media type when the
/// status is an error.
pub async fn json_of(
    response: reqwest::Response,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(
            headers[reqwest::header::CONTENT_TYPE],
            "application/problem+json",
            "{status} {body}"
        );
    }
    (status, headers, body)
}

/// A database for idempotency tests; `reopen` gives a new pool on the same
/// data (a restart).
pub struct TestDb {
    pub pool: AnyPool,
    target: DbTarget,
}

enum DbTarget {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl TestDb {
    pub async fn store(&self, options: IdempotencyOptions) -> IdempotencyStore {
        IdempotencyStore::open(self.pool.clone(), options)
            .await
            .unwrap()
    }

    /// Closes this pool and opens a new one on the same database.
    pub async fn reopen(self) -> TestDb {
        self.pool.close().await;
        let pool = match &self.target {
            DbTarget::Sqlite(path) => sqlite_pool(path).await,
            DbTarget::Postgres { url, schema } => postgres_pool(url, schema).await.unwrap(),
        };
        TestDb {
            pool,
            target: self.target,
        }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        match self.target {
            DbTarget::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            DbTarget::Postgres { url, schema } => {
                if let Ok(pool) = AnyPoolOptions::new().max_connections(1).connect(&url).await {
                    let _ = pool
                        .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
                        .await;
                }
            }
        }
    }
}

fn unique() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{secs}_{}", &rand[..12])
}

async fn sqlite_pool(path: &std::path::Path) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(4)
        .connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap()
}

/// A new SQLite file in the temp directory.
pub async fn sqlite_db() -> Option<TestDb> {
    let path = std::env::temp_dir().join(format!("cairn-http-{}.db", unique()));
    Some(TestDb {
        pool: sqlite_pool(&path).await,
        target: DbTarget::Sqlite(path),
    })
}

fn postgres_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn postgres_pool(url: &str, schema: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let set_path = format!("SET search_path TO \"{schema}\"");
    AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(20))
        .after_connect(move |conn, _meta| {
            let set_path = set_path.clone();
            Box::pin(async move {
                conn.execute(set_path.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}

/// A fresh schema on the shared PostgreSQL server (named like the store
/// tests' schemas, `cairn_test_<secs>_<random>`, so their sweeper removes
/// leftovers), or `None` to skip.
pub async fn postgres_db() -> Option<TestDb> {
    sqlx::any::install_default_drivers();
    let url = postgres_url();
    let schema = format!("cairn_test_{}", unique());
    // One plain connection first: it fails at once when nothing listens,
    // where a pool would keep retrying until its timeout.
    let mut admin =
        match tokio::time::timeout(Duration::from_secs(20), sqlx::AnyConnection::connect(&url))
            .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return service_absent("PostgreSQL", e),
            Err(_) => return service_absent("PostgreSQL", "connect timed out"),
        };
    admin
        .execute(format!("CREATE SCHEMA \"{schema}\"").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let pool = postgres_pool(&url, &schema).await.unwrap();
    Some(TestDb {
        pool,
        target: DbTarget::Postgres { url, schema },
    })
}
