//! `cairn up`: the whole reference system in one process. Flights,
//! Passengers and Audit share one event store, one read-model database and
//! one pair of in-process buses, behind one HTTP router.
//!
//! Services hear each other's events through the log itself
//! ([`cairn_messaging::LogBroker`]): Passengers removes a deleted flight's
//! passengers from `FlightDeleted` even if the direct request was lost.
//!
//! The API needs a token: the identity service runs in the same process
//! (realms at `/realms/{tenant}`, admin API at `/api/admin/…`), and every
//! request's tenant is its token's. On first start the `platform` and
//! `demo` tenants are made, each with an `admin` whose password is printed
//! once; `--dev` also prints a token for demo's admin.
//!
//! Every request, command and projection is measured; `GET /metrics` serves
//! the Prometheus text, reading the store's head and the projections' lag
//! at each scrape.
//!
//! Stores: embedded SQLite under `--data-dir` (default), in memory with
//! `--ephemeral`, or PostgreSQL with `--store postgres://…` (read models then
//! live in the schema `<schema>_read` of the same database).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use axum::{Router, http::Extensions};
use cairn_core::TenantId;
use cairn_http::{
    AuthOptions, Health, HttpOptions, IdempotencyOptions, IdempotencyStore, ProjectionsOpenApi,
    app, openapi_document, openapi_router, projections_router, shutdown_signal,
};
use cairn_identity::{
    Identity,
    descriptor::{Created, DEMO_TENANT},
};
use cairn_projection::{Projection, Projections};
use cairn_service::{Background, Env, Layout, ServiceDescriptor, Topology};
use cairn_service_db::{ServiceDb, split_schema};
use cairn_store::{EventStore, MemoryStore};
use cairn_telemetry::Metrics;
use utoipa::OpenApi;

use crate::{
    auth::{self, IdentityArgs},
    platform::{self, Platform},
    store_url::{
        EVENTS_DB, Expect, IfMissing, READ_MODELS_DB, StoreUrl, open_store, require_existing,
    },
};

/// Options of `cairn up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: String,
    /// Directory of the embedded SQLite databases.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "data")]
    pub(crate) data_dir: PathBuf,
    /// Keep everything in memory; nothing survives the process.
    #[arg(long, conflicts_with = "store")]
    pub(crate) ephemeral: bool,
    /// Event store URL instead of the embedded one: postgres://…[?schema=S]
    /// or sqlite://PATH.
    #[arg(long, env = "CAIRN_STORE")]
    pub(crate) store: Option<String>,
    /// What a projection does at a poison event, as NAME=stop (wait for an
    /// operator; the default) or NAME=park (record it in the projection's
    /// dead letters and go on). Repeatable.
    #[arg(
        long = "projection-policy",
        value_name = "NAME=stop|park",
        env = "CAIRN_PROJECTION_POLICY",
        value_delimiter = ','
    )]
    pub(crate) projection_policy: Vec<String>,
    /// Development mode: also prints a ready access token for the `demo`
    /// tenant's admin (valid 12 hours) on a line starting `token:`.
    #[arg(long)]
    pub(crate) dev: bool,
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
    #[command(flatten)]
    pub(crate) cors: crate::cors::CorsArgs,
}

/// Runs the platform until SIGINT or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    start(args, crate::services::all())
        .await?
        .serve(shutdown_signal())
        .await
}

/// Starts `cairn up` as the command line after `up` says (`argv`), with
/// `services`, ready to serve.
pub async fn start_from(
    argv: &[&str],
    services: Vec<ServiceDescriptor>,
) -> anyhow::Result<Platform> {
    use clap::Parser as _;
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }
    let cli = Cli::try_parse_from(std::iter::once("cairn up").chain(argv.iter().copied()))?;
    start(cli.up, services).await
}

