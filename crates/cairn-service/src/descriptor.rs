//! [`ServiceDescriptor`]: everything the runtime needs to know of a
//! service, in one value.

use std::{fmt, sync::Arc};

use axum::{Router, http::Extensions};
use cairn_domain::{
    Command, CommandBus, Query, QueryBus,
    bus::{Access, DuplicateHandler, MessageKind},
};
use cairn_http::CrossTenantAudit;
use cairn_messaging::{
    Broker, Consumer, PublicEvents,
    rpc::{Remote, RpcServer, forward_command, forward_query},
};
use cairn_projection::{Projection, Projections};
use cairn_service_db::ServiceDb;
use cairn_store::EventStore;
use futures_util::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};

use crate::Background;

/// How the services of a deployment are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every service in one process on one event store: the log is the
    /// broker, and a service's projections may read the others' events
    /// (`cairn up`).
    Shared,
    /// This service alone, on its own store and database, hearing the
    /// others through a broker and asking them over request/reply
    /// (`cairn run <service>`).
    Own,
}

/// A command or query as the runtime sees it: its kind, name and access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageDecl {
    pub kind: MessageKind,
    pub name: &'static str,
    pub access: Access,
}

impl MessageDecl {
    /// The declaration of command `C`.
    pub fn command<C: Command>() -> Self {
        Self {
            kind: MessageKind::Command,
            name: C::NAME,
            access: C::ACCESS,
        }
    }

    /// The declaration of query `Q`.
    pub fn query<Q: Query>() -> Self {
        Self {
            kind: MessageKind::Query,
            name: Q::NAME,
            access: Q::ACCESS,
        }
    }
}

type Forward =
    Arc<dyn Fn(&CommandBus, &QueryBus, Remote) -> Result<(), DuplicateHandler> + Send + Sync>;
type Serve = Arc<
    dyn Fn(RpcServer, &CommandBus, &QueryBus) -> Result<RpcServer, DuplicateHandler> + Send + Sync,
>;

/// A message this service sends that another service handles. On its own
/// it is forwarded over request/reply; in one process the other's handler
/// answers it on the shared bus.
#[derive(Clone)]
pub struct Import {
    /// The service that handles it.
    pub from: &'static str,
    pub message: MessageDecl,
    forward: Forward,
}

impl Import {
    /// Registers on the buses a handler that forwards the message to
    /// `remote`.
    pub fn forward(
        &self,
        commands: &CommandBus,
        queries: &QueryBus,
        remote: Remote,
    ) -> Result<(), DuplicateHandler> {
        (self.forward)(commands, queries, remote)
    }
}

impl fmt::Debug for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Import")
            .field("from", &self.from)
            .field("message", &self.message)
            .finish()
    }
}

/// A message this service handles and answers over request/reply.
#[derive(Clone)]
pub struct Export {
    pub message: MessageDecl,
    serve: Serve,
}

impl Export {
    /// Adds the message to `server`, dispatched to the buses.
    pub fn serve(
        &self,
        server: RpcServer,
        commands: &CommandBus,
        queries: &QueryBus,
    ) -> Result<RpcServer, DuplicateHandler> {
        (self.serve)(server, commands, queries)
    }
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Export")
            .field("message", &self.message)
            .finish()
    }
}

/// The shape of a deployment, known before anything starts: what a
/// service's projections and consumer groups are chosen from.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    pub topology: Topology,
    /// Every service's public events in this deployment.
    pub published: &'a [PublicEvents],
}

/// A consumer group a service reads another service's events with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroup {
    /// The group's durable name (`passengers-flight-events`).
    pub group: String,
    /// The service whose events it reads.
    pub source: String,
    /// The event types it takes (empty: every public event of `source`).
    pub types: Vec<String>,
}

impl ConsumerGroup {
    /// Group `group` reading `source`'s events of `types` (none: all).
    pub fn new<T: Into<String>>(
        group: impl Into<String>,
        source: impl Into<String>,
        types: impl IntoIterator<Item = T>,
    ) -> Self {
        let mut types: Vec<String> = types.into_iter().map(Into::into).collect();
        types.sort();
        Self {
            group: group.into(),
            source: source.into(),
            types,
        }
    }

