//! Behaviour 4: ack removes a message; nack(delay) gives it back no sooner
//! than the delay; an instance that goes away without acking has its
//! messages redelivered to another; `delivery_count` shows redeliveries.

mod common;

use std::time::{Duration, Instant};

use cairn_messaging::Broker;
use common::{Env, events, n_of, recv, take_acked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_message_is_gone() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("ackers", "flights");
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 2)).await.unwrap();
    let first = recv(&mut deliveries, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.delivery_count, 1);
    first.acker.ack().await.unwrap();
    drop(deliveries); // the second, unacked, goes back

    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    let again = recv(&mut deliveries, Duration::from_secs(5)).await.unwrap();
    assert_eq!(n_of(&again), 1, "the acked message came back");
    again.acker.ack().await.unwrap();
    assert!(
        recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(env.ready("ackers").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_comes_back_after_the_delay_and_counts_the_redelivery() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("retriers", "flights");
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 1)).await.unwrap();

    let first = recv(&mut deliveries, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.delivery_count, 1);
    let delay = Duration::from_millis(1200);
    let nacked_at = Instant::now();
    first.acker.nack(delay).await.unwrap();

    let again = recv(&mut deliveries, Duration::from_secs(5))
        .await
        .expect("redelivered");
    let after = nacked_at.elapsed();
    assert!(
        after >= delay,
        "redelivered after {after:?}, sooner than {delay:?}"
    );
    assert_eq!(n_of(&again), 0);
    assert_eq!(again.delivery_count, 2);

    // Without a delay it comes straight back.
    again.acker.nack(Duration::ZERO).await.unwrap();
    let third = recv(&mut deliveries, Duration::from_secs(2))
        .await
        .expect("redelivered");
    assert_eq!(
        third.delivery_count, 2,
        "classic queues only flag redeliveries"
    );
    third.acker.ack().await.unwrap();
    assert!(
        recv(&mut deliveries, Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_nack_holds_even_when_the_consumer_goes_away() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("leavers", "flights");
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 1)).await.unwrap();
    let first = recv(&mut deliveries, Duration::from_secs(5)).await.unwrap();
    let delay = Duration::from_millis(1500);
    let nacked_at = Instant::now();
    first.acker.nack(delay).await.unwrap();
    drop(deliveries);

    let other = env.another().await;
    let mut deliveries = other.consume(&spec).await.unwrap();
    let again = recv(&mut deliveries, Duration::from_secs(5))
        .await
        .expect("redelivered");
    let after = nacked_at.elapsed();
    assert!(
        after >= delay,
        "redelivered after {after:?}, sooner than {delay:?}"
    );
    assert_eq!(again.delivery_count, 2);
    again.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_goes_away_without_acking_has_its_messages_redelivered() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("crashers", "flights");
    let other = env.another().await;
    let mut doomed = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 5)).await.unwrap();
    // The doomed instance takes everything and acks nothing.
    let mut taken = Vec::new();
    for _ in 0..5 {
        taken.push(recv(&mut doomed, Duration::from_secs(5)).await.unwrap());
    }
    let mut survivor = other.consume(&spec).await.unwrap();
    assert!(
        recv(&mut survivor, Duration::from_millis(500))
            .await
            .is_none()
    );

    // The instance dies: its connection closes.
    env.broker.close().await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let delivery = recv(&mut survivor, Duration::from_secs(5))
            .await
            .expect("redelivered");
        assert_eq!(delivery.delivery_count, 2);
        seen.push(n_of(&delivery));
        delivery.acker.ack().await.unwrap();
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    drop(taken);
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_and_deliveries_give_their_messages_back() {
    let Some(env) = Env::new().await else { return };
    let spec = env.spec("droppers", "flights");
    let other = env.another().await;
    let mut dropper = env.broker.consume(&spec).await.unwrap();
    let mut survivor = other.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 20)).await.unwrap();
    // The dropper holds whatever it got, then drops it all unsettled.
    let mut held = Vec::new();
    while let Some(delivery) = recv(&mut dropper, Duration::from_millis(500)).await {
        held.push(delivery);
    }
    let mut seen: Vec<u64> = Vec::new();
    while let Some(delivery) = recv(&mut survivor, Duration::from_millis(300)).await {
        seen.push(n_of(&delivery));
        delivery.acker.ack().await.unwrap();
    }
    assert!(!held.is_empty(), "the dropper got nothing");
    let held_count = held.len();
    drop(held);
    drop(dropper);
    let mut redelivered = 0;
    while let Some(delivery) = recv(&mut survivor, Duration::from_secs(2)).await {
        assert_eq!(delivery.delivery_count, 2);
        redelivered += 1;
        seen.push(n_of(&delivery));
        delivery.acker.ack().await.unwrap();
    }
    assert_eq!(redelivered, held_count);
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_unsettled_past_ack_wait_is_given_back() {
    let Some(env) = Env::new().await else { return };
    let mut spec = env.spec("stuck", "flights");
    spec.ack_wait = Duration::from_millis(800);
    let mut deliveries = env.broker.consume(&spec).await.unwrap();
    env.broker.publish(&events("flights", 1)).await.unwrap();

    let stuck = recv(&mut deliveries, Duration::from_secs(5)).await.unwrap();
    let handed_at = Instant::now();
    let again = recv(&mut deliveries, Duration::from_secs(5))
        .await
        .expect("given back");
    assert!(handed_at.elapsed() >= Duration::from_millis(700));
    assert_eq!(again.delivery_count, 2);
    // The late ack is refused: the message is no longer this delivery's.
    assert!(matches!(
        stuck.acker.ack().await,
        Err(cairn_messaging::BrokerError::Refused(_))
    ));
    again.acker.ack().await.unwrap();
    assert_eq!(take_acked(&mut deliveries, 0).await, Vec::<u64>::new());
    assert!(
        recv(&mut deliveries, Duration::from_millis(1200))
            .await
            .is_none()
    );
}
