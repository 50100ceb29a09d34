//! `cairn run <service>`: one service as its own process, on its own event
//! store, database and HTTP address, talking to the others through a
//! broker (NATS JetStream or RabbitMQ); or the gateway in front of them
//! (`cairn run gateway`, wired in `crate::gateway`), which needs no store,
//! database or broker.
//!
//! What runs comes from the service's descriptor
//! ([`cairn_service::ServiceDescriptor`]), the same one `cairn up` reads:
//! - its handlers on local buses, with what it asks of other services
//!   ([`Import`](cairn_service::Import)s) forwarded over request/reply;
//! - request/reply serving for what it answers
//!   ([`Export`](cairn_service::Export)s);
//! - its projections over its own log;
//! - the relay publishing its public events (the log is the outbox), after
//!   declaring every consumer group of the deployment that reads them;
//! - its consumers of the other services' events (inbox, order, dead
//!   letters);
//! - its HTTP routes with health, OpenAPI, metrics and status.
//!
//! Settings come from `--config FILE` (TOML), then `CAIRN_*` environment
//! variables, then flags: a flag or variable overrides the file
//! ([`settings`]). The broker connection and the relay's start are in
//! [`link`], the token checks of a service or the gateway on its own in
//! [`tokens`]. This module wires a service from them and hands
//! `cairn run gateway` to `crate::gateway`, which uses those three but
//! nothing of this module, so no dependency runs both ways.

pub(crate) mod link;
pub(crate) mod settings;
pub(crate) mod tokens;

use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::{Router, http::Extensions};
use cairn_http::{
    AuthOptions, CrossTenantAudit, Health, HttpOptions, IdempotencyOptions, IdempotencyStore,
    ProjectionsOpenApi, TenantHeaderOptions, app, openapi_document, openapi_router,
    projections_router, shutdown_signal,
};
use cairn_identity::{Identity, descriptor::Created};
use cairn_messaging::{
    PublicEvents,
    rpc::{Remote, RpcServer},
};
use cairn_projection::Projections;
use cairn_service::{Background, CrossReads, Env, Layout, ServiceDescriptor, Topology};
use cairn_service_db::ServiceDb;
use cairn_telemetry::Metrics;
use utoipa::OpenApi;

pub(crate) use self::settings::RunArgs;
use self::{
    link::{connect, start_relay},
    settings::{Access, Settings},
    tokens::{hear_revocations, remote_verifier},
};
use crate::{
    auth,
    platform::{self, Platform},
    store_url::{StoreUrl, open_store},
};

/// Where a service on its own records cross-tenant reads: in its store,
/// in a category its relay publishes (so the audit service hears them).
fn store_cross_reads(
    service: &str,
    store: &Arc<dyn cairn_store::EventStore>,
    public: &mut PublicEvents,
) -> Arc<dyn CrossTenantAudit> {
    let category = format!("crossread_{service}");
    public.categories.push(category.clone());
    public.types.push(cairn_http::CROSS_TENANT_READ.to_owned());
    Arc::new(auth::StoreAudit(store.clone(), category))
}

/// Runs one service until SIGINT or SIGTERM.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let services = crate::services::all();
    let settings = args.settings(&services)?;
    if settings.service == settings::GATEWAY {
        return crate::gateway::run(settings).await;
    }
    start(settings, services)
        .await?
        .serve(shutdown_signal())
        .await
}

/// Starts `cairn run` as the command line after `run` says (`argv`), with
/// `services` as the deployment's services, ready to serve. Not the
/// gateway: that is `cairn run gateway` itself.
pub async fn start_from(
    argv: &[&str],
    services: Vec<ServiceDescriptor>,
) -> anyhow::Result<Platform> {
    use clap::Parser as _;
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }
    let cli = Cli::try_parse_from(std::iter::once("cairn run").chain(argv.iter().copied()))?;
    let settings = cli.run.settings(&services)?;
    if settings.service == settings::GATEWAY {
        bail!("start_from runs services; the gateway is `cairn run gateway`");
    }
    start(settings, services).await
}

