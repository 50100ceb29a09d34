//! `cairn run <service>`: one service of the reference system as its own
//! process, on its own event store, database and HTTP address, talking to
//! the others through a broker (NATS JetStream or RabbitMQ); or the gateway
//! in front of them (`cairn run gateway`, wired in `crate::gateway`), which
//! needs no store, database or broker.
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
//! variables, then flags: a flag or variable overrides the file
//! ([`settings`]). The broker connection and the relay's start are in
//! [`link`], the token checks of a service or the gateway on its own in
//! [`tokens`]. This module wires each service from them and hands
//! `cairn run gateway` to `crate::gateway`, which uses those three but
//! nothing of this module, so no dependency runs both ways.

pub(crate) mod link;
pub(crate) mod settings;
pub(crate) mod tokens;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use axum::Router;
use cairn_domain::{CommandBus, QueryBus};
use cairn_flightops_contracts::{
    CloseBoarding, GetFlightForBooking, RemoveFlightPassengers, ReopenBoarding,
};
use cairn_http::{
    AuthOptions, CrossTenantAudit, Health, HttpOptions, IdempotencyOptions, IdempotencyStore,
    ProjectionsOpenApi, TenantHeaderOptions, app, openapi_document, openapi_router,
    projections_router, serve, shutdown_signal,
};
use cairn_identity::{BootstrapUser, Identity, revocations};
use cairn_messaging::{
    ConsumerHandle, Relay, Serving,
    rpc::{Remote, RpcServer, forward_command, forward_query},
};
use cairn_projection::{Projection, Projections, ReadDb};
use cairn_store::EventStore;
use cairn_telemetry::Metrics;
use utoipa::OpenApi;

pub(crate) use self::settings::RunArgs;
use self::{
    link::{Link, connect, start_relay},
    settings::{Access, ServiceName, Settings},
    tokens::{hear_revocations, remote_verifier},
};
use crate::{
    auth::{self, IdentityArgs},
    store_url::{StoreUrl, open_store},
};

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
    /// Where cross-tenant reads are recorded.
    cross_reads: Option<Arc<dyn CrossTenantAudit>>,
    /// Routes served without a token (the identity service's realms).
    public: Option<Router>,
    /// The identity service, and the tenants its first start made.
    identity: Option<(Identity, Vec<BootstrapUser>)>,
}

/// Where a service on its own records cross-tenant reads: in its store,
/// in a category its relay publishes (so the audit service hears them).
fn store_cross_reads(
    service: &str,
    store: &Arc<dyn EventStore>,
    public: &mut cairn_messaging::PublicEvents,
) -> Arc<dyn CrossTenantAudit> {
    let category = format!("crossread_{service}");
    public.categories.push(category.clone());
    public.types.push(auth::CROSS_TENANT_READ.to_owned());
    Arc::new(auth::StoreAudit(store.clone(), category))
}

