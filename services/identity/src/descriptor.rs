//! Identity as the runtime sees it: its [`descriptor()`].

use anyhow::Context as _;
use cairn_auth::MasterKey;
use cairn_service::{Env, ServiceDescriptor, Started};
use utoipa::OpenApi as _;

use crate::{BootstrapUser, Identity, IdentityOptions, PLATFORM_TENANT, revocations};

/// The tenant made on first start besides the platform tenant, for trying
/// things out.
pub const DEMO_TENANT: &str = "demo";

/// The users the first start created, with their one-time passwords, as
/// the identity service provides them to the runtime (to print once).
#[derive(Debug, Clone, Default)]
pub struct Created(pub Vec<BootstrapUser>);

/// Everything the runtime needs to run Identity. It needs the master key
/// in the [`Env`]'s extensions (a [`MasterKey`]), and provides the running
/// [`Identity`] (whose verifier checks the process's tokens) and the
/// [`Created`] users in [`Started::provides`].
pub fn descriptor() -> ServiceDescriptor {
    ServiceDescriptor::new(revocations::SERVICE, "Cairn identity", start)
        .issues_tokens()
        .openapi(crate::IdentityOpenApi::openapi)
        .publishes(revocations::public_events().expect("identity's public events are valid"))
}

async fn start(env: Env) -> anyhow::Result<Started> {
    let store = env.store(revocations::SERVICE)?;
    let master = env.extensions.get::<MasterKey>().cloned().context(
        "no master key: pass --master-key-file (or set CAIRN_MASTER_KEY); \
         every instance of the identity service needs the same one",
    )?;
    let identity = Identity::open(
        store,
        env.db.clone(),
        master,
        IdentityOptions::new(&env.public_url),
    )
    .await
    .context("opening the identity service")?;
    let created = identity
        .bootstrap(&[PLATFORM_TENANT, DEMO_TENANT])
        .await
        .context("creating the first tenants")?;
    let mut provides = axum::http::Extensions::new();
    provides.insert(identity.clone());
    provides.insert(Created(created));
    Ok(Started {
        api: crate::http::admin_router(identity.clone()),
        public: Some(crate::http::realm_router(identity)),
        provides,
        ..Started::default()
    })
}
