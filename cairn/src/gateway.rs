//! `cairn run gateway`: the gateway (`cairn-gateway`) as its own process,
//! one address in front of the services run apart. It keeps no store (and
//! a database and broker only for revocations, below); its settings are
//! its routes, its upstream timeout and how it checks tokens at the edge,
//! layered like every `cairn run`
//! (`--config` file, `CAIRN_*` variables, flags; see `crate::run::settings`).
//!
//! Tokens are checked as the services check them (`--issuer` with realm
//! keys over HTTP, `--identity-url`, `--trust-issuer`). Given `--db` and
//! `--broker` as well, the gateway also keeps the list of revoked tokens
//! (its own consumer group, `gateway-revocations`, into that database) and
//! refuses them at the edge; without them the services alone do.
//! `--insecure-tenant-header` turns the edge check off and leaves it to
//! the services.
//!
//! The gateway is also the live endpoint (`/ws`, the RES protocol) and
//! serves the console (`/`), when it checks tokens and its `--broker` is
//! NATS: it asks the services for their resources and hears their changes
//! over NATS with the RES-Service protocol (`cairn_live::nats`), with no
//! code per service. A connection's token is checked here, as at `cairn
//! up`, and again by the service for each resource it reads. The
//! operations resources (`ops.…`) are every service's: asked of all of
//! them at once and put together (`cairn_live::nats::Gathered`).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use cairn_auth::Revocations;
use cairn_gateway::{Gateway, GatewayOptions};
use cairn_http::{serve, shutdown_signal};
use cairn_service::shutdown_all;
use cairn_service_db::ServiceDb;
use cairn_telemetry::Metrics;

use crate::{
    auth, platform,
    run::{
        link::connect,
        settings::{Access, Settings},
        tokens::{hear_revocations, remote_verifier},
    },
};

/// The longest the operations resources wait for the services' answers.
const OPS_WINDOW: Duration = Duration::from_secs(1);
/// How often a connection holding an operations resource reads it again.
const OPS_TICK: Duration = Duration::from_secs(1);

/// Runs the gateway until SIGINT or SIGTERM.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Metrics::install();
    let mut revocations = None;
    let verifier = match &settings.access {
        Access::Header { .. } => None,
        Access::Tokens {
            issuer,
            identity_url,
            trust,
        } => {
            let revoked = match &settings.db {
                Some(db) if settings.broker.is_some() => {
                    let db = ServiceDb::open(db)
                        .await
                        .context("opening the gateway's database")?;
                    let link = connect(&settings).await?;
                    let (revoked, background) = hear_revocations("gateway", &db, &link).await?;
                    revocations = Some((background, db, link.what.clone()));
                    Some(Arc::new(revoked) as Arc<dyn Revocations>)
                }
                _ => None,
            };
            Some(remote_verifier(
                issuer,
                identity_url,
                auth::trusted_issuers(trust)?,
                revoked,
            ))
        }
    };
    let mut live_parts = None;
    if let (Some(verifier), Some(url)) = (&verifier, settings.broker.as_deref())
        && url.starts_with("nats://")
    {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("cannot connect to NATS at {url} for the live API"))?;
        let changes = cairn_live::Publisher::new(cairn_live::LiveOptions::default().change_buffer);
        let heard = cairn_live::nats::hear(client.clone(), &settings.prefix, changes.clone())
            .await
            .map_err(|e| anyhow::anyhow!("hearing live changes on NATS: {e}"))?;
        let remote = cairn_live::nats::Remote::new(
            client.clone(),
            settings.prefix.clone(),
            settings.request_timeout,
        );
        // The operations resources, asked of every service at once.
        let ops = Arc::new(cairn_live::nats::Gathered::new(
            client,
            settings.prefix.clone(),
            settings.request_timeout.min(OPS_WINDOW),
        ));
        let ticks = ops.tick(changes.clone(), OPS_TICK);
        let live = cairn_live::Live::builder(EdgeAuth(platform::TokenAuth {
            verifier: verifier.clone(),
            audit: None,
        }))
        .fallback(Arc::new(remote))
        .serve_shared("ops", ops)
        .publisher(changes)
        .build();
        live_parts = Some((live, heard, ticks));
    }
    let mut options = GatewayOptions::new(settings.routes.clone());
    if let Some((live, _, _)) = &live_parts {
        options.own_routes = Some(live.router().merge(cairn_console::router()));
    }
    options.upstream_timeout = settings.upstream_timeout;
    options.verifier = verifier;
    options.metrics = Some(metrics);
    options.cors = settings.cors.clone();
    let gateway = Gateway::new(options).context("the gateway's routes")?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;

    println!("cairn run gateway: listening on http://{addr}");
    for route in gateway.routes() {
        let upstreams: Vec<String> = route
            .upstreams
            .iter()
            .map(|u| u.origin().ascii_serialization())
            .collect();
        println!(
            "  route:        {} -> {}",
            route.prefix,
            upstreams.join(", ")
        );
    }
    match &settings.access {
        Access::Header { .. } => {
            println!("  tokens:       not checked at the edge (--insecure-tenant-header)");
        }
        Access::Tokens { issuer, trust, .. } => {
            if let Some(issuer) = issuer {
                println!("  tokens:       issued by {issuer}/realms/<tenant>, checked at the edge");
            }
            for spec in trust {
                println!("  tokens:       trusted {spec}");
            }
        }
    }
    println!(
        "  upstreams:    {} ms to answer",
        settings.upstream_timeout.as_millis()
    );
    if let Some(line) = crate::cors::banner(&settings.cors) {
        println!("{line}");
    }
    match &live_parts {
        Some(_) => {
            println!("  live:         ws://{addr}/ws (RES protocol; services asked over NATS)");
            println!("  console:      http://{addr}/");
        }
        None => println!("  live:         off (needs token checks and a nats:// --broker)"),
    }
    match &revocations {
        Some((_, _, broker)) => println!("  revocations:  heard on {broker}, refused at the edge"),
        None if matches!(settings.access, Access::Tokens { .. }) => {
            println!("  revocations:  left to the services (no --db and --broker)");
        }
        None => {}
    }

    let draining = gateway.health().clone();
    serve(listener, gateway.router(), async move {
        shutdown_signal().await;
        draining.set_draining();
    })
    .await
    .context("serving HTTP")?;
    if let Some((_, heard, ticks)) = live_parts {
        shutdown_all(vec![Box::new(heard), Box::new(ticks)]).await;
    }
    if let Some((background, db, _)) = revocations {
        shutdown_all(background).await;
        db.close().await;
    }
    println!("cairn run gateway: stopped");
    Ok(())
}

/// A connection's token checked at the edge; a super-admin's read of
/// another tenant is recorded by the service that holds the data, when it
/// answers the `access` request (no record, no read, there as at `cairn
/// up`), so the gateway records nothing itself.
struct EdgeAuth(platform::TokenAuth);

#[async_trait::async_trait]
impl cairn_live::Authenticate for EdgeAuth {
    async fn session(
        &self,
        token: &str,
        tenant: Option<&str>,
    ) -> Result<cairn_live::Session, cairn_res::ResError> {
        self.0.session(token, tenant).await
    }

    async fn still_valid(&self, session: &cairn_live::Session) -> Result<(), cairn_res::ResError> {
        self.0.still_valid(session).await
    }

    async fn record_read(
        &self,
        _session: &cairn_live::Session,
        _rid: &cairn_res::Rid,
    ) -> Result<(), cairn_res::ResError> {
        Ok(())
    }
}
