//! Behaviour 7: when the connection to RabbitMQ is lost, calls fail within a
//! bounded time instead of hanging, and the same handle works again once
//! RabbitMQ is reachable. The loss is made by a TCP proxy this test owns; the
//! shared RabbitMQ keeps running.

mod common;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::TenantId;
use cairn_messaging::{
    Broker, BrokerError, Deliveries, IntegrationEvent, RequestHandler, RequestTransport, RpcError,
    RpcRequest,
};
use cairn_messaging_amqp::{AmqpBroker, AmqpOptions};
use common::{Env, Proxy, event, n_of, options, take_acked};

/// The contract's bound on a failing call.
const BOUND: Duration = Duration::from_secs(10);

fn batch(from: u64, count: u64) -> Vec<IntegrationEvent> {
    (from..from + count)
        .map(|n| event("flights", "acme", "Happened", n))
        .collect()
}

/// Retries `publish` until it succeeds, failing the test after `within`.
async fn publish_eventually(broker: &AmqpBroker, events: &[IntegrationEvent], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match broker.publish(events).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("still failing after restore: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the handle did not recover: {e}"),
        }
    }
}

fn assert_unavailable_or_timeout(error: &BrokerError) {
    assert!(
        matches!(error, BrokerError::Unavailable(_) | BrokerError::Timeout(_)),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_fast_while_cut_off_and_the_handle_reconnects() {
    let Some(env) = Env::new().await else { return };
    let proxy = Proxy::start().await;
    let broker = AmqpBroker::connect(&proxy.url(), options(&env.prefix))
        .await
        .unwrap();
    let spec = env.spec("kept", "flights");
    broker.declare(&spec).await.unwrap();
    broker.publish(&batch(0, 3)).await.unwrap();

    proxy.cut();
    for attempt in 0..3 {
        let started = Instant::now();
        let error = broker.publish(&batch(100, 2)).await.unwrap_err();
        assert_unavailable_or_timeout(&error);
        assert!(
            started.elapsed() <= BOUND,
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
        // Declaring and consuming fail the same way.
        let started = Instant::now();
        assert_unavailable_or_timeout(&broker.declare(&spec).await.unwrap_err());
        assert_unavailable_or_timeout(&broker.consume(&spec).await.err().unwrap());
        assert!(started.elapsed() <= BOUND);
    }

    proxy.restore();
    publish_eventually(&broker, &batch(3, 2), BOUND).await;
    // Whatever was confirmed is in the queue; what failed is not.
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 5).await, vec![0, 1, 2, 3, 4]);
    assert!(
        common::recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reports_the_loss_and_resumes_on_the_next_call() {
    let Some(env) = Env::new().await else { return };
    let proxy = Proxy::start().await;
    let broker = AmqpBroker::connect(&proxy.url(), options(&env.prefix))
        .await
        .unwrap();
    let spec = env.spec("resilient", "flights");
    let mut deliveries = broker.consume(&spec).await.unwrap();
    // Published directly, not through the proxy.
    env.broker.publish(&batch(0, 3)).await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 3).await, vec![0, 1, 2]);

    // One message taken, not acked, when the connection goes.
    env.broker.publish(&batch(3, 1)).await.unwrap();
    let unacked = common::recv(&mut deliveries, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(n_of(&unacked), 3);

    proxy.cut();
    let started = Instant::now();
    match tokio::time::timeout(BOUND, deliveries.next()).await {
        Ok(Some(Err(error))) => assert_unavailable_or_timeout(&error),
        Ok(Some(Ok(_))) => panic!("a delivery through a cut connection"),
        Ok(None) => panic!("the consumer closed for good"),
        Err(_) => panic!("next() hung after the connection was cut"),
    }
    assert!(started.elapsed() <= BOUND);
    // Settling on the lost connection fails; RabbitMQ requeued it.
    assert_unavailable_or_timeout(&unacked.acker.ack().await.unwrap_err());
    // While cut, next() keeps failing within the bound.
    let started = Instant::now();
    match tokio::time::timeout(BOUND, deliveries.next()).await {
        Ok(Some(Err(error))) => assert_unavailable_or_timeout(&error),
        other => panic!(
            "expected an error while cut off, got {:?}",
            other.map(|o| o.map(|r| r.map(|_| ())))
        ),
    }
    assert!(started.elapsed() <= BOUND);

    env.broker.publish(&batch(4, 2)).await.unwrap();
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the consumer did not resume: {seen:?}"
        );
        match tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await {
            Ok(Some(Ok(delivery))) => {
                let n = n_of(&delivery);
                if n == 3 {
                    assert_eq!(
                        delivery.delivery_count, 2,
                        "requeued on the lost connection"
                    );
                }
                seen.push(n);
                delivery.acker.ack().await.unwrap();
            }
            Ok(Some(Err(error))) => eprintln!("still reconnecting: {error}"),
            Ok(None) => panic!("the consumer closed for good"),
            Err(_) => {}
        }
    }
    assert_eq!(seen, vec![3, 4, 5]);
}