/// Starts `services` in one process, as `cairn up` does, ready to serve.
pub(crate) async fn start(
    args: UpArgs,
    services: Vec<ServiceDescriptor>,
) -> anyhow::Result<Platform> {
    platform::check(&services)?;
    // Whatever a service asks of another must be answered in this process.
    for service in &services {
        for import in &service.imports {
            let answered = services.iter().any(|s| {
                s.name == import.from && s.exports.iter().any(|e| e.message == import.message)
            });
            if !answered {
                bail!(
                    "{} asks {} for {} {}, which no service here answers",
                    service.name,
                    import.from,
                    import.message.kind,
                    import.message.name
                );
            }
        }
    }
    // Input, the port and the data's lock come before anything is created:
    // a `cairn up` that cannot start leaves no trace.
    let trusted = auth::trusted_issuers(&args.identity.trust_issuer)?;
    let cors = args.cors.options()?;
    let projection_options = crate::projections_cli::options(&args.projection_policy)?;
    let published = platform::published(&services);
    let projections: Vec<Arc<dyn Projection>> = services
        .iter()
        .flat_map(|s| {
            s.projections_in(Layout {
                topology: Topology::Shared,
                published: &published,
            })
        })
        .collect();
    let projection_names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    if let Some(unknown) = projection_options
        .policies
        .keys()
        .find(|name| !projection_names.contains(&name.as_str()))
    {
        bail!(
            "--projection-policy names {unknown:?}: the projections are {}",
            projection_names.join(", ")
        );
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Held until the process ends, however it ends.
    let lock = if args.ephemeral {
        None
    } else {
        lock_data(args.store.as_deref(), &args.data_dir)?
    };
    // Before anything starts, so nothing it counts is lost.
    let metrics = Metrics::install();
    let Stores {
        events: store,
        events_at: store_what,
        read_db,
        read_at: read_what,
    } = if args.ephemeral {
        ephemeral_stores().await?
    } else {
        open_stores(args.store.as_deref(), &args.data_dir, IfMissing::Create).await?
    };
    let (master, master_what) = auth::master_key(
        &args.identity,
        (!args.ephemeral).then_some(args.data_dir.as_path()),
    )?;
    let public_url = args
        .identity
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));

    let projections = Projections::start(
        read_db.clone(),
        store.clone(),
        projections,
        projection_options,
    )
    .await
    .context("starting the projections")?;
    let (commands, queries) = platform::buses(true);
    // In one process the log is the broker: Passengers hears FlightDeleted
    // straight from it (see LogBroker).
    let log_broker: Arc<dyn cairn_messaging::Broker> = Arc::new(cairn_messaging::LogBroker::new(
        store.clone(),
        read_db.clone(),
        published.clone(),
    ));
    let mut extensions = Extensions::new();
    extensions.insert(master);
    let live_changes = cairn_live::Publisher::new(cairn_live::LiveOptions::default().change_buffer);
    let env = Env {
        topology: Topology::Shared,
        store: Some(store.clone()),
        db: read_db.clone(),
        commands: commands.clone(),
        queries: queries.clone(),
        projections: Some(projections.clone()),
        broker: log_broker,
        published,
        public_url: public_url.clone(),
        extensions: Arc::new(extensions),
        live: Some(live_changes.clone()),
    };
    let mut background: Vec<Box<dyn Background>> = vec![Box::new(projections.clone())];
    let mut api = Router::new();
    let mut public = Router::new();
    let mut provided = Vec::new();
    let mut live_resources = Vec::new();
    for service in &services {
        let started = service
            .start(env.clone())
            .await
            .with_context(|| format!("starting {}", service.name))?;
        api = api.merge(started.api);
        if let Some(routes) = started.public {
            public = public.merge(routes);
        }
        background.extend(started.background);
        provided.push(started.provides);
        if let Some(resources) = started.live {
            live_resources.push((service.name, resources));
        }
    }
    platform::check_handlers(&services, &[], &commands, &queries)?;
    let mut consumers = Vec::new();
    for service in &services {
        for consumer in service.consumers_in(&env)? {
            let running = consumer
                .start()
                .await
                .with_context(|| format!("starting {}'s consumers", service.name))?;
            consumers.push(running.watch());
            background.push(Box::new(running));
        }
    }
    let identity = provided
        .iter()
        .find_map(|p| p.get::<Identity>().cloned())
        .context("no identity service: `cairn up` needs one to check tokens")?;
    let created = provided
        .iter()
        .find_map(|p| p.get::<Created>().cloned())
        .unwrap_or_default();
    let dev_token = if args.dev {
        let demo = TenantId::new(DEMO_TENANT).expect("valid tenant");
        Some(
            identity
                .token_for(&demo, "admin", 12 * 3600)
                .await
                .context("minting the --dev token")?,
        )
    } else {
        None
    };

    let idempotency = IdempotencyStore::open(read_db.pool().clone(), IdempotencyOptions::default())
        .await
        .context("opening the idempotency-key store")?;
    let health = Health::new()
        .with_sql_check("read-models", read_db.pool().clone())
        .with_projections(&projections);

    let api = api.merge(projections_router(projections.clone()));
    let doc = openapi_document(
        "Cairn flight operations",
        env!("CARGO_PKG_VERSION"),
        services
            .iter()
            .map(ServiceDescriptor::openapi_document)
            .chain([ProjectionsOpenApi::openapi()]),
    );
    // The live API checks its connections' tokens itself.
    let live = live_resources.into_iter().fold(
        cairn_live::Live::builder(platform::TokenAuth {
            verifier: identity.verifier(trusted.clone()),
            audit: Some(Arc::new(auth::StoreAudit(
                store.clone(),
                "crossread".into(),
            ))),
        })
        .publisher(live_changes.clone()),
        |live, (name, resources)| live.serve_shared(name, resources),
    );
    let ops = crate::ops::Ops::new(
        Some(projections.clone()),
        consumers,
        Some(
            cairn_messaging::DeadLetters::open(read_db.clone())
                .await
                .context("opening the dead letters")?,
        ),
        Some(store.clone()),
    );
    background.push(Box::new(ops.push(live_changes.clone())));
    let live = live.serve("ops", ops);
    let public = Router::new()
        .merge(health.router())
        .merge(openapi_router(doc))
        .merge(live.build().router())
        .merge(cairn_console::router())
        .merge(public);
    let metrics = metrics.with_collector("store-and-projections", {
        let (store, projections) = (store.clone(), projections.clone());
        move || {
            let head = *store.head().borrow();
            let projections = projections.clone();
            async move {
                metrics::gauge!(cairn_telemetry::names::STORE_HEAD_POSITION).set(head as f64);
                projections.record_metrics().await;
            }
        }
    });
    let options = HttpOptions {
        metrics: Some(metrics),
        auth: Some(platform::shareable(
            AuthOptions::new(
                identity.verifier(trusted),
                Some(Arc::new(auth::StoreAudit(
                    store.clone(),
                    "crossread".into(),
                ))),
            ),
            &services,
        )),
        cors: cors.clone(),
        ..HttpOptions::default()
    };
    let router = app(api, public, &options, Some(&idempotency));

    println!("cairn up: listening on http://{addr}");
    println!("  console:      http://{addr}/ (sign in with a password below)");
    println!("  event store:  {store_what}");
    println!("  read models:  {read_what}");
    let served: Vec<String> = services
        .iter()
        .flat_map(|s| {
            s.shares
                .first()
                .map(|(prefix, _)| format!("{} {prefix}", s.name))
        })
        .collect();
    println!("  services:     {}", served.join(", "));
    println!("  openapi:      http://{addr}/openapi.json");
    println!("  live:         ws://{addr}/ws (RES protocol)");
    println!("  health:       http://{addr}/health/ready");
    println!("  metrics:      http://{addr}/metrics");
    if let Some(line) = crate::cors::banner(&cors) {
        println!("{line}");
    }
    println!("  identity:     {public_url}/realms/<tenant> (master key: {master_what})");
    println!("  api:          needs Authorization: Bearer <token> from a realm's token endpoint");
    for user in &created.0 {
        println!(
            "  created tenant {}: user {} password: {} (shown once)",
            user.tenant, user.username, &*user.password
        );
    }
    if let Some(token) = &dev_token {
        println!("  token:        {token}");
        println!("                (demo's admin, valid 12 hours; --dev)");
    }
    println!("  stop:         Ctrl-C");
    Ok(Platform {
        name: "up".into(),
        listener,
        router,
        health,
        background,
        db: read_db,
        lock,
        serving: None,
        dev_token,
    })
}