    /// What `consumer` is, to compare with its declaration.
    pub fn of(consumer: &Consumer) -> Self {
        Self::new(consumer.group(), consumer.source(), consumer.types())
    }
}

/// What a service is given when it starts.
#[derive(Clone)]
pub struct Env {
    pub topology: Topology,
    /// Its event store (`None` for a service that keeps no events, run on
    /// its own).
    pub store: Option<Arc<dyn EventStore>>,
    /// Its database: read models, inbox, dead letters, checkpoints.
    pub db: ServiceDb,
    /// The buses its handlers register on, and it sends on.
    pub commands: CommandBus,
    pub queries: QueryBus,
    /// Its running projections (read-your-writes waits); `None` when it
    /// has none, on its own.
    pub projections: Option<Projections>,
    /// Where its consumers read other services' events: the log itself in
    /// one process, the broker on its own.
    pub broker: Arc<dyn Broker>,
    /// Every service's public events in this deployment.
    pub published: Vec<PublicEvents>,
    /// The URL clients reach this process at.
    pub public_url: String,
    /// What the runtime hands to particular services (a master key).
    pub extensions: Arc<Extensions>,
    /// Where its live resources' changes go, when the runtime serves the
    /// live API.
    pub live: Option<cairn_live::Publisher>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("topology", &self.topology)
            .field("has_store", &self.store.is_some())
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// Starts publishing the resets of `feed`'s resources, when the runtime
    /// serves the live API and the service reads its own store and
    /// projections here; `None` otherwise.
    pub fn push_live(&self, feed: crate::live::LiveFeed) -> Option<Box<dyn Background>> {
        let (Some(publisher), Some(store), Some(projections)) =
            (&self.live, &self.store, &self.projections)
        else {
            return None;
        };
        Some(Box::new(crate::live::push_resets(
            store.clone(),
            projections.clone(),
            feed,
            publisher.clone(),
        )))
    }

    /// The running projections, or an error naming the service that needs
    /// them.
    pub fn projections(&self, service: &str) -> anyhow::Result<&Projections> {
        self.projections
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{service} needs its projections"))
    }

    /// The event store, or an error naming the service that needs one.
    pub fn store(&self, service: &str) -> anyhow::Result<Arc<dyn EventStore>> {
        self.store
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{service} needs an event store"))
    }
}

/// What a started service hands back to the runtime.
#[derive(Default)]
pub struct Started {
    /// Routes behind authentication.
    pub api: Router,
    /// Routes served without a token.
    pub public: Option<Router>,
    /// Background work it started (sagas), stopped by the runtime.
    pub background: Vec<Box<dyn Background>>,
    /// What it provides to the runtime (the identity service provides the
    /// token verifier's source).
    pub provides: Extensions,
    /// Its live resources (ids starting with the service's name), served
    /// over the RES protocol at `/ws`.
    pub live: Option<Arc<dyn cairn_live::Resources>>,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("background", &self.background.len())
            .field("live", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

/// Makes a service's own record of cross-tenant reads.
pub type MakeAudit = Arc<dyn Fn(&Env) -> Arc<dyn CrossTenantAudit> + Send + Sync>;

/// Where a service records another tenant's reads of its data.
#[derive(Clone, Default)]
pub enum CrossReads {
    /// As events in its own store, in a category its relay publishes (on
    /// its own), or in the shared store (in one process).
    #[default]
    Store,
    /// Somewhere of the service's choosing (a service with no store).
    Custom(MakeAudit),
}

impl fmt::Debug for CrossReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrossReads::Store => "CrossReads::Store",
            CrossReads::Custom(_) => "CrossReads::Custom",
        })
    }
}

