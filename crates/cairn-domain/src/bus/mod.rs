//! In-process command and query buses: typed, one handler per message type,
//! every dispatch through the same middleware chain.
//!
//! Bounded contexts talk to each other only through these buses (the next
//! step puts the same messages on a broker). A bus is a cheap-to-clone
//! handle (`Arc` inside) shared by HTTP handlers and services.
//!
//! The chain, outermost first: a tracing span (`bus.dispatch`), the
//! authorization hook ([`Authorizer`], allow-all by default), validation
//! (the message's `validate()`), then the custom [`Middleware`] of the
//! [`BusConfig`] in the order they were added, then the handler. A message
//! with no handler still passes the chain (so an unauthorized caller gets
//! `forbidden`, not a hint about wiring) and ends in
//! [`BusError::NoHandler`].
//!
//! Handlers are registered on a live bus, so a handler can hold a clone of a
//! bus it sends to (for example a query to another context). Registering a
//! second handler for a type, or for another type with the same name, is a
//! typed error ([`DuplicateHandler`]), meant to be `expect`ed at start-up.

mod auth;
mod error;
mod middleware;

use std::{
    any::{Any, TypeId, type_name},
    collections::HashMap,
    fmt,
    future::Future,
    marker::PhantomData,
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use cairn_core::{RequestContext, ValidationError};

pub use auth::{Access, AllowAll, Authorizer, DeclaredAccess, PermissionMap};
pub use error::BusError;
pub use middleware::{AnyMessage, Dispatch, Middleware, Next, Reply};

use middleware::{
    AuthorizationMiddleware, BoxFuture, Endpoint, TracingMiddleware, ValidationMiddleware,
};

/// A request to change state, handled by exactly one handler.
pub trait Command: Send + Sync + 'static {
    /// The stable name (`flights.schedule`): used in traces, permissions and
    /// errors, unique per bus.
    const NAME: &'static str;
    /// Who may send it, declared next to the type. Undeclared messages are
    /// refused by every bus that checks declarations ([`DeclaredAccess`]).
    const ACCESS: Access = Access::Undeclared;
    /// What the handler answers (an id, a position, `()`).
    type Output: Send + 'static;
    /// Checks the fields before anything else runs; every problem at once.
    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        Ok(())
    }
}

/// A request to read state, handled by exactly one handler.
pub trait Query: Send + Sync + 'static {
    /// The stable name (`flights.get`), unique per bus.
    const NAME: &'static str;
    /// Who may send it, declared next to the type. Undeclared messages are
    /// refused by every bus that checks declarations ([`DeclaredAccess`]).
    const ACCESS: Access = Access::Undeclared;
    /// What the handler answers.
    type Output: Send + 'static;
    /// Checks the fields before anything else runs; every problem at once.
    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        Ok(())
    }
}

/// Whether a message is a command or a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    Command,
    Query,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Command => "command",
            MessageKind::Query => "query",
        })
    }
}

/// What middleware knows about a message without its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageInfo {
    pub kind: MessageKind,
    pub name: &'static str,
    /// Who may send it ([`Command::ACCESS`], [`Query::ACCESS`]).
    pub access: Access,
}

/// Handles one command type.
#[async_trait]
pub trait CommandHandler<C: Command>: Send + Sync + 'static {
    async fn handle(&self, ctx: &RequestContext, command: C) -> Result<C::Output, BusError>;
}

/// Handles one query type.
#[async_trait]
pub trait QueryHandler<Q: Query>: Send + Sync + 'static {
    async fn handle(&self, ctx: &RequestContext, query: Q) -> Result<Q::Output, BusError>;
}

/// A second handler for a message type, or for a name already taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a handler for {} {} is already registered", .0.kind, .0.name)]
pub struct DuplicateHandler(pub MessageInfo);

/// The authorizer and custom middleware a bus runs with.
#[derive(Clone, Default)]
pub struct BusConfig {
    authorizer: Option<Arc<dyn Authorizer>>,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("custom_authorizer", &self.authorizer.is_some())
            .field("middleware", &self.middleware.len())
            .finish()
    }
}

