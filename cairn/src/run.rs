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
//! variables, then flags: a flag or variable overrides the file.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use axum::Router;
use cairn_auth::{RemoteJwks, Revocations, RoleMap, TrustedIssuer, Verifier, VerifierOptions};
use cairn_core::TenantId;
use cairn_domain::{CommandBus, QueryBus};
use cairn_flightops_contracts::{
    CloseBoarding, GetFlightForBooking, RemoveFlightPassengers, ReopenBoarding,
};
use cairn_gateway::{DEFAULT_UPSTREAM_TIMEOUT, Route, Url};
use cairn_http::{
    AuthOptions, CrossTenantAudit, Health, HttpOptions, IdempotencyOptions, IdempotencyStore,
    ProjectionsOpenApi, TenantHeaderOptions, app, openapi_document, openapi_router,
    projections_router, serve, shutdown_signal,
};
use cairn_identity::{
    BootstrapUser, Identity,
    revocations::{self, RevokedTokens},
};
use cairn_messaging::{
    Broker, ConsumerHandle, Relay, RelayOptions, RequestTransport, Serving,
    rpc::{Remote, RpcServer, forward_command, forward_query},
};
use cairn_messaging_amqp::{AmqpBroker, AmqpOptions};
use cairn_messaging_nats::{NatsBroker, NatsOptions};
use cairn_projection::{Projection, Projections, ReadDb};
use cairn_store::EventStore;
use cairn_telemetry::Metrics;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::{
    auth::{self, IdentityArgs},
    store_url::{StoreUrl, open_store, split_schema},
};

/// The services `cairn run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ServiceName {
    Flights,
    Passengers,
    Audit,
    Identity,
    /// The gateway in front of the others (no store, database or broker).
    Gateway,
}

impl ServiceName {
    fn as_str(self) -> &'static str {
        match self {
            ServiceName::Flights => "flights",
            ServiceName::Passengers => "passengers",
            ServiceName::Audit => "audit",
            ServiceName::Identity => "identity",
            ServiceName::Gateway => "gateway",
        }
    }
}

/// Options of `cairn run`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// The service to run.
    service: ServiceName,
    /// A TOML file with any of: store, db, broker, listen, prefix,
    /// default_tenant, request_timeout_ms, issuer, identity_url,
    /// trust_issuer, insecure_tenant_header, public_url, master_key_file,
    /// cors_origin (a list), cors_credentials, cors_max_age; for the
    /// gateway `[[route]]` tables (prefix, upstreams) and
    /// upstream_timeout_ms.
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
    /// Base URL of the Cairn identity service whose realms issue the
    /// tokens this service accepts, as the tokens name it
    /// (`<url>/realms/<tenant>`).
    #[arg(long, env = "CAIRN_ISSUER")]
    issuer: Option<String>,
    /// Where to fetch the realms' keys when not from --issuer: the identity
    /// service's own address when --issuer is a gateway's public URL.
    #[arg(long, env = "CAIRN_IDENTITY_URL")]
    identity_url: Option<String>,
    /// Accept requests without tokens, each acting for the tenant named by
    /// `X-Cairn-Tenant`. Anyone who reaches the service can then act for
    /// any tenant: only for tests on a private network.
    #[arg(long)]
    insecure_tenant_header: bool,
    /// With --insecure-tenant-header: the tenant of requests that name none.
    #[arg(long, env = "CAIRN_DEFAULT_TENANT")]
    default_tenant: Option<String>,
    /// The gateway only: send paths under PREFIX to these upstreams in
    /// turn, as `PREFIX=http://HOST:PORT[,http://HOST:PORT…]`; the longest
    /// matching prefix wins. Repeatable; replaces a `[[route]]` of the
    /// same prefix.
    #[arg(long = "route", value_name = "PREFIX=URL[,URL…]")]
    route: Vec<String>,
    /// The gateway only: how long an upstream has to send its response
    /// head before the caller gets 504 (default 30000).
    #[arg(long, env = "CAIRN_UPSTREAM_TIMEOUT_MS")]
    upstream_timeout_ms: Option<u64>,
    /// What a projection does at a poison event, as NAME=stop (wait for an
    /// operator; the default) or NAME=park (record it in the projection's
    /// dead letters and go on). Repeatable; adds to the file's
    /// `projection_policy` list.
    #[arg(long = "projection-policy", value_name = "NAME=stop|park")]
    projection_policy: Vec<String>,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    cors: crate::cors::CorsArgs,
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
    issuer: Option<String>,
    identity_url: Option<String>,
    #[serde(default)]
    trust_issuer: Vec<String>,
    insecure_tenant_header: Option<bool>,
    public_url: Option<String>,
    master_key_file: Option<PathBuf>,
    #[serde(default)]
    cors_origin: Vec<String>,
    cors_credentials: Option<bool>,
    cors_max_age: Option<u64>,
    #[serde(default)]
    route: Vec<FileRoute>,
    upstream_timeout_ms: Option<u64>,
    #[serde(default)]
    projection_policy: Vec<String>,
}

