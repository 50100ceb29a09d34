//! Events on JetStream: durable publish with broker-side dedupe, consumer
//! groups (competing instances, independent groups), ack / nack / ack wait,
//! and where a new group starts.

mod common;

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::consumer::PullConsumer;
use cairn_messaging::{Broker, BrokerError, ConsumerSpec};
use cairn_messaging_nats::{NatsBroker, NatsOptions};
use common::{broker, broker_with, cleanup, decode, event, events, recv, stored, take_acked};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

fn spec(group: &str, source: &str) -> ConsumerSpec {
    ConsumerSpec::new(group, source)
}

fn numbers(events: &[cairn_messaging::IntegrationEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.data["n"].as_u64().unwrap())
        .collect()
}

async fn consumer_info(broker: &NatsBroker, group: &str) -> async_nats::jetstream::consumer::Info {
    let mut consumer: PullConsumer = broker
        .jetstream()
        .get_consumer_from_stream(group, broker.stream_name())
        .await
        .expect("consumer exists");
    consumer.info().await.expect("consumer info").clone()
}

/// Behaviour 1: `publish` returns after JetStream stored every event; a group on
/// source S receives exactly S's events, of every tenant, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_receives_every_event_of_its_source_in_publish_order() {
    let Some(broker) = broker().await else { return };
    let mut batch = Vec::new();
    for n in 0..30 {
        let tenant = if n % 2 == 0 { "acme" } else { "globex" };
        batch.push(event(tenant, "flights", "FlightScheduled", n));
        batch.push(event(tenant, "crew", "CrewAssigned", 1000 + n));
    }
    broker.publish(&batch).await.unwrap();
    assert_eq!(stored(&broker).await, 60, "acknowledged means stored");
    // An empty batch is a no-op.
    broker.publish(&[]).await.unwrap();

    let mut deliveries = broker
        .consume(&spec("audit-flights", "flights"))
        .await
        .unwrap();
    let got = take_acked(&mut deliveries, 30, WAIT).await;
    assert_eq!(numbers(&got), (0..30).collect::<Vec<_>>());
    let expected: Vec<_> = batch.iter().filter(|e| e.source == "flights").collect();
    for (got, want) in got.iter().zip(expected) {
        assert_eq!(got, want, "the body is the event as published");
    }
    assert!(
        recv(&mut deliveries, QUIET).await.is_none(),
        "no event of another source"
    );
    cleanup(&broker).await;
}

/// Behaviour 1: A batch larger than the publish window (1024 in flight) is stored
/// whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_pipelined_and_stored_in_order() {
    let Some(broker) = broker().await else { return };
    let total = 2500;
    broker
        .publish(&events("acme", "flights", 0, total))
        .await
        .unwrap();
    assert_eq!(stored(&broker).await, total);
    let mut group = spec("bulk", "flights");
    group.prefetch = 500;
    let mut deliveries = broker.consume(&group).await.unwrap();
    let got = take_acked(&mut deliveries, total as usize, WAIT).await;
    assert_eq!(numbers(&got), (0..total).collect::<Vec<_>>());
    cleanup(&broker).await;
}

/// Behaviour 1: At most `prefetch` messages are handed out and not yet acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_the_unacknowledged_messages() {
    let Some(broker) = broker().await else { return };
    broker
        .publish(&events("acme", "flights", 0, 10))
        .await
        .unwrap();
    let mut narrow = spec("passengers-flights", "flights");
    narrow.prefetch = 3;
    let mut deliveries = broker.consume(&narrow).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(recv(&mut deliveries, WAIT).await.expect("within prefetch"));
    }
    assert!(
        recv(&mut deliveries, QUIET).await.is_none(),
        "a fourth message while three are unacked"
    );
    held.remove(0).acker.ack().await.unwrap();
    let fourth = recv(&mut deliveries, WAIT)
        .await
        .expect("room for one more");
    assert_eq!(decode(&fourth).data["n"], 3);
    assert!(recv(&mut deliveries, QUIET).await.is_none());
    assert_eq!(
        consumer_info(&broker, "passengers-flights")
            .await
            .num_ack_pending,
        3
    );
    cleanup(&broker).await;
}

