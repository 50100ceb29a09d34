//! `cairn run <service>`: one service of the reference system as its own
//! process, on its own event store, database and HTTP address, talking to
//! the others through a broker (NATS JetStream or RabbitMQ).
//!
//! What each service runs:
//! - its aggregates and command/query handlers on local buses, with the
//!   other services' handlers it calls forwarded over request/reply;
//! - request/reply serving for what the others ask of it;
//! - its projections over its own log;
//! - the relay publishing its public events (the log is the outbox);
//! - consumers of the other services' events (inbox, order, dead letters);
//! - its HTTP routes with health, OpenAPI, metrics and status.
//!
//! Settings come from `--config FILE` (TOML), then `CAIRN_*` environment
//! variables, then flags: a flag or variable overrides the file.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use axum::{Json, Router, routing::get};
use cairn_core::TenantId;
use cairn_domain::{CommandBus, QueryBus};
use cairn_flightops_contracts::{
    CloseBoarding, GetFlightForBooking, RemoveFlightPassengers, ReopenBoarding,
};
use cairn_http::{
    Health, HttpOptions, IdempotencyOptions, IdempotencyStore, TenantHeaderOptions, app,
    openapi_document, openapi_router, serve, shutdown_signal,
};
use cairn_messaging::{
    Broker, ConsumerHandle, Relay, RelayOptions, RequestTransport, Serving,
    rpc::{Remote, RpcServer, forward_command, forward_query},
};
use cairn_messaging_amqp::{AmqpBroker, AmqpOptions};
use cairn_messaging_nats::{NatsBroker, NatsOptions};
use cairn_projection::{Projection, ProjectionOptions, ProjectionStatus, Projections, ReadDb};
use cairn_store::EventStore;
use cairn_telemetry::Metrics;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::store_url::{StoreUrl, open_store, split_schema};

/// The services `cairn run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ServiceName {
    Flights,
    Passengers,
    Audit,
}

impl ServiceName {
    fn as_str(self) -> &'static str {
        match self {
            ServiceName::Flights => "flights",
            ServiceName::Passengers => "passengers",
            ServiceName::Audit => "audit",
        }
    }
}

/// Options of `cairn run`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// The service to run.
    service: ServiceName,
    /// A TOML file with any of: store, db, broker, listen, prefix,
    /// default_tenant, request_timeout_ms.
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Event store: postgres://…[?schema=S] or sqlite://PATH.
    #[arg(long, env = "CAIRN_STORE")]
    store: Option<String>,
    /// The service's own database (read models, inbox, relay checkpoint,
    /// dead letters). Default: next to the store (schema `<service>_read`,
    /// or `PATH.<service>.db`).
    #[arg(long, env = "CAIRN_DB")]
    db: Option<String>,
    /// Broker: nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/VHOST.
    #[arg(long, env = "CAIRN_BROKER")]
    broker: Option<String>,
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "CAIRN_LISTEN")]
    listen: Option<String>,
    /// First token of every subject, routing key, stream and queue name:
    /// deployments sharing a broker use different prefixes.
    #[arg(long, env = "CAIRN_PREFIX")]
    prefix: Option<String>,
    /// Tenant of requests that name none (`X-Cairn-Tenant`).
    #[arg(long, env = "CAIRN_DEFAULT_TENANT")]
    default_tenant: Option<String>,
}

/// The settings file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<String>,
    db: Option<String>,
    broker: Option<String>,
    listen: Option<String>,
    prefix: Option<String>,
    default_tenant: Option<String>,
    request_timeout_ms: Option<u64>,
}