struct Pong;

#[async_trait]
impl RequestHandler for Pong {
    async fn handle(&self, _request: RpcRequest) -> Bytes {
        Bytes::from_static(b"pong")
    }
}

fn ping() -> RpcRequest {
    RpcRequest {
        name: "Ping".to_owned(),
        tenant: TenantId::new("acme").unwrap(),
        correlation_id: None,
        traceparent: None,
        actor: None,
        service: None,
        body: Bytes::from_static(b"{}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_while_cut_off_and_serving_resumes_by_itself() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("pinger");
    let proxy = Proxy::start().await;
    let broker = AmqpBroker::connect(&proxy.url(), options(&env.prefix))
        .await
        .unwrap();
    let _serving = broker
        .serve(&service, std::sync::Arc::new(Pong))
        .await
        .unwrap();
    let got = broker
        .request(&service, ping(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&got[..], b"pong");

    proxy.cut();
    let started = Instant::now();
    let got = broker
        .request(&service, ping(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(
            &got,
            Err(
                RpcError::Broker(BrokerError::Unavailable(_) | BrokerError::Timeout(_))
                    | RpcError::Timeout { .. }
            )
        ),
        "{got:?}"
    );
    assert!(started.elapsed() <= BOUND);
    // Seen from a caller that still reaches RabbitMQ, nobody serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match env
            .broker
            .request(&service, ping(), Duration::from_millis(500))
            .await
        {
            Err(RpcError::NoResponders { .. }) => break,
            Err(RpcError::Timeout { .. }) if Instant::now() < deadline => {}
            other => panic!("expected no responders while the server is cut off: {other:?}"),
        }
    }

    proxy.restore();
    // The server re-opens its consumer in the background; the caller
    // reconnects on its next request.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match broker
            .request(&service, ping(), Duration::from_secs(2))
            .await
        {
            Ok(got) => {
                assert_eq!(&got[..], b"pong");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not serving again yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("serving did not resume: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_times_out_instead_of_hanging() {
    let Some(env) = Env::new().await else { return };
    let proxy = Proxy::start().await;
    let options = AmqpOptions {
        connect_timeout: Duration::from_secs(2),
        confirm_timeout: Duration::from_secs(2),
        ..options(&env.prefix)
    };
    let broker = AmqpBroker::connect(&proxy.url(), options).await.unwrap();
    let spec = env.spec("patient", "flights");
    broker.declare(&spec).await.unwrap();

    // Packets stop flowing; the sockets stay open.
    proxy.stall();
    for _ in 0..2 {
        let started = Instant::now();
        let error = broker.publish(&batch(0, 2)).await.unwrap_err();
        assert_unavailable_or_timeout(&error);
        assert!(started.elapsed() <= BOUND, "took {:?}", started.elapsed());
    }
    // A new connection cannot be opened either, and that is bounded too.
    let started = Instant::now();
    let connecting = AmqpBroker::connect(&proxy.url(), common::options(&env.prefix)).await;
    assert_unavailable_or_timeout(&connecting.unwrap_err());
    assert!(started.elapsed() <= BOUND);

    proxy.restore();
    publish_eventually(&broker, &batch(10, 1), BOUND).await;
    let mut deliveries: Box<dyn Deliveries> = env.broker.consume(&spec).await.unwrap();
    // The stalled batches may or may not have reached the queue before the
    // stall: only the batch after the restore is certain.
    let mut seen = Vec::new();
    while let Some(delivery) = common::recv(&mut deliveries, Duration::from_millis(700)).await {
        seen.push(n_of(&delivery));
        delivery.acker.ack().await.unwrap();
    }
    assert!(seen.contains(&10), "{seen:?}");
}
