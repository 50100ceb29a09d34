//! Commands and queries across a transport: typed replies and errors,
//! timeouts, nobody serving. Runs on the in-process transport; the broker
//! backends run the same shapes in their own tests.

use std::{sync::Arc, time::Duration};

use cairn_core::{ErrorCode, RequestContext, TenantId, ValidationError};
use cairn_domain::bus::{BusError, Command, CommandBus, Query, QueryBus};
use cairn_messaging::{
    MemoryBroker, RequestTransport,
    rpc::{Remote, RpcServer, forward_command, forward_query},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Double {
    n: i64,
}

impl Query for Double {
    const NAME: &'static str = "math.double";
    type Output = i64;
}

#[derive(Debug, Serialize, Deserialize)]
struct Slow;

impl Query for Slow {
    const NAME: &'static str = "math.slow";
    type Output = ();
}

#[derive(Debug, Serialize, Deserialize)]
struct Withdraw {
    amount: i64,
}

impl Command for Withdraw {
    const NAME: &'static str = "bank.withdraw";
    type Output = String;
    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        if self.amount <= 0 {
            return Err(vec![ValidationError::new("amount", "must be positive")]);
        }
        Ok(())
    }
}

fn ctx() -> RequestContext {
    RequestContext::new(TenantId::new("acme").unwrap())
        .with_actor("tester")
        .with_correlation_id("corr-1")
}

async fn serving(broker: &MemoryBroker) -> cairn_messaging::Serving {
    let queries = QueryBus::new();
    queries
        .register_fn::<Double, _, _>(|ctx, q| async move {
            assert_eq!(ctx.tenant.as_str(), "acme", "the tenant crosses over");
            assert_eq!(ctx.correlation_id, "corr-1", "so does the correlation id");
            assert_eq!(ctx.actor.as_deref(), Some("tester"));
            Ok(q.n * 2)
        })
        .unwrap();
    queries
        .register_fn::<Slow, _, _>(|_, _| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .unwrap();
    let commands = CommandBus::new();
    commands
        .register_fn::<Withdraw, _, _>(|_, w| async move {
            if w.amount > 100 {
                return Err(BusError::Handler {
                    code: ErrorCode::RuleViolation,
                    message: "not enough money".into(),
                    details: Some(serde_json::json!({ "balance": 100 })),
                });
            }
            Ok(format!("took {}", w.amount))
        })
        .unwrap();
    RpcServer::new()
        .query::<Double>(queries.clone())
        .unwrap()
        .query::<Slow>(queries)
        .unwrap()
        .command::<Withdraw>(commands)
        .unwrap()
        .serve(broker, "bank")
        .await
        .unwrap()
}

#[tokio::test]
async fn forwarded_messages_come_back_typed() {
    let broker = MemoryBroker::new();
    let _serving = serving(&broker).await;
    let transport: Arc<dyn RequestTransport> = Arc::new(broker.clone());
    let queries = QueryBus::new();
    forward_query::<Double>(&queries, Remote::new(transport.clone(), "bank")).unwrap();
    let commands = CommandBus::new();
    forward_command::<Withdraw>(&commands, Remote::new(transport.clone(), "bank")).unwrap();

    assert_eq!(queries.query(&ctx(), Double { n: 21 }).await.unwrap(), 42);
    assert_eq!(
        commands.send(&ctx(), Withdraw { amount: 5 }).await.unwrap(),
        "took 5"
    );
    // A rule violation keeps its code and details.
    let err = commands
        .send(&ctx(), Withdraw { amount: 500 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RuleViolation);
    assert_eq!(err.details(), Some(serde_json::json!({ "balance": 100 })));
    assert_eq!(err.to_string(), "not enough money");
    // Validation fails on the caller's side, before anything is sent.
    let err = commands
        .send(&ctx(), Withdraw { amount: -1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
}

#[tokio::test]
async fn unknown_names_timeouts_and_absent_services_are_typed_errors() {
    let broker = MemoryBroker::new();
    let serving = serving(&broker).await;
    let transport: Arc<dyn RequestTransport> = Arc::new(broker.clone());

    let remote = Remote::new(transport.clone(), "bank");
    let err = remote
        .call::<i64>(&ctx(), "math.triple", &Double { n: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);

    let err = remote
        .call::<i64>(&ctx(), "math.double", &serde_json::json!({ "x": 1 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::MalformedRequest);

    let quick = Remote::new(transport.clone(), "bank").with_timeout(Duration::from_millis(100));
    let err = quick
        .call::<()>(&ctx(), "math.slow", &Slow)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);

    drop(serving);
    let err = remote
        .call::<i64>(&ctx(), "math.double", &Double { n: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
}