type ProjectionsFn = Arc<dyn Fn(Layout<'_>) -> Vec<Arc<dyn Projection>> + Send + Sync>;
type ConsumersFn = Arc<dyn Fn(&Env) -> Vec<Consumer> + Send + Sync>;
type GroupsFn = Arc<dyn Fn(Layout<'_>) -> Vec<ConsumerGroup> + Send + Sync>;
type StartFn = Arc<dyn Fn(Env) -> BoxFuture<'static, anyhow::Result<Started>> + Send + Sync>;

/// Everything the runtime needs to know of one service.
#[derive(Clone)]
pub struct ServiceDescriptor {
    /// Its name: on the broker, in URLs of request/reply, in logs.
    pub name: &'static str,
    /// The title of its OpenAPI document when it runs on its own.
    pub title: &'static str,
    /// Whether it keeps events (an event store is required on its own).
    pub keeps_events: bool,
    /// The commands and queries it handles, with their access.
    pub messages: Vec<MessageDecl>,
    /// What it asks of other services.
    pub imports: Vec<Import>,
    /// What it answers for other services.
    pub exports: Vec<Export>,
    /// The events it publishes, if any.
    pub public_events: Option<PublicEvents>,
    /// Path prefixes of its read models that tenant groups may share, with
    /// the resource name a share grants.
    pub shares: Vec<(&'static str, &'static str)>,
    /// Where it records cross-tenant reads.
    pub cross_reads: CrossReads,
    /// Whether it issues the platform's tokens (and checks them itself).
    pub issues_tokens: bool,
    openapi: fn() -> utoipa::openapi::OpenApi,
    projections: ProjectionsFn,
    groups: GroupsFn,
    consumers: ConsumersFn,
    start: StartFn,
}

impl fmt::Debug for ServiceDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDescriptor")
            .field("name", &self.name)
            .field("messages", &self.messages)
            .field("imports", &self.imports)
            .field("exports", &self.exports)
            .finish_non_exhaustive()
    }
}

impl ServiceDescriptor {
    /// A service named `name` that starts with `start`: it registers its
    /// handlers on the buses and returns its routes. Everything else is
    /// added with the builder methods.
    pub fn new<F, Fut>(name: &'static str, title: &'static str, start: F) -> Self
    where
        F: Fn(Env) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<Started>> + Send + 'static,
    {
        Self {
            name,
            title,
            keeps_events: true,
            messages: Vec::new(),
            imports: Vec::new(),
            exports: Vec::new(),
            public_events: None,
            shares: Vec::new(),
            cross_reads: CrossReads::Store,
            issues_tokens: false,
            openapi: || utoipa::openapi::OpenApiBuilder::new().build(),
            projections: Arc::new(|_| Vec::new()),
            groups: Arc::new(|_| Vec::new()),
            consumers: Arc::new(|_| Vec::new()),
            start: Arc::new(move |env| Box::pin(start(env))),
        }
    }

    /// Declares that it handles command `C`.
    pub fn command<C: Command>(mut self) -> Self {
        self.messages.push(MessageDecl::command::<C>());
        self
    }

    /// Declares that it handles query `Q`.
    pub fn query<Q: Query>(mut self) -> Self {
        self.messages.push(MessageDecl::query::<Q>());
        self
    }

