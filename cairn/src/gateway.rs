//! `cairn run gateway`: the gateway (`cairn-gateway`) as its own process,
//! one address in front of the services run apart. It keeps no store,
//! database or broker; its settings are its routes, its upstream timeout
//! and how it checks tokens at the edge, layered like every `cairn run`
//! (`--config` file, `CAIRN_*` variables, flags; see `crate::run`).
//!
//! Tokens are checked as the services check them (`--issuer` with realm
//! keys over HTTP, `--identity-url`, `--trust-issuer`), without the list of
//! revoked tokens, which the services keep; `--insecure-tenant-header`
//! turns the edge check off and leaves it to the services.

use anyhow::Context as _;
use cairn_gateway::{Gateway, GatewayOptions};
use cairn_http::{serve, shutdown_signal};
use cairn_telemetry::Metrics;

use crate::{
    auth,
    run::{Access, Settings, remote_verifier},
};

/// Runs the gateway until SIGINT or SIGTERM.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Metrics::install();
    let verifier = match &settings.access {
        Access::Header { .. } => None,
        Access::Tokens {
            issuer,
            identity_url,
            trust,
        } => Some(remote_verifier(
            issuer,
            identity_url,
            auth::trusted_issuers(trust)?,
            None,
        )),
    };
    let mut options = GatewayOptions::new(settings.routes.clone());
    options.upstream_timeout = settings.upstream_timeout;
    options.verifier = verifier;
    options.metrics = Some(metrics);
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

    let draining = gateway.health().clone();
    serve(listener, gateway.router(), async move {
        shutdown_signal().await;
        draining.set_draining();
    })
    .await
    .context("serving HTTP")?;
    println!("cairn run gateway: stopped");
    Ok(())
}
