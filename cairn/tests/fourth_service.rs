//! A fourth service, added to `cairn up` and to `cairn run` by its
//! descriptor alone: nothing in the runtime names it.
//!
//! `ping` keeps events (`Pinged`, public), a projection that counts them,
//! a public command and query with the permissions they need, and an
//! internal command it answers for other services. The tests prove, over
//! HTTP and over the broker, that:
//! - its routes, OpenAPI, projection, public events and RPC export are
//!   served by both runtimes, and the audit service hears its events;
//! - its internal command is refused to an end user, by token or by the
//!   tenant header, and over request/reply without a service's context;
//! - a message that declares no access is refused, and a descriptor that
//!   lists one does not start.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{Json, Router, extract::State, routing::post};
use cairn_core::{ErrorCode, NewEvent, RecordedEvent, RequestContext, StreamId};
use cairn_domain::{Command, CommandBus, Query, QueryBus, bus::Access};
use cairn_http::{ApiError, Context};
use cairn_messaging::{PublicEvents, rpc::Remote};
use cairn_projection::{Projection, ProjectionError, Projections};
use cairn_service::{Env, ServiceDescriptor, Started};
use cairn_store::{AllFilter, EventStore, ExpectedVersion};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Any, Row as _, Transaction};

const SERVICE: &str = "ping";

/// Records a ping (public: `flights:write`).
#[derive(Debug, Clone)]
struct SendPing {
    note: String,
}

impl Command for SendPing {
    const NAME: &'static str = "ping.send";
    const ACCESS: Access = Access::Permission("flights:write");
    type Output = u64;
}

/// How many pings this tenant has (public: `flights:read`).
#[derive(Debug, Clone)]
struct CountPings;

impl Query for CountPings {
    const NAME: &'static str = "ping.count";
    const ACCESS: Access = Access::Permission("flights:read");
    type Output = i64;
}

/// Between services only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Touch {
    note: String,
}

impl Command for Touch {
    const NAME: &'static str = "ping.touch";
    const ACCESS: Access = Access::Internal;
    type Output = String;
}

/// Declares no access at all.
#[derive(Debug, Clone)]
struct Forgotten;

impl Command for Forgotten {
    const NAME: &'static str = "ping.forgotten";
    type Output = ();
}

#[derive(Debug)]
struct PingCount;

#[async_trait]
impl Projection for PingCount {
    fn name(&self) -> &'static str {
        "ping.count"
    }
    fn filter(&self) -> AllFilter {
        AllFilter::all_tenants().categories(["ping"])
    }
    fn schema(&self) -> Vec<String> {
        vec!["CREATE TABLE IF NOT EXISTS ping_count (tenant TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (tenant, id))".into()]
    }
    fn reset(&self) -> Vec<String> {
        vec!["DROP TABLE IF EXISTS ping_count".into()]
    }
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Any>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        sqlx::query("INSERT INTO ping_count (tenant, id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(event.tenant.as_str().to_owned())
            .bind(event.id.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[derive(Clone)]
struct Api {
    commands: CommandBus,
    queries: QueryBus,
}

fn problem(e: cairn_domain::BusError) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

async fn send(
    State(api): State<Api>,
    Context(ctx): Context,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let note = body["note"].as_str().unwrap_or_default().to_owned();
    let position = api
        .commands
        .send(&ctx, SendPing { note })
        .await
        .map_err(problem)?;
    Ok(Json(json!({ "position": position })))
}

/// `GET /api/ping`: how many pings this tenant has.
#[utoipa::path(get, path = "/api/ping", responses((status = 200, description = "The count")))]
async fn count(State(api): State<Api>, Context(ctx): Context) -> Result<Json<Value>, ApiError> {
    let n = api.queries.query(&ctx, CountPings).await.map_err(problem)?;
    Ok(Json(json!({ "count": n })))
}

/// A route that (wrongly) hands an internal command the caller's context.
async fn touch(State(api): State<Api>, Context(ctx): Context) -> Result<Json<Value>, ApiError> {
    let out = api
        .commands
        .send(
            &ctx,
            Touch {
                note: "http".into(),
            },
        )
        .await
        .map_err(problem)?;
    Ok(Json(json!({ "touched": out })))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(count))]
struct PingOpenApi;

/// How the test service is (mis)declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// As it should be.
    Good,
    /// Lists a message that declares no access.
    ListsForgotten,
    /// Handles a message it does not list.
    HandlesForgotten,
}

fn descriptor(variant: Variant) -> ServiceDescriptor {
    let mut d = ServiceDescriptor::new(SERVICE, "Ping", move |env| start(env, variant))
        .command::<SendPing>()
        .query::<CountPings>()
        .exports_command::<Touch>()
        .openapi(<PingOpenApi as utoipa::OpenApi>::openapi)
        .publishes(PublicEvents::new(SERVICE, ["ping"], ["Pinged"]).unwrap())
        .shares("/api/ping", "ping")
        .projections(|_| vec![Arc::new(PingCount)]);
    if variant == Variant::ListsForgotten {
        d = d.command::<Forgotten>();
    }
    d
}