impl BusConfig {
    /// Allow-all authorization, no custom middleware.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authorizes every dispatch with `authorizer`.
    pub fn with_authorizer(mut self, authorizer: impl Authorizer + 'static) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Adds `middleware` after the built-in links and after those added
    /// before it (so it runs closer to the handler).
    pub fn with_middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    fn chain(self) -> Vec<Arc<dyn Middleware>> {
        let authorizer = self.authorizer.unwrap_or_else(|| Arc::new(AllowAll));
        let mut chain: Vec<Arc<dyn Middleware>> = vec![
            Arc::new(TracingMiddleware),
            Arc::new(AuthorizationMiddleware { authorizer }),
            Arc::new(ValidationMiddleware),
        ];
        chain.extend(self.middleware);
        chain
    }
}

struct Route {
    name: &'static str,
    endpoint: Arc<dyn Endpoint>,
}

/// The shared core of both buses: the chain and the handlers by type.
struct Registry {
    kind: MessageKind,
    chain: Vec<Arc<dyn Middleware>>,
    routes: RwLock<HashMap<TypeId, Route>>,
}

impl Registry {
    fn new(kind: MessageKind, config: BusConfig) -> Self {
        Self {
            kind,
            chain: config.chain(),
            routes: RwLock::new(HashMap::new()),
        }
    }

    fn register(
        &self,
        type_id: TypeId,
        name: &'static str,
        access: Access,
        endpoint: Arc<dyn Endpoint>,
    ) -> Result<(), DuplicateHandler> {
        // Handlers never run under this lock, so poison can only come from a
        // panic between two map operations that each leave it consistent.
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes.contains_key(&type_id) || routes.values().any(|r| r.name == name) {
            return Err(DuplicateHandler(MessageInfo {
                kind: self.kind,
                name,
                access,
            }));
        }
        routes.insert(type_id, Route { name, endpoint });
        Ok(())
    }

    fn handles(&self, type_id: TypeId) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&type_id)
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        type_id: TypeId,
        name: &'static str,
        access: Access,
        message: Box<dyn AnyMessage>,
    ) -> Result<Reply, BusError> {
        let info = MessageInfo {
            kind: self.kind,
            name,
            access,
        };
        let endpoint: Arc<dyn Endpoint> = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&type_id)
            .map_or_else(
                || Arc::new(NoHandler(info)) as _,
                |r| Arc::clone(&r.endpoint),
            );
        let dispatch = Dispatch { ctx, info, message };
        Next::new(&self.chain, &*endpoint).run(dispatch).await
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| r.name)
            .collect();
        names.sort_unstable();
        names
    }
}

struct NoHandler(MessageInfo);

impl Endpoint for NoHandler {
    fn call<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        _message: Box<dyn AnyMessage>,
    ) -> BoxFuture<'a, Result<Reply, BusError>> {
        let MessageInfo { kind, name, .. } = self.0;
        Box::pin(async move { Err(BusError::NoHandler { kind, name }) })
    }
}

fn unbox<T: 'static>(message: Box<dyn AnyMessage>) -> Result<T, BusError> {
    message.into_any().downcast::<T>().map(|m| *m).map_err(|_| {
        BusError::internal(format!(
            "a middleware replaced the message with one that is not a {}",
            type_name::<T>()
        ))
    })
}

fn unbox_reply<T: 'static>(reply: Reply) -> Result<T, BusError> {
    reply.downcast::<T>().map(|r| *r).map_err(|_| {
        BusError::internal(format!(
            "a middleware replaced the reply with one that is not a {}",
            type_name::<T>()
        ))
    })
}

/// An async function or closure `(RequestContext, M) -> Result<Output,
/// BusError>` as a handler. The context is passed by value (a clone) so the
/// returned future need not borrow it.
struct FnHandler<F>(F);