/// Settings after layering.
#[derive(Debug)]
struct Settings {
    service: ServiceName,
    /// Absent only for Audit, which keeps no events of its own.
    store: Option<String>,
    db: String,
    broker: String,
    listen: String,
    prefix: String,
    default_tenant: TenantId,
    request_timeout: Duration,
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("{} is not a valid settings file", path.display()))?
            }
            None => FileConfig::default(),
        };
        let service = self.service;
        let store = self.store.or(file.store);
        if store.is_none() && service != ServiceName::Audit {
            bail!("no event store: pass --store or set `store` in --config");
        }
        let broker = self
            .broker
            .or(file.broker)
            .context("no broker: pass --broker nats://… or amqp://…, or set `broker`")?;
        let db = match (self.db.or(file.db), &store) {
            (Some(db), _) => db,
            (None, Some(store)) => default_db(store, service.as_str())?,
            (None, None) => bail!("no database: pass --db (or --store to put it beside)"),
        };
        let prefix = self
            .prefix
            .or(file.prefix)
            .unwrap_or_else(|| "cairn".into());
        cairn_messaging::validate_service(&prefix).context("--prefix")?;
        let default_tenant = self
            .default_tenant
            .or(file.default_tenant)
            .unwrap_or_else(|| "demo".into());
        Ok(Settings {
            service,
            store,
            db,
            broker,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:0".into()),
            prefix,
            default_tenant: TenantId::new(&default_tenant).context("default tenant")?,
            request_timeout: Duration::from_millis(file.request_timeout_ms.unwrap_or(5_000)),
        })
    }
}

/// The service database beside the store.
fn default_db(store: &str, service: &str) -> anyhow::Result<String> {
    Ok(match StoreUrl::parse(store)? {
        StoreUrl::Postgres(url) => {
            let (base, _) = split_schema(&url);
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}schema={service}_read")
        }
        StoreUrl::Sqlite(path) => format!("sqlite://{path}.{service}.db"),
        StoreUrl::Memory => bail!("a service on its own needs a durable store, not memory:"),
    })
}

/// A broker handle as both contracts.
struct Link {
    broker: Arc<dyn Broker>,
    transport: Arc<dyn RequestTransport>,
    what: String,
}

async fn connect(settings: &Settings) -> anyhow::Result<Link> {
    let url = &settings.broker;
    if url.starts_with("nats://") {
        let nats = NatsBroker::connect(url, NatsOptions::with_prefix(&settings.prefix))
            .await
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
        let nats = Arc::new(nats);
        Ok(Link {
            broker: nats.clone(),
            transport: nats,
            what: format!("NATS JetStream {url} (prefix {})", settings.prefix),
        })
    } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let amqp = AmqpBroker::connect(url, AmqpOptions::with_prefix(&settings.prefix))
            .await
            .context("cannot connect to RabbitMQ")?;
        let amqp = Arc::new(amqp);
        Ok(Link {
            broker: amqp.clone(),
            transport: amqp,
            what: format!("RabbitMQ (prefix {})", settings.prefix),
        })
    } else {
        bail!("unknown broker URL (expected nats://… or amqp://…)")
    }
}

/// Declares, before `service`'s relay publishes anything, the consumer
/// groups of this system that read its events: on RabbitMQ a queue keeps
/// only what is published after it exists, so the order in which services
/// start must not decide what a consumer sees.
async fn declare_consumers_of(service: &str, link: &Link) -> anyhow::Result<()> {
    let groups = match service {
        "flights" => vec![
            cairn_passengers::messaging::FLIGHT_EVENTS.to_owned(),
            cairn_audit::group("flights"),
        ],
        "passengers" => vec![
            cairn_flights::messaging::PASSENGER_EVENTS.to_owned(),
            cairn_audit::group("passengers"),
        ],
        _ => Vec::new(),
    };
    for group in groups {
        let spec = cairn_messaging::ConsumerSpec::new(group.clone(), service);
        link.broker
            .declare(&spec)
            .await
            .with_context(|| format!("declaring the consumer group {group}"))?;
    }
    Ok(())
}

