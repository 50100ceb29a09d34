//! Behaviour 6: request/reply over a shared queue per service with direct
//! reply-to: replies reach their caller, instances share requests, silence
//! is a timeout, an unserved service is "no responders", and dropping
//! `Serving` stops answering.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_core::TenantId;
use cairn_messaging::{RequestHandler, RequestTransport, RpcError, RpcRequest};
use common::Env;

/// Echoes the request's fields back, tagged with the instance's name.
struct Echo {
    instance: &'static str,
    handled: AtomicUsize,
    delay: Duration,
}

impl Echo {
    fn new(instance: &'static str) -> Arc<Self> {
        Self::slow(instance, Duration::ZERO)
    }

    fn slow(instance: &'static str, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            instance,
            handled: AtomicUsize::new(0),
            delay,
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
        name: "GetFlight".to_owned(),
        tenant: TenantId::new("acme").unwrap(),
        correlation_id: Some("corr-1".to_owned()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        actor: Some("user-9".to_owned()),
        service: None,
        body: Bytes::from(body.to_owned()),
    }
}

fn reply(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_handlers_reply_with_its_context() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("flights");
    let _serving = env.broker.serve(&service, Echo::new("one")).await.unwrap();
    let caller = env.another().await;

    let got = caller
        .request(
            &service,
            request(r#"{"flight":"KL1234"}"#),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let got = reply(&got);
    assert_eq!(got["instance"], "one");
    assert_eq!(got["name"], "GetFlight");
    assert_eq!(got["tenant"], "acme");
    assert_eq!(got["correlation_id"], "corr-1");
    assert_eq!(
        got["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(got["actor"], "user-9");
    assert_eq!(got["body"], r#"{"flight":"KL1234"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_reply() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("flights");
    let _serving = env
        .broker
        .serve(&service, Echo::slow("one", Duration::from_millis(20)))
        .await
        .unwrap();
    let caller = Arc::new(env.another().await);
    let calls = (0..40).map(|i| {
        let caller = caller.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let got = caller
                .request(
                    &service,
                    request(&format!("call-{i}")),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            assert_eq!(reply(&got)["body"], format!("call-{i}"));
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_of_a_service_share_its_requests() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("flights");
    let other = env.another().await;
    let one = Echo::slow("one", Duration::from_millis(30));
    let two = Echo::slow("two", Duration::from_millis(30));
    let _a = env.broker.serve(&service, one.clone()).await.unwrap();
    let _b = other.serve(&service, two.clone()).await.unwrap();
    let caller = Arc::new(env.another().await);

    let calls: Vec<_> = (0..30)
        .map(|i| {
            let caller = caller.clone();
            let service = service.clone();
            tokio::spawn(async move {
                caller
                    .request(&service, request(&format!("{i}")), Duration::from_secs(10))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let (a, b) = (
        one.handled.load(Ordering::SeqCst),
        two.handled.load(Ordering::SeqCst),
    );
    assert_eq!(a + b, 30, "a request was handled twice or not at all");
    assert!(a > 0 && b > 0, "one instance took every request: {a} / {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_times_out() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("flights");
    let _serving = env
        .broker
        .serve(&service, Echo::slow("one", Duration::from_secs(3)))
        .await
        .unwrap();
    let started = Instant::now();
    let got = env
        .broker
        .request(&service, request("{}"), Duration::from_millis(500))
        .await;
    assert!(
        matches!(&got, Err(RpcError::Timeout { service: s, .. }) if *s == service),
        "{got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_service_has_no_responders() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("nobody");
    let started = Instant::now();
    let got = env
        .broker
        .request(&service, request("{}"), Duration::from_secs(5))
        .await;
    assert!(
        matches!(&got, Err(RpcError::NoResponders { service: s }) if *s == service),
        "{got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_serving_stops_answering() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("flights");
    let serving = env.broker.serve(&service, Echo::new("one")).await.unwrap();
    let caller = env.another().await;
    caller
        .request(&service, request("{}"), Duration::from_secs(5))
        .await
        .unwrap();

    drop(serving);
    // The consumer is cancelled in the background: a request racing the
    // drop may still be answered, or wait out its timeout until RabbitMQ
    // has deleted the request queue with its last consumer.
    let dropped_at = Instant::now();
    loop {
        let got = caller
            .request(&service, request("{}"), Duration::from_millis(300))
            .await;
        let racing = dropped_at.elapsed() < Duration::from_secs(1);
        match got {
            Err(RpcError::NoResponders { .. }) => break,
            Err(RpcError::Timeout { .. }) if dropped_at.elapsed() < Duration::from_secs(5) => {}
            Ok(_) if racing => {}
            other => panic!("still answered after Serving was dropped: {other:?}"),
        }
    }

    // Serving again answers again.
    let _serving = env.broker.serve(&service, Echo::new("two")).await.unwrap();
    let got = caller
        .request(&service, request("{}"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply(&got)["instance"], "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_stopping_leaves_the_other_serving() {
    let Some(env) = Env::new().await else { return };
    let service = env.service("flights");
    let other = env.another().await;
    let a = env.broker.serve(&service, Echo::new("one")).await.unwrap();
    let _b = other.serve(&service, Echo::new("two")).await.unwrap();
    a.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let got = env
            .broker
            .request(&service, request("{}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply(&got)["instance"], "two");
    }
}
