//! Behaviour 1: publish returns once RabbitMQ holds the batch; a group of a
//! source receives every event of that source, of any tenant, in publish
//! order, and never more than its prefetch at once. Behaviour 2: RabbitMQ
//! does not drop a re-sent event id.

mod common;

use std::time::Duration;

use cairn_messaging::{Broker, CONTENT_TYPE};
use common::{Env, decode, event, events, n_of, recv, take_acked};
use lapin::{Connection, ConnectionProperties, options::BasicGetOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_gets_every_event_of_its_source_in_publish_order() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("readers", "flights");
    let mut deliveries = env.broker.consume(&spec).await.unwrap();

    let mut batch = events("flights", 20);
    // Other sources' events never reach the group.
    batch.insert(5, event("passengers", "acme", "Happened", 1000));
    batch.push(event("audit", "acme", "Happened", 1001));
    env.broker.publish(&batch).await.unwrap();

    let seen = take_acked(&mut deliveries, 20).await;
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert!(
        recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_once_the_queue_holds_the_whole_batch() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("holders", "flights");
    env.broker.declare(&spec).await.unwrap();

    let batch = events("flights", 50);
    env.broker.publish(&batch).await.unwrap();
    // No wait: confirmed means already enqueued.
    assert_eq!(env.ready("holders").await, 50);

    // Messages are persistent CloudEvents with the event id as message id.
    let connection = Connection::connect(&common::url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let got = channel
        .basic_get(
            format!("{}.holders", env.prefix).into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a message");
    let properties = &got.delivery.properties;
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some(CONTENT_TYPE)
    );
    assert_eq!(
        properties.message_id().as_ref().map(|m| m.to_string()),
        Some(batch[0].id.to_string())
    );
    assert_eq!(
        got.delivery.routing_key.as_str(),
        format!("{}.acme.flights.Happened", env.prefix)
    );
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_is_a_no_op() {
    let Some(env) = Env::new().await else { return };
    env.broker.publish(&[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_the_unacked_messages_of_an_instance() {
    let Some(env) = Env::new().await else { return };
    let mut spec = env.spec("slow", "flights");
    spec.prefetch = 3;
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 10)).await.unwrap();

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            recv(&mut deliveries, Duration::from_secs(5))
                .await
                .expect("within prefetch"),
        );
    }
    assert!(
        recv(&mut deliveries, Duration::from_millis(700))
            .await
            .is_none(),
        "a fourth message came with three unacked and prefetch 3"
    );
    assert_eq!(held.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1, 2]);

    // Acking one lets exactly one more in.
    held.remove(0).acker.ack().await.unwrap();
    let fourth = recv(&mut deliveries, Duration::from_secs(5))
        .await
        .expect("after an ack");
    assert_eq!(n_of(&fourth), 3);
    assert!(
        recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
    fourth.acker.ack().await.unwrap();
    for delivery in held {
        delivery.acker.ack().await.unwrap();
    }
    assert_eq!(take_acked(&mut deliveries, 6).await, vec![4, 5, 6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_sent_event_is_delivered_again() {
    // RabbitMQ has no broker-side dedupe: the consumer's inbox drops the
    // second copy.
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("dupes", "flights");
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    let once = event("flights", "acme", "Happened", 7);
    env.broker
        .publish(std::slice::from_ref(&once))
        .await
        .unwrap();
    env.broker
        .publish(std::slice::from_ref(&once))
        .await
        .unwrap();

    for _ in 0..2 {
        let delivery = recv(&mut deliveries, Duration::from_secs(5))
            .await
            .expect("a copy");
        assert_eq!(decode(&delivery), once);
        assert_eq!(delivery.delivery_count, 1);
        delivery.acker.ack().await.unwrap();
    }
    assert!(
        recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused() {
    let Some(env) = Env::new().await else { return };
    let bad = cairn_messaging::ConsumerSpec::new("Bad.Group", "flights");
    assert!(matches!(
        env.broker.consume(&bad).await,
        Err(cairn_messaging::BrokerError::Refused(_))
    ));
    assert!(matches!(
        env.broker
            .declare(&cairn_messaging::ConsumerSpec::new("ok", "a*"))
            .await,
        Err(cairn_messaging::BrokerError::Refused(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_confirm_is_refused() {
    use lapin::{
        options::{QueueBindOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable},
    };
    let Some(env) = Env::new().await else { return };
    // A group queue that refuses publishes once it holds two messages:
    // RabbitMQ nacks what it cannot enqueue.
    let _ = env.spec("full", "flights");
    let connection = Connection::connect(&common::url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(2));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = format!("{}.full", env.prefix);
    channel
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            env.broker.exchange().into(),
            format!("{}.*.flights.*", env.prefix).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    env.broker.publish(&events("flights", 2)).await.unwrap();
    let refused = env.broker.publish(&events("flights", 3)).await;
    assert!(
        matches!(refused, Err(cairn_messaging::BrokerError::Refused(_))),
        "{refused:?}"
    );
    // The handle keeps working for what can be accepted.
    env.broker.publish(&events("audit", 1)).await.unwrap();
    assert_eq!(env.ready("full").await, 2);
}