/// Behaviour 2: The same event id published twice is stored once (`Nats-Msg-Id`),
/// whether re-sent in a later batch or twice in one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_event_id_is_dropped_by_the_broker() {
    let Some(broker) = broker().await else { return };
    let first = events("acme", "flights", 0, 3);
    broker.publish(&first).await.unwrap();
    broker.publish(&first).await.unwrap();
    let again = event("acme", "flights", "FlightScheduled", 3);
    broker
        .publish(&[again.clone(), again.clone()])
        .await
        .unwrap();
    assert_eq!(stored(&broker).await, 4);

    let mut deliveries = broker.consume(&spec("g", "flights")).await.unwrap();
    let got = take_acked(&mut deliveries, 4, WAIT).await;
    assert_eq!(numbers(&got), vec![0, 1, 2, 3]);
    assert!(recv(&mut deliveries, QUIET).await.is_none(), "no duplicate");
    cleanup(&broker).await;
}

/// Behaviour 3: Two groups on one source each receive every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_receive_every_event() {
    let Some(broker) = broker().await else { return };
    let mut a = broker.consume(&spec("group-a", "flights")).await.unwrap();
    let mut b = broker.consume(&spec("group-b", "flights")).await.unwrap();
    broker
        .publish(&events("acme", "flights", 0, 20))
        .await
        .unwrap();
    let all: Vec<u64> = (0..20).collect();
    assert_eq!(numbers(&take_acked(&mut a, 20, WAIT).await), all);
    assert_eq!(numbers(&take_acked(&mut b, 20, WAIT).await), all);
    cleanup(&broker).await;
}

/// Behaviour 3: Two instances of one group share its events: each event goes to
/// exactly one of them while both ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_a_group_share_its_events() {
    let Some(broker) = broker().await else { return };
    let group = spec("shared", "flights");
    let one = broker.consume(&group).await.unwrap();
    let two = broker.consume(&group).await.unwrap();
    let total = 200u64;
    broker
        .publish(&events("acme", "flights", 0, total))
        .await
        .unwrap();

    let collect = |mut deliveries: Box<dyn cairn_messaging::Deliveries>| async move {
        let mut seen = Vec::new();
        while let Some(delivery) = recv(&mut deliveries, Duration::from_secs(3)).await {
            seen.push(decode(&delivery).data["n"].as_u64().unwrap());
            delivery.acker.ack().await.unwrap();
        }
        seen
    };
    let (seen_one, seen_two) = tokio::join!(collect(one), collect(two));
    let union: HashSet<u64> = seen_one.iter().chain(&seen_two).copied().collect();
    assert_eq!(union.len() as u64, total, "every event delivered");
    assert_eq!(
        (seen_one.len() + seen_two.len()) as u64,
        total,
        "no event delivered twice"
    );
    assert!(
        !seen_one.is_empty() && !seen_two.is_empty(),
        "both instances got work: {} / {}",
        seen_one.len(),
        seen_two.len()
    );
    cleanup(&broker).await;
}

/// Behaviour 4: An acked message is gone for the group: nothing comes back after
/// the ack wait, even to a fresh instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_message_is_not_delivered_again() {
    let Some(broker) = broker().await else { return };
    let mut group = spec("acking", "flights");
    group.ack_wait = Duration::from_secs(1);
    let mut deliveries = broker.consume(&group).await.unwrap();
    broker
        .publish(&events("acme", "flights", 0, 5))
        .await
        .unwrap();
    take_acked(&mut deliveries, 5, WAIT).await;
    drop(deliveries);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut fresh = broker.consume(&group).await.unwrap();
    assert!(
        recv(&mut fresh, QUIET).await.is_none(),
        "acked messages came back"
    );
    let info = consumer_info(&broker, "acking").await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    cleanup(&broker).await;
}

