//! The command and query buses: routing by type, validation, the
//! authorization hook, middleware order, and a command handler over a real
//! aggregate store.

mod common;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use cairn_core::{ErrorCode, RequestContext, ValidationError};
use cairn_domain::{
    AggregateStore, BusConfig, BusError, Command, CommandBus, CommandHandler, MessageInfo,
    MessageKind, Query, QueryBus, QueryHandler,
    bus::{Authorizer, Dispatch, DuplicateHandler, Middleware, Next, PermissionMap, Reply},
};
use common::{Concert, ConcertCommand, ctx};
use serde_json::json;

#[derive(Debug)]
struct Plan {
    id: String,
    capacity: u32,
}

impl Command for Plan {
    const NAME: &'static str = "concerts.plan";
    type Output = u64;
    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        if self.id.is_empty() {
            errors.push(ValidationError::new("id", "must not be empty"));
        }
        if self.capacity == 0 {
            errors.push(ValidationError::new("capacity", "must be at least 1"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug)]
struct Book {
    id: String,
    holder: String,
}

impl Command for Book {
    const NAME: &'static str = "concerts.book";
    type Output = Option<u64>;
}

/// Another type that claims `Plan`'s name.
struct Impostor;

impl Command for Impostor {
    const NAME: &'static str = "concerts.plan";
    type Output = ();
}

struct Unhandled;

impl Command for Unhandled {
    const NAME: &'static str = "concerts.unhandled";
    type Output = ();
}

struct SeatsLeft {
    id: String,
}

impl Query for SeatsLeft {
    const NAME: &'static str = "concerts.seats_left";
    type Output = u32;
    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        if self.id.is_empty() {
            return Err(vec![ValidationError::new("id", "must not be empty")]);
        }
        Ok(())
    }
}

/// A handler struct, counting its calls.
#[derive(Default)]
struct CountingPlan {
    calls: AtomicUsize,
}

#[async_trait]
impl CommandHandler<Plan> for CountingPlan {
    async fn handle(&self, _ctx: &RequestContext, command: Plan) -> Result<u64, BusError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(u64::from(command.capacity))
    }
}

