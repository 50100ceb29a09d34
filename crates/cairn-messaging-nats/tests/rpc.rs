//! Request/reply over core NATS.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_messaging::{RequestHandler, RequestTransport, RpcError, RpcRequest};
use common::{broker, cleanup, stored, tenant};
use tokio::time::Instant;

/// Answers with everything it was sent, and which instance it is.
struct Echo {
    instance: &'static str,
    handled: AtomicUsize,
    delay: Duration,
}

impl Echo {
    fn new(instance: &'static str) -> Arc<Self> {
        Arc::new(Self {
            instance,
            handled: AtomicUsize::new(0),
            delay: Duration::ZERO,
        })
    }
}

#[async_trait]
impl RequestHandler for Echo {
    async fn handle(&self, request: RpcRequest) -> Bytes {
        self.handled.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let body = serde_json::json!({
            "instance": self.instance,
            "name": request.name,
            "tenant": request.tenant.as_str(),
            "correlation_id": request.correlation_id,
            "traceparent": request.traceparent,
            "actor": request.actor,
            "body": String::from_utf8_lossy(&request.body),
        });
        Bytes::from(serde_json::to_vec(&body).unwrap())
    }
}

fn request(body: &str) -> RpcRequest {
    RpcRequest {
        name: "GetFlightForBooking".to_owned(),
        tenant: tenant("acme"),
        correlation_id: Some("corr-1".to_owned()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        actor: Some("user:42".to_owned()),
        service: None,
        body: Bytes::from(body.to_owned()),
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Behaviour 6: A request reaches the serving handler with its name, tenant and
/// context, and the caller gets the handler's body back. The event stream
/// does not capture request subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_handlers_reply() {
    let Some(broker) = broker().await else { return };
    let _serving = broker.serve("flights", Echo::new("one")).await.unwrap();
    let reply = broker
        .request("flights", request(r#"{"booking":"b-1"}"#), TIMEOUT)
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({
            "instance": "one",
            "name": "GetFlightForBooking",
            "tenant": "acme",
            "correlation_id": "corr-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "actor": "user:42",
            "body": r#"{"booking":"b-1"}"#,
        })
    );
    let bare = RpcRequest {
        correlation_id: None,
        traceparent: None,
        actor: None,
        service: None,
        ..request("{}")
    };
    let reply = broker.request("flights", bare, TIMEOUT).await.unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["correlation_id"], serde_json::Value::Null);
    assert_eq!(reply["actor"], serde_json::Value::Null);
    assert_eq!(stored(&broker).await, 0, "requests are not events");
    cleanup(&broker).await;
}

/// Behaviour 6: Instances of one service share its requests: each request is
/// answered by exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_a_service_share_its_requests() {
    let Some(broker) = broker().await else { return };
    let (one, two) = (Echo::new("one"), Echo::new("two"));
    let _a = broker.serve("flights", one.clone()).await.unwrap();
    let _b = broker.serve("flights", two.clone()).await.unwrap();
    let total = 40;
    let mut by_one = 0;
    for i in 0..total {
        let reply = broker
            .request("flights", request(&i.to_string()), TIMEOUT)
            .await
            .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        if reply["instance"] == "one" {
            by_one += 1;
        }
    }
    let handled = (
        one.handled.load(Ordering::SeqCst),
        two.handled.load(Ordering::SeqCst),
    );
    assert_eq!(handled.0 + handled.1, total, "each request handled once");
    assert_eq!(handled.0, by_one);
    assert!(handled.0 > 0 && handled.1 > 0, "both served: {handled:?}");
    cleanup(&broker).await;
}

/// Behaviour 6: A handler slower than the caller's timeout: `Timeout`, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_is_a_timeout() {
    let Some(broker) = broker().await else { return };
    let slow = Arc::new(Echo {
        instance: "slow",
        handled: AtomicUsize::new(0),
        delay: Duration::from_secs(3),
    });
    let _serving = broker.serve("flights", slow).await.unwrap();
    let started = Instant::now();
    let timeout = Duration::from_millis(500);
    let result = broker.request("flights", request("{}"), timeout).await;
    let took = started.elapsed();
    assert_eq!(
        result,
        Err(RpcError::Timeout {
            service: "flights".to_owned(),
            timeout
        })
    );
    assert!(took >= timeout && took < Duration::from_secs(2), "{took:?}");
    cleanup(&broker).await;
}

/// Behaviour 6: Nobody serving: `NoResponders`, at once (the server says so).
/// Dropping `Serving` stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_serving_is_no_responders_and_dropping_serving_stops_answering() {
    let Some(broker) = broker().await else { return };
    let started = Instant::now();
    let result = broker.request("flights", request("{}"), TIMEOUT).await;
    assert_eq!(
        result,
        Err(RpcError::NoResponders {
            service: "flights".to_owned()
        })
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let echo = Echo::new("one");
    let serving = broker.serve("flights", echo.clone()).await.unwrap();
    broker
        .request("flights", request("{}"), TIMEOUT)
        .await
        .unwrap();
    drop(serving);
    let result = broker.request("flights", request("{}"), TIMEOUT).await;
    assert_eq!(
        result,
        Err(RpcError::NoResponders {
            service: "flights".to_owned()
        })
    );
    assert_eq!(echo.handled.load(Ordering::SeqCst), 1);

    // `stop` does the same as dropping.
    let serving = broker.serve("flights", echo.clone()).await.unwrap();
    broker
        .request("flights", request("{}"), TIMEOUT)
        .await
        .unwrap();
    serving.stop();
    assert!(matches!(
        broker.request("flights", request("{}"), TIMEOUT).await,
        Err(RpcError::NoResponders { .. })
    ));
    cleanup(&broker).await;
}

/// Header values that would break the protocol, and bad service names, are
/// refused before sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused() {
    let Some(broker) = broker().await else { return };
    let mut bad = request("{}");
    bad.actor = Some("evil\r\nCairn-Tenant: other".to_owned());
    assert!(matches!(
        broker.request("flights", bad, TIMEOUT).await,
        Err(RpcError::Broker(cairn_messaging::BrokerError::Refused(_)))
    ));
    assert!(matches!(
        broker.request("no.dots", request("{}"), TIMEOUT).await,
        Err(RpcError::Broker(cairn_messaging::BrokerError::Refused(_)))
    ));
    assert!(broker.serve("Bad", Echo::new("x")).await.is_err());
    cleanup(&broker).await;
}