/// Declares the groups that read `public`'s events, then starts its relay.
async fn start_relay(
    public: cairn_messaging::PublicEvents,
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    link: &Link,
) -> anyhow::Result<Relay> {
    declare_consumers_of(&public.service, link).await?;
    Relay::start(
        public,
        store,
        db.clone(),
        link.broker.clone(),
        RelayOptions::default(),
    )
    .await
    .context("starting the relay")
}

/// Everything a running service holds until shutdown.
struct Running {
    api: Router,
    doc: utoipa::openapi::OpenApi,
    store: Option<Arc<dyn EventStore>>,
    projections: Option<Projections>,
    relay: Option<Relay>,
    consumers: Vec<ConsumerHandle>,
    sagas: Option<cairn_saga::TimeoutsHandle>,
    _serving: Option<Serving>,
}

/// Runs one service until SIGINT or SIGTERM.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let name = settings.service.as_str();
    // Before anything starts, so nothing it counts is lost.
    let metrics = Metrics::install();
    let store = match &settings.store {
        Some(url) => Some(open_store(url).await?),
        None => None,
    };
    let db = ReadDb::open(&settings.db)
        .await
        .context("opening the service database")?;
    let link = connect(&settings).await?;
    let commands = CommandBus::new();
    let queries = QueryBus::new();
    let running = match (settings.service, store) {
        (ServiceName::Flights, Some(store)) => {
            flights(&settings, store, &db, &link, &commands, &queries).await?
        }
        (ServiceName::Passengers, Some(store)) => {
            passengers(&settings, store, &db, &link, &commands, &queries).await?
        }
        (ServiceName::Audit, _) => audit(&db, &link).await?,
        (_, None) => bail!("no event store"),
    };

    let idempotency = IdempotencyStore::open(db.pool().clone(), IdempotencyOptions::default())
        .await
        .context("opening the idempotency-key store")?;
    let health = Health::new().with_sql_check("database", db.pool().clone());
    let status_projections = running.projections.clone();
    let public = Router::new()
        .merge(health.router())
        .merge(openapi_router(running.doc.clone()))
        .route(
            "/api/projections",
            get(move || {
                let status = status_projections.clone();
                async move {
                    Json::<Vec<ProjectionStatus>>(match status {
                        Some(p) => p.status().await,
                        None => Vec::new(),
                    })
                }
            }),
        );
    let metrics = metrics.with_collector("store-and-projections", {
        let (store, projections) = (running.store.clone(), running.projections.clone());
        move || {
            let head = store.as_ref().map(|s| *s.head().borrow());
            let projections = projections.clone();
            async move {
                if let Some(head) = head {
                    metrics::gauge!(cairn_telemetry::names::STORE_HEAD_POSITION).set(head as f64);
                }
                if let Some(p) = projections {
                    p.record_metrics().await;
                }
            }
        }
    });
    let options = HttpOptions {
        tenant: TenantHeaderOptions {
            default_tenant: Some(settings.default_tenant.clone()),
        },
        metrics: Some(metrics),
        ..HttpOptions::default()
    };
    let router = app(running.api.clone(), public, &options, Some(&idempotency));
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    println!("cairn run {name}: listening on http://{addr}");
    if let Some(store) = &settings.store {
        println!("  event store:  {}", StoreUrl::parse(store)?.redacted());
    }
    println!("  database:     {}", redact(&settings.db));
    println!("  broker:       {}", link.what);
    println!("  tenant:       {} (default)", settings.default_tenant);

    let draining = health.clone();
    serve(listener, router, async move {
        shutdown_signal().await;
        draining.set_draining();
    })
    .await
    .context("serving HTTP")?;
    if let Some(sagas) = running.sagas {
        sagas.shutdown().await;
    }
    for consumer in running.consumers {
        consumer.shutdown().await;
    }
    if let Some(relay) = running.relay {
        relay.shutdown().await;
    }
    if let Some(projections) = running.projections {
        projections.shutdown().await;
    }
    db.close().await;
    println!("cairn run {name}: stopped");
    Ok(())
}

