//! What `cairn up` and `cairn run <service>` share: they loop over
//! [`ServiceDescriptor`]s, check them, build the buses with every message's
//! declared access, and serve until a signal, then stop every background
//! component in the one order of [`cairn_service::Stage`].

use std::{collections::BTreeSet, future::Future, net::SocketAddr};

use anyhow::{Context as _, bail};
use axum::Router;
use cairn_domain::{
    CommandBus, QueryBus,
    bus::{BusConfig, DeclaredAccess, MessageKind},
};
use cairn_http::{AuthOptions, Health, serve};
use cairn_messaging::PublicEvents;
use cairn_service::{Background, ServiceDescriptor, shutdown_all};
use cairn_service_db::ServiceDb;

/// The buses of a process: every message's declared access is checked
/// (deny by default); with `tokens` off, permissions are not (the caller
/// is trusted), but undeclared and internal messages stay closed.
pub(crate) fn buses(tokens: bool) -> (CommandBus, QueryBus) {
    let access = if tokens {
        DeclaredAccess::new()
    } else {
        DeclaredAccess::without_permissions()
    };
    (
        CommandBus::with_config(BusConfig::new().with_authorizer(access)),
        QueryBus::with_config(BusConfig::new().with_authorizer(access)),
    )
}

/// Refuses descriptors that declare a message without access, or two
/// services of one name.
pub(crate) fn check(services: &[ServiceDescriptor]) -> anyhow::Result<()> {
    let mut names = BTreeSet::new();
    for service in services {
        service.check().map_err(anyhow::Error::msg)?;
        if !names.insert(service.name) {
            bail!("two services are named {}", service.name);
        }
    }
    Ok(())
}

/// Checks, once the services have started, that the buses handle exactly
/// what the descriptors declare: every declared message has a handler,
/// and every handler is declared (or forwards an import).
pub(crate) fn check_handlers<'a>(
    services: impl IntoIterator<Item = &'a ServiceDescriptor> + Clone,
    forwarded: &[&'static str],
    commands: &CommandBus,
    queries: &QueryBus,
) -> anyhow::Result<()> {
    let declared: BTreeSet<(MessageKind, &str)> = services
        .clone()
        .into_iter()
        .flat_map(|s| s.messages.iter().map(|m| (m.kind, m.name)))
        .collect();
    let handled: BTreeSet<(MessageKind, &str)> = commands
        .names()
        .into_iter()
        .map(|n| (MessageKind::Command, n))
        .chain(queries.names().into_iter().map(|n| (MessageKind::Query, n)))
        .filter(|(_, n)| !forwarded.contains(n))
        .collect();
    for service in services {
        for m in &service.messages {
            if !handled.contains(&(m.kind, m.name)) {
                bail!(
                    "{} declares the {} {} but registers no handler for it",
                    service.name,
                    m.kind,
                    m.name
                );
            }
        }
    }
    if let Some((kind, name)) = handled.difference(&declared).next() {
        bail!("the {kind} {name} has a handler but no service declares it");
    }
    Ok(())
}

/// Every service's public events.
pub(crate) fn published(services: &[ServiceDescriptor]) -> Vec<PublicEvents> {
    services
        .iter()
        .filter_map(|s| s.public_events.clone())
        .collect()
}

/// What tenant groups may share: each service's declared read-model paths.
pub(crate) fn shareable(mut options: AuthOptions, services: &[ServiceDescriptor]) -> AuthOptions {
    for service in services {
        for (prefix, resource) in &service.shares {
            options = options.share(*prefix, *resource);
        }
    }
    options
}

/// A process ready to serve: its socket, its routes, and what it stops
/// when it is done.
pub struct Platform {
    /// `up`, `run flights`: how it names itself in what it prints.
    pub(crate) name: String,
    pub(crate) listener: tokio::net::TcpListener,
    pub(crate) router: Router,
    pub(crate) health: Health,
    pub(crate) background: Vec<Box<dyn Background>>,
    pub(crate) db: ServiceDb,
    /// The OS lock on the embedded data (`cairn up`), held until the end.
    pub(crate) lock: Option<std::fs::File>,
    /// Request/reply serving, until the end.
    pub(crate) serving: Option<cairn_messaging::Serving>,
    /// A ready token for the demo tenant's admin (`cairn up --dev`).
    pub dev_token: Option<String>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("name", &self.name)
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then finishes the requests in
    /// flight and stops every background component, in order.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let draining = self.health.clone();
        let name = self.name.clone();
        serve(self.listener, self.router, async move {
            shutdown.await;
            draining.set_draining();
            println!("cairn {name}: stopping; finishing in-flight requests");
        })
        .await
        .context("serving HTTP")?;
        shutdown_all(self.background).await;
        self.db.close().await;
        drop(self.serving);
        drop(self.lock);
        println!("cairn {}: stopped; checkpoints flushed", self.name);
        Ok(())
    }
}