/// Starts the service `settings` names, one of `services` (the others are
/// the rest of the deployment: whose events it may hear, who reads its
/// own), ready to serve.
pub(crate) async fn start(
    settings: Settings,
    services: Vec<ServiceDescriptor>,
) -> anyhow::Result<Platform> {
    platform::check(&services)?;
    let service = services
        .iter()
        .find(|s| s.name == settings.service)
        .with_context(|| format!("no service is named {}", settings.service))?;
    let name = service.name;
    // Before anything starts, so nothing it counts is lost.
    let metrics = Metrics::install();
    let store = match &settings.store {
        Some(url) => Some(open_store(url).await?),
        None if service.keeps_events => bail!("{name} keeps events: it needs an event store"),
        None => None,
    };
    let db_url = settings.db.as_deref().context("no database")?;
    let db = ServiceDb::open(db_url)
        .await
        .context("opening the service database")?;
    let link = connect(&settings).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let tokens = matches!(settings.access, Access::Tokens { .. });
    let (commands, queries) = platform::buses(tokens);
    let mut forwarded = Vec::new();
    for import in &service.imports {
        let remote =
            Remote::new(link.transport.clone(), import.from).with_timeout(settings.request_timeout);
        import
            .forward(&commands, &queries, remote)
            .with_context(|| format!("forwarding {} to {}", import.message.name, import.from))?;
        forwarded.push(import.message.name);
    }
    let published = platform::published(&services);
    let layout = Layout {
        topology: Topology::Own,
        published: &published,
    };
    let own_projections = service.projections_in(layout);
    let projections = match &store {
        Some(store) if !own_projections.is_empty() => Some(
            Projections::start(
                db.clone(),
                store.clone(),
                own_projections,
                settings.projection_options.clone(),
            )
            .await
            .context("starting the projections")?,
        ),
        _ => None,
    };
    let mut extensions = Extensions::new();
    if settings.master_key_file.is_some() || std::env::var_os("CAIRN_MASTER_KEY").is_some() {
        let args = auth::IdentityArgs {
            master_key_file: settings.master_key_file.clone(),
            ..auth::IdentityArgs::default()
        };
        extensions.insert(auth::master_key(&args, None)?.0);
    }
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let env = Env {
        topology: Topology::Own,
        store: store.clone(),
        db: db.clone(),
        commands: commands.clone(),
        queries: queries.clone(),
        projections: projections.clone(),
        broker: link.broker.clone(),
        published: published.clone(),
        public_url,
        extensions: Arc::new(extensions),
        // Its live resources are served over NATS (RES-Service), for a
        // gateway's live API.
        live: link
            .nats
            .as_ref()
            .map(|_| cairn_live::Publisher::new(cairn_live::LiveOptions::default().change_buffer)),
    };
    let mut background: Vec<Box<dyn Background>> = Vec::new();
    if let Some(projections) = &projections {
        background.push(Box::new(projections.clone()));
    }
    let started = service
        .start(env.clone())
        .await
        .with_context(|| format!("starting {name}"))?;
    background.extend(started.background);
    platform::check_handlers([service], &forwarded, &commands, &queries)?;
    let serving = if service.exports.is_empty() {
        None
    } else {
        let mut server = RpcServer::new();
        for export in &service.exports {
            server = export
                .serve(server, &commands, &queries)
                .with_context(|| format!("answering {}", export.message.name))?;
        }
        Some(
            server
                .serve(link.transport.as_ref(), name)
                .await
                .context("serving requests")?,
        )
    };
    let mut consumers = Vec::new();
    for consumer in service.consumers_in(&env)? {
        let running = consumer.start().await.context("consuming events")?;
        consumers.push(running.watch());
        background.push(Box::new(running));
    }
    let cross_reads = match (&service.cross_reads, &store) {
        (CrossReads::Custom(make), _) => Some(make(&env)),
        (CrossReads::Store, Some(store)) => {
            let mut public = service
                .public_events
                .clone()
                .unwrap_or_else(|| PublicEvents {
                    service: name.to_owned(),
                    categories: Vec::new(),
                    types: Vec::new(),
                    redacted: Vec::new(),
                });
            let cross_reads = store_cross_reads(name, store, &mut public);
            let readers = link::readers_of(name, &services, layout);
            background.push(Box::new(
                start_relay(public, store.clone(), &db, &link, &readers).await?,
            ));
            Some(cross_reads)
        }
        (CrossReads::Store, None) => None,
    };
    let identity = started.provides.get::<Identity>().cloned();
    let mut live_auth = None;
    let auth = match &settings.access {
        Access::Header { .. } => None,
        Access::Tokens {
            issuer,
            identity_url,
            trust,
        } => {
            let trusted = auth::trusted_issuers(trust)?;
            let verifier = match &identity {
                Some(identity) => identity.verifier(trusted),
                None => {
                    let (revoked, components) = hear_revocations(name, &db, &link).await?;
                    background.extend(components);
                    remote_verifier(issuer, identity_url, trusted, Some(Arc::new(revoked)))
                }
            };
            live_auth = Some(platform::TokenAuth {
                verifier: verifier.clone(),
                audit: cross_reads.clone(),
            });
            Some(platform::shareable(
                AuthOptions::new(verifier, cross_reads.clone()),
                &services,
            ))
        }
    };
    let mut live_line = None;
    if let (Some(nats), Some(auth)) = (&link.nats, &live_auth) {
        // Its part of the operations resources (`ops.…`), which the
        // gateway asks of every service and puts together.
        let dead_letters = if consumers.is_empty() {
            None
        } else {
            Some(
                cairn_messaging::DeadLetters::open(db.clone())
                    .await
                    .context("opening the dead letters")?,
            )
        };
        let mut ops =
            crate::ops::Ops::new(projections.clone(), consumers, dead_letters, store.clone());
        if let Some(address) = &settings.store {
            ops = ops.with_store_address(&redact(address));
        }
        // Its own publisher: the resets of the operations are the
        // gateway's to make (once a second), not published here.
        let ticks = cairn_live::Publisher::new(16);
        background.push(Box::new(ops.push(ticks.clone())));
        let side = cairn_live::nats::ServiceSide {
            prefix: settings.prefix.clone(),
            service: "ops".to_owned(),
            group: name.to_owned(),
            resources: Arc::new(ops),
            auth: Arc::new(auth.clone()),
            reader: [cairn_auth::permissions::PROJECTIONS_READ.to_owned()].into(),
        };
        background.push(Box::new(
            cairn_live::nats::serve(nats.clone(), side, &ticks)
                .await
                .map_err(|e| anyhow::anyhow!("serving the operations over NATS: {e}"))?,
        ));
    }
    match (&started.live, &link.nats, &env.live, live_auth) {
        (Some(resources), Some(nats), Some(changes), Some(auth)) => {
            let side = cairn_live::nats::ServiceSide {
                prefix: settings.prefix.clone(),
                service: name.to_owned(),
                group: name.to_owned(),
                resources: resources.clone(),
                auth: Arc::new(auth),
                reader: reader_permissions(service)
                    .into_iter()
                    .chain(resources.read_permissions())
                    .collect(),
            };
            background.push(Box::new(
                cairn_live::nats::serve(nats.clone(), side, changes)
                    .await
                    .map_err(|e| anyhow::anyhow!("serving live resources over NATS: {e}"))?,
            ));
            live_line = Some(format!(
                "  live:         {name}.* over NATS (RES-Service, subjects {}.get.{name}.…), for the gateway's /ws",
                settings.prefix
            ));
        }
        (Some(_), None, _, _) => {
            live_line =
                Some("  live:         not served (the live API's requests travel on NATS)".into());
        }
        (Some(_), _, _, None) => {
            live_line = Some(
                "  live:         not served (it checks tokens; --insecure-tenant-header has none)"
                    .into(),
            );
        }
        _ => {}
    }

    let idempotency = IdempotencyStore::open(db.pool().clone(), IdempotencyOptions::default())
        .await
        .context("opening the idempotency-key store")?;
    let mut health = Health::new().with_sql_check("database", db.pool().clone());
    let mut api = started.api;
    let mut doc = openapi_document(
        service.title,
        env!("CARGO_PKG_VERSION"),
        [service.openapi_document()],
    );
    if let Some(projections) = &projections {
        health = health.with_projections(projections);
        api = api.merge(projections_router(projections.clone()));
        doc.merge(ProjectionsOpenApi::openapi());
    }
    let mut public = Router::new()
        .merge(health.router())
        .merge(openapi_router(doc));
    if let Some(extra) = started.public {
        public = public.merge(extra);
    }
    let metrics = metrics.with_collector("store-and-projections", {
        let (store, projections) = (store.clone(), projections.clone());
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
    let router = app(api, public, &options, Some(&idempotency));
    println!("cairn run {name}: listening on http://{addr}");
    if let Some(store) = &settings.store {
        println!("  event store:  {}", StoreUrl::parse(store)?.redacted());
    }
    println!("  database:     {}", redact(db_url));
    println!("  broker:       {}", link.what);
    if let Some(line) = live_line {
        println!("{line}");
    }
    if let Some(line) = crate::cors::banner(&settings.cors) {
        println!("{line}");
    }
    match &settings.access {
        Access::Header { default_tenant } => {
            println!("  tenant:       X-Cairn-Tenant, unauthenticated (default {default_tenant})");
        }
        Access::Tokens { issuer, trust, .. } => {
            if let Some(identity) = &identity {
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
    if let Some(created) = started.provides.get::<Created>() {
        for user in &created.0 {
            println!(
                "  created tenant {}: user {} password: {} (shown once)",
                user.tenant, user.username, &*user.password
            );
        }
    }
    Ok(Platform {
        name: format!("run {name}"),
        listener,
        router,
        health,
        background,
        db,
        lock: None,
        serving,
        dev_token: None,
    })
}

/// What a live `get` reads with (it carries no token: who may read was
/// answered by `access`): the permissions `service`'s queries declare.
fn reader_permissions(service: &ServiceDescriptor) -> std::collections::BTreeSet<String> {
    service
        .messages
        .iter()
        .filter(|m| m.kind == cairn_domain::bus::MessageKind::Query)
        .filter_map(|m| match m.access {
            cairn_domain::bus::Access::Permission(p) => Some(p.to_owned()),
            _ => None,
        })
        .collect()
}

fn redact(url: &str) -> String {
    StoreUrl::parse(url).map_or_else(|_| url.to_owned(), |u| u.redacted())
}