fn redact(url: &str) -> String {
    StoreUrl::parse(url).map_or_else(|_| url.to_owned(), |u| u.redacted())
}

async fn start_projections(
    db: &ReadDb,
    store: Arc<dyn EventStore>,
    projections: Vec<Arc<dyn Projection>>,
) -> anyhow::Result<Projections> {
    Projections::start(db.clone(), store, projections, ProjectionOptions::default())
        .await
        .context("starting the projections")
}

async fn flights(
    settings: &Settings,
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    link: &Link,
    commands: &CommandBus,
    queries: &QueryBus,
) -> anyhow::Result<Running> {
    use cairn_flights::{
        app::Flights,
        http::{FlightsApi, FlightsOpenApi},
        messaging,
        view::OwnFlightsProjection,
    };
    let remote =
        Remote::new(link.transport.clone(), "passengers").with_timeout(settings.request_timeout);
    forward_command::<CloseBoarding>(commands, remote.clone())?;
    forward_command::<ReopenBoarding>(commands, remote.clone())?;
    forward_command::<RemoveFlightPassengers>(commands, remote)?;
    let projections =
        start_projections(db, store.clone(), vec![Arc::new(OwnFlightsProjection)]).await?;
    let flights = Flights::register(store.clone(), commands, queries, &projections)
        .context("wiring the flights service")?;
    let sagas = flights.start_sagas(Duration::from_secs(1));
    let serving = RpcServer::new()
        .query::<GetFlightForBooking>(queries.clone())?
        .serve(link.transport.as_ref(), messaging::SERVICE)
        .await
        .context("serving requests")?;
    let consumers = vec![
        messaging::passenger_events(db.clone(), link.broker.clone())
            .start()
            .await
            .context("consuming passenger events")?,
    ];
    let relay = start_relay(messaging::public_events()?, store.clone(), db, link).await?;
    let api = cairn_flights::http::router(FlightsApi {
        flights,
        commands: commands.clone(),
        queries: queries.clone(),
    });
    let doc = openapi_document(
        "Cairn flights",
        env!("CARGO_PKG_VERSION"),
        [FlightsOpenApi::openapi()],
    );
    Ok(Running {
        api,
        doc,
        store: Some(store),
        projections: Some(projections),
        relay: Some(relay),
        consumers,
        sagas: Some(sagas),
        _serving: Some(serving),
    })
}

async fn passengers(
    settings: &Settings,
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    link: &Link,
    commands: &CommandBus,
    queries: &QueryBus,
) -> anyhow::Result<Running> {
    use cairn_passengers::{
        app::Passengers,
        http::{PassengersApi, PassengersOpenApi},
        messaging,
        view::PassengersProjection,
    };
    let remote =
        Remote::new(link.transport.clone(), "flights").with_timeout(settings.request_timeout);
    forward_query::<GetFlightForBooking>(queries, remote)?;
    let projections =
        start_projections(db, store.clone(), vec![Arc::new(PassengersProjection)]).await?;
    let passengers = Passengers::register(store.clone(), commands, queries, &projections)
        .context("wiring the passengers service")?;
    let serving = RpcServer::new()
        .command::<CloseBoarding>(commands.clone())?
        .command::<ReopenBoarding>(commands.clone())?
        .command::<RemoveFlightPassengers>(commands.clone())?
        .serve(link.transport.as_ref(), messaging::SERVICE)
        .await
        .context("serving requests")?;
    let consumers = vec![
        messaging::flight_events(db.clone(), link.broker.clone(), commands.clone())
            .start()
            .await
            .context("consuming flight events")?,
    ];
    let relay = start_relay(messaging::public_events()?, store.clone(), db, link).await?;
    let api = cairn_passengers::http::router(PassengersApi {
        passengers,
        commands: commands.clone(),
        queries: queries.clone(),
    });
    let doc = openapi_document(
        "Cairn passengers",
        env!("CARGO_PKG_VERSION"),
        [PassengersOpenApi::openapi()],
    );
    Ok(Running {
        api,
        doc,
        store: Some(store),
        projections: Some(projections),
        relay: Some(relay),
        consumers,
        sagas: None,
        _serving: Some(serving),
    })
}

