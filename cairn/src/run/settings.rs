//! The settings of `cairn run`: its flags ([`RunArgs`]) and its `--config`
//! file, layered (the file, then `CAIRN_*` environment variables, then
//! flags: a flag or variable overrides the file) into one [`Settings`] for a
//! service or the gateway. A combination that cannot work is refused here,
//! with its reason, before anything starts.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use cairn_core::TenantId;
use cairn_gateway::{DEFAULT_UPSTREAM_TIMEOUT, Route, Url};
use cairn_service::ServiceDescriptor;
use cairn_service_db::split_schema;
use serde::{Deserialize, Serialize};

use crate::{
    auth::{self, IdentityArgs},
    store_url::StoreUrl,
};

/// The name `cairn run` gives the gateway (every other name is a
/// service's, from its descriptor).
pub(crate) const GATEWAY: &str = "gateway";

/// Options of `cairn run`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// The service to run (flights, passengers, audit, identity), or
    /// `gateway`.
    service: String,
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
    /// The service's name, or [`GATEWAY`].
    pub(crate) service: String,
    /// Absent for Audit, which keeps no events of its own, and the gateway.
    pub(super) store: Option<String>,
    /// Absent for the gateway unless it keeps the revoked tokens.
    pub(crate) db: Option<String>,
    /// Absent for the gateway unless it keeps the revoked tokens.
    pub(crate) broker: Option<String>,
    pub(crate) listen: String,
    pub(crate) prefix: String,
    pub(crate) access: Access,
    pub(crate) request_timeout: Duration,
    /// The identity service's public URL (default: its listen address).
    pub(super) public_url: Option<String>,
    /// The identity service's master key file (else `CAIRN_MASTER_KEY`).
    pub(super) master_key_file: Option<PathBuf>,
    /// The gateway's routes (empty for the services).
    pub(crate) routes: Vec<Route>,
    /// How long the gateway waits for an upstream's response head.
    pub(crate) upstream_timeout: Duration,
    /// Which browser origins may call (none by default).
    pub(crate) cors: cairn_http::CorsOptions,
    /// The projections' options (their poison-event policies).
    pub(super) projection_options: cairn_projection::ProjectionOptions,
}

impl RunArgs {
    /// The layered settings of a run of one of `services` (or the gateway).
    pub(crate) fn settings(self, services: &[ServiceDescriptor]) -> anyhow::Result<Settings> {
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
        let gateway = service == GATEWAY;
        let descriptor = services.iter().find(|s| s.name == service);
        if descriptor.is_none() && !gateway {
            let mut names: Vec<&str> = services.iter().map(|s| s.name).collect();
            names.push(GATEWAY);
            return Err(anyhow::Error::new(crate::Usage(format!(
                "no service is named {service:?}: the services are {}",
                names.join(", ")
            ))));
        }
        let keeps_events = descriptor.is_some_and(|d| d.keeps_events);
        let issues_tokens = descriptor.is_some_and(|d| d.issues_tokens);
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
            if store.is_none() && keeps_events {
                bail!("no event store: pass --store or set `store` in --config");
            }
            let broker = self
                .broker
                .or(file.broker)
                .context("no broker: pass --broker nats://… or amqp://…, or set `broker`")?;
            let db = match (self.db.or(file.db), &store) {
                (Some(db), _) => db,
                (None, Some(store)) => default_db(store, &service)?,
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
            if issues_tokens {
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
            if issuer.is_none() && trust.is_empty() && !issues_tokens {
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
        Cli::try_parse_from(argv)?
            .run
            .settings(&crate::services::all())
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
