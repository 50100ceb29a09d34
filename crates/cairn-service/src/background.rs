//! Background components and the one shutdown order.

use async_trait::async_trait;
use cairn_messaging::{ConsumerHandle, Relay};
use cairn_projection::Projections;
use cairn_saga::TimeoutsHandle;

/// When a component stops, relative to the others. Lower stages stop
/// first: work that produces commands stops before the consumers that
/// handle events, which stop before the relay publishes its last events,
/// which stops before the projections flush their checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Sagas and other work that sends commands on its own.
    Sagas,
    /// Consumers of other services' events.
    Consumers,
    /// The relay publishing this service's events.
    Relay,
    /// Projections (read models and their checkpoints).
    Projections,
}

/// A running background component: a cheap handle that stops it
/// gracefully, finishing the work in hand.
#[async_trait]
pub trait Background: Send {
    /// What it is, for logs (`relay`, `consumer passengers-flight-events`).
    fn name(&self) -> String;
    /// When it stops relative to the others.
    fn stage(&self) -> Stage;
    /// Stops it and waits until its work in hand is done.
    async fn shutdown(self: Box<Self>);
}

/// Stops every component, in [`Stage`] order (components of one stage in
/// the order they were started).
pub async fn shutdown_all(mut components: Vec<Box<dyn Background>>) {
    // Stable: components of one stage keep their start order.
    components.sort_by_key(|c| c.stage());
    for component in components {
        tracing::debug!(component = %component.name(), "stopping");
        component.shutdown().await;
    }
}

#[async_trait]
impl Background for TimeoutsHandle {
    fn name(&self) -> String {
        "saga timeouts".into()
    }
    fn stage(&self) -> Stage {
        Stage::Sagas
    }
    async fn shutdown(self: Box<Self>) {
        TimeoutsHandle::shutdown(*self).await;
    }
}

#[async_trait]
impl Background for ConsumerHandle {
    fn name(&self) -> String {
        format!("consumer {}", self.group())
    }
    fn stage(&self) -> Stage {
        Stage::Consumers
    }
    async fn shutdown(self: Box<Self>) {
        ConsumerHandle::shutdown(*self).await;
    }
}

#[async_trait]
impl Background for Relay {
    fn name(&self) -> String {
        "relay".into()
    }
    fn stage(&self) -> Stage {
        Stage::Relay
    }
    async fn shutdown(self: Box<Self>) {
        Relay::shutdown(*self).await;
    }
}

#[async_trait]
impl Background for Projections {
    fn name(&self) -> String {
        "projections".into()
    }
    fn stage(&self) -> Stage {
        Stage::Projections
    }
    async fn shutdown(self: Box<Self>) {
        Projections::shutdown(&self).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Probe(&'static str, Stage, Arc<Mutex<Vec<&'static str>>>);

    #[async_trait]
    impl Background for Probe {
        fn name(&self) -> String {
            self.0.into()
        }
        fn stage(&self) -> Stage {
            self.1
        }
        async fn shutdown(self: Box<Self>) {
            self.2.lock().unwrap().push(self.0);
        }
    }

    #[tokio::test]
    async fn components_stop_in_stage_order_then_start_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = |name, stage| Box::new(Probe(name, stage, log.clone())) as Box<dyn Background>;
        shutdown_all(vec![
            p("projections", Stage::Projections),
            p("relay", Stage::Relay),
            p("consumer a", Stage::Consumers),
            p("sagas", Stage::Sagas),
            p("consumer b", Stage::Consumers),
        ])
        .await;
        assert_eq!(
            *log.lock().unwrap(),
            ["sagas", "consumer a", "consumer b", "relay", "projections"]
        );
    }
}