/// The event store and the read-model database, with where each is (safe
/// to print: no password).
pub(crate) struct Stores {
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) events_at: String,
    pub(crate) read_db: ServiceDb,
    pub(crate) read_at: String,
}

async fn ephemeral_stores() -> anyhow::Result<Stores> {
    let db = ServiceDb::ephemeral()
        .await
        .context("opening the read models")?;
    Ok(Stores {
        events: Arc::new(MemoryStore::new()),
        events_at: "memory (ephemeral)".into(),
        read_db: db,
        read_at: "SQLite in memory (ephemeral)".into(),
    })
}

/// The file whose OS lock marks a data dir as in use by a `cairn up`.
pub(crate) const LOCK_FILE: &str = "cairn.lock";

/// Takes the exclusive lock on the embedded data one `cairn up` owns: the
/// data dir (`<data-dir>/cairn.lock`), or with `--store sqlite://PATH` that
/// store (`PATH.lock`). PostgreSQL needs none: it is shared by design. The
/// lock is the OS's (advisory, on an open file), so it goes with the
/// process however that ends, kill -9 included; the file stays behind,
/// harmless. A second `cairn up` on the same data fails here, before it
/// creates anything.
fn lock_data(store: Option<&str>, data_dir: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let (path, what) = match store.map(StoreUrl::parse).transpose()? {
        Some(StoreUrl::Postgres(_) | StoreUrl::Memory) => return Ok(None),
        Some(StoreUrl::Sqlite(path)) => (
            PathBuf::from(format!("{path}.lock")),
            format!("the store sqlite://{path}"),
        ),
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            (
                data_dir.join(LOCK_FILE),
                format!("the data dir {}", data_dir.display()),
            )
        }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{what} is in use by another `cairn up` (it holds {}); stop it, or pass another --data-dir",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
        }
    }
}

