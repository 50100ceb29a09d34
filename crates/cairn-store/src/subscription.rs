//! Catch-up subscriptions on `$all`, shared by every backend.
//!
//! A subscription pulls pages from an [`AllFollower`] at its own pace: first
//! the history, then, once caught up, it waits for the store's head to move
//! (in-process wakeups, LISTEN/NOTIFY on PostgreSQL) or for the poll
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

use crate::{AllFilter, AllFollower, EventStore, FollowOptions, StoreError};

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
    follower: AllFollower,
    buffer: VecDeque<RecordedEvent>,
    backoff: Option<Duration>,
}

impl EventSubscription {
    /// Follows `store` from `after` (exclusive) with default options.
    pub fn follow(store: Arc<dyn EventStore>, after: u64, filter: AllFilter) -> Self {
        Self::follow_with(store, after, filter, FollowOptions::default())
    }

    pub fn follow_with(
        store: Arc<dyn EventStore>,
        after: u64,
        filter: AllFilter,
        options: FollowOptions,
    ) -> Self {
        let state = Follow {
            follower: AllFollower::new(store, after, filter, options),
            buffer: VecDeque::new(),
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
            match self.follower.read().await {
                Err(err) => {
                    let next = self.backoff.map_or(Duration::from_millis(50), |d| d * 2);
                    self.backoff = Some(next.min(Duration::from_secs(5)));
                    return Some((Err(err), self));
                }
                Ok(page) => {
                    self.backoff = None;
                    if page.events.is_empty() {
                        self.follower.wait().await;
                    } else {
                        self.buffer.extend(page.events);
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
