//! Behaviour 7: the server goes away and comes back. Calls fail within a
//! bound while it is down, and the same handle (and an open consumer) work
//! again after. Runs against a nats-server of its own, never the shared one.

mod common;

use std::time::Duration;

use cairn_messaging::{Broker, BrokerError, ConsumerSpec, RequestTransport, RpcError};
use cairn_messaging_nats::{NatsBroker, NatsOptions};
use common::{OwnServer, decode, events, fresh_prefix, recv, take_acked, tenant};
use tokio::time::Instant;

const BOUND: Duration = Duration::from_secs(10);

fn rpc_request() -> cairn_messaging::RpcRequest {
    cairn_messaging::RpcRequest {
        name: "Ping".to_owned(),
        tenant: tenant("acme"),
        correlation_id: None,
        traceparent: None,
        actor: None,
        service: None,
        body: bytes::Bytes::from_static(b"{}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_fast_while_the_server_is_down_and_works_again_after() {
    let Some(mut server) = OwnServer::start() else {
        return;
    };
    let options = NatsOptions {
        request_timeout: Duration::from_secs(2),
        ..NatsOptions::with_prefix(fresh_prefix())
    };
    let broker = NatsBroker::connect(&server.url(), options)
        .await
        .expect("own server answers");
    let mut group = ConsumerSpec::new("reader", "flights");
    group.ack_wait = Duration::from_secs(2);
    let mut deliveries = broker.consume(&group).await.unwrap();
    broker
        .publish(&events("acme", "flights", 0, 3))
        .await
        .unwrap();
    let got = take_acked(&mut deliveries, 3, BOUND).await;
    assert_eq!(got.len(), 3);
    // Acks are sent without waiting for the server: let it take them and
    // write the group's state before the crash.
    wait_until_acked(&broker, "reader").await;

    server.kill();

    // Right after the kill the client may not know yet; either way every
    // call comes back within the bound, with a retryable error.
    for round in 0..5 {
        let started = Instant::now();
        let result = broker
            .publish(&events("acme", "flights", 100 + round, 1))
            .await;
        let took = started.elapsed();
        assert!(took <= BOUND, "publish took {took:?} while down");
        assert!(
            matches!(
                result,
                Err(BrokerError::Unavailable(_) | BrokerError::Timeout(_))
            ),
            "round {round}: {result:?}"
        );
        let started = Instant::now();
        let result = broker
            .request("flights", rpc_request(), Duration::from_secs(1))
            .await;
        assert!(started.elapsed() <= BOUND);
        assert!(
            matches!(
                result,
                Err(RpcError::Broker(BrokerError::Unavailable(_)) | RpcError::Timeout { .. })
            ),
            "{result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the client noticed, the failure is immediate.
    let started = Instant::now();
    let result = broker.publish(&events("acme", "flights", 200, 1)).await;
    assert!(
        matches!(result, Err(BrokerError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    // Opening a consumer is also refused at once.
    assert!(matches!(
        broker.consume(&group).await.err(),
        Some(BrokerError::Unavailable(_))
    ));

    server.restart();

    // The same handle reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = events("acme", "flights", 300, 2);
    loop {
        match broker.publish(&after).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "still failing after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // The consumer opened before the outage resumes: it gets the events
    // published after the restart (and any publish from the outage that
    // the client delivered late), and nothing acked before.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(seen.contains(&300) && seen.contains(&301)) {
        assert!(
            Instant::now() < deadline,
            "consumer did not resume: {seen:?}"
        );
        if let Some(delivery) = recv(&mut deliveries, Duration::from_secs(5)).await {
            let n = decode(&delivery).data["n"].as_u64().unwrap();
            assert!(n >= 100, "an event acked before the outage came back: {n}");
            seen.push(n);
            delivery.acker.ack().await.unwrap();
        }
    }

    // Requests work again too.
    let _serving = broker
        .serve(
            "flights",
            std::sync::Arc::new(Pong) as std::sync::Arc<dyn cairn_messaging::RequestHandler>,
        )
        .await
        .unwrap();
    let reply = broker
        .request("flights", rpc_request(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"pong");
}

/// A server that hangs with its connections open (the client cannot tell
/// it is gone): publish and request still come back within the bound, as
/// timeouts, and the same handle works once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_times_out_instead_of_hanging() {
    let Some(server) = OwnServer::start() else {
        return;
    };
    let request_timeout = Duration::from_secs(2);
    let options = NatsOptions {
        request_timeout,
        ..NatsOptions::with_prefix(fresh_prefix())
    };
    let broker = NatsBroker::connect(&server.url(), options)
        .await
        .expect("own server answers");
    broker
        .publish(&events("acme", "flights", 0, 1))
        .await
        .unwrap();

    server.freeze(true);
    let batch = events("acme", "flights", 1, 3);
    let started = Instant::now();
    let result = broker.publish(&batch).await;
    let took = started.elapsed();
    assert!(matches!(result, Err(BrokerError::Timeout(_))), "{result:?}");
    assert!(
        took >= request_timeout && took <= BOUND,
        "publish took {took:?} against a hung server"
    );
    let started = Instant::now();
    let result = broker
        .request("flights", rpc_request(), Duration::from_secs(1))
        .await;
    assert!(
        matches!(result, Err(RpcError::Timeout { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() <= BOUND);

    server.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match broker.publish(&batch).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing after thaw: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut deliveries = broker
        .consume(&ConsumerSpec::new("reader", "flights"))
        .await
        .unwrap();
    let got = take_acked(&mut deliveries, 4, BOUND).await;
    let mut numbers: Vec<u64> = got.iter().map(|e| e.data["n"].as_u64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![0, 1, 2, 3]);
    assert!(
        recv(&mut deliveries, Duration::from_millis(1500))
            .await
            .is_none(),
        "the batch sent while frozen and re-sent after is stored once"
    );
}

async fn wait_until_acked(broker: &NatsBroker, group: &str) {
    let deadline = Instant::now() + BOUND;
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = broker
            .jetstream()
            .get_consumer_from_stream(group, broker.stream_name())
            .await
            .unwrap();
        if consumer.info().await.unwrap().num_ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "acks not taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

struct Pong;

#[async_trait::async_trait]
impl cairn_messaging::RequestHandler for Pong {
    async fn handle(&self, _: cairn_messaging::RpcRequest) -> bytes::Bytes {
        bytes::Bytes::from_static(b"pong")
    }
}
