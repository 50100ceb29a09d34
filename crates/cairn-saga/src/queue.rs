//! One turn at a time per saga instance inside a process: decisions on the
//! same saga through one runner run one after another instead of racing
//! each other to the store.
//!
//! Optimistic concurrency stays the guarantee (other processes still race
//! and are retried); the queue only stops a process from losing races
//! against itself. Entries are removed when their last user leaves, so the
//! map only holds instances with a decision in flight.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use cairn_core::{StreamId, TenantId};
use tokio::sync::OwnedMutexGuard;

type Key = (TenantId, StreamId);
type Lock = Arc<tokio::sync::Mutex<()>>;

/// The per-instance locks of one runner.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    locks: Mutex<HashMap<Key, Lock>>,
}

impl Turns {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Lock>> {
        // Only plain map operations run under this lock; poison cannot leave
        // the map inconsistent.
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the turn of `(tenant, stream)`; the turn ends when the
    /// returned guard is dropped (also when the waiting future is dropped).
    pub(crate) async fn turn(&self, tenant: &TenantId, stream: &StreamId) -> Turn<'_> {
        let key = (tenant.clone(), stream.clone());
        let lock = Arc::clone(self.map().entry(key.clone()).or_default());
        let mut turn = Turn {
            turns: self,
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

/// An instance's turn; dropping it lets the next decision on it run.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    key: Key,
    lock: Lock,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.turns.map();
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
    async fn one_turn_at_a_time_and_entries_are_removed() {
        let turns = Arc::new(Turns::default());
        let tenant = TenantId::new("t").unwrap();
        let stream = StreamId::new("s_saga-1").unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (turns, tenant, stream, inside) = (
                Arc::clone(&turns),
                tenant.clone(),
                stream.clone(),
                Arc::clone(&inside),
            );
            tasks.spawn(async move {
                let _turn = turns.turn(&tenant, &stream).await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two inside");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(turns.len(), 0);

        let held = turns.turn(&tenant, &stream).await;
        let other = StreamId::new("s_saga-2").unwrap();
        drop(turns.turn(&tenant, &other).await);
        assert_eq!(turns.len(), 1);
        drop(held);
        assert_eq!(turns.len(), 0);
    }
}
