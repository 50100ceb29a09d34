//! One queue per stream inside a process: commands on the same aggregate
//! through one [`AggregateStore`](crate::AggregateStore) (and its clones)
//! run one after another instead of racing each other to the store. Other
//! writers of streams (saga runners) use the same [`StreamQueues`].
//!
//! Optimistic concurrency stays the guarantee (other processes still race
//! and are retried); the queue only stops a process from losing races
//! against itself. Without it, twenty simultaneous commands on one
//! aggregate waste most of their attempts, and a hot aggregate (the last
//! seats of a flight) turns into concurrency-conflict errors. Entries are
//! removed when their last user leaves, so the map only holds streams that
//! have a command in flight.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use cairn_core::{StreamId, TenantId};
use tokio::sync::OwnedMutexGuard;

type Key = (TenantId, StreamId);
type Lock = Arc<tokio::sync::Mutex<()>>;

/// Per-stream turns: one holder at a time per `(tenant, stream)`.
#[derive(Debug, Default)]
pub struct StreamQueues {
    locks: Mutex<HashMap<Key, Lock>>,
}

impl StreamQueues {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Lock>> {
        // Only plain map operations run under this lock; poison cannot leave
        // the map inconsistent.
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the turn of `(tenant, stream)`; the turn ends when the
    /// returned guard is dropped (also when the waiting future is dropped).
    pub async fn turn(&self, tenant: &TenantId, stream: &StreamId) -> Turn<'_> {
        let key = (tenant.clone(), stream.clone());
        let lock = Arc::clone(self.map().entry(key.clone()).or_default());
        let mut turn = Turn {
            queues: self,
            key,
            lock: Arc::clone(&lock),
            guard: None,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

/// A stream's turn; dropping it lets the next holder of the stream run.
#[must_use = "the turn ends when this is dropped"]
pub struct Turn<'a> {
    queues: &'a StreamQueues,
    key: Key,
    lock: Lock,
    guard: Option<OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for Turn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("tenant", &self.key.0)
            .field("stream", &self.key.1)
            .finish()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.queues.map();
        // Clones of the lock are only taken under the map lock, so when the
        // map's copy and ours are the only ones left nobody else can be
        // waiting or about to wait.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_command_at_a_time_per_stream_and_entries_are_removed() {
        let queues = Arc::new(StreamQueues::default());
        let tenant = TenantId::new("t").unwrap();
        let stream = StreamId::new("s-1").unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (queues, tenant, stream, inside) = (
                Arc::clone(&queues),
                tenant.clone(),
                stream.clone(),
                Arc::clone(&inside),
            );
            tasks.spawn(async move {
                let _turn = queues.turn(&tenant, &stream).await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two inside");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(queues.len(), 0);

        // other streams are not held up by a stream's turn
        let held = queues.turn(&tenant, &stream).await;
        let other = StreamId::new("s-2").unwrap();
        drop(queues.turn(&tenant, &other).await);
        assert_eq!(queues.len(), 1);
        drop(held);
        assert_eq!(queues.len(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_no_entry_behind() {
        let queues = StreamQueues::default();
        let tenant = TenantId::new("t").unwrap();
        let stream = StreamId::new("s-1").unwrap();

        // cancelled while another command holds the turn
        let held = queues.turn(&tenant, &stream).await;
        {
            let waiting = std::pin::pin!(queues.turn(&tenant, &stream));
            assert!(poll_once(waiting).await, "must wait for the held turn");
        }
        drop(held);
        assert_eq!(queues.len(), 0);

        // cancelled after the holder left, before it was polled again: the
        // waiter is the last user and must remove the entry itself
        let held = queues.turn(&tenant, &stream).await;
        let mut waiting = Box::pin(queues.turn(&tenant, &stream));
        assert!(poll_once(waiting.as_mut()).await);
        drop(held);
        assert_eq!(queues.len(), 1);
        drop(waiting);
        assert_eq!(queues.len(), 0);
    }

    /// Polls a future once; true if it was still pending.
    async fn poll_once<F: std::future::Future + Unpin>(mut f: F) -> bool {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx).is_pending())
        })
        .await
    }
}