/// A `[[route]]` of the settings file (the gateway's).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    upstreams: Vec<String>,
}

/// How requests get their tenant (for the gateway: whether it checks
/// tokens at the edge).
#[derive(Debug)]
pub(crate) enum Access {
    /// From a verified token: Cairn's realms under `issuer` (keys fetched
    /// from `identity_url`, else from `issuer`) and the `trust` specs.
    Tokens {
        issuer: Option<String>,
        identity_url: Option<String>,
        trust: Vec<String>,
    },
    /// From `X-Cairn-Tenant`, unauthenticated.
    Header { default_tenant: TenantId },
}

/// Settings after layering.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) service: ServiceName,
    /// Absent for Audit, which keeps no events of its own, and the gateway.
    store: Option<String>,
    /// Absent for the gateway unless it keeps the revoked tokens.
    pub(crate) db: Option<String>,
    /// Absent for the gateway unless it keeps the revoked tokens.
    pub(crate) broker: Option<String>,
    pub(crate) listen: String,
    prefix: String,
    pub(crate) access: Access,
    request_timeout: Duration,
    /// The identity service's public URL (default: its listen address).
    public_url: Option<String>,
    /// The identity service's master key file (else `CAIRN_MASTER_KEY`).
    master_key_file: Option<PathBuf>,
    /// The gateway's routes (empty for the services).
    pub(crate) routes: Vec<Route>,
    /// How long the gateway waits for an upstream's response head.
    pub(crate) upstream_timeout: Duration,
    /// Which browser origins may call (none by default).
    pub(crate) cors: cairn_http::CorsOptions,
    /// The projections' options (their poison-event policies).
    projection_options: cairn_projection::ProjectionOptions,
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
        let gateway = service == ServiceName::Gateway;
        let routes = routes(file.route, self.route)?;
        if gateway && routes.is_empty() {
            bail!("no routes: pass --route PREFIX=URL[,URL…] or add [[route]] tables to --config");
        }
        if !gateway && !routes.is_empty() {
            bail!("routes are the gateway's: `cairn run gateway --route …`");
        }
        let upstream_timeout = match self.upstream_timeout_ms.or(file.upstream_timeout_ms) {
            Some(0) => bail!("--upstream-timeout-ms must be at least 1"),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_UPSTREAM_TIMEOUT,
        };
        let cors = crate::cors::cors_options(
            if self.cors.cors_origin.is_empty() {
                &file.cors_origin
            } else {
                &self.cors.cors_origin
            },
            self.cors.cors_credentials || file.cors_credentials == Some(true),
            self.cors.cors_max_age.or(file.cors_max_age),
        )?;
        // The gateway keeps no events. Given a database and a broker both,
        // it also keeps the list of revoked tokens; otherwise the services
        // alone refuse them.
        let (store, db, broker) = if gateway {
            match (self.db.or(file.db), self.broker.or(file.broker)) {
                (Some(db), Some(broker)) => (None, Some(db), Some(broker)),
                _ => (None, None, None),
            }
        } else {
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
            (store, Some(db), Some(broker))
        };
        let mut projection_policy = file.projection_policy;
        projection_policy.extend(self.projection_policy);
        let projection_options = crate::projections_cli::options(&projection_policy)?;
        let prefix = self
            .prefix
            .or(file.prefix)
            .unwrap_or_else(|| "cairn".into());
        cairn_messaging::validate_service(&prefix).context("--prefix")?;
        let insecure = self.insecure_tenant_header || file.insecure_tenant_header == Some(true);
        let mut trust = file.trust_issuer;
        trust.extend(self.identity.trust_issuer);
        let issuer = self.issuer.or(file.issuer);
        let access = if insecure {
            if service == ServiceName::Identity {
                bail!(
                    "the identity service always issues and checks tokens: drop --insecure-tenant-header"
                );
            }
            if issuer.is_some() || !trust.is_empty() {
                bail!("--insecure-tenant-header takes no issuer: tokens would be ignored");
            }
            if gateway && (self.default_tenant.is_some() || file.default_tenant.is_some()) {
                bail!(
                    "the gateway forwards X-Cairn-Tenant as it comes: a default tenant is the services' setting"
                );
            }
            let default_tenant = self
                .default_tenant
                .or(file.default_tenant)
                .unwrap_or_else(|| "demo".into());
            Access::Header {
                default_tenant: TenantId::new(&default_tenant).context("default tenant")?,
            }
        } else {
            if issuer.is_none() && trust.is_empty() && service != ServiceName::Identity {
                bail!(
                    "no token issuer: pass --issuer URL (the identity service) or --trust-issuer, \
                     or --insecure-tenant-header on a private test network"
                );
            }
            if self.default_tenant.is_some() || file.default_tenant.is_some() {
                bail!(
                    "a default tenant needs --insecure-tenant-header: with tokens, the token names the tenant"
                );
            }
            auth::trusted_issuers(&trust)?;
            Access::Tokens {
                issuer: issuer.map(|i| i.trim_end_matches('/').to_owned()),
                identity_url: self.identity_url.or(file.identity_url),
                trust,
            }
        };
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
            access,
            request_timeout: Duration::from_millis(file.request_timeout_ms.unwrap_or(5_000)),
            public_url: self.identity.public_url.or(file.public_url),
            master_key_file: self.identity.master_key_file.or(file.master_key_file),
            routes,
            upstream_timeout,
            cors,
            projection_options,
        })
    }
}