/// Opens the stores where `cairn up` keeps them: `store` when given
/// (PostgreSQL with the read models in schema `<schema>_read` of the same
/// database, or `sqlite://PATH` with them in `PATH.read`), else
/// `events.db` and `read-models.db` under `data_dir`. With
/// [`IfMissing::Fail`] both must exist; nothing is created.
pub(crate) async fn open_stores(
    store: Option<&str>,
    data_dir: &Path,
    if_missing: IfMissing,
) -> anyhow::Result<Stores> {
    let (events_url, read_url, read_at) = match store.map(StoreUrl::parse).transpose()? {
        Some(StoreUrl::Postgres(url)) => {
            let (base, schema) = split_schema(&url);
            let read_schema = format!("{}_read", schema.as_deref().unwrap_or("cairn"));
            let read_url = format!(
                "{base}{}schema={read_schema}",
                if base.contains('?') { "&" } else { "?" }
            );
            let what = StoreUrl::Postgres(url.clone()).redacted();
            (url, read_url, format!("{what} schema {read_schema}"))
        }
        Some(StoreUrl::Memory) => bail!("use --ephemeral for an in-memory store"),
        Some(StoreUrl::Sqlite(path)) => {
            let read_url = format!("sqlite://{path}.read");
            (format!("sqlite://{path}"), read_url.clone(), read_url)
        }
        None => {
            let read_url = format!("sqlite://{}", data_dir.join(READ_MODELS_DB).display());
            (
                format!("sqlite://{}", data_dir.join(EVENTS_DB).display()),
                read_url.clone(),
                read_url,
            )
        }
    };
    if if_missing == IfMissing::Fail {
        require_existing(&events_url, Expect::EventStore).await?;
        require_existing(&read_url, Expect::ServiceDb { tables: &[] }).await?;
    }
    let events = open_store(&events_url).await?;
    let read_db = ServiceDb::open(&read_url)
        .await
        .context("opening the read models")?;
    Ok(Stores {
        events,
        events_at: StoreUrl::parse(&events_url)?.redacted(),
        read_db,
        read_at,
    })
}
