//! The one shape of a background component.
//!
//! A component is started from its typed options and runs as tokio tasks;
//! what the caller keeps is a [`Running`] handle: its status as a watch
//! ([`status`](Running::status), [`watch`](Running::watch),
//! [`wait_until`](Running::wait_until)) and a graceful
//! [`shutdown`](Running::shutdown) that tells the tasks to stop and waits
//! until they have finished the work in hand. Relay, consumers, saga
//! timeouts, each projection's runner and the revoked-token list's
//! refresher are all `Running`; `Projections`, which stops and restarts
//! its runners one by one, takes part in the same [`Background`] order.
//!
//! The runtime holds every component as a `Box<dyn Background>` and stops
//! them with [`shutdown_all`], in the one order [`Stage`] declares.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

/// When a component stops, relative to the others. Lower stages stop
/// first: work that produces commands stops before the consumers that
/// handle events, which stop before the relay publishes its last events,
/// which stops before the projections flush their checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Sagas and other work that sends commands on its own.
    Sagas,
    /// Consumers of other services' events.
    Consumers,
    /// The relay publishing this service's events.
    Relay,
    /// Projections (read models and their checkpoints).
    Projections,
    /// Support that others lean on until the end (caches kept fresh).
    Support,
}

/// What a component's tasks get: the sender of its status and the signal
/// to stop.
#[derive(Debug)]
pub struct Controls<S> {
    /// Publish the component's status here.
    pub status: watch::Sender<S>,
    /// Becomes `true` when the component is asked to stop.
    pub stop: watch::Receiver<bool>,
}

/// A running background component: a cheap handle on its status and the
/// way to stop it. Dropping it asks the tasks to stop without waiting.
pub struct Running<S> {
    name: String,
    stage: Stage,
    status: watch::Receiver<S>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl<S: fmt::Debug> fmt::Debug for Running<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .field("stage", &self.stage)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Running<S> {
    /// Starts a component: `spawn` gets its [`Controls`] and returns the
    /// tasks it spawned, which the handle waits for on shutdown.
    pub fn start(
        name: impl Into<String>,
        stage: Stage,
        initial: S,
        spawn: impl FnOnce(Controls<S>) -> Vec<JoinHandle<()>>,
    ) -> Self {
        let (status_tx, status) = watch::channel(initial);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = spawn(Controls {
            status: status_tx,
            stop: stop_rx,
        });
        Self {
            name: name.into(),
            stage,
            status,
            stop,
            tasks,
        }
    }

    /// What it is, for logs (`relay flights`, `consumer audit-flights`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it stops relative to the others.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Its status now.
    pub fn status(&self) -> S {
        self.status.borrow().clone()
    }

    /// Its status as a watch, to follow every change.
    pub fn watch(&self) -> watch::Receiver<S> {
        self.status.clone()
    }

    /// Waits until `done(status)` holds or `timeout` passes; returns whether
    /// it held. False at once if the component has ended without it.
    pub async fn wait_until(&self, timeout: Duration, done: impl FnMut(&S) -> bool) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, rx.wait_for(done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Asks the tasks to stop, without waiting (to stop several components
    /// at once, then [`shutdown`](Self::shutdown) each).
    pub fn stop_soon(&self) {
        let _ = self.stop.send(true);
    }

    /// Asks the tasks to stop and waits until they have finished the work
    /// in hand.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(component = %self.name, "a task of the component panicked");
            }
        }
    }
}

impl<S> Drop for Running<S> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A running component as the runtime holds it, whatever its status type.
pub trait Background: Send {
    /// What it is, for logs.
    fn name(&self) -> String;
    /// When it stops relative to the others.
    fn stage(&self) -> Stage;
    /// Stops it and waits until its work in hand is done.
    fn shutdown(self: Box<Self>) -> BoxFuture<'static>;
}

impl<S: Clone + Send + Sync + 'static> Background for Running<S> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn stage(&self) -> Stage {
        self.stage
    }
    fn shutdown(self: Box<Self>) -> BoxFuture<'static> {
        Box::pin(Running::shutdown(*self))
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A component that counts until asked to stop, then records that it
    /// finished.
    fn counter(
        name: &'static str,
        stage: Stage,
        log: Arc<Mutex<Vec<&'static str>>>,
    ) -> Running<u64> {
        Running::start(name, stage, 0, |mut c| {
            vec![tokio::spawn(async move {
                loop {
                    c.status.send_modify(|n| *n += 1);
                    tokio::select! {
                        _ = c.stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }
                log.lock().unwrap().push(name);
            })]
        })
    }

    #[tokio::test]
    async fn status_is_watched_and_shutdown_waits_for_the_tasks() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = counter("counter", Stage::Consumers, log.clone());
        assert!(
            running
                .wait_until(Duration::from_secs(5), |n| *n >= 3)
                .await
        );
        assert!(running.status() >= 3);
        assert!(
            !running
                .wait_until(Duration::from_millis(1), |n| *n == 0)
                .await
        );
        running.shutdown().await;
        assert_eq!(*log.lock().unwrap(), vec!["counter"]);
    }

    #[tokio::test]
    async fn wait_until_is_false_once_the_component_has_ended() {
        let running = Running::start("short", Stage::Sagas, 0u8, |c| {
            vec![tokio::spawn(async move {
                c.status.send_replace(1);
                // The sender drops here: the component has ended.
            })]
        });
        assert!(
            running
                .wait_until(Duration::from_secs(5), |n| *n == 1)
                .await
        );
        assert!(
            !running
                .wait_until(Duration::from_secs(5), |n| *n == 2)
                .await
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_asks_the_tasks_to_stop() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = counter("dropped", Stage::Relay, log.clone());
        let mut status = running.watch();
        drop(running);
        // The task sees the stop, finishes and drops its status sender.
        while status.changed().await.is_ok() {}
        assert_eq!(*log.lock().unwrap(), vec!["dropped"]);
    }

    #[tokio::test]
    async fn stop_soon_asks_every_component_before_any_is_waited_for() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let a = counter("a", Stage::Projections, log.clone());
        let b = counter("b", Stage::Projections, log.clone());
        a.stop_soon();
        b.stop_soon();
        let mut b_status = b.watch();
        // b finishes on its own, before anyone waits for it.
        while b_status.changed().await.is_ok() {}
        assert!(log.lock().unwrap().contains(&"b"));
        a.shutdown().await;
        b.shutdown().await;
        let mut seen = log.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn components_stop_in_stage_order_then_start_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let components: Vec<Box<dyn Background>> = vec![
            Box::new(counter("projections", Stage::Projections, log.clone())),
            Box::new(counter("relay", Stage::Relay, log.clone())),
            Box::new(counter("consumer a", Stage::Consumers, log.clone())),
            Box::new(counter("revocations", Stage::Support, log.clone())),
            Box::new(counter("saga", Stage::Sagas, log.clone())),
            Box::new(counter("consumer b", Stage::Consumers, log.clone())),
        ];
        shutdown_all(components).await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                "saga",
                "consumer a",
                "consumer b",
                "relay",
                "projections",
                "revocations"
            ]
        );
    }
}
