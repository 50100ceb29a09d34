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
//!
//! While it catches up (a page came back full), the next page is read in a
//! task of its own while the consumer takes the events of this one, so the
//! store's work on a page and the consumer's on the one before overlap
//! instead of taking turns. Once caught up, nothing is read ahead.

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

use crate::{AllFilter, AllFollower, AllPage, EventStore, FollowOptions, StoreError};

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
    /// The follower, unless a read ahead has it.
    follower: Option<AllFollower>,
    /// The next page, being read while the buffer is taken.
    ahead: Option<ReadAhead>,
    buffer: VecDeque<RecordedEvent>,
    backoff: Option<Duration>,
}

type PageRead = (AllFollower, Result<AllPage, StoreError>);

/// A page read in a task of its own; the task ends with the subscription.
struct ReadAhead(tokio::task::JoinHandle<PageRead>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
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
            follower: Some(AllFollower::new(store, after, filter, options)),
            ahead: None,
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
            let (mut follower, read) = match (self.ahead.take(), self.follower.take()) {
                (Some(mut ahead), _) => match (&mut ahead.0).await {
                    Ok(done) => done,
                    // Only this subscription aborts the task (when dropped),
                    // so this is a read that panicked: so does the consumer.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return None,
                },
                (None, Some(mut follower)) => {
                    let read = follower.read().await;
                    (follower, read)
                }
                (None, None) => return None,
            };
            match read {
                Err(err) => {
                    self.follower = Some(follower);
                    let next = self.backoff.map_or(Duration::from_millis(50), |d| d * 2);
                    self.backoff = Some(next.min(Duration::from_secs(5)));
                    return Some((Err(err), self));
                }
                Ok(page) => {
                    self.backoff = None;
                    if page.events.is_empty() {
                        follower.wait().await;
                        self.follower = Some(follower);
                    } else {
                        self.buffer.extend(page.events);
                        if page.caught_up {
                            self.follower = Some(follower);
                        } else {
                            self.ahead = Some(ReadAhead(tokio::spawn(async move {
                                let read = follower.read().await;
                                (follower, read)
                            })));
                        }
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

#[cfg(test)]
mod tests {
    use cairn_core::{NewEvent, StreamId, TenantId};
    use futures_util::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::{ExpectedVersion, MemoryStore};

    /// Pages read ahead arrive in order, none twice, none skipped, and the
    /// live tail follows them.
    #[tokio::test]
    async fn read_ahead_keeps_every_event_in_order() {
        let store = Arc::new(MemoryStore::new());
        let tenant = TenantId::new("acme").unwrap();
        for s in 0..25 {
            let events = (0..40)
                .map(|i| NewEvent::new("E", json!({ "i": i })))
                .collect();
            let stream = StreamId::new(format!("s-{s}")).unwrap();
            store
                .append(&tenant, &stream, ExpectedVersion::NoStream, events)
                .await
                .unwrap();
        }
        let options = FollowOptions {
            page_size: 64,
            poll_interval: Duration::from_millis(20),
        };
        let mut sub =
            EventSubscription::follow_with(store.clone(), 0, AllFilter::all_tenants(), options);
        for expected in 1..=1000u64 {
            let event = sub.next().await.unwrap().unwrap();
            assert_eq!(event.position, expected);
        }
        let stream = StreamId::new("late").unwrap();
        store
            .append(
                &tenant,
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("E", json!({}))],
            )
            .await
            .unwrap();
        let event = sub.next().await.unwrap().unwrap();
        assert_eq!((event.position, event.stream), (1001, stream));
        // dropping it mid-page aborts what it was reading ahead
        let mut sub = EventSubscription::follow_with(store, 0, AllFilter::all_tenants(), options);
        assert_eq!(sub.next().await.unwrap().unwrap().position, 1);
        drop(sub);
    }
}