#[tokio::test]
async fn commands_reach_their_handler() {
    let bus = CommandBus::new();
    let handler = Arc::new(CountingPlan::default());
    bus.register::<Plan>(Arc::clone(&handler)).unwrap();
    bus.register_fn(|ctx: RequestContext, cmd: Book| async move {
        assert_eq!(ctx.tenant.as_str(), "acme");
        Ok(Some(cmd.holder.len() as u64))
    })
    .unwrap();
    assert!(bus.handles::<Plan>() && bus.handles::<Book>() && !bus.handles::<Unhandled>());

    let ctx = ctx();
    let out = bus
        .send(
            &ctx,
            Plan {
                id: "c1".into(),
                capacity: 7,
            },
        )
        .await
        .unwrap();
    assert_eq!(out, 7);
    let out = bus
        .send(
            &ctx,
            Book {
                id: "c1".into(),
                holder: "ada".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(out, Some(3));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_handler_can_be_a_trait_object() {
    let bus = CommandBus::new();
    let handler: Arc<dyn CommandHandler<Plan>> = Arc::new(CountingPlan::default());
    bus.register::<Plan>(handler).unwrap();
    let out = bus
        .send(
            &ctx(),
            Plan {
                id: "x".into(),
                capacity: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(out, 2);
}

#[tokio::test]
async fn sending_without_a_handler_is_a_typed_error() {
    let bus = CommandBus::new();
    let err = bus.send(&ctx(), Unhandled).await.unwrap_err();
    assert_eq!(
        err,
        BusError::NoHandler {
            kind: MessageKind::Command,
            name: "concerts.unhandled"
        }
    );
    assert_eq!(err.code(), ErrorCode::Internal);

    let queries = QueryBus::new();
    let err = queries
        .query(&ctx(), SeatsLeft { id: "c1".into() })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        BusError::NoHandler {
            kind: MessageKind::Query,
            ..
        }
    ));
}

#[tokio::test]
async fn registering_twice_is_a_typed_error() {
    let bus = CommandBus::new();
    bus.register::<Plan>(CountingPlan::default()).unwrap();
    let duplicate = bus.register::<Plan>(CountingPlan::default()).unwrap_err();
    let same_name = bus
        .register_fn(|_ctx: RequestContext, _cmd: Impostor| async { Ok(()) })
        .unwrap_err();
    let expected = DuplicateHandler(MessageInfo {
        kind: MessageKind::Command,
        name: "concerts.plan",
        access: cairn_domain::bus::Access::Undeclared,
    });
    assert_eq!(duplicate, expected);
    assert_eq!(same_name, expected);
    assert_eq!(
        duplicate.to_string(),
        "a handler for command concerts.plan is already registered"
    );
    // the first registration still serves
    let out = bus
        .send(
            &ctx(),
            Plan {
                id: "c".into(),
                capacity: 1,
            },
        )
        .await;
    assert_eq!(out, Ok(1));
}

#[tokio::test]
async fn an_invalid_message_never_reaches_its_handler() {
    let bus = CommandBus::new();
    let handler = Arc::new(CountingPlan::default());
    bus.register::<Plan>(Arc::clone(&handler)).unwrap();
    let err = bus
        .send(
            &ctx(),
            Plan {
                id: String::new(),
                capacity: 0,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    let BusError::Validation(errors) = &err else {
        panic!("{err:?}")
    };
    let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
    assert_eq!(fields, ["id", "capacity"]);
    assert_eq!(
        err.details(),
        Some(json!([
            {"field": "id", "reason": "must not be empty"},
            {"field": "capacity", "reason": "must be at least 1"}
        ]))
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_authorizer_refuses_before_validation_and_routing() {
    let permissions = PermissionMap::new()
        .require(Plan::NAME, "concerts:write")
        .require(Unhandled::NAME, "concerts:write")
        .require(SeatsLeft::NAME, "concerts:read");
    let bus = CommandBus::with_config(BusConfig::new().with_authorizer(permissions.clone()));
    let handler = Arc::new(CountingPlan::default());
    bus.register::<Plan>(Arc::clone(&handler)).unwrap();
    let invalid = || Plan {
        id: String::new(),
        capacity: 0,
    };
    let valid = || Plan {
        id: "c1".into(),
        capacity: 3,
    };

    let anonymous = ctx();
    let reader = ctx().with_actor("ada").with_permissions(["concerts:read"]);
    let writer = ctx().with_actor("ada").with_permissions(["concerts:write"]);

    let err = bus.send(&anonymous, valid()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthenticated);
    let err = bus.send(&reader, valid()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
    assert_eq!(
        err.to_string(),
        "forbidden: command concerts.plan requires the permission concerts:write"
    );
    // refused before validation: the caller learns nothing about the fields
    let err = bus.send(&reader, invalid()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
    // ...and before routing: no hint about which messages are wired
    let err = bus.send(&reader, Unhandled).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);

    let err = bus.send(&writer, invalid()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert_eq!(bus.send(&writer, valid()).await, Ok(3));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);

    // the same map guards a query bus
    let queries = QueryBus::with_config(BusConfig::new().with_authorizer(permissions));
    queries
        .register_fn(|_ctx: RequestContext, _q: SeatsLeft| async { Ok(5) })
        .unwrap();
    let err = queries
        .query(&writer, SeatsLeft { id: "c1".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
    assert_eq!(
        queries.query(&reader, SeatsLeft { id: "c1".into() }).await,
        Ok(5)
    );
}

/// An authorizer of its own: only tenant `acme` may send anything.
struct AcmeOnly;

impl Authorizer for AcmeOnly {
    fn authorize(&self, ctx: &RequestContext, msg: &MessageInfo) -> Result<(), BusError> {
        if ctx.tenant.as_str() == "acme" {
            Ok(())
        } else {
            Err(BusError::Forbidden(format!("{} is acme-only", msg.name)))
        }
    }
}

#[tokio::test]
async fn a_custom_authorizer_sees_context_and_message() {
    let bus = CommandBus::with_config(BusConfig::new().with_authorizer(AcmeOnly));
    bus.register::<Plan>(CountingPlan::default()).unwrap();
    let plan = || Plan {
        id: "c".into(),
        capacity: 1,
    };
    assert_eq!(bus.send(&ctx(), plan()).await, Ok(1));
    let globex = RequestContext::new(common::tenant("globex"));
    assert_eq!(
        bus.send(&globex, plan()).await,
        Err(BusError::Forbidden("concerts.plan is acme-only".into()))
    );
}

/// Records when it runs, before and after the rest of the chain.
struct Recording {
    label: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Middleware for Recording {
    async fn handle(&self, dispatch: Dispatch<'_>, next: Next<'_>) -> Result<Reply, BusError> {
        let entry = format!(
            "{} before {} {}",
            self.label, dispatch.info.kind, dispatch.info.name
        );
        self.log.lock().unwrap().push(entry);
        let result = next.run(dispatch).await;
        let outcome = match &result {
            Ok(reply) => format!("ok {:?}", reply.downcast_ref::<u64>()),
            Err(e) => format!("err {}", e.code()),
        };
        self.log
            .lock()
            .unwrap()
            .push(format!("{} after {outcome}", self.label));
        result
    }
}

/// Refuses plans for more than 100 seats, looking at the typed message.
struct AtMostHundred;

#[async_trait]
impl Middleware for AtMostHundred {
    async fn handle(&self, dispatch: Dispatch<'_>, next: Next<'_>) -> Result<Reply, BusError> {
        if let Some(plan) = dispatch.downcast_ref::<Plan>()
            && plan.capacity > 100
        {
            return Err(BusError::handler(
                ErrorCode::RuleViolation,
                "venues hold at most 100",
            ));
        }
        next.run(dispatch).await
    }
}

#[tokio::test]
async fn middleware_runs_in_order_around_the_handler() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let config = BusConfig::new()
        .with_middleware(Recording {
            label: "outer",
            log: Arc::clone(&log),
        })
        .with_middleware(AtMostHundred)
        .with_middleware(Recording {
            label: "inner",
            log: Arc::clone(&log),
        });
    let bus = CommandBus::with_config(config);
    let handler_log = Arc::clone(&log);
    bus.register_fn(move |_ctx: RequestContext, cmd: Plan| {
        let log = Arc::clone(&handler_log);
        async move {
            log.lock().unwrap().push("handler".into());
            Ok(u64::from(cmd.capacity))
        }
    })
    .unwrap();

    let ok = bus
        .send(
            &ctx(),
            Plan {
                id: "c".into(),
                capacity: 9,
            },
        )
        .await;
    assert_eq!(ok, Ok(9));
    assert_eq!(
        log.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [
            "outer before command concerts.plan",
            "inner before command concerts.plan",
            "handler",
            "inner after ok Some(9)",
            "outer after ok Some(9)",
        ]
    );

    // a middleware can refuse: links after it and the handler do not run
    let err = bus
        .send(
            &ctx(),
            Plan {
                id: "c".into(),
                capacity: 500,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RuleViolation);
    assert_eq!(
        log.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [
            "outer before command concerts.plan",
            "outer after err rule_violation",
        ]
    );

    // custom middleware runs after the built-in validation
    let err = bus
        .send(
            &ctx(),
            Plan {
                id: String::new(),
                capacity: 1,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert!(log.lock().unwrap().is_empty());
}

struct SeatsLeftHandler {
    concerts: AggregateStore<Concert>,
}

#[async_trait]
impl QueryHandler<SeatsLeft> for SeatsLeftHandler {
    async fn handle(&self, ctx: &RequestContext, query: SeatsLeft) -> Result<u32, BusError> {
        let loaded = self
            .concerts
            .load(ctx, &query.id)
            .await?
            .ok_or_else(|| BusError::handler(ErrorCode::NotFound, "no such concert"))?;
        Ok(loaded.state.capacity - loaded.state.holders.len() as u32)
    }
}

/// Two "contexts" over one store: commands through the command bus write
/// the aggregate, the query bus reads it, and a domain error crosses the bus
/// with its code and details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_queries_over_an_aggregate_store() {
    let store = common::TestStore::sqlite().await.expect("sqlite");
    let concerts = AggregateStore::<Concert>::new(store.handle());
    let commands = CommandBus::new();
    let queries = QueryBus::new();

    let c = concerts.clone();
    commands
        .register_fn(move |ctx: RequestContext, cmd: Plan| {
            let concerts = c.clone();
            async move {
                let outcome = concerts
                    .execute(
                        &ctx,
                        &cmd.id,
                        None,
                        &ConcertCommand::Plan {
                            capacity: cmd.capacity,
                        },
                    )
                    .await?;
                Ok(outcome.position.expect("written"))
            }
        })
        .unwrap();
    let c = concerts.clone();
    commands
        .register_fn(move |ctx: RequestContext, cmd: Book| {
            let concerts = c.clone();
            async move {
                let outcome = concerts
                    .execute(&ctx, &cmd.id, None, &common::book(&cmd.holder))
                    .await?;
                Ok(outcome.position)
            }
        })
        .unwrap();
    queries
        .register::<SeatsLeft>(SeatsLeftHandler { concerts })
        .unwrap();

    let ctx = ctx();
    // buses are shared by clones, across tasks
    let (commands2, ctx2) = (commands.clone(), ctx.clone());
    let position = tokio::spawn(async move {
        commands2
            .send(
                &ctx2,
                Plan {
                    id: "c1".into(),
                    capacity: 1,
                },
            )
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert!(position >= 1);
    let booked = commands
        .send(
            &ctx,
            Book {
                id: "c1".into(),
                holder: "ada".into(),
            },
        )
        .await
        .unwrap();
    assert!(booked > Some(position));
    assert_eq!(
        queries.query(&ctx, SeatsLeft { id: "c1".into() }).await,
        Ok(0)
    );

    let err = commands
        .send(
            &ctx,
            Book {
                id: "c1".into(),
                holder: "bob".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BusError::Handler {
            code: ErrorCode::RuleViolation,
            message: "sold out: all 1 tickets are booked".into(),
            details: Some(json!({"capacity": 1})),
        }
    );
    let err = queries
        .query(&ctx, SeatsLeft { id: "c9".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    let err = queries
        .query(&ctx, SeatsLeft { id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
}

#[test]
fn buses_are_shareable_handles() {
    fn assert_shared<T: Clone + Send + Sync + 'static>() {}
    assert_shared::<CommandBus>();
    assert_shared::<QueryBus>();
    let bus = CommandBus::new();
    bus.register::<Plan>(CountingPlan::default()).unwrap();
    let clone = bus.clone();
    assert!(clone.handles::<Plan>());
    assert!(format!("{bus:?}").contains("concerts.plan"));
}