/// Writes one of the two buses: the command bus and the query bus differ
/// only in their message trait, handler trait and the verb that sends, so
/// the wrappers that carry a message through the chain, the endpoint that
/// calls its handler, closures as handlers and the bus itself are written
/// once here.
macro_rules! bus {
    (
        $(#[$doc:meta])*
        $Bus:ident for $Msg:ident ($kind:expr, $noun:literal),
        handled by $Handler:ident, sent with $send:ident
    ) => {
        #[async_trait]
        impl<M: $Msg, H: $Handler<M> + ?Sized> $Handler<M> for Arc<H> {
            async fn handle(&self, ctx: &RequestContext, message: M) -> Result<M::Output, BusError> {
                (**self).handle(ctx, message).await
            }
        }

        #[async_trait]
        impl<M, F, Fut> $Handler<M> for FnHandler<F>
        where
            M: $Msg,
            F: Fn(RequestContext, M) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<M::Output, BusError>> + Send + 'static,
        {
            async fn handle(&self, ctx: &RequestContext, message: M) -> Result<M::Output, BusError> {
                (self.0)(ctx.clone(), message).await
            }
        }

        impl<M: $Msg> AnyMessage for Carried<M, { $kind as u8 }> {
            fn validate(&self) -> Result<(), Vec<ValidationError>> {
                self.0.validate()
            }
            fn as_any(&self) -> &dyn Any {
                &self.0
            }
            fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
                Box::new(self.0)
            }
        }

        impl<M: $Msg, H: $Handler<M>> Endpoint for HandlerEndpoint<M, H, { $kind as u8 }> {
            fn call<'a>(
                &'a self,
                ctx: &'a RequestContext,
                message: Box<dyn AnyMessage>,
            ) -> BoxFuture<'a, Result<Reply, BusError>> {
                Box::pin(async move {
                    let message = unbox::<M>(message)?;
                    let output = self.handler.handle(ctx, message).await?;
                    Ok(Box::new(output) as Reply)
                })
            }
        }

        $(#[$doc])*
        #[derive(Clone)]
        pub struct $Bus {
            registry: Arc<Registry>,
        }

        impl fmt::Debug for $Bus {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($Bus))
                    .field("handlers", &self.registry.names())
                    .field("middleware", &self.registry.chain.len())
                    .finish()
            }
        }

        impl Default for $Bus {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $Bus {
            /// A bus with the built-in chain and allow-all authorization.
            pub fn new() -> Self {
                Self::with_config(BusConfig::default())
            }

            /// A bus with `config`'s authorizer and custom middleware.
            pub fn with_config(config: BusConfig) -> Self {
                Self {
                    registry: Arc::new(Registry::new($kind, config)),
                }
            }

            #[doc = concat!("Registers the handler of a ", $noun, " type.")]
            pub fn register<M: $Msg>(
                &self,
                handler: impl $Handler<M>,
            ) -> Result<(), DuplicateHandler> {
                self.registry.register(
                    TypeId::of::<M>(),
                    M::NAME,
                    M::ACCESS,
                    Arc::new(HandlerEndpoint::<M, _, { $kind as u8 }> {
                        handler,
                        message: PhantomData,
                    }),
                )
            }

            #[doc = concat!(
                "Registers an async function or closure `(RequestContext, M) -> ",
                "Result<M::Output, BusError>` as the handler of the ", $noun, " `M`."
            )]
            pub fn register_fn<M, F, Fut>(&self, handler: F) -> Result<(), DuplicateHandler>
            where
                M: $Msg,
                F: Fn(RequestContext, M) -> Fut + Send + Sync + 'static,
                Fut: Future<Output = Result<M::Output, BusError>> + Send + 'static,
            {
                self.register::<M>(FnHandler(handler))
            }

            #[doc = concat!("Whether the ", $noun, " `M` has a handler.")]
            pub fn handles<M: $Msg>(&self) -> bool {
                self.registry.handles(TypeId::of::<M>())
            }

            #[doc = concat!("The names of the ", $noun, " types with a handler here, sorted.")]
            pub fn names(&self) -> Vec<&'static str> {
                self.registry.names()
            }

            #[doc = concat!("Sends a ", $noun, " through the chain to its handler.")]
            pub async fn $send<M: $Msg>(
                &self,
                ctx: &RequestContext,
                message: M,
            ) -> Result<M::Output, BusError> {
                let reply = self
                    .registry
                    .dispatch(
                        ctx,
                        TypeId::of::<M>(),
                        M::NAME,
                        M::ACCESS,
                        Box::new(Carried::<M, { $kind as u8 }>(message)),
                    )
                    .await?;
                unbox_reply::<M::Output>(reply)
            }
        }
    };
}

/// A message on its way through the chain; `KIND` keeps the command and
/// query impls apart (a type could be both).
struct Carried<M, const KIND: u8>(M);

/// Calls the handler of one message type.
struct HandlerEndpoint<M, H, const KIND: u8> {
    handler: H,
    message: PhantomData<fn(M)>,
}

bus! {
    /// Sends commands to their handlers through the middleware chain. Clones
    /// share handlers and chain.
    CommandBus for Command (MessageKind::Command, "command"),
    handled by CommandHandler, sent with send
}

bus! {
    /// Sends queries to their handlers through the middleware chain. Clones
    /// share handlers and chain.
    QueryBus for Query (MessageKind::Query, "query"),
    handled by QueryHandler, sent with query
}