    /// Declares that it sends command `C`, handled by service `from`.
    pub fn imports_command<C>(mut self, from: &'static str) -> Self
    where
        C: Command + Serialize,
        C::Output: DeserializeOwned,
    {
        self.imports.push(Import {
            from,
            message: MessageDecl::command::<C>(),
            forward: Arc::new(|commands, _, remote| forward_command::<C>(commands, remote)),
        });
        self
    }

    /// Declares that it sends query `Q`, handled by service `from`.
    pub fn imports_query<Q>(mut self, from: &'static str) -> Self
    where
        Q: Query + Serialize,
        Q::Output: DeserializeOwned,
    {
        self.imports.push(Import {
            from,
            message: MessageDecl::query::<Q>(),
            forward: Arc::new(|_, queries, remote| forward_query::<Q>(queries, remote)),
        });
        self
    }

    /// Declares that it handles command `C` and answers it for others.
    pub fn exports_command<C>(mut self) -> Self
    where
        C: Command + DeserializeOwned,
        C::Output: Serialize,
    {
        self.messages.push(MessageDecl::command::<C>());
        self.exports.push(Export {
            message: MessageDecl::command::<C>(),
            serve: Arc::new(|server, commands, _| server.command::<C>(commands.clone())),
        });
        self
    }

    /// Declares that it handles query `Q` and answers it for others.
    pub fn exports_query<Q>(mut self) -> Self
    where
        Q: Query + DeserializeOwned,
        Q::Output: Serialize,
    {
        self.messages.push(MessageDecl::query::<Q>());
        self.exports.push(Export {
            message: MessageDecl::query::<Q>(),
            serve: Arc::new(|server, _, queries| server.query::<Q>(queries.clone())),
        });
        self
    }

    /// Its OpenAPI document.
    pub fn openapi(mut self, openapi: fn() -> utoipa::openapi::OpenApi) -> Self {
        self.openapi = openapi;
        self
    }

    /// The events it publishes.
    pub fn publishes(mut self, events: PublicEvents) -> Self {
        self.public_events = Some(events);
        self
    }

    /// Its projections, chosen by topology.
    pub fn projections(
        mut self,
        projections: impl Fn(Layout<'_>) -> Vec<Arc<dyn Projection>> + Send + Sync + 'static,
    ) -> Self {
        self.projections = Arc::new(projections);
        self
    }

    /// Its consumers of other services' events: the groups they read
    /// with, declared before anything starts (so the groups can be made
    /// before the events they read are published), and how they are made
    /// once the service runs. The runtime checks that the two agree.
    pub fn consumers(
        mut self,
        groups: impl Fn(Layout<'_>) -> Vec<ConsumerGroup> + Send + Sync + 'static,
        consumers: impl Fn(&Env) -> Vec<Consumer> + Send + Sync + 'static,
    ) -> Self {
        self.groups = Arc::new(groups);
        self.consumers = Arc::new(consumers);
        self
    }

    /// Declares that it issues the platform's tokens.
    pub fn issues_tokens(mut self) -> Self {
        self.issues_tokens = true;
        self
    }

    /// The consumer groups it reads with in `layout`.
    pub fn groups_in(&self, layout: Layout<'_>) -> Vec<ConsumerGroup> {
        (self.groups)(layout)
    }

    /// A path prefix tenant groups may share, as `resource`.
    pub fn shares(mut self, prefix: &'static str, resource: &'static str) -> Self {
        self.shares.push((prefix, resource));
        self
    }

    /// Where it records cross-tenant reads.
    pub fn cross_reads(mut self, cross_reads: CrossReads) -> Self {
        self.cross_reads = cross_reads;
        self
    }

    /// Declares that it keeps no events of its own.
    pub fn without_events(mut self) -> Self {
        self.keeps_events = false;
        self
    }

    /// Its OpenAPI document.
    pub fn openapi_document(&self) -> utoipa::openapi::OpenApi {
        (self.openapi)()
    }

    /// Its projections in `env`.
    pub fn projections_in(&self, env: Layout<'_>) -> Vec<Arc<dyn Projection>> {
        (self.projections)(env)
    }

    /// Its consumers in `env` (not started), checked against the groups
    /// it declares.
    pub fn consumers_in(&self, env: &Env) -> anyhow::Result<Vec<Consumer>> {
        let consumers = (self.consumers)(env);
        let made: Vec<ConsumerGroup> = consumers.iter().map(ConsumerGroup::of).collect();
        let declared = self.groups_in(Layout {
            topology: env.topology,
            published: &env.published,
        });
        if made != declared {
            anyhow::bail!(
                "{}: its consumers {made:?} are not the groups it declares {declared:?}",
                self.name
            );
        }
        Ok(consumers)
    }

    /// Starts it in `env`: its handlers are registered on the buses.
    pub async fn start(&self, env: Env) -> anyhow::Result<Started> {
        (self.start)(env).await
    }

    /// What is wrong with the declaration, if anything: a message with no
    /// declared access, a name declared twice.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for m in &self.messages {
            if m.access == Access::Undeclared {
                return Err(format!(
                    "{}: {} {} declares no access",
                    self.name, m.kind, m.name
                ));
            }
            if !seen.insert(m.name) {
                return Err(format!("{}: {} is declared twice", self.name, m.name));
            }
        }
        for e in &self.exports {
            if e.message.access != Access::Internal {
                return Err(format!(
                    "{}: {} is answered for other services but is not internal",
                    self.name, e.message.name
                ));
            }
        }
        Ok(())
    }
}
