//! Catch-up subscriptions on `$all`, shared by every backend.
//!
//! A subscription pulls pages from [`EventStore::read_all`] at its own pace:
//! first the history, then, once caught up, it waits for the store's head to
//! move (in-process wakeups, LISTEN/NOTIFY on PostgreSQL) or for the poll
//! interval to pass, and reads again. Because it only ever reads, a slow
//! subscriber never blocks writers and never loses events, and because
//! positions are gap-safe, tracking the last position read hands over from
//! history to live without a gap or a duplicate.
//!
//! Errors are yielded as items; the subscription then backs off and keeps
//! going from where it was, so a consumer may ride out a store restart or
//! drop the subscription and resume later from its own checkpoint.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use cairn_core::RecordedEvent;
use futures_core::Stream;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::{AllFilter, EventStore, StoreError};

/// How a subscription reads.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionOptions {
    /// Events per read.
    pub page_size: usize,
    /// Longest wait for a wakeup before reading again anyway.
    pub poll_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            page_size: 1024,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// A stream of `$all` events, history then live, in position order.
pub struct EventSubscription {
    inner: BoxStream<'static, Result<RecordedEvent, StoreError>>,
}

impl std::fmt::Debug for EventSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSubscription").finish_non_exhaustive()
    }
}

struct Follow {
    store: Arc<dyn EventStore>,
    filter: AllFilter,
    after: u64,
    head: watch::Receiver<u64>,
    buffer: VecDeque<RecordedEvent>,
    options: SubscriptionOptions,
    backoff: Option<Duration>,
}

impl EventSubscription {
    /// Follows `store` from `after` (exclusive) with default options.
    pub fn follow(store: Arc<dyn EventStore>, after: u64, filter: AllFilter) -> Self {
        Self::follow_with(store, after, filter, SubscriptionOptions::default())
    }

    pub fn follow_with(
        store: Arc<dyn EventStore>,
        after: u64,
        filter: AllFilter,
        options: SubscriptionOptions,
    ) -> Self {
        let head = store.head();
        let state = Follow {
            store,
            filter,
            after,
            head,
            buffer: VecDeque::new(),
            options: SubscriptionOptions {
                page_size: options.page_size.max(1),
                ..options
            },
            backoff: None,
        };
        Self {
            inner: stream::unfold(state, Follow::next).boxed(),
        }
    }
}

impl Follow {
    async fn next(mut self) -> Option<(Result<RecordedEvent, StoreError>, Self)> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some((Ok(event), self));
            }
            if let Some(delay) = self.backoff {
                tokio::time::sleep(delay).await;
            }
            // Every position up to the head seen *before* the read is
            // committed and visible to it, so a read that comes back short
            // has covered all of them.
            let head_before = *self.head.borrow_and_update();
            match self
                .store
                .read_all(self.after, &self.filter, self.options.page_size)
                .await
            {
                Err(err) => {
                    let next = self.backoff.map_or(Duration::from_millis(50), |d| d * 2);
                    self.backoff = Some(next.min(Duration::from_secs(5)));
                    return Some((Err(err), self));
                }
                Ok(page) => {
                    self.backoff = None;
                    let short = page.len() < self.options.page_size;
                    if let Some(last) = page.last() {
                        self.after = last.position;
                    }
                    if short {
                        self.after = self.after.max(head_before);
                    }
                    if !page.is_empty() {
                        self.buffer.extend(page);
                        continue;
                    }
                    tokio::select! {
                        changed = self.head.changed() => {
                            if changed.is_err() {
                                // The store was dropped; keep polling in case
                                // another handle still writes.
                                tokio::time::sleep(self.options.poll_interval).await;
                            }
                        }
                        _ = tokio::time::sleep(self.options.poll_interval) => {}
                    }
                }
            }
        }
    }
}

impl Stream for EventSubscription {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}
