//! Behaviour 3: groups on one source each get every event; the instances of
//! one group share them, each event going to exactly one instance.
//! Behaviour 5: a group only gets what is published once its queue exists,
//! which `declare` creates ahead of the first consumer.

mod common;

use std::{collections::BTreeSet, time::Duration};

use cairn_messaging::Broker;
use common::{Env, events, n_of, recv, take_acked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_one_source_each_get_every_event() {
    let Some(env) = Env::new().await else { return };
    let mut audit = env
        .broker
        .consume(&env.spec("audit-log", "flights"))
        .await
        .unwrap();
    let mut board = env
        .broker
        .consume(&env.spec("board", "flights"))
        .await
        .unwrap();
    env.broker.publish(&events("flights", 15)).await.unwrap();

    let all: Vec<u64> = (0..15).collect();
    assert_eq!(take_acked(&mut audit, 15).await, all);
    assert_eq!(take_acked(&mut board, 15).await, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_of_a_group_share_its_events() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("workers", "flights");
    let other = env.another().await;
    let mut first = env.broker.consume(&spec).await.unwrap();
    let mut second = other.consume(&spec).await.unwrap();
    let count = 60u64;
    env.broker.publish(&events("flights", count)).await.unwrap();

    let collect = |mut deliveries: Box<dyn cairn_messaging::Deliveries>| async move {
        let mut seen = Vec::new();
        // Each instance drains until the group has gone quiet for it.
        while let Some(delivery) = recv(&mut deliveries, Duration::from_secs(2)).await {
            seen.push(n_of(&delivery));
            // Slow enough that both instances get a share.
            tokio::time::sleep(Duration::from_millis(5)).await;
            delivery.acker.ack().await.unwrap();
        }
        seen
    };
    let (a, b) = tokio::join!(tokio::spawn(collect(first)), tokio::spawn(collect(second)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "one instance got nothing: {a:?} / {b:?}"
    );
    assert_eq!(a.len() + b.len(), count as usize, "an event went to both");
    let union: BTreeSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(union, (0..count).collect());
    // Each instance still sees its share in publish order.
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert!(b.windows(2).all(|w| w[0] < w[1]));
    // Nothing left over.
    first = env.broker.consume(&spec).await.unwrap();
    assert!(recv(&mut first, Duration::from_millis(500)).await.is_none());
    second = other.consume(&spec).await.unwrap();
    assert!(
        recv(&mut second, Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_misses_what_was_published_before_its_queue_existed() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("late", "flights");
    // Nobody has declared `late`: RabbitMQ routes these nowhere.
    env.broker.publish(&events("flights", 5)).await.unwrap();
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    assert!(
        recv(&mut deliveries, Duration::from_millis(700))
            .await
            .is_none()
    );

    // From the first consume on, the queue keeps everything.
    env.broker.publish(&events("flights", 3)).await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 3).await, vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_makes_a_new_group_keep_events_before_it_first_consumes() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("early", "flights");
    env.broker.declare(&spec).await.unwrap();
    env.broker.declare(&spec).await.unwrap(); // idempotent
    env.broker.publish(&events("flights", 8)).await.unwrap();
    assert_eq!(env.ready("early").await, 8);

    // The first consumer starts at the oldest kept event.
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    assert_eq!(
        take_acked(&mut deliveries, 8).await,
        (0..8).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_where_it_left_off() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("resumer", "flights");
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 6)).await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 3).await, vec![0, 1, 2]);
    drop(deliveries);

    // Acked events are gone; the rest waits for the next consumer.
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 3).await, vec![3, 4, 5]);
    assert!(
        recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
}