/// Runs one service until SIGINT or SIGTERM.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    if settings.service == ServiceName::Gateway {
        return crate::gateway::run(settings).await;
    }
    let name = settings.service.as_str();
    // Before anything starts, so nothing it counts is lost.
    let metrics = Metrics::install();
    let store = match &settings.store {
        Some(url) => Some(open_store(url).await?),
        None => None,
    };
    let db_url = settings.db.as_deref().context("no database")?;
    let db = ReadDb::open(db_url)
        .await
        .context("opening the service database")?;
    let link = connect(&settings).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let tokens = matches!(settings.access, Access::Tokens { .. });
    let (commands, queries) = if tokens {
        (
            CommandBus::with_config(auth::bus_config()),
            QueryBus::with_config(auth::bus_config()),
        )
    } else {
        (CommandBus::new(), QueryBus::new())
    };
    let mut running = match (settings.service, store) {
        (ServiceName::Flights, Some(store)) => {
            flights(&settings, store, &db, &link, &commands, &queries).await?
        }
        (ServiceName::Passengers, Some(store)) => {
            passengers(&settings, store, &db, &link, &commands, &queries).await?
        }
        (ServiceName::Identity, Some(store)) => {
            let public_url = settings
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            identity(&settings, store, &db, &link, public_url).await?
        }
        (ServiceName::Audit, _) => audit(&db, &link).await?,
        (ServiceName::Gateway, _) | (_, None) => bail!("no event store"),
    };
    let auth = match &settings.access {
        Access::Header { .. } => None,
        Access::Tokens {
            issuer,
            identity_url,
            trust,
        } => {
            let trusted = auth::trusted_issuers(trust)?;
            let verifier = match &running.identity {
                Some((identity, _)) => identity.verifier(trusted),
                None => {
                    let (revoked, consumer) = hear_revocations(name, &db, &link).await?;
                    running.consumers.push(consumer);
                    remote_verifier(issuer, identity_url, trusted, Some(Arc::new(revoked)))
                }
            };
            Some(auth::shareable(AuthOptions::new(
                verifier,
                running.cross_reads.clone(),
            )))
        }
    };

    let idempotency = IdempotencyStore::open(db.pool().clone(), IdempotencyOptions::default())
        .await
        .context("opening the idempotency-key store")?;
    let mut health = Health::new().with_sql_check("database", db.pool().clone());
    if let Some(projections) = &running.projections {
        health = health.with_projections(projections);
        running.api = running
            .api
            .clone()
            .merge(projections_router(projections.clone()));
        running.doc.merge(ProjectionsOpenApi::openapi());
    }
    let mut public = Router::new()
        .merge(health.router())
        .merge(openapi_router(running.doc.clone()));
    if let Some(extra) = running.public.take() {
        public = public.merge(extra);
    }
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
            default_tenant: match &settings.access {
                Access::Header { default_tenant } => Some(default_tenant.clone()),
                Access::Tokens { .. } => None,
            },
        },
        metrics: Some(metrics),
        auth,
        cors: settings.cors.clone(),
        ..HttpOptions::default()
    };
    let router = app(running.api.clone(), public, &options, Some(&idempotency));
    println!("cairn run {name}: listening on http://{addr}");
    if let Some(store) = &settings.store {
        println!("  event store:  {}", StoreUrl::parse(store)?.redacted());
    }
    println!("  database:     {}", redact(db_url));
    println!("  broker:       {}", link.what);
    if let Some(line) = crate::cors::banner(&settings.cors) {
        println!("{line}");
    }
    match &settings.access {
        Access::Header { default_tenant } => {
            println!("  tenant:       X-Cairn-Tenant, unauthenticated (default {default_tenant})");
        }
        Access::Tokens { issuer, trust, .. } => {
            if let Some((identity, _)) = &running.identity {
                println!(
                    "  identity:     {}/realms/<tenant>",
                    identity.options().issuer_base
                );
            }
            if let Some(issuer) = issuer {
                println!("  tokens:       issued by {issuer}/realms/<tenant>");
            }
            for spec in trust {
                println!("  tokens:       trusted {spec}");
            }
        }
    }
    if let Some((_, created)) = &running.identity {
        for user in created {
            println!(
                "  created tenant {}: user {} password: {} (shown once)",
                user.tenant, user.username, &*user.password
            );
        }
    }

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
    settings: &Settings,
    db: &ReadDb,
    store: Arc<dyn EventStore>,
    projections: Vec<Arc<dyn Projection>>,
) -> anyhow::Result<Projections> {
    let options = settings.projection_options.clone();
    Projections::start(db.clone(), store, projections, options)
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
    let projections = start_projections(
        settings,
        db,
        store.clone(),
        vec![Arc::new(OwnFlightsProjection)],
    )
    .await?;
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
    let mut public = messaging::public_events()?;
    let cross_reads = store_cross_reads(messaging::SERVICE, &store, &mut public);
    let relay = start_relay(public, store.clone(), db, link).await?;
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
        cross_reads: Some(cross_reads),
        public: None,
        identity: None,
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
    let projections = start_projections(
        settings,
        db,
        store.clone(),
        vec![Arc::new(PassengersProjection)],
    )
    .await?;
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
    let mut public = messaging::public_events()?;
    let cross_reads = store_cross_reads(messaging::SERVICE, &store, &mut public);
    let relay = start_relay(public, store.clone(), db, link).await?;
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
        cross_reads: Some(cross_reads),
        public: None,
        identity: None,
    })
}

async fn audit(db: &ReadDb, link: &Link) -> anyhow::Result<Running> {
    use cairn_audit::{AuditApi, AuditOpenApi};
    cairn_audit::create_tables(db.pool())
        .await
        .context("creating the audit log")?;
    let mut consumers = Vec::new();
    for consumer in cairn_audit::consumers(
        db,
        &link.broker,
        &["flights", "passengers", revocations::SERVICE],
    ) {
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
        cross_reads: Some(Arc::new(auth::AuditLogAudit(db.clone()))),
        public: None,
        identity: None,
    })
}

async fn identity(
    settings: &Settings,
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    link: &Link,
    public_url: String,
) -> anyhow::Result<Running> {
    let args = IdentityArgs {
        master_key_file: settings.master_key_file.clone(),
        ..IdentityArgs::default()
    };
    if args.master_key_file.is_none() && std::env::var_os("CAIRN_MASTER_KEY").is_none() {
        bail!(
            "no master key: pass --master-key-file (or set CAIRN_MASTER_KEY); \
             every instance of the identity service needs the same one"
        );
    }
    let (master, _) = auth::master_key(&args, None)?;
    let (identity, created) =
        auth::open_identity(store.clone(), db.clone(), master, &public_url).await?;
    let mut public = revocations::public_events()?;
    let cross_reads = store_cross_reads(revocations::SERVICE, &store, &mut public);
    let relay = start_relay(public, store.clone(), db, link).await?;
    let doc = openapi_document(
        "Cairn identity",
        env!("CARGO_PKG_VERSION"),
        [cairn_identity::IdentityOpenApi::openapi()],
    );
    Ok(Running {
        api: cairn_identity::http::admin_router(identity.clone()),
        doc,
        store: Some(store),
        projections: None,
        relay: Some(relay),
        consumers: Vec::new(),
        sagas: None,
        _serving: None,
        cross_reads: Some(cross_reads),
        public: Some(cairn_identity::http::realm_router(identity.clone())),
        identity: Some((identity, created)),
    })
}