async fn start(env: Env, variant: Variant) -> anyhow::Result<Started> {
    let store: Arc<dyn EventStore> = env.store(SERVICE)?;
    let projections: Projections = env.projections.clone().expect("ping has a projection");
    {
        let store = store.clone();
        let projections = projections.clone();
        env.commands
            .register_fn(move |ctx: RequestContext, c: SendPing| {
                let (store, projections) = (store.clone(), projections.clone());
                async move {
                    let stream =
                        StreamId::for_aggregate("ping", uuid::Uuid::now_v7().simple().to_string())
                            .map_err(|e| cairn_domain::BusError::internal(e.to_string()))?;
                    let event = NewEvent::new("Pinged", json!({ "note": c.note }))
                        .with_metadata(ctx.metadata());
                    let written = store
                        .append(&ctx.tenant, &stream, ExpectedVersion::NoStream, vec![event])
                        .await
                        .map_err(|e| cairn_domain::BusError::internal(e.to_string()))?;
                    let position = written.last_position;
                    projections
                        .wait_for("ping.count", position, Duration::from_secs(5))
                        .await;
                    Ok(position)
                }
            })?;
    }
    {
        let projections = projections.clone();
        env.queries
            .register_fn(move |ctx: RequestContext, _: CountPings| {
                let projections = projections.clone();
                async move {
                    let row = sqlx::query("SELECT COUNT(*) AS n FROM ping_count WHERE tenant = $1")
                        .bind(ctx.tenant.as_str().to_owned())
                        .fetch_one(projections.db().pool())
                        .await
                        .map_err(|e| cairn_domain::BusError::internal(e.to_string()))?;
                    Ok(row.get::<i64, _>("n"))
                }
            })?;
    }
    env.commands
        .register_fn(|ctx: RequestContext, t: Touch| async move {
            Ok(format!("{} by {}", t.note, ctx.service.unwrap_or_default()))
        })?;
    if variant != Variant::Good {
        env.commands
            .register_fn(|_ctx: RequestContext, _: Forgotten| async move { Ok(()) })?;
    }
    let api = Router::new()
        .route("/api/ping", post(send).get(count))
        .route("/api/ping/touch", post(touch))
        .with_state(Api {
            commands: env.commands.clone(),
            queries: env.queries.clone(),
        });
    Ok(Started {
        api,
        ..Started::default()
    })
}

/// The platform's services and `ping`.
fn with_ping(variant: Variant) -> Vec<ServiceDescriptor> {
    let mut services = cairn::services::all();
    services.push(descriptor(variant));
    services
}