/// Behaviour 4: A nacked message comes back no sooner than its delay, with its
/// delivery count raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_comes_back_after_its_delay() {
    let Some(broker) = broker().await else { return };
    let mut deliveries = broker.consume(&spec("retrying", "flights")).await.unwrap();
    broker
        .publish(&events("acme", "flights", 0, 1))
        .await
        .unwrap();
    let first = recv(&mut deliveries, WAIT).await.unwrap();
    assert_eq!(first.delivery_count, 1);
    let delay = Duration::from_millis(1500);
    let nacked_at = Instant::now();
    first.acker.nack(delay).await.unwrap();
    let again = recv(&mut deliveries, WAIT).await.expect("redelivered");
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before {delay:?}"
    );
    assert_eq!(again.delivery_count, 2);
    assert_eq!(decode(&again).data["n"], 0);
    // A zero delay gives it back at once.
    let nacked_at = Instant::now();
    again.acker.nack(Duration::ZERO).await.unwrap();
    let third = recv(&mut deliveries, WAIT).await.expect("redelivered");
    assert!(nacked_at.elapsed() < Duration::from_secs(2));
    assert_eq!(third.delivery_count, 3);
    third.acker.ack().await.unwrap();
    assert!(recv(&mut deliveries, QUIET).await.is_none());
    cleanup(&broker).await;
}

/// Behaviour 4: An instance that drops its deliveries without settling them (it
/// died): after the ack wait another instance gets them, counted as a
/// redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_dead_instance_go_to_another_after_the_ack_wait() {
    let Some(broker) = broker().await else { return };
    let mut group = spec("failover", "flights");
    group.ack_wait = Duration::from_secs(2);
    let mut dying = broker.consume(&group).await.unwrap();
    broker
        .publish(&events("acme", "flights", 0, 3))
        .await
        .unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(recv(&mut dying, WAIT).await.unwrap());
    }
    let died_at = Instant::now();
    drop(taken);
    drop(dying);

    let mut survivor = broker.consume(&group).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let delivery = recv(&mut survivor, WAIT).await.expect("redelivered");
        assert!(
            died_at.elapsed() >= Duration::from_millis(1900),
            "redelivered after {:?}, before the ack wait",
            died_at.elapsed()
        );
        assert_eq!(delivery.delivery_count, 2);
        got.push(decode(&delivery).data["n"].as_u64().unwrap());
        delivery.acker.ack().await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2]);
    cleanup(&broker).await;
}

/// Behaviour 5: A group opened after events were published starts at the oldest
/// kept one; a group that already exists resumes where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_at_the_oldest_message_and_an_old_one_resumes() {
    let Some(broker) = broker().await else { return };
    broker
        .publish(&events("acme", "flights", 0, 5))
        .await
        .unwrap();
    let mut early = broker.consume(&spec("early", "flights")).await.unwrap();
    assert_eq!(
        numbers(&take_acked(&mut early, 5, WAIT).await),
        vec![0, 1, 2, 3, 4]
    );
    drop(early);
    broker
        .publish(&events("acme", "flights", 5, 5))
        .await
        .unwrap();

    let mut late = broker.consume(&spec("late", "flights")).await.unwrap();
    let all: Vec<u64> = (0..10).collect();
    assert_eq!(numbers(&take_acked(&mut late, 10, WAIT).await), all);

    let mut early = broker.consume(&spec("early", "flights")).await.unwrap();
    assert_eq!(
        numbers(&take_acked(&mut early, 5, WAIT).await),
        vec![5, 6, 7, 8, 9]
    );
    assert!(recv(&mut early, QUIET).await.is_none());
    cleanup(&broker).await;
}