/// Who a live connection is, from a bearer token: the same verifier and
/// context as [`cairn_http::bearer_auth`] gives a request, the token's
/// expiry and revocation checked again while the connection lives, and a
/// cross-tenant session recorded per read as `X-Cairn-Tenant` reads are.
#[derive(Clone)]
pub(crate) struct TokenAuth {
    pub(crate) verifier: cairn_auth::Verifier,
    /// Where cross-tenant reads are recorded; without it they are refused.
    pub(crate) audit: Option<std::sync::Arc<dyn cairn_http::CrossTenantAudit>>,
}

fn refusal(error: cairn_auth::AuthError) -> cairn_res::ResError {
    match error {
        cairn_auth::AuthError::Rejected(rejection) => {
            cairn_res::ResError::from_code(rejection.code(), rejection.to_string())
        }
        e => {
            tracing::warn!(error = %e, "cannot validate an access token");
            cairn_res::ResError::from_code(
                cairn_core::ErrorCode::Unavailable,
                "access tokens cannot be validated right now",
            )
        }
    }
}

#[async_trait::async_trait]
impl cairn_live::Authenticate for TokenAuth {
    async fn session(
        &self,
        token: &str,
        tenant: Option<&str>,
    ) -> Result<cairn_live::Session, cairn_res::ResError> {
        let principal = self.verifier.verify(token).await.map_err(refusal)?;
        let own = principal.tenant.clone();
        let tenant = match tenant {
            None => own.clone(),
            Some(tenant) => cairn_core::TenantId::new(tenant)
                .map_err(|_| cairn_res::ResError::invalid_params("tenant is not a tenant id"))?,
        };
        let cross_tenant = tenant != own;
        if cross_tenant
            && !principal
                .permissions
                .contains(cairn_auth::permissions::CROSS_TENANT_READ)
        {
            return Err(cairn_res::ResError::from_code(
                cairn_core::ErrorCode::Forbidden,
                "this token reads its own tenant only",
            ));
        }
        let mut ctx = cairn_core::RequestContext::new(tenant).with_actor(principal.subject.clone());
        ctx.permissions = principal.permissions.clone();
        Ok(cairn_live::Session {
            context: ctx,
            expires_at: u64::try_from(principal.expires_at)
                .ok()
                .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
            token_id: principal.token_id.clone().map(|jti| (own, jti)),
            cross_tenant,
            bearer: Some(cairn_live::Bearer(token.to_owned())),
        })
    }

    async fn still_valid(&self, session: &cairn_live::Session) -> Result<(), cairn_res::ResError> {
        let Some((tenant, jti)) = &session.token_id else {
            return Ok(());
        };
        match self.verifier.is_revoked(tenant, jti).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(refusal(cairn_auth::AuthError::Rejected(
                cairn_auth::Rejection::Revoked,
            ))),
            // Unknown for now: checked again at the next tick.
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a live session's token");
                Ok(())
            }
        }
    }

    async fn record_read(
        &self,
        session: &cairn_live::Session,
        rid: &cairn_res::Rid,
    ) -> Result<(), cairn_res::ResError> {
        let (Some(audit), Some((own, _))) = (&self.audit, &session.token_id) else {
            return Err(cairn_res::ResError::from_code(
                cairn_core::ErrorCode::Forbidden,
                "cross-tenant reads cannot be recorded here, so they are refused",
            ));
        };
        let ctx = &session.context;
        let read = cairn_http::CrossTenantRead {
            tenant: ctx.tenant.clone(),
            actor_tenant: own.clone(),
            actor: ctx.actor.clone().unwrap_or_default(),
            username: None,
            method: "RES subscribe".into(),
            target: rid.to_string(),
            correlation_id: ctx.correlation_id.clone(),
            shared: None,
        };
        audit.record(read).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot record a cross-tenant read; refusing it");
            cairn_res::ResError::from_code(
                cairn_core::ErrorCode::Unavailable,
                "the cross-tenant read cannot be recorded, so it is refused",
            )
        })
    }
}