/// Serves `platform` until the returned sender is dropped or fired.
fn serve(
    platform: cairn::Platform,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(platform.serve(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misdeclared_service_does_not_start() {
    let err = cairn::up::start_from(
        &["--ephemeral", "--listen", "127.0.0.1:0"],
        with_ping(Variant::ListsForgotten),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("ping.forgotten declares no access"),
        "{err:#}"
    );
    let err = cairn::up::start_from(
        &["--ephemeral", "--listen", "127.0.0.1:0"],
        with_ping(Variant::HandlesForgotten),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("ping.forgotten has a handler but no service declares it"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_service_joins_cairn_up_by_its_descriptor() {
    let platform = cairn::up::start_from(
        &["--ephemeral", "--dev", "--listen", "127.0.0.1:0"],
        with_ping(Variant::Good),
    )
    .await
    .expect("cairn up starts with ping");
    let base = format!("http://{}", platform.addr());
    let token = platform.dev_token.clone().expect("--dev mints a token");
    let (stop, serving) = serve(platform);
    let http = reqwest::Client::new();
    let auth = format!("Bearer {token}");

    for note in ["one", "two"] {
        let (status, body) = json_of(
            http.post(format!("{base}/api/ping"))
                .header("authorization", &auth)
                .json(&json!({ "note": note }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["position"].as_u64().unwrap() > 0, "{body}");
    }
    let (status, body) = json_of(
        http.get(format!("{base}/api/ping"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["count"]),
        (StatusCode::OK, &json!(2)),
        "{body}"
    );

    // No token: the public query is closed.
    let anonymous = http.get(format!("{base}/api/ping")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The internal command is closed to the admin's token, over HTTP.
    let (status, body) = json_of(
        http.post(format!("{base}/api/ping/touch"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("internal"),
        "{body}"
    );

    // Its events reach the audit log like any service's, its projection
    // is operated like any other, its route is documented.
    let (status, body) = json_of(
        http.get(format!("{base}/api/audit?type=Pinged&minPosition=1"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2), "{body}");
    let (_, projections) = json_of(
        http.get(format!("{base}/api/projections"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        projections.to_string().contains("ping.count"),
        "{projections}"
    );
    let (_, doc) = json_of(
        http.get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        doc["paths"]["/api/ping"].is_object(),
        "ping's route is documented"
    );
    assert!(
        doc["paths"]["/api/flights"].is_object(),
        "and the others' still are"
    );

    stop.send(()).unwrap();
    serving.await.unwrap().expect("cairn up stops cleanly");
}

#[derive(Debug, Clone, Copy)]
enum Broker {
    Nats,
    Amqp,
}

impl Broker {
    fn url(self) -> String {
        match self {
            Broker::Nats => std::env::var("CAIRN_TEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            Broker::Amqp => std::env::var("CAIRN_TEST_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        }
    }

    async fn absent(self) -> bool {
        let addr = match self {
            Broker::Nats => "127.0.0.1:4222",
            Broker::Amqp => "127.0.0.1:5672",
        };
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => false,
            Err(e) => {
                cairn_store::testkit::service_absent::<()>(&format!("{self:?} broker"), e).is_none()
            }
        }
    }

    async fn transport(self, prefix: &str) -> Arc<dyn cairn_messaging::RequestTransport> {
        match self {
            Broker::Nats => Arc::new(
                cairn_messaging_nats::NatsBroker::connect(
                    &self.url(),
                    cairn_messaging_nats::NatsOptions::with_prefix(prefix),
                )
                .await
                .unwrap(),
            ),
            Broker::Amqp => Arc::new(
                cairn_messaging_amqp::AmqpBroker::connect(
                    &self.url(),
                    cairn_messaging_amqp::AmqpOptions::with_prefix(prefix),
                )
                .await
                .unwrap(),
            ),
        }
    }
}

async fn on_its_own(broker: Broker) {
    if broker.absent().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("t4{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let url = broker.url();
    let common = |service: &'static str| {
        vec![
            service.to_owned(),
            "--broker".into(),
            url.clone(),
            "--prefix".into(),
            prefix.clone(),
            "--insecure-tenant-header".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ]
    };
    let start = |mut args: Vec<String>, extra: Vec<String>| {
        args.extend(extra);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cairn::run::start_from(&args, with_ping(Variant::Good)).await
        }
    };
    // Audit first is not needed: ping's relay declares audit's group.
    let ping = start(
        common("ping"),
        vec![
            "--store".into(),
            format!("sqlite://{}/ping.db", dir.path().display()),
        ],
    )
    .await
    .expect("cairn run ping starts");
    let audit = start(
        common("audit"),
        vec![
            "--db".into(),
            format!("sqlite://{}/audit.db", dir.path().display()),
        ],
    )
    .await
    .expect("cairn run audit starts");
    let (ping_base, audit_base) = (
        format!("http://{}", ping.addr()),
        format!("http://{}", audit.addr()),
    );
    let (stop_ping, ping_task) = serve(ping);
    let (stop_audit, audit_task) = serve(audit);
    let http = reqwest::Client::new();
    let tenant = ("x-cairn-tenant", "acme");

    let (status, body) = json_of(
        http.post(format!("{ping_base}/api/ping"))
            .header(tenant.0, tenant.1)
            .json(&json!({ "note": "alone" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = json_of(
        http.get(format!("{ping_base}/api/ping"))
            .header(tenant.0, tenant.1)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["count"], json!(1), "{body}");

    // Even with no tokens to check, the internal command stays closed to
    // an HTTP caller.
    let (status, body) = json_of(
        http.post(format!("{ping_base}/api/ping/touch"))
            .header(tenant.0, tenant.1)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Over the broker: refused from a user's context, answered from a
    // service's.
    let remote =
        Remote::new(broker.transport(&prefix).await, SERVICE).with_timeout(Duration::from_secs(10));
    let user =
        RequestContext::new(cairn_core::TenantId::new("acme").unwrap()).with_actor("mallory");
    let refused = remote
        .call::<String>(&user, Touch::NAME, &Touch { note: "rpc".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Forbidden, "{refused}");
    let answered = remote
        .call::<String>(
            &user.clone().as_service("flights"),
            Touch::NAME,
            &Touch { note: "rpc".into() },
        )
        .await
        .unwrap();
    assert_eq!(answered, "rpc by flights");

    // The audit service hears ping's public events through the broker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = json_of(
            http.get(format!("{audit_base}/api/audit?type=Pinged"))
                .header(tenant.0, tenant.1)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["items"].as_array().map(Vec::len) == Some(1) {
            assert_eq!(body["items"][0]["source"], json!("ping"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit never heard ping: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop_ping.send(()).unwrap();
    stop_audit.send(()).unwrap();
    ping_task.await.unwrap().expect("ping stops cleanly");
    audit_task.await.unwrap().expect("audit stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_fourth_service_runs_on_its_own_by_its_descriptor() {
    on_its_own(Broker::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_a_fourth_service_runs_on_its_own_by_its_descriptor() {
    on_its_own(Broker::Amqp).await;
}