/// Connecting again with other settings updates the stream in place; a
/// group keeps its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_creates_or_updates_the_stream() {
    let Some(broker) = broker().await else { return };
    let mut stream = broker
        .jetstream()
        .get_stream(broker.stream_name())
        .await
        .unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, vec![format!("{}.*.*.*", broker.prefix())]);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );

    let options = NatsOptions {
        duplicate_window: Duration::from_secs(30),
        stream_max_age: Duration::from_secs(3600),
        ..broker.options().clone()
    };
    let again = broker_with(options).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.duplicate_window, Duration::from_secs(30));
    assert_eq!(config.max_age, Duration::from_secs(3600));

    let mut reader = spec("reader", "flights");
    reader.prefetch = 5;
    again.consume(&reader).await.unwrap();
    reader.prefetch = 7;
    reader.ack_wait = Duration::from_secs(9);
    again.consume(&reader).await.unwrap();
    let info = consumer_info(&again, "reader").await;
    assert_eq!(
        (info.config.max_ack_pending, info.config.ack_wait),
        (7, Duration::from_secs(9)),
        "re-opening a group applies its new prefetch and ack wait"
    );
    let other = again.consume(&spec("reader", "crew")).await.err();
    assert!(
        matches!(other, Some(BrokerError::Refused(_))),
        "a group cannot change its source: {other:?}"
    );
    cleanup(&broker).await;
}

/// Bad names are refused before anything reaches the server; an absent
/// server is `Unavailable`, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_absent_servers_are_reported() {
    for prefix in ["", "Cairn", "a b", "a.*"] {
        let refused = NatsBroker::connect(&common::url(), NatsOptions::with_prefix(prefix)).await;
        assert!(
            matches!(refused, Err(BrokerError::Refused(_))),
            "{prefix:?}"
        );
    }
    for url in ["", " , ", "tls://127.0.0.1:4222", "nats://bad host:4222"] {
        let refused = NatsBroker::connect(url, NatsOptions::default()).await;
        assert!(
            matches!(refused, Err(BrokerError::Refused(_))),
            "{url:?}: {refused:?}"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let absent =
        NatsBroker::connect(&format!("nats://127.0.0.1:{port}"), NatsOptions::default()).await;
    assert!(
        matches!(absent, Err(BrokerError::Unavailable(_))),
        "{absent:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let Some(broker) = broker().await else { return };
    let mut dotted = event("acme", "flights", "Flight.Scheduled", 1);
    let batch = [
        event("acme", "flights", "FlightScheduled", 0),
        dotted.clone(),
    ];
    assert!(matches!(
        broker.publish(&batch).await,
        Err(BrokerError::Refused(_))
    ));
    dotted.event_type = "FlightScheduled".to_owned();
    dotted.source = "no.dots".to_owned();
    assert!(matches!(
        broker.publish(&[dotted]).await,
        Err(BrokerError::Refused(_))
    ));
    assert_eq!(stored(&broker).await, 0, "a refused batch sends nothing");
    for (group, source) in [("Bad", "flights"), ("ok", "no.dots"), ("ok", "")] {
        let refused = broker.consume(&spec(group, source)).await;
        assert!(
            matches!(refused, Err(BrokerError::Refused(_))),
            "{group} {source}"
        );
    }
    cleanup(&broker).await;
}

/// A stream deleted behind the broker's back (a server that lost its
/// store) is created again by the next publish, and an open consumer opens
/// its group again and goes on receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_and_group_come_back() {
    let Some(broker) = broker().await else { return };
    let mut deliveries = broker.consume(&spec("phoenix", "flights")).await.unwrap();
    broker
        .publish(&events("acme", "flights", 0, 2))
        .await
        .unwrap();
    take_acked(&mut deliveries, 2, WAIT).await;

    broker
        .jetstream()
        .delete_stream(broker.stream_name())
        .await
        .unwrap();
    broker
        .publish(&events("acme", "flights", 2, 1))
        .await
        .unwrap();
    assert_eq!(stored(&broker).await, 1);
    let got = take_acked(&mut deliveries, 1, Duration::from_secs(30)).await;
    assert_eq!(numbers(&got), vec![2]);
    cleanup(&broker).await;
}