/// The file's `[[route]]` tables, then the `--route` flags (a flag replaces
/// the file's route of the same prefix).
fn routes(file: Vec<FileRoute>, flags: Vec<String>) -> anyhow::Result<Vec<Route>> {
    let mut routes = Vec::new();
    for FileRoute { prefix, upstreams } in file {
        let upstreams = upstreams
            .iter()
            .map(|u| Url::parse(u).with_context(|| format!("[[route]] {prefix}: upstream `{u}`")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        routes.push(Route::new(&prefix, upstreams).context("[[route]]")?);
    }
    for spec in flags {
        let route: Route = spec.parse().context("--route")?;
        routes.retain(|r| r.prefix != route.prefix);
        routes.push(route);
    }
    Ok(routes)
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
pub(crate) struct Link {
    pub(crate) broker: Arc<dyn Broker>,
    transport: Arc<dyn RequestTransport>,
    pub(crate) what: String,
}

pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<Link> {
    let url = settings.broker.as_deref().context("no broker")?;
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
        "identity" => vec![
            revocations::group("flights"),
            revocations::group("passengers"),
            revocations::group("audit"),
            cairn_audit::group("identity"),
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

/// The revoked-token list of `service`, kept in `db` from the identity
/// service's events, which the returned consumer writes there.
pub(crate) async fn hear_revocations(
    service: &str,
    db: &ReadDb,
    link: &Link,
) -> anyhow::Result<(RevokedTokens, ConsumerHandle)> {
    let revoked = RevokedTokens::open(db.clone(), revocations::DEFAULT_POLL)
        .await
        .context("opening the revoked-token list")?;
    let consumer = revoked
        .consumer(service, link.broker.clone())
        .start()
        .await
        .context("consuming revocations")?;
    Ok((revoked, consumer))
}

/// The verifier of a service or the gateway on its own: Cairn's realms
/// under `issuer` (keys over HTTP, from `identity_url` when given) and the
/// other trusted issuers, refusing what `revoked` lists (every service
/// keeps one; the gateway when it has a database and a broker).
pub(crate) fn remote_verifier(
    issuer: &Option<String>,
    identity_url: &Option<String>,
    mut trusted: Vec<TrustedIssuer>,
    revoked: Option<Arc<dyn Revocations>>,
) -> Verifier {
    if let Some(issuer) = issuer {
        let fetch = identity_url.clone().unwrap_or_else(|| issuer.clone());
        trusted.insert(
            0,
            TrustedIssuer::cairn(
                issuer.clone(),
                Arc::new(RemoteJwks::realms(issuer.clone(), fetch)),
            ),
        );
    }
    Verifier::with_options(
        trusted,
        RoleMap::default(),
        VerifierOptions::default(),
        revoked,
    )
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
            issuer = "http://identity:9000/"
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
        assert_eq!(s.broker.as_deref(), Some("amqp://flag"), "a flag wins");
        assert_eq!(s.listen, "127.0.0.1:9001");
        assert_eq!(s.store.as_deref(), Some("postgres://u@db/x?schema=ops"));
        assert_eq!(s.prefix, "prod");
        match &s.access {
            Access::Tokens { issuer, .. } => {
                assert_eq!(issuer.as_deref(), Some("http://identity:9000"));
            }
            other => panic!("tokens by default: {other:?}"),
        }
        assert_eq!(s.request_timeout, Duration::from_millis(1500));
        assert_eq!(
            s.db.as_deref(),
            Some("postgres://u@db/x?schema=flights_read"),
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
            "--issuer",
            "http://id",
        ])
        .unwrap();
        assert_eq!(s.db.as_deref(), Some("sqlite://data/ops.db.passengers.db"));
        assert_eq!(s.listen, "127.0.0.1:0");
        assert_eq!(s.prefix, "cairn");
    }

    #[test]
    fn tokens_are_required_unless_the_insecure_header_is_asked_for() {
        let base = [
            "flights",
            "--store",
            "sqlite://x.db",
            "--broker",
            "nats://x",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            settings(&args)
        };
        let none = with(&[]).unwrap_err();
        assert!(none.to_string().contains("no token issuer"), "{none:#}");
        let trusted = with(&[
            "--trust-issuer",
            "tenant=acme,issuer=https://kc/realms/acme",
        ]);
        assert!(matches!(trusted.unwrap().access, Access::Tokens { .. }));
        let bad_trust = with(&["--trust-issuer", "tenant=acme"]).unwrap_err();
        assert!(
            format!("{bad_trust:#}").contains("required"),
            "{bad_trust:#}"
        );
        let header = with(&["--insecure-tenant-header", "--default-tenant", "acme"]).unwrap();
        match header.access {
            Access::Header { default_tenant } => assert_eq!(default_tenant.as_str(), "acme"),
            other => panic!("{other:?}"),
        }
        let both = with(&["--insecure-tenant-header", "--issuer", "http://id"]).unwrap_err();
        assert!(both.to_string().contains("takes no issuer"), "{both:#}");
        let default_with_tokens =
            with(&["--issuer", "http://id", "--default-tenant", "acme"]).unwrap_err();
        assert!(default_with_tokens.to_string().contains("default tenant"));
        let identity = settings(&[
            "identity",
            "--store",
            "sqlite://x.db",
            "--broker",
            "nats://x",
            "--insecure-tenant-header",
        ])
        .unwrap_err();
        assert!(
            identity.to_string().contains("always issues"),
            "{identity:#}"
        );
        let identity = settings(&[
            "identity",
            "--store",
            "sqlite://x.db",
            "--broker",
            "nats://x",
        ])
        .unwrap();
        assert_eq!(identity.db.as_deref(), Some("sqlite://x.db.identity.db"));
        assert!(matches!(
            identity.access,
            Access::Tokens { issuer: None, .. }
        ));
    }

    #[test]
    fn the_gateway_needs_routes_and_an_issuer_but_no_store_or_broker() {
        let (_dir, path) = config(
            r#"
            upstream_timeout_ms = 1500
            issuer = "http://identity:8084"

            [[route]]
            prefix = "/api/flights"
            upstreams = ["http://flights-1:8081", "http://flights-2:8081"]

            [[route]]
            prefix = "/realms"
            upstreams = ["http://identity:8084"]
            "#,
        );
        let s = settings(&[
            "gateway",
            "--config",
            &path,
            "--route",
            "/realms=http://identity-2:8084",
            "--route",
            "/api/passengers=http://passengers:8082",
            // A deployment's shared variables are no business of the gateway.
            "--broker",
            "nats://x",
        ])
        .unwrap();
        let routes: Vec<String> = s.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "/api/flights=http://flights-1:8081,http://flights-2:8081",
                "/realms=http://identity-2:8084",
                "/api/passengers=http://passengers:8082",
            ],
            "a flag replaces the file's route of its prefix"
        );
        assert_eq!(s.upstream_timeout, Duration::from_millis(1500));
        assert_eq!((s.store, s.db, s.broker), (None, None, None));
        assert!(matches!(
            s.access,
            Access::Tokens {
                issuer: Some(_),
                ..
            }
        ));

        let s = settings(&[
            "gateway",
            "--route",
            "/=http://a",
            "--insecure-tenant-header",
        ])
        .unwrap();
        assert!(matches!(s.access, Access::Header { .. }), "no edge check");
        assert_eq!(s.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT);

        let fails = |args: &[&str], says: &str| {
            let err = format!("{:#}", settings(args).unwrap_err());
            assert!(err.contains(says), "{args:?}: {err}");
        };
        fails(&["gateway", "--issuer", "http://id"], "no routes");
        fails(&["gateway", "--route", "/api=http://a"], "no token issuer");
        fails(
            &[
                "gateway",
                "--route",
                "/api=https://a",
                "--issuer",
                "http://id",
            ],
            "TLS",
        );
        fails(
            &["gateway", "--route", "/api", "--issuer", "http://id"],
            "PREFIX=URL",
        );
        fails(
            &[
                "gateway",
                "--route",
                "/api=http://a",
                "--issuer",
                "http://id",
                "--upstream-timeout-ms",
                "0",
            ],
            "at least 1",
        );
        fails(
            &[
                "gateway",
                "--route",
                "/api=http://a",
                "--insecure-tenant-header",
                "--default-tenant",
                "acme",
            ],
            "forwards X-Cairn-Tenant",
        );
        fails(
            &[
                "flights",
                "--store",
                "sqlite://x.db",
                "--broker",
                "nats://x",
                "--issuer",
                "http://id",
                "--route",
                "/api=http://a",
            ],
            "routes are the gateway's",
        );
    }

    #[test]
    fn cors_comes_from_the_file_unless_flags_name_origins() {
        let (_dir, path) = config(
            r#"
            cors_origin = ["https://console.example", "http://127.0.0.1:3000"]
            cors_credentials = true
            cors_max_age = 120
            "#,
        );
        let gateway = [
            "gateway",
            "--route",
            "/=http://a",
            "--insecure-tenant-header",
        ];
        let with = |extra: &[&str]| {
            let mut args = gateway.to_vec();
            args.extend_from_slice(extra);
            settings(&args)
        };
        let s = with(&["--config", &path]).unwrap();
        assert_eq!(
            s.cors.origins(),
            ["https://console.example", "http://127.0.0.1:3000"]
        );
        assert!(s.cors.credentials());
        assert_eq!(s.cors.max_age(), Duration::from_secs(120));
        let s = with(&[
            "--config",
            &path,
            "--cors-origin",
            "https://other.example",
            "--cors-max-age",
            "60",
        ])
        .unwrap();
        assert_eq!(s.cors.origins(), ["https://other.example"], "flags win");
        assert_eq!(s.cors.max_age(), Duration::from_secs(60));
        assert!(!with(&[]).unwrap().cors.is_enabled(), "off by default");

        let (_dir, path) = config("cors_origin = [\"*\"]\ncors_credentials = true\n");
        let err = format!("{:#}", with(&["--config", &path]).unwrap_err());
        assert!(err.contains("cannot be used with credentials"), "{err}");
    }
}