async fn audit(db: &ReadDb, link: &Link) -> anyhow::Result<Running> {
    use cairn_audit::{AuditApi, AuditOpenApi};
    cairn_audit::create_tables(db.pool())
        .await
        .context("creating the audit log")?;
    let mut consumers = Vec::new();
    for consumer in cairn_audit::consumers(db, &link.broker, &["flights", "passengers"]) {
        consumers.push(consumer.start().await.context("consuming events")?);
    }
    let api = cairn_audit::router(AuditApi::Consumers(db.clone()));
    let doc = openapi_document(
        "Cairn audit",
        env!("CARGO_PKG_VERSION"),
        [AuditOpenApi::openapi()],
    );
    Ok(Running {
        api,
        doc,
        store: None,
        projections: None,
        relay: None,
        consumers,
        sagas: None,
        _serving: None,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec!["cairn"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.run.settings()
    }

    fn config(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn flags_override_the_file_and_the_file_fills_the_rest() {
        let (_dir, path) = config(
            r#"
            store = "postgres://u@db/x?schema=ops"
            broker = "nats://file:4222"
            listen = "127.0.0.1:9000"
            prefix = "prod"
            default_tenant = "acme"
            request_timeout_ms = 1500
            "#,
        );
        let s = settings(&[
            "flights",
            "--config",
            &path,
            "--broker",
            "amqp://flag",
            "--listen",
            "127.0.0.1:9001",
        ])
        .unwrap();
        assert_eq!(s.broker, "amqp://flag", "a flag wins");
        assert_eq!(s.listen, "127.0.0.1:9001");
        assert_eq!(s.store.as_deref(), Some("postgres://u@db/x?schema=ops"));
        assert_eq!(s.prefix, "prod");
        assert_eq!(s.default_tenant.as_str(), "acme");
        assert_eq!(s.request_timeout, Duration::from_millis(1500));
        assert_eq!(
            s.db, "postgres://u@db/x?schema=flights_read",
            "the service database defaults to a schema beside the store"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let missing_store = settings(&["passengers", "--broker", "nats://x"]).unwrap_err();
        assert!(missing_store.to_string().contains("no event store"));
        let missing_broker = settings(&["flights", "--store", "sqlite://x.db"]).unwrap_err();
        assert!(missing_broker.to_string().contains("no broker"));
        let audit_without_db = settings(&["audit", "--broker", "nats://x"]).unwrap_err();
        assert!(audit_without_db.to_string().contains("no database"));
        let bad_prefix = settings(&[
            "flights",
            "--store",
            "sqlite://x.db",
            "--broker",
            "nats://x",
            "--prefix",
            "Bad.Prefix",
        ])
        .unwrap_err();
        assert!(
            format!("{bad_prefix:#}").contains("prefix"),
            "{bad_prefix:#}"
        );
        let (_dir, path) = config("brokr = \"nats://typo\"\n");
        let typo = settings(&["flights", "--config", &path]).unwrap_err();
        assert!(format!("{typo:#}").contains("brokr"), "{typo:#}");
        let memory = settings(&["flights", "--store", "memory:", "--broker", "nats://x"]);
        assert!(
            memory.is_err(),
            "a service on its own needs a durable store"
        );
    }

    #[test]
    fn sqlite_stores_get_a_database_file_beside_them() {
        let s = settings(&[
            "passengers",
            "--store",
            "sqlite://data/ops.db",
            "--broker",
            "nats://x",
        ])
        .unwrap();
        assert_eq!(s.db, "sqlite://data/ops.db.passengers.db");
        assert_eq!(s.listen, "127.0.0.1:0");
        assert_eq!(s.prefix, "cairn");
    }
}
